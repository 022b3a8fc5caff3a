#!/usr/bin/env bash
# GPU acceptance, in under 9 minutes on one H100/H200:
#   1. the CUDA kernel tests (pytest -m cuda tests/test_kernels.py),
#   2. bench/bench_logprob.py on the CPU shape and the 8B-class GPU shape,
#   3. bench/bench_grpo_vs_trl.py: srmir vs TRL's GRPOTrainer on a random Qwen2.5-0.5B-shaped policy
#      (srmir alone when TRL, the 'bench' extra, is not installed),
#   4. bench/gpu_check.py: bandwidth / TFLOP/s against measured copy_ and matmul (printed last).
# Usage: bash bench/gpu_check.sh            (from anywhere; PYTHON=... to pick the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
unset TRITON_INTERPRET  # real GPU kernels, not the interpreter

# Until the editable install maps srmir_kernels -> kernels/, expose it through a symlink.
if ! "$PY" -c "import srmir_kernels" 2>/dev/null; then
  shim=$(mktemp -d)
  ln -s "$PWD/kernels" "$shim/srmir_kernels"
  export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to $PY" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

status=0
echo "== 1/4 CUDA kernel tests"
timeout 90 "$PY" -m pytest -q -m cuda tests/test_kernels.py -p no:cacheprovider || status=1
echo "== 2/4 benchmark (fwd+bwd, bf16)"
timeout 150 "$PY" bench/bench_logprob.py --dtype bf16 --repeats 3 --rounds 1 --rows 32 || status=1
echo "== 3/4 GRPO step vs TRL (random Qwen2.5-0.5B shape, K=7, 4 prompts x 8, 32 new tokens)"
only=""
"$PY" -c "import trl" 2>/dev/null || only="--only srmir"
timeout 240 "$PY" bench/bench_grpo_vs_trl.py --steps 3 --k 7 --shape qwen2.5-0.5b $only || status=1
echo "== 4/4 bandwidth and TFLOP/s"
timeout 60 "$PY" bench/gpu_check.py --repeats 10 || status=1
exit "$status"

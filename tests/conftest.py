"""Test-wide environment: offline, CPU-friendly, Triton's interpreter where no GPU exists.

TRITON_INTERPRET must be set before anything imports triton (transformers and deepspeed do),
so it is set here, at collection time, unless the caller chose a value.
"""
import os
import shutil
import subprocess
import sys


def _has_cuda_driver() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# DeepSpeed JIT-builds a shared-memory op for CPU process groups into ~/.cache/torch_extensions by
# default; checkouts with different virtualenvs rebuild it there in turn (40-70 s each) and a run
# that loads it mid-rebuild dies with "cannot open shared object file". One folder per virtualenv.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
if not _has_cuda_driver():
    os.environ.setdefault("TRITON_INTERPRET", "1")

"""Test-wide environment: offline, CPU-friendly, Triton's interpreter where no GPU exists.

TRITON_INTERPRET must be set before anything imports triton (transformers and deepspeed do),
so it is set here, at collection time, unless the caller chose a value.
"""
import os
import shutil
import subprocess


def _has_cuda_driver() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
if not _has_cuda_driver():
    os.environ.setdefault("TRITON_INTERPRET", "1")

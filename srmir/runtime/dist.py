"""Process-group plumbing: launcher environment, init, rank helpers and variable-size gathers.

Three launchers start ``train.py`` and each leaves a different trace:

- ``python train.py`` — nothing: we fill RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, MASTER_ADDR=127.0.0.1
  and a MASTER_PORT found by binding port 0 (never a hard-coded port: two runs on one machine, or
  a port another job holds, would otherwise collide).
- ``deepspeed --num_gpus N train.py`` — RANK/WORLD_SIZE/MASTER_* in the environment plus a
  ``--local_rank`` argument (older launchers) that we copy into LOCAL_RANK.
- ``torchrun --rdzv_backend c10d --rdzv_endpoint HOST:PORT`` — the full environment; the port is
  the user's, chosen at launch.
"""
from __future__ import annotations

import atexit
import os
import socket
import sys
from typing import Any

import torch
import torch.distributed as torch_dist


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free right now (bind to port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def set_env_defaults(local_rank: int | None = None) -> None:
    """Fill the variables ``init_process_group`` needs when no launcher did (single process)."""
    if local_rank is not None and local_rank >= 0 and "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(local_rank)
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())


def init(local_rank: int | None = None) -> torch.device:
    """Initialise the process group once (nccl on CUDA, gloo on CPU) and return this rank's device."""
    import deepspeed

    set_env_defaults(local_rank)
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        _skip_cpu_shm_op()
    if not torch_dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy_process_group)
    return device


def shutdown() -> None:
    """End the process group cleanly on every rank: a barrier (no rank tears down while another is
    still in the last collective), then ``destroy_process_group``. A process that exits with gloo's
    threads still running can abort in a C++ destructor ("terminate called without an active
    exception", SIGABRT) after its work is done: the launcher then reports a failed rank, and under
    a 2-node torchrun the other node waits out its 300 s exit barrier."""
    if torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()


def finish(code: int) -> None:
    """End a process of a multi-rank run with exit status ``code``, now; returns at once when there
    is no group or one rank. A success (``code`` 0) first runs :func:`shutdown` (every rank got here).
    Then the interpreter is left with ``os._exit``: a gloo worker thread can still hold a tensor at
    interpreter teardown, and destroying it then aborts the process (SIGABRT, "terminate called
    without an active exception") even after ``destroy_process_group`` — about 1 loaded 2-node
    launch in 30 here, which a launcher reports as a failed rank. Files are closed by then; stdout
    and stderr are flushed here."""
    if not (torch_dist.is_initialized() and torch_dist.get_world_size() > 1):
        return
    if code == 0:
        shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _destroy_process_group() -> None:
    """At interpreter exit, whatever group is left (an error path, or code that called ``train()``)
    is destroyed without a barrier: the other ranks may be gone."""
    try:
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass


def _skip_cpu_shm_op() -> None:
    """On CPU, DeepSpeed's comm backend JIT-compiles a shared-memory all-reduce op (C++, ninja) at
    init, used only by its ``inference_all_reduce``, which srmir never calls. The build costs about a
    minute on every fresh machine, and first starts of several processes at once raced into a failed
    link here; gloo does all of srmir's collectives, so the op is not built."""
    import importlib

    # not `import deepspeed.comm.torch as m`: that binds deepspeed.comm's attribute `torch`, the torch package
    ds_torch = importlib.import_module("deepspeed.comm.torch")
    ds_torch.build_shm_op = lambda: None


def init_if_launched() -> tuple[int, int]:
    """(rank, world size). Joins the process group (through DeepSpeed) only when a launcher started
    several processes (WORLD_SIZE > 1); a single process needs none (reward training, eval)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch_dist.is_initialized():
        import deepspeed

        if not torch.cuda.is_available():
            _skip_cpu_shm_op()
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return rank(), world_size()


def rank() -> int:
    return torch_dist.get_rank() if torch_dist.is_initialized() else 0


def world_size() -> int:
    return torch_dist.get_world_size() if torch_dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if torch_dist.is_initialized():
        torch_dist.barrier()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks (returns a new tensor; identity with one process)."""
    x = x.clone()
    if world_size() > 1:
        torch_dist.all_reduce(x, op=torch_dist.ReduceOp.SUM)
    return x


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    if world_size() > 1:
        torch_dist.all_reduce(x, op=torch_dist.ReduceOp.MAX)
    return x


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank (every rank gets the same answer, so none hangs)."""
    return bool(all_reduce_max(torch.tensor([float(flag)], device=device)).item() > 0)


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [n_r, ...] from every rank in rank order; n_r may differ between ranks.

    Rows are padded to the largest n_r for the collective and the padding is cut off again.
    """
    if world_size() == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    torch_dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    padded = x.new_zeros((max(sizes),) + tuple(x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    torch_dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable Python data), in rank order."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]

"""Checkpoints: DeepSpeed engine state + trainer state + every rank's RNG, written atomically.

Layout (``<output_dir>/checkpoints/step-00000004/``)::

    ds/                      DeepSpeed's own format (module, fp32 master, optimizer, lr schedule)
    trainer_state.json       step, sampler position, skip counters, world size
    rng/rank-00000.safetensors + rank-00000.json   torch/CUDA/numpy/python RNG of rank 0 (no pickle)

Everything is written under ``.step-00000004.tmp`` and renamed when all ranks are done, so a run
killed mid-save leaves the previous checkpoint as the latest complete one. ``--resume auto`` picks
the highest complete ``step-*``.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..io import write_json_atomic
from ..runtime import dist

_STEP_DIR = re.compile(r"^step-(\d{8})$")
DS_TAG = "ds"


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def latest(root: Path) -> Optional[Path]:
    """The complete checkpoint with the highest step under ``root`` (None when there is none)."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def save(engine, root: Path, step: int, trainer_state: dict, keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``root`` on every rank (a collective); return its folder."""
    final = step_dir(root, step)
    tmp = final.with_name(f".{final.name}.tmp")
    node_lead = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if node_lead:  # before anyone writes: leftovers of an interrupted or repeated save of this step go
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
    dist.barrier()
    engine.save_checkpoint(str(tmp), tag=DS_TAG)
    _save_rng(tmp / "rng", dist.rank())
    if dist.is_main():
        write_json_atomic(tmp / "trainer_state.json", {**trainer_state, "step": step, "world_size": dist.world_size()})
    dist.barrier()
    # One rank per node renames (node-local disks each hold their own copy; on a shared disk the
    # first rename wins and the others find nothing left to move). Nothing may delete ``final``
    # here: on a shared disk it can be another node's rename of a moment ago.
    if node_lead:
        try:
            os.replace(tmp, final)
        except FileNotFoundError:
            pass
        _prune(Path(root), keep)
    dist.barrier()
    return final


def load(engine, folder: Path) -> dict:
    """Restore engine state and this rank's RNG from ``folder``; return the trainer state."""
    folder = Path(folder)
    state_file = folder / "trainer_state.json"
    if not state_file.is_file():
        raise UserError("not a complete srmir checkpoint (no trainer_state.json)", where=str(folder))
    state = json.loads(state_file.read_text(encoding="utf-8"))
    load_path, _ = engine.load_checkpoint(str(folder), tag=DS_TAG, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise UserError("DeepSpeed could not load the engine state", where=str(folder / DS_TAG))
    rng = folder / "rng"
    if state["world_size"] == dist.world_size():
        _load_rng(rng, dist.rank())
    elif dist.is_main():
        print(f"srmir: warning: checkpoint was written by {state['world_size']} ranks, resuming on "
              f"{dist.world_size()}: random streams restart from the seed", flush=True)
    return state


def _prune(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recent complete checkpoints (keep=0 keeps all)."""
    if keep <= 0:
        return
    found = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)))
    for _, path in found[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------ RNG


def _save_rng(folder: Path, rank: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(folder / f"rank-{rank:05d}.safetensors"))
    meta = {"numpy": [np_name, int(np_pos), int(np_has_gauss), float(np_gauss)],
            "python": [py_version, list(py_state), py_gauss]}
    write_json_atomic(folder / f"rank-{rank:05d}.json", meta)


def _load_rng(folder: Path, rank: int) -> None:
    tensors = load_file(str(folder / f"rank-{rank:05d}.safetensors"))
    meta = json.loads((folder / f"rank-{rank:05d}.json").read_text(encoding="utf-8"))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    np_name, np_pos, np_has_gauss, np_gauss = meta["numpy"]
    np.random.set_state((np_name, tensors["numpy_keys"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    py_version, py_state, py_gauss = meta["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))

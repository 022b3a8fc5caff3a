"""Checkpoints: DeepSpeed engine state + trainer state + every rank's RNG, written atomically and
verified before anything in them is unpickled.

Layout (``<output_dir>/checkpoints/step-00000004/``)::

    ds/                      DeepSpeed's own format (module, fp32 master, optimizer, lr schedule)
    trainer_state.json       step, sampler position, skip counters, world size, model signature
    rng/rank-00000.safetensors + rank-00000.json   torch/CUDA/numpy/python RNG of rank 0 (no pickle)
    manifest.json            every file above with its size and sha256, written last

Everything is written under ``.step-00000004.tmp`` and renamed when all ranks are done, so a run
killed mid-save leaves the previous checkpoint as the latest complete one. A failed write (a full
disk, a read-only folder) is gathered from every rank first, so all of them stop together with one
line naming the path and the OS reason instead of one rank dying inside a collective.

Loading: the manifest is verified (sizes, then hashes) before DeepSpeed's ``.pt`` files are opened,
and those are unpickled with ``torch.load(weights_only=True)`` plus an allowlist of the few
DeepSpeed classes its optimizer state holds, so a checkpoint cannot run code. ``--resume auto``
takes the newest checkpoint that verifies, reporting each damaged newer one it skips.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..artifacts import MANIFEST, verify_manifest, write_manifest
from ..errors import UserError
from ..io import os_failure, write_json_atomic, write_text_atomic
from ..runtime import dist

_STEP_DIR = re.compile(r"^step-(\d{8})$")
DS_TAG = "ds"
_STATE_KEYS = ("step", "sampler", "bad_in_row", "skipped_total", "world_size")


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def complete(root: Path) -> list[Path]:
    """The complete (renamed) checkpoints under ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def latest(root: Path) -> Optional[Path]:
    """The complete checkpoint with the highest step under ``root`` (None when there is none)."""
    found = complete(root)
    return found[0] if found else None


# ------------------------------------------------------------------------------------ save


def save(engine, root: Path, step: int, trainer_state: dict, keep: int = 2, trainable_only: bool = False) -> Path:
    """Write checkpoint ``step`` under ``root`` on every rank (a collective); return its folder.
    ``trainable_only`` (LoRA): the frozen base weights are left out — they are model.policy's, read
    again at resume — so a checkpoint holds the adapters, their fp32 master copy and Adam state.

    A write that fails on any rank (OSError, or torch.save's RuntimeError on a full disk) makes
    every rank raise the same OSError naming the path, after the temporary folder is removed."""
    final = step_dir(root, step)
    tmp = final.with_name(f".{final.name}.tmp")
    node_lead = int(os.environ.get("LOCAL_RANK", "0")) == 0
    failure = None
    if node_lead:  # before anyone writes: leftovers of an interrupted or repeated save of this step go
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        failure = _attempt(lambda: tmp.mkdir(parents=True, exist_ok=True), tmp)
    _agree(failure, tmp, node_lead)  # a read-only folder stops every rank here, before DeepSpeed writes
    with _ds_writes_recorded(engine) as failures:
        engine.save_checkpoint(str(tmp), tag=DS_TAG, save_latest=False, exclude_frozen_parameters=trainable_only)
    failure = failures[0] if failures else _attempt(lambda: _save_rng(tmp / "rng", dist.rank()), tmp / "rng")
    if failure is None and dist.is_main():
        state = {**trainer_state, "step": step, "world_size": dist.world_size(), "model": model_signature(engine)}
        failure = _attempt(lambda: (write_json_atomic(tmp / "trainer_state.json", state),
                                    write_text_atomic(tmp / "latest", DS_TAG)), tmp)  # `latest`: for zero_to_fp32.py
    _agree(failure, tmp, node_lead)
    if node_lead:  # every node lead of a shared disk writes the same manifest; all finish before any rename
        failure = _attempt(lambda: write_manifest(tmp), tmp / MANIFEST)
    _agree(failure, tmp, node_lead)
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


def _attempt(write, path) -> Optional[tuple]:
    """Run ``write``; None when it worked, else (errno, reason, path) of its OS failure."""
    try:
        write()
    except (OSError, RuntimeError, SafetensorError) as e:
        failure = os_failure(e, path)
        return failure.errno, failure.strerror, failure.filename
    return None


def _agree(failure: Optional[tuple], tmp: Path, node_lead: bool) -> None:
    """A collective: raise on every rank when any rank failed to write (its first failure)."""
    failures = [f for f in dist.all_gather_objects(failure) if f]
    if failures:
        if node_lead:
            shutil.rmtree(tmp, ignore_errors=True)  # frees the space; the previous checkpoint stays the latest
        code, reason, path = failures[0]
        error = OSError(code, f"cannot write the checkpoint: {reason}", path)
        error.reported_by_rank0 = True  # every rank raises it; one line is enough
        raise error


@contextlib.contextmanager
def _ds_writes_recorded(engine):
    """While DeepSpeed saves, a failed file write is recorded instead of raised: a rank raising
    inside ``save_checkpoint`` would leave the others waiting in its closing barrier forever."""
    failures: list[tuple] = []

    def recorded(write):
        def call(*args, **kwargs):
            if failures:
                return None  # the checkpoint is lost already; write nothing more
            path = kwargs.get("path") or (args[1] if len(args) > 1 else args[0] if args else "?")
            try:
                return write(*args, **kwargs)
            except (OSError, RuntimeError, SafetensorError) as e:
                failure = os_failure(e, path)
                failures.append((failure.errno, failure.strerror, failure.filename))
        return call

    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(engine.checkpoint_engine, "save", recorded(engine.checkpoint_engine.save)))
        if hasattr(engine, "_copy_recovery_script"):  # rank 0 copies zero_to_fp32.py beside the state
            stack.enter_context(_patched(engine, "_copy_recovery_script", recorded(engine._copy_recovery_script)))
        yield failures


@contextlib.contextmanager
def _patched(obj, name: str, value):
    """Set ``obj.name = value`` (an instance attribute) for the block, then restore what was there."""
    had, before = name in vars(obj), vars(obj).get(name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, before)
        else:
            delattr(obj, name)


def model_signature(engine) -> dict:
    """Parameter count and a hash of every parameter's name and full shape (ZeRO-3 partitions keep
    the full one in ``ds_shape``): a checkpoint of another model is refused before DeepSpeed loads it."""
    shapes = [(n, list(getattr(p, "ds_shape", p.shape))) for n, p in engine.module.named_parameters()]
    digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
    return {"parameters": len(shapes), "shapes_sha256": digest}


# ------------------------------------------------------------------------------------ load


def problem(folder: Path) -> Optional[str]:
    """Why ``folder`` cannot be resumed from (``"path: what"``), or None when it verifies; the same
    answer on every rank (a collective). Nothing is unpickled: the manifest's sizes and hashes, the
    JSON trainer state and this rank's RNG files are checked; a checkpoint written before manifests
    existed is checked for its parts only."""
    folder = Path(folder)
    mine = None
    try:
        if not (folder / "trainer_state.json").is_file():
            raise UserError("not a complete srmir checkpoint (no trainer_state.json)", where=str(folder))
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one hashing pass per node (threads inside)
            if verify_manifest(folder) is None:  # written before manifests: its parts, at least
                if not (folder / DS_TAG).is_dir() or not any((folder / DS_TAG).iterdir()):
                    raise UserError("no DeepSpeed state (ds/ is missing or empty)", where=str(folder))
        state = _read_state(folder)
        if state["world_size"] == dist.world_size():
            for suffix in (".safetensors", ".json"):
                rng = folder / "rng" / f"rank-{dist.rank():05d}{suffix}"
                if not rng.is_file():
                    raise UserError("missing: this rank's random state", where=str(rng))
    except UserError as e:
        mine = str(e)
    except OSError as e:
        mine = f"{e.filename or folder}: {e.strerror}"
    return next((p for p in dist.all_gather_objects(mine) if p), None)


def find_resumable(root: Path) -> tuple[Optional[Path], list[tuple[Path, str]]]:
    """The newest complete checkpoint under ``root`` that verifies, and the (folder, problem) of
    every newer one skipped for being damaged."""
    skipped = []
    for folder in complete(root):
        why = problem(folder)
        if why is None:
            return folder, skipped
        skipped.append((folder, why))
    return None, skipped


def load(engine, folder: Path, verified: bool = False, trainable_only: bool = False) -> dict:
    """Restore engine state and this rank's RNG from ``folder``; return the trainer state.

    Checks first (:func:`problem`, unless ``verified`` says the caller just did; then the model
    signature), then DeepSpeed loads with ``weights_only`` unpickling; any failure is a UserError
    naming the checkpoint. ``trainable_only``: as saved by :func:`save` with it (LoRA)."""
    folder = Path(folder)
    why = None if verified else problem(folder)
    if why is not None:
        raise UserError(why)  # "<file>: <what is wrong with it>"
    state = _read_state(folder)
    mine, theirs = model_signature(engine), state.get("model")
    if theirs is not None and theirs != mine:
        raise UserError(f"a checkpoint of another model ({theirs['parameters']} parameter tensors, shapes "
                        f"{theirs.get('shapes_sha256')}; model.policy has {mine['parameters']}, {mine['shapes_sha256']})",
                        where=str(folder))
    from deepspeed.runtime.zero.utils import ZeRORuntimeException

    try:
        with _weights_only_unpickling(engine):
            # trainable_only: the saved module state lacks the frozen base, which stays as loaded
            load_path, _ = engine.load_checkpoint(str(folder), tag=DS_TAG, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True, load_module_strict=not trainable_only)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():  # truncated or garbled, not refused
            raise UserError(f"cannot load the DeepSpeed state: {_first_line(e)}", where=str(folder / DS_TAG)) from None
        found = re.search(r"GLOBAL ([\w.]+)", str(e))  # weights_only refused a class: someone else's pickle
        what = f"it holds a {found.group(1)} object" if found else "it holds objects srmir does not write"
        raise UserError(f"refused to unpickle the DeepSpeed state ({what}): a checkpoint is code; resume only "
                        "from checkpoints you wrote", where=str(folder / DS_TAG)) from None
    except ZeRORuntimeException as e:  # e.g. ZeRO state of 2 ranks resumed on 1: DeepSpeed cannot re-partition it
        raise UserError(f"cannot load the DeepSpeed state: {_first_line(e)}", where=str(folder / DS_TAG)) from None
    except (RuntimeError, ValueError, KeyError, EOFError, AssertionError, OSError) as e:
        hint = "" if (folder / MANIFEST).is_file() else " (a file is truncated or damaged? this checkpoint predates manifests)"
        raise UserError(f"cannot load the DeepSpeed state{hint}: {_first_line(e)}", where=str(folder / DS_TAG)) from None
    if load_path is None:
        raise UserError("DeepSpeed could not load the engine state", where=str(folder / DS_TAG))
    rng = folder / "rng"
    if state["world_size"] == dist.world_size():
        try:
            _load_rng(rng, dist.rank())
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
            raise UserError(f"damaged random state: {_first_line(e)}", where=str(rng)) from None
    elif dist.is_main():
        print(f"srmir: warning: checkpoint was written by {state['world_size']} ranks, resuming on "
              f"{dist.world_size()}: random streams restart from the seed", flush=True)
    return state


def _read_state(folder: Path) -> dict:
    path = folder / "trainer_state.json"
    if not path.is_file():
        raise UserError("not a complete srmir checkpoint (no trainer_state.json)", where=str(folder))
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except ValueError as e:
        raise UserError(f"damaged ({e})", where=str(path)) from None
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f"damaged: no {', '.join(missing)}", where=str(path))
    return state


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _safe_globals() -> list:
    """The DeepSpeed classes its optimizer state pickles (found by loading ZeRO 0-3, fp32 and bf16
    checkpoints with ``weights_only=True``); plain data otherwise. Nothing here runs code on load."""
    import importlib

    found = []
    for module, name in (("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                         ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
                         ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                         ("deepspeed.utils.tensor_fragment", "fragment_address")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return found


@contextlib.contextmanager
def _weights_only_unpickling(engine):
    """Every ``torch.load`` DeepSpeed makes while loading runs with ``weights_only=True`` (it passes
    False itself): tensors, containers and the allowlisted classes only, never arbitrary code."""
    real_load = torch.load

    def safe_load(f, map_location=None, *args, **kwargs):
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(_safe_globals()):
            return real_load(f, map_location, *args, **kwargs)

    def engine_load(path, map_location=None):
        return safe_load(path, map_location=map_location)

    with _patched(engine.checkpoint_engine, "load", engine_load):
        torch.load = safe_load
        try:
            yield
        finally:
            torch.load = real_load


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

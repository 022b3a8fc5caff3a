"""DeepSpeed JSON configs: load one, fill its ``"auto"`` fields from the srmir config, or build one.

The shipped files (``ds_configs/zero2.json``, ``zero3.json``, ``zero3_offload.json``) leave batch
sizes, precision and clipping as ``"auto"`` so that one YAML config stays the single source of
truth. A number written in the JSON must agree with the YAML; a disagreement is a UserError naming
the JSON key rather than a silent override either way.

The trainer owns the optimizer (torch AdamW, so nothing is compiled on a CPU) and the learning-rate
schedule, so ``optimizer`` and ``scheduler`` sections are rejected.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from ..errors import UserError

AUTO = "auto"


def load_ds_config(path: str | Path) -> dict:
    """Read a DeepSpeed JSON file; a missing file or bad JSON is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError("DeepSpeed config not found", where=str(path))
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"invalid JSON: {e.msg}", where=f"{path}:{e.lineno}") from None
    except UnicodeDecodeError:
        raise UserError("not valid UTF-8", where=str(path)) from None
    if not isinstance(obj, dict):
        raise UserError("expected a JSON object", where=str(path))
    return obj


def default_ds_config(zero_stage: int, offload: bool) -> dict:
    """The config used when no JSON is given: the chosen ZeRO stage, everything else ``auto``."""
    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage >= 2:
        zero.update(overlap_comm=False, contiguous_gradients=True, reduce_bucket_size=AUTO)
    if zero_stage == 3:
        zero.update(stage3_param_persistence_threshold=AUTO, stage3_prefetch_bucket_size=AUTO,
                    stage3_gather_16bit_weights_on_model_save=True)
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        if zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return {
        "train_batch_size": AUTO,
        "train_micro_batch_size_per_gpu": AUTO,
        "gradient_accumulation_steps": AUTO,
        "gradient_clipping": AUTO,
        "bf16": {"enabled": AUTO},
        "fp16": {"enabled": AUTO},
        "zero_optimization": zero,
    }


def fill_ds_config(
    ds: dict,
    *,
    micro_batch_size: int,
    grad_accum: int,
    world_size: int,
    dtype: str,
    max_grad_norm: float,
    hidden_size: int,
    source: str = "deepspeed config",
) -> dict:
    """Return a copy of ``ds`` with every ``"auto"`` filled and explicit values checked.

    Batch: train_batch_size = micro_batch_size × grad_accum × world_size.
    Precision: ``bf16.enabled`` iff dtype is bf16 (DeepSpeed then keeps fp32 master weights in the
    optimizer, so lr≈1e-6 updates are not rounded away), ``fp16.enabled`` iff fp16.
    Buckets (ZeRO): sized from the hidden size as the HF integration does (H², 0.9·H², 10·H).
    """
    ds = copy.deepcopy(ds)
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise UserError(f"remove the '{key}' section: the trainer builds it from train.lr, "
                            "train.lr_schedule and train.warmup_steps", where=f"{source}: {key}")
    wanted = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "gradient_clipping": float(max_grad_norm),
    }
    for key, value in wanted.items():
        _fill(ds, key, value, source)
    for key, on in (("bf16", dtype == "bf16"), ("fp16", dtype == "fp16")):
        section = ds.setdefault(key, {})
        _fill(section, "enabled", on, f"{source}: {key}")
    if ds["bf16"]["enabled"]:
        # A NaN gradient must make DeepSpeed skip the update: that is how a non-finite loss skips a step.
        ds["bf16"].setdefault("check_grad_overflow", True)
    zero = ds.setdefault("zero_optimization", {"stage": 0})
    for key, value in (
        ("reduce_bucket_size", hidden_size * hidden_size),
        ("stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size)),
        ("stage3_param_persistence_threshold", 10 * hidden_size),
    ):
        if zero.get(key) == AUTO:
            zero[key] = value
    left = _find_auto(ds)
    if left:
        raise UserError(f"cannot fill \"auto\" for {left}", where=source)
    # The trainer passes a torch optimizer (AdamW), which DeepSpeed otherwise refuses under ZeRO and,
    # with the optimizer offloaded, in favour of its CPUAdam (faster, but a C++ op to compile).
    ds["zero_allow_untested_optimizer"] = True
    if "offload_optimizer" in zero:
        ds.setdefault("zero_force_ds_cpu_optimizer", False)
    ds.setdefault("steps_per_print", 10**9)  # the trainer logs its own metrics
    return ds


def reference_ds_config(policy_ds: dict) -> dict:
    """A ZeRO-3 inference config for the frozen reference: same batch and precision, no optimizer."""
    zero = policy_ds.get("zero_optimization", {})
    ref_zero = {"stage": 3}
    for key in ("stage3_param_persistence_threshold", "stage3_prefetch_bucket_size", "offload_param"):
        if key in zero:
            ref_zero[key] = zero[key]
    keep = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16", "fp16")
    ref = {k: copy.deepcopy(policy_ds[k]) for k in keep if k in policy_ds}
    ref["zero_optimization"] = ref_zero
    ref["steps_per_print"] = 10**9
    return ref


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def _fill(section: dict, key: str, value: Any, source: str) -> None:
    if key not in section or section[key] == AUTO:
        section[key] = value
    elif section[key] != value:
        raise UserError(f"is {section[key]!r} but the srmir config gives {value!r}; "
                        "set it to \"auto\" or make them agree", where=f"{source}: {key}")


def _find_auto(obj: Any, prefix: str = "") -> str | None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _find_auto(v, f"{prefix}{k}.")
            if found:
                return found
    elif obj == AUTO:
        return prefix.rstrip(".")
    return None

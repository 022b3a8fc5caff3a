"""Builders the recipe calls once at start-up: prompts, models, DeepSpeed engines, rewards, export.

Each takes plain arguments (never the Config object), so each can be used and tested alone.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from .. import runtime
from ..errors import UserError
from ..runtime import dist
from .ds_config import zero_stage


# --------------------------------------------------------------------------------- prompts


def prompt_pool(taxonomy, train_file: Optional[str], prompts_file: Optional[str], val_fraction: float,
                test_fraction: float, seed: int) -> list[dict]:
    """GRPO prompts ``{"prompt", "category"}``: all of ``prompts_file``, or the *train* split of the
    CoD file (the shipped demo data when None), so evaluation prompts are never trained on.
    Duplicate (category, prompt) pairs — a CoD file may hold several pairs per prompt — appear once."""
    from ..data import load_prompt_records, load_records, shipped, stratified_split

    if prompts_file:
        records = load_prompt_records(prompts_file, taxonomy)
    else:
        records = load_records(train_file or shipped("cod"), taxonomy)
        records, _, _ = stratified_split(records, val_fraction, test_fraction, seed=seed)
    seen, pool = set(), []
    for rec in records:
        key = (rec["category"], rec["prompt"])
        if key not in seen:
            seen.add(key)
            pool.append({"prompt": rec["prompt"], "category": rec["category"], "id": rec.get("id")})
    if not pool:
        raise UserError("no prompts for GRPO", where="data.prompts_file" if prompts_file else "data.train_file")
    return pool


# ---------------------------------------------------------------------------------- models

DTYPES = runtime.DTYPES


@contextlib.contextmanager
def zero3_init(ds_config: dict):
    """Under ZeRO-3, let ``from_pretrained`` build the model already partitioned (deepspeed.zero.Init)
    instead of materialising the full model on every rank; a no-op for other stages. The HF hook is
    removed on exit so that later loads (the reward bank's backbone) are ordinary."""
    if ds_config.get("zero_optimization", {}).get("stage", 0) != 3:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    keep_alive = HfDeepSpeedConfig(ds_config)  # HF holds only a weak reference
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del keep_alive


class AdamW(torch.optim.AdamW):
    """torch AdamW that can be told to skip its next step. DeepSpeed skips non-finite updates
    itself for its ZeRO and bf16/fp16 optimizers; an fp32 ZeRO-0 engine steps this optimizer
    directly, so the recipe sets ``skip_next`` there instead. ``overflow`` is what DeepSpeed's
    engine reads after a step: a skipped step then counts in ``engine.skipped_steps`` and does
    not advance the lr schedule — the same rule as on every other path (the schedule counts
    applied updates)."""

    skip_next = False
    overflow = False

    def step(self, closure=None):
        self.overflow = self.skip_next
        if self.skip_next:
            self.skip_next = False
            return None
        return super().step(closure)


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """Multiplier of the base lr after ``s`` optimizer steps: linear warm-up to 1 over
    ``warmup_steps``, then constant, linear decay to 0, or cosine decay to 0 at ``total_steps``."""

    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (s - warmup_steps) / max(1, total_steps - warmup_steps))
        return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def policy_engine(path: str, ds_config: dict, *, dtype: str, attn: str, gradient_checkpointing: bool,
                  trust_remote_code: bool, lr: float, weight_decay: float, schedule, total_steps: int,
                  warmup_steps: int, lora: Optional[dict] = None, base_reference: Optional[str] = None):
    """The trainable policy as a DeepSpeed engine with torch AdamW (fp32 master weights in bf16/fp16
    mode) and the lr schedule stepped by DeepSpeed after each applied optimizer step.

    ``lora`` (the fields of ``model.lora``): the model is wrapped with peft adapters first, so only
    the adapters (and any ``modules_to_save``) require grad — only they reach the optimizer, and
    DeepSpeed keeps fp32 master weights and Adam moments for them alone. ``base_reference`` is what
    the exported adapter names as its base."""
    import deepspeed

    if lora is not None:
        runtime.lora.require_peft()  # before any weight is loaded
    with zero3_init(ds_config):
        model = runtime.load_causal_lm(path, dtype, attn, trust_remote_code, where="model.policy")
    # The engine trains in train mode (HF layers recompute only when self.training) with every
    # dropout off, so μ > 1 compares updates, not dropout noise; rollout switches to eval itself.
    # (LoRA's own dropout, model.lora.dropout, is added after this and stays as configured.)
    runtime.disable_dropout(model)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora is not None:
        model = runtime.lora.wrap(model, **lora, base_reference=base_reference)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)  # one kernel for all tensors (CPU and CUDA)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, warmup_steps, total_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    engine.train()
    return engine


def reference_model(path: str, policy_ds: dict, device: torch.device, *, dtype: str, attn: str, trust_remote_code: bool):
    """The frozen reference: a ZeRO-3 inference engine when the policy is sharded (its weights are
    too), else a plain module in the compute dtype. Returns (callable model, its lm_head)."""
    from .ds_config import reference_ds_config

    if zero_stage(policy_ds) == 3:
        import deepspeed

        ref_ds = reference_ds_config(policy_ds)
        with zero3_init(ref_ds):
            model = runtime.load_causal_lm(path, dtype, attn, trust_remote_code, where="model.reference")
        model.requires_grad_(False)
        engine, _, _, _ = deepspeed.initialize(model=model, config=ref_ds)
        engine.eval()
        return engine, engine.module.get_output_embeddings()
    model = runtime.load_causal_lm(path, dtype, attn, trust_remote_code, where="model.reference")
    model.requires_grad_(False)
    model.to(device).eval()
    return model, model.get_output_embeddings()


# --------------------------------------------------------------------------------- rewards


def load_reward_bank(directory: Optional[str], taxonomy, device: torch.device, normalize: bool, batch_size: int):
    """The trained ShadowRewardBank, on the policy's device."""
    if not directory:
        raise UserError("GRPO needs a trained shadow reward bank: train one with `srmir rm train` "
                        "or run `srmir pipeline`", where="rewards.dir")
    if not (Path(directory) / "bank.json").is_file():
        raise UserError(f"no shadow reward bank in {directory} (bank.json missing)", where="rewards.dir")
    from ..rewards.bank import ShadowRewardBank

    bank = ShadowRewardBank.from_pretrained(directory, taxonomy=taxonomy).to(device)
    bank.normalize, bank.batch_size = normalize, batch_size
    return bank


# ---------------------------------------------------------------------------------- export


def export_policy(engine, tokenizer, out_dir: Path, zero_stage: int) -> Path:
    """Save the policy as an HF folder (config, safetensors, tokenizer) that
    ``AutoModelForCausalLM.from_pretrained`` loads; atomic (temporary folder, then rename).
    Under ZeRO-3 the shards are consolidated layer by layer onto rank 0 first (a collective).
    A temporary folder left by an export that was killed (its process is gone) is removed first;
    a failed write (full disk, read-only folder) is an OSError naming the path and the OS reason."""
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict() if dist.is_main() else None
    return _export(lambda tmp: (engine.module.save_pretrained(tmp, state_dict=state), tokenizer.save_pretrained(tmp)),
                   out_dir)


def export_adapter(engine, tokenizer, out_dir: Path, *, merged_dir: Optional[Path] = None, base_path: str = "",
                   dtype: str = "bf16", attn: str = "auto", trust_remote_code: bool = False) -> Path:
    """Save a LoRA policy as a peft adapter folder (``adapter_model.safetensors``,
    ``adapter_config.json`` naming its base, the tokenizer) and, with ``merged_dir``, the adapter
    merged into a fresh copy of the base (``base_path``) as a plain HF folder. Only the trainable
    parameters are gathered (ZeRO-3: a collective over them alone); both writes are atomic."""
    state = runtime.lora.trainable_state(engine)
    out_dir = _export(lambda tmp: (runtime.lora.save_adapter(engine, state, tmp), tokenizer.save_pretrained(tmp)),
                      out_dir)
    if merged_dir is not None:
        def write_merged(tmp: Path) -> None:
            merged = runtime.lora.merged_copy(engine, state, base_path, dtype=dtype, attn=attn,
                                              trust_remote_code=trust_remote_code)
            merged.config.use_cache = True
            merged.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        _export(write_merged, merged_dir)
    return out_dir


def _export(write, out_dir: Path) -> Path:
    """Rank 0 runs ``write(tmp)`` into a temporary sibling of ``out_dir``, then renames it into
    place; every rank returns ``out_dir`` or raises the same OSError (a collective)."""
    from safetensors import SafetensorError

    from ..io import os_failure

    out_dir = Path(out_dir)
    failure = None
    if dist.is_main():
        _remove_stale_exports(out_dir)
        tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")  # mkdir, not mkdtemp: umask modes
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            write(tmp)
            if out_dir.exists():
                shutil.rmtree(out_dir)
            os.replace(tmp, out_dir)
        except (OSError, RuntimeError, SafetensorError) as e:  # safetensors reports a full disk as its own error
            e = os_failure(e, tmp)
            failure = (e.errno, e.strerror, e.filename)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    failure = dist.broadcast_object(failure)  # a collective, like the barrier it replaces: every rank stops
    if failure is not None:
        error = OSError(failure[0], f"cannot export the policy: {failure[1]}", failure[2])
        error.reported_by_rank0 = True  # every rank raises it; one line is enough
        raise error
    return out_dir


def _remove_stale_exports(out_dir: Path) -> None:
    """Delete ``.<name>.tmp-<pid>`` siblings whose process no longer exists (a SIGKILL mid-export)."""
    if not out_dir.parent.is_dir():
        return
    for leftover in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True

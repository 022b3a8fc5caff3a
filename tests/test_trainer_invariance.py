"""Any split of one batch into ranks × micro-batches gives the loss and the gradients of the whole
batch in one piece, for every loss aggregation, under ZeRO-2 and ZeRO-3 (OpenRLHF's check).

One fixed global batch (8 sequences of uneven lengths, fixed advantages, reference and old
log-probs so that the KL and the clipping are both active) is pushed through the recipe's own
``_update``; the gradient DeepSpeed holds at the accumulation boundary (before clipping and the
optimizer step) is read with ``safe_get_full_grad``. Reference: one process, one micro-batch of 8.
Splits: 1 rank × 4 micro-batches of 2 (here) and 2 ranks × (2 of 2 under ZeRO-2, 4 of 1 under
ZeRO-3) through torchrun; the same again with LoRA adapters (issue 14). This file is also the
torchrun worker (see ``__main__``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from srmir.config import load_config
from srmir.runtime import dist
from srmir.trainer.recipe import GRPORecipe, StepBatch
from srmir.trainer.rollout import Rollout

from test_trainer_common import PYTHON, SyntheticReward, free_port, perturb_adapters, run_cmd, tiny_overrides, tiny_setup

MODES = ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]
N, P, C = 8, 4, 6


def global_batch(vocab: int) -> dict:
    """The same 8 sequences on every rank (seeded): 2 groups of 4 sharing a prompt (of different
    lengths), uneven completion lengths. Micro-batches of 8 and 2 pack each group's completions
    behind one copy of its prompt; micro-batches of 1 cannot — the splits compare both layouts."""
    g = torch.Generator().manual_seed(123)
    prompt_ids = torch.randint(6, vocab, (2, P), generator=g).repeat_interleave(4, dim=0)
    prompt_mask = torch.ones(N, P, dtype=torch.long)
    prompt_mask[4:, :2] = 0
    completion_ids = torch.randint(6, vocab, (N, C), generator=g)
    lengths = torch.tensor([6, 1, 3, 6, 2, 5, 4, 6])
    completion_mask = (torch.arange(C)[None] < lengths[:, None]).long()
    return {
        "rollout": Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, lengths == C, [""] * N),
        "advantages": torch.randn(N, generator=g),
        "ref": -3.0 + torch.randn(N, C, generator=g),
        "old": -3.6 + 0.5 * torch.randn(N, C, generator=g),  # ratios far from 1: clipping is active
    }


def split_gradients(files: dict, out: Path, stage: int, micro: int, ds_json: str | None, lora: bool = False) -> dict:
    """Run ``_update`` on this rank's rows for every aggregation mode; return {mode: (loss, grads)}.
    ``lora``: the policy with LoRA adapters (seeded non-zero, so A and B both get gradients); the
    gradients are then the adapters' alone."""
    from deepspeed.utils import safe_get_full_grad

    extra = {"train.micro_batch_size": micro, "train.zero_stage": stage, "train.lr": 1e-30, "train.max_grad_norm": 1.0,
             "rollout.prompts_per_step": 2, "grpo.group_size": 4}
    if ds_json:
        extra["train.deepspeed"] = ds_json
    if lora:
        extra["model.lora"] = "{rank: 4, alpha: 8}"
    cfg = load_config(None, tiny_overrides(files, out, **extra))
    recipe = GRPORecipe(cfg, reward_fn=SyntheticReward())
    recipe.setup()
    engine = recipe.engine
    if lora:
        perturb_adapters(engine)
    batch = global_batch(engine.module.config.vocab_size)
    rows = slice(dist.rank() * recipe.n_local, (dist.rank() + 1) * recipe.n_local)
    rollout = batch["rollout"].select(rows)
    num_tokens = float(batch["rollout"].completion_mask_BC.sum())
    inputs = [recipe._logprob_inputs(rollout.select(r)) for r in recipe._micro_batches()]
    assert all(i.packed for i in inputs) == (micro > 1)
    step_batch = StepBatch(rollout, inputs, batch["advantages"][rows], batch["old"][rows], batch["ref"][rows],
                           num_tokens, N)

    captured, real_step = {}, engine.step

    def step_and_capture():
        if engine.is_gradient_accumulation_boundary():  # reduced over ranks, not yet clipped or applied
            captured.update({n: safe_get_full_grad(p).clone() for n, p in engine.module.named_parameters()
                             if p.requires_grad})
        real_step()

    engine.step = step_and_capture
    results = {}
    for mode in MODES:
        recipe.cfg.grpo.loss_agg = mode
        ok, metrics = recipe._update(step_batch)
        assert ok
        results[mode] = (metrics["loss"], dict(captured))
    recipe.metrics.close()
    return results


def save(results: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({f"{m}|{n}": g.contiguous() for m, (_, grads) in results.items() for n, g in grads.items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({m: loss for m, (loss, _) in results.items()}))


def load(path: Path) -> dict:
    from safetensors.torch import load_file

    losses = json.loads(path.with_suffix(".json").read_text())
    grads = load_file(str(path))
    return {m: (losses[m], {k.split("|", 1)[1]: g for k, g in grads.items() if k.startswith(m + "|")}) for m in MODES}


def assert_same(a: dict, b: dict, what: str) -> None:
    for mode in MODES:
        assert a[mode][0] == pytest.approx(b[mode][0], rel=1e-5, abs=1e-7), f"{what}: loss, {mode}"
        assert a[mode][1].keys() == b[mode][1].keys()
        for name, g in a[mode][1].items():
            torch.testing.assert_close(g, b[mode][1][name], atol=1e-6, rtol=1e-4, msg=f"{what}: {mode} {name}")


@pytest.mark.slow
@pytest.mark.distributed
def test_ranks_times_micro_batches_equal_one_big_batch(tmp_path):
    files = tiny_setup(tmp_path)
    full = split_gradients(files, tmp_path / "full", stage=2, micro=8, ds_json=None)
    assert all(full[m][0] != 0 and any(g.abs().sum() > 0 for g in full[m][1].values()) for m in MODES)
    assert full["token_mean"][0] != pytest.approx(full["seq_mean_token_mean"][0])  # the modes really differ

    accumulated = split_gradients(files, tmp_path / "acc", stage=2, micro=2, ds_json=None)
    assert_same(accumulated, full, "1 rank × 4 micro-batches")

    distributed_splits(tmp_path, files, full, lora=False)


@pytest.mark.slow
@pytest.mark.distributed
def test_lora_ranks_times_micro_batches_equal_one_big_batch(tmp_path):
    """The same with LoRA (issue 14): the adapters' gradients of every split are the big batch's —
    and the two-process runs are the LoRA steps under ZeRO-2 and ZeRO-3 on two ranks."""
    pytest.importorskip("peft", reason="the lora extra (installed by setup.sh --dev)")
    files = tiny_setup(tmp_path)
    full = split_gradients(files, tmp_path / "full", stage=2, micro=8, ds_json=None, lora=True)
    assert all(name.count("lora_") for name in full["token_mean"][1])
    assert all(g.abs().sum() > 0 for g in full["token_mean"][1].values())  # A and B both get gradients
    accumulated = split_gradients(files, tmp_path / "acc", stage=2, micro=2, ds_json=None, lora=True)
    assert_same(accumulated, full, "LoRA, 1 rank × 4 micro-batches")
    distributed_splits(tmp_path, files, full, lora=True)


def distributed_splits(tmp_path: Path, files: dict, full: dict, lora: bool) -> None:
    port = free_port()
    run_cmd([PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
             "--master_port", str(port), str(Path(__file__)), str(tmp_path), json.dumps({k: str(v) for k, v in files.items()}),
             "lora" if lora else "full"], timeout=300)
    assert_same(load(tmp_path / "zero2.safetensors"), full, "2 ranks × 2 micro-batches, ZeRO-2")
    assert_same(load(tmp_path / "zero3.safetensors"), full, "2 ranks × 4 micro-batches, ZeRO-3")


def _worker(folder: Path, files: dict, lora: bool) -> None:
    """torchrun entry: both distributed splits, rank 0 saves the gradients."""
    ds3 = folder / "zero3_threshold0.json"
    if dist.rank() == 0 or not ds3.exists():
        ds3.write_text(json.dumps({"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}))
    for stage, micro, ds_json, name in ((2, 2, None, "zero2"), (3, 1, str(ds3), "zero3")):
        results = split_gradients(files, folder / f"run_{name}", stage, micro, ds_json, lora=lora)
        if dist.rank() == 0:
            save(results, folder / f"{name}.safetensors")
        dist.barrier()


if __name__ == "__main__":
    dist.init()
    _worker(Path(sys.argv[1]), {k: Path(v) for k, v in json.loads(sys.argv[2]).items()}, sys.argv[3] == "lora")
    dist.finish(0)  # a rank that tears the interpreter down with gloo alive can abort

"""Multi-process launches of train.py on localhost (gloo, CPU): torchrun with 2 processes under
ZeRO-3, the ``deepspeed`` launcher with 2 processes, and a 2-node launch (two torchrun invocations, one process each, c10d rendezvous on a port
found at run time). This file is also the torchrun worker of the ZeRO-3 test (see ``__main__``)."""
import json
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from srmir.trainer.metrics import read_metrics

from test_trainer_common import PYTHON, ROOT, finish_together, free_port, make_bank, run_cmd, start, tiny_overrides, tiny_setup


def launch_args(tmp_path, out, **extra):
    files = tiny_setup(tmp_path)
    files["bank"] = make_bank(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text("{}\n")
    overrides = tiny_overrides(files, out, **{"rewards.dir": files["bank"], "train.steps": 2, **extra})
    return [str(ROOT / "train.py"), "--config", str(config), *overrides]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_through_torchrun_under_zero3(tmp_path):
    ds = tmp_path / "zero3.json"
    ds.write_text(json.dumps({"bf16": {"enabled": "auto"},
                              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}))
    args = launch_args(tmp_path, tmp_path / "out", **{"train.deepspeed": ds, "model.dtype": "bf16",
                                                      "rollout.max_new_tokens": 12, "train.micro_batch_size": 2})
    port = free_port()
    # The worker first generates rank-dependent lengths on the sharded policy, then runs train.py's main.
    run_cmd([PYTHON, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--rdzv_backend", "c10d",
             "--rdzv_endpoint", f"127.0.0.1:{port}", str(Path(__file__)), *args[1:]], timeout=300)
    widths = [int((tmp_path / f"width-{r}.txt").read_text()) for r in (0, 1)]
    assert widths[0] < widths[1]  # the ranks ran different numbers of forward passes, and nothing hung
    records = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]  # rank 0 alone writes
    assert records[1]["completion/tokens"] > 0 and records[1]["kl"] > 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "policy")
    assert model.config.vocab_size > 0
    state = json.loads((tmp_path / "out" / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["sampler"]["position"] == 2 * 2
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints" / "step-00000002" / "rng").iterdir()) == [
        "rank-00000.json", "rank-00000.safetensors", "rank-00001.json", "rank-00001.safetensors"]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_through_the_deepspeed_launcher(tmp_path):
    """``deepspeed --num_gpus 2 train.py ...``: the launcher passes ``--local_rank`` and the
    environment; on a CPU it starts two gloo processes."""
    args = launch_args(tmp_path, tmp_path / "out")
    port = free_port()
    run_cmd([PYTHON, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(port), *args],
            timeout=300)
    assert [r["step"] for r in read_metrics(tmp_path / "out" / "metrics.jsonl")] == [1, 2]
    state = json.loads((tmp_path / "out" / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "policy").config.vocab_size > 0


@pytest.mark.slow
@pytest.mark.distributed
def test_two_node_launch_on_localhost(tmp_path):
    args = launch_args(tmp_path, tmp_path / "out", **{"train.save_every": 1})
    port = free_port()
    procs = [start([PYTHON, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank",
                    str(node), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "srmir-test",
                    *args]) for node in (0, 1)]
    finish_together(procs, timeout=300)
    assert [r["step"] for r in read_metrics(tmp_path / "out" / "metrics.jsonl")] == [1, 2]
    # both "nodes" share this disk: each node's local rank 0 renames, exactly one rename lands
    names = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert names == ["step-00000001", "step-00000002"]
    state = json.loads((tmp_path / "out" / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["world_size"] == 2


def _uneven_generation(argv: list[str]) -> None:
    """Rank r generates up to 2 + 8r tokens on the ZeRO-3 policy (every weight a shard). A rollout
    that gathered layer by layer would leave rank 1 waiting in gathers rank 0 never joins."""
    from srmir.config import load_config
    from srmir.runtime import dist
    from srmir.trainer.recipe import GRPORecipe
    from srmir.trainer.rollout import gathered_for_generation, generate
    from test_trainer_common import SyntheticReward

    overrides = [a for a in argv[2:] if "=" in a]
    out = Path(next(a.split("=", 1)[1] for a in overrides if a.startswith("train.output_dir=")))
    recipe = GRPORecipe(load_config(argv[1], overrides + [f"train.output_dir={out}_probe"]), reward_fn=SyntheticReward())
    recipe.setup()
    assert all(p.numel() == 0 for p in recipe.engine.module.parameters())
    with gathered_for_generation(recipe.engine, recipe.zero_stage) as model:
        rollout = generate(model, recipe.encoder, ["tell me"] * 4, max_new_tokens=2 + 8 * dist.rank(),
                           temperature=1.0, top_p=1.0, top_k=0, eos_ids=recipe.eos_ids, pad_id=recipe.pad_id)
    (out.parent / f"width-{dist.rank()}.txt").write_text(str(rollout.completion_ids_BC.shape[1]))
    recipe.metrics.close()
    dist.barrier()


if __name__ == "__main__":
    from srmir.runtime import dist
    from srmir.trainer import main

    dist.init()
    _uneven_generation(sys.argv[1:])
    raise SystemExit(main(sys.argv[1:]))

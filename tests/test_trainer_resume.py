"""Resume is exact: 4 steps straight equal 2 steps, a restart in a new process, and 2 more (same
final weights, same metrics); SIGTERM writes a checkpoint and stops, and the run continues from it."""
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from srmir.trainer import train
from srmir.trainer.metrics import read_metrics
from srmir.trainer.recipe import Stopped

from test_trainer_common import PYTHON, ROOT, SyntheticReward, make_bank, run_cmd, tiny_config, tiny_overrides, tiny_setup

VOLATILE = ("time/", "tokens_per_s", "mem/")


def comparable(path):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in read_metrics(path)]


def same_weights(a, b):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def train_py(files, out, *extra):
    config = out.parent / "empty.yaml"
    config.write_text("{}\n")
    overrides = tiny_overrides(files, out, **{"rewards.dir": files["bank"], "train.save_every": 2,
                                              "grpo.num_iterations": 2, "train.micro_batch_size": 2})
    return run_cmd([PYTHON, str(ROOT / "train.py"), "--config", str(config), *overrides, *extra], timeout=300)


@pytest.mark.slow
def test_four_steps_equal_two_a_restart_and_two_more(tmp_path):
    files = tiny_setup(tmp_path)
    files["bank"] = make_bank(tmp_path)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_py(files, straight, "train.steps=4")
    train_py(files, resumed, "train.steps=2")
    assert [r["step"] for r in read_metrics(resumed / "metrics.jsonl")] == [1, 2]
    proc = train_py(files, resumed, "train.steps=4", "--resume", "auto")
    assert "resumed from" in proc.stdout + proc.stderr and "step-00000002" in proc.stdout + proc.stderr

    assert comparable(resumed / "metrics.jsonl") == comparable(straight / "metrics.jsonl")
    assert [r["step"] for r in read_metrics(resumed / "metrics.jsonl")] == [1, 2, 3, 4]
    assert same_weights(resumed / "policy", straight / "policy")
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]


class SigtermDuring:
    """SyntheticReward that sends this process SIGTERM while scoring step ``at``."""

    categories = SyntheticReward.categories

    def __init__(self, at):
        self.at, self.calls = at, 0

    def score(self, prompts, responses):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return SyntheticReward().score(prompts, responses)


@pytest.mark.slow
def test_sigterm_checkpoints_then_stops_and_the_run_resumes(tmp_path):
    files = tiny_setup(tmp_path)
    straight = train(tiny_config(files, tmp_path / "straight", train__steps=3), reward_fn=SyntheticReward())

    cfg = tiny_config(files, tmp_path / "stopped", train__steps=3)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stop:
        train(cfg, reward_fn=SigtermDuring(at=2))
    assert stop.value.step == 2 and (stop.value.folder / "trainer_state.json").is_file()
    assert signal.getsignal(signal.SIGTERM) is before  # the trainer's handler is gone again
    assert [r["step"] for r in read_metrics(tmp_path / "stopped" / "metrics.jsonl")] == [1, 2]

    cfg = tiny_config(files, tmp_path / "stopped", train__steps=3, train__resume="auto")
    resumed = train(cfg, reward_fn=SyntheticReward())
    assert same_weights(resumed, straight)
    assert comparable(tmp_path / "stopped" / "metrics.jsonl") == comparable(tmp_path / "straight" / "metrics.jsonl")


def test_fresh_run_refuses_to_mix_with_old_checkpoints(tmp_path):
    from srmir.errors import UserError

    files = tiny_setup(tmp_path)
    (tmp_path / "out" / "checkpoints" / "step-00000003").mkdir(parents=True)
    with pytest.raises(UserError, match="train.output_dir: .* --resume auto"):
        train(tiny_config(files, tmp_path / "out"), reward_fn=SyntheticReward())

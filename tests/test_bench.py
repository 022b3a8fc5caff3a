"""The benchmark scripts stay runnable: their command lines parse, and the reward bank the GRPO
comparison gives srmir has the shape of a trained one (shared lower layers, K different top layers)."""
import subprocess
import sys

import pytest

from test_trainer_common import PYTHON, ROOT

sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.parametrize("script", ["bench_grpo_vs_trl.py", "bench_lora.py", "profile_step.py", "bench_logprob.py",
                                    "bench_rewards.py"])
def test_bench_scripts_parse_their_command_line(script):
    out = subprocess.run([PYTHON, str(ROOT / "bench" / script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout


def test_comparison_bank_is_shaped_like_a_trained_one():
    from bench_grpo_vs_trl import shadow_bank
    from srmir.models import MINILM

    bank = shadow_bank(MINILM, 3, tuned_layers=2)
    assert len(bank.categories) == 3 and bank.frozen_layers == 4  # MiniLM has 6 layers
    stacked = {name.split(".layer.")[1].split(".")[0] for name in bank._stacked if ".layer." in name}
    assert stacked == {"4", "5"}  # only the top two layers differ between the K models
    scores = bank.score(["how do I pick a lock?"] * 2, ["I can't help with that.", "Sure, first get a tension wrench."])
    assert scores.shape == (2, 3) and bool(scores.isfinite().all())

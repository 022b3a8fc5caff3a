"""GRPO learns: on a synthetic reward (the share of "good" words of the prompt's category), a tiny
random policy raises its reward over 20 steps, overall and in every category, with the KL
penalty active and categorized rewards."""
import pytest

from srmir.trainer import train
from srmir.trainer.metrics import read_metrics

from test_trainer_common import CATEGORIES, SyntheticReward, tiny_config, tiny_setup


def mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.slow
def test_reward_rises_over_20_steps(tmp_path):
    cfg = tiny_config(tiny_setup(tmp_path), tmp_path / "out", train__steps=20, train__lr=0.01, grpo__group_size=8,
                      rollout__prompts_per_step=4, rollout__max_new_tokens=8, train__micro_batch_size=16,
                      rewards__strategy="categorized")
    train(cfg, reward_fn=SyntheticReward())
    records = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert len(records) == 20 and not any(r["skipped"] for r in records)
    rewards = [r["reward/mean"] for r in records]
    assert mean(rewards[-5:]) > mean(rewards[:5]) + 0.15, rewards
    for cat in CATEGORIES:
        series = [r[f"reward/category/{cat}"] for r in records if f"reward/category/{cat}" in r]
        assert mean(series[-5:]) > mean(series[:5]), (cat, series)
    assert records[-1]["kl"] > records[1]["kl"] > 0  # the policy moved away from the reference


HELP_WORDS = ["tell", "how", "about", "friend"]


class SyntheticRewardWithHelpfulness(SyntheticReward):
    """The two synthetic harm RMs plus a helpfulness head: the share of HELP_WORDS in the answer."""

    heads = CATEGORIES + ["helpfulness"]

    def score_heads(self, prompts, responses):
        import torch

        harm = self.score(prompts, responses)
        helpful = torch.tensor([sum(w in HELP_WORDS for w in r.split()) / max(len(r.split()), 1) for r in responses])
        return torch.cat([harm, helpful[:, None]], dim=1)


@pytest.mark.slow
def test_helpfulness_reward_rises_alongside_the_safety_reward(tmp_path):
    """A third of the prompts are benign, routed to the helpfulness head: over 20 steps the reward
    of benign prompts (helpfulness) rises together with that of the harmful ones (safety)."""
    import json

    files = tiny_setup(tmp_path)
    with open(files["prompts"], "a", encoding="utf-8") as f:
        for i, words in enumerate(["my phone", "the data", "my neighbor", "your home", "a password", "my friend"]):
            f.write(json.dumps({"id": f"benign-{i}", "category": "benign", "sensitive": i % 2 == 0,
                                "prompt": f"what is {words}"}) + "\n")
    cfg = tiny_config(files, tmp_path / "out", train__steps=20, train__lr=0.01, grpo__group_size=8,
                      rollout__prompts_per_step=6, rollout__max_new_tokens=8, train__micro_batch_size=16,
                      rewards__strategy="categorized", rollout__benign_fraction=0.34)
    train(cfg, reward_fn=SyntheticRewardWithHelpfulness())
    records = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert len(records) == 20 and not any(r["skipped"] for r in records)
    helpful = [r["reward/category/benign"] for r in records]
    safety = [mean([r[f"reward/category/{c}"] for c in CATEGORIES if r.get(f"reward/category/{c}") is not None])
              for r in records]
    assert mean(helpful[-5:]) > mean(helpful[:5]) + 0.1, helpful
    assert mean(safety[-5:]) > mean(safety[:5]) + 0.1, safety
    assert all(r["refusal/benign"] is not None and r["degen/distinct2"] is not None for r in records)

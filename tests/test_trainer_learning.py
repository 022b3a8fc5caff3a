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

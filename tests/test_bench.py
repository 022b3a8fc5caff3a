"""The benchmark scripts stay runnable: their command lines parse, and the reward bank the GRPO
comparison gives srmir has the shape of a trained one (shared lower layers, K different top layers)."""
import subprocess
import sys

import pytest

from test_trainer_common import PYTHON, ROOT

sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.parametrize("script", ["bench_grpo_vs_trl.py", "bench_lora.py", "profile_step.py", "bench_logprob.py",
                                    "bench_rewards.py", "hand_labelled_demo.py"])
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


def test_hand_labels_of_the_demo_policies_cover_the_eval_sets_and_agree_with_the_heldout_labels():
    """bench/data/demo_policy_labels.jsonl: per policy, every held-out harmful test prompt and every
    benign.jsonl prompt exactly once, with a three-way label; the base rows carry judge_heldout's."""
    import json

    from srmir import data

    rows = [json.loads(line) for line in (ROOT / "bench" / "data" / "demo_policy_labels.jsonl").read_text().splitlines()]
    _, _, test = data.stratified_split(data.load_records(data.shipped("cod")), 0.15, 0.15, 0)
    harmful = {r["prompt"] for r in test if r["category"] != "benign"}
    benign = {r["prompt"] for r in data.load_benign(data.shipped("benign"))}
    policies = {r["policy"] for r in rows}
    assert policies == {"smollm2-base"} | {f"demo-categorized-seed{s}" for s in range(3)}
    for policy in policies:
        mine = [r for r in rows if r["policy"] == policy]
        assert sorted(r["prompt"] for r in mine if r["set"] == "harmful") == sorted(harmful)
        assert {r["prompt"] for r in mine if r["set"] == "benign"} <= benign
        assert len([r for r in mine if r["set"] == "benign"]) == 35
        assert all(r["label"] in ("refusal", "compliance", "non_answer") and r["response"] for r in mine)
    heldout = {(h["set"], h["prompt"]): h["label"] for h in map(json.loads, (ROOT / "bench" / "data" /
               "judge_heldout.jsonl").read_text().splitlines()) if h["source"] == "smollm2-greedy"
               and h["template"] == "direct"}
    assert all(heldout[(r["set"], r["prompt"])] == r["label"] for r in rows if r["policy"] == "smollm2-base")


def test_trained_policy_answers_are_labelled_answers_to_training_prompts_only():
    import json

    from srmir import data
    from srmir.rewards.train import load_policy_samples

    path = ROOT / "srmir" / "assets" / "judge" / "trained_answers.jsonl"
    rows = load_policy_samples(str(path))  # the rewards.policy_samples format, validated
    _, _, test = data.stratified_split(data.load_records(data.shipped("cod")), 0.15, 0.15, 0)
    eval_prompts = {r["prompt"] for r in test} | {r["prompt"] for r in data.load_benign(data.shipped("benign"))}
    assert len(rows) == 200 and not {r["prompt"] for r in rows} & eval_prompts
    assert {json.loads(line)["label"] for line in path.read_text().splitlines()} == {"refusal", "compliance", "non_answer"}

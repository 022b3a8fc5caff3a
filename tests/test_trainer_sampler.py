"""The category-balanced, deterministic, resumable prompt sampler."""
from collections import Counter

import pytest

from srmir.trainer.sampler import BalancedPromptSampler

CATS = ["a", "b", "c"]


def records(sizes=(5, 2, 3)):
    return [{"id": f"{c}{i}", "category": c, "prompt": f"{c} prompt {i}"} for c, n in zip(CATS, sizes) for i in range(n)]


def test_every_round_covers_every_category_once():
    s = BalancedPromptSampler(records(), CATS, seed=3)
    for _ in range(10):
        assert sorted(r["category"] for r in s.draw(3)) == CATS


def test_each_category_cycles_through_all_its_prompts_before_repeating():
    s = BalancedPromptSampler(records(), CATS, seed=0)
    drawn = s.draw(3 * 10)  # 10 rounds: "a" (5 prompts) twice through, "b" (2) five times
    by_cat = {c: [r["id"] for r in drawn if r["category"] == c] for c in CATS}
    assert Counter(by_cat["a"]) == {f"a{i}": 2 for i in range(5)}
    assert set(by_cat["a"][:5]) == {f"a{i}" for i in range(5)}  # the first epoch is a permutation
    assert Counter(by_cat["b"]) == {"b0": 5, "b1": 5}
    assert set(by_cat["c"][:3]) == {"c0", "c1", "c2"}


def test_same_seed_same_stream_other_seed_other_stream():
    a = [r["id"] for r in BalancedPromptSampler(records(), CATS, seed=1).draw(30)]
    b = [r["id"] for r in BalancedPromptSampler(records(), CATS, seed=1).draw(30)]
    c = [r["id"] for r in BalancedPromptSampler(records(), CATS, seed=2).draw(30)]
    assert a == b and a != c


def test_resume_continues_the_exact_stream():
    straight = BalancedPromptSampler(records(), CATS, seed=7)
    first, rest = straight.draw(7), straight.draw(8)
    interrupted = BalancedPromptSampler(records(), CATS, seed=7)
    interrupted.draw(7)
    resumed = BalancedPromptSampler(records(), CATS, seed=7)
    resumed.load_state_dict(interrupted.state_dict())
    assert [r["id"] for r in resumed.draw(8)] == [r["id"] for r in rest]
    assert resumed.position == 15 and len(first) == 7


def test_state_of_another_prompt_set_is_rejected():
    state = BalancedPromptSampler(records(), CATS, seed=7).state_dict()
    with pytest.raises(ValueError, match="prompts"):
        BalancedPromptSampler(records((5, 2, 4)), CATS, seed=7).load_state_dict(state)


def test_empty_categories_are_skipped_and_unknown_ones_rejected():
    s = BalancedPromptSampler(records((2, 0, 1)), CATS, seed=0)
    assert s.categories == ["a", "c"]
    assert sorted(r["category"] for r in s.draw(2)) == ["a", "c"]
    with pytest.raises(ValueError, match="outside"):
        BalancedPromptSampler(records(), ["a", "b"], seed=0)


# ------------------------------------------------------------------------------ benign prompts


def with_benign(n_sensitive=4, n_ordinary=3):
    return records() + [{"id": f"s{i}", "category": "benign", "sensitive": True, "prompt": f"kill a process {i}"}
                        for i in range(n_sensitive)] + \
        [{"id": f"o{i}", "category": "benign", "sensitive": False, "prompt": f"bake bread {i}"} for i in range(n_ordinary)]


def test_benign_fraction_is_exact_and_evenly_spread_over_a_long_run():
    s = BalancedPromptSampler(with_benign(), CATS, seed=0, benign_fraction=0.3)
    drawn = s.draw(1000)
    benign = [r["category"] == "benign" for r in drawn]
    assert sum(benign) == 300
    for start in range(0, 990, 7):  # every window of 10 draws holds 3 benign prompts (⌊10·0.3⌋ = ⌈10·0.3⌉)
        assert sum(benign[start:start + 10]) == 3
    harmful = [r["category"] for r in drawn if r["category"] != "benign"]
    for r in range(len(harmful) // 3):  # the harmful draws keep their round-robin over categories
        assert sorted(harmful[3 * r:3 * r + 3]) == CATS
    kinds = Counter(r["sensitive"] for r in drawn if r["category"] == "benign")
    assert kinds == {True: 150, False: 150}  # sensitive-looking and ordinary alternate round by round
    ids = [r["id"] for r in drawn if r["category"] == "benign" and r["sensitive"]]
    assert set(ids[:4]) == {f"s{i}" for i in range(4)}  # each group cycles through all its prompts


def test_benign_stream_resumes_exactly():
    straight = BalancedPromptSampler(with_benign(), CATS, seed=5, benign_fraction=0.25)
    straight.draw(9)
    rest = [r["id"] for r in straight.draw(20)]
    resumed = BalancedPromptSampler(with_benign(), CATS, seed=5, benign_fraction=0.25)
    resumed.load_state_dict({**straight.state_dict(), "position": 9})
    assert [r["id"] for r in resumed.draw(20)] == rest
    with pytest.raises(ValueError, match="benign_fraction"):
        BalancedPromptSampler(with_benign(), CATS, seed=5, benign_fraction=0.5).load_state_dict(straight.state_dict())


def test_benign_fraction_zero_is_the_harmful_stream_and_positive_needs_benign_prompts():
    plain = [r["id"] for r in BalancedPromptSampler(records(), CATS, seed=3).draw(30)]
    mixed_off = [r["id"] for r in BalancedPromptSampler(with_benign(), CATS, seed=3, benign_fraction=0.0).draw(30)]
    assert plain == mixed_off
    with pytest.raises(ValueError, match="no benign prompt"):
        BalancedPromptSampler(records(), CATS, seed=0, benign_fraction=0.2)

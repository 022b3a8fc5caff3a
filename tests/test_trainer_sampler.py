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

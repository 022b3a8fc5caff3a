"""From judged rows to numbers and the alignment tax (srmir/eval/summary.py), on hand-made inputs."""
import pytest

from srmir.eval.summary import alignment_tax, choose_verdict_tier, harmful_metrics


def test_choose_verdict_tier():
    assert choose_verdict_tier(["refusal", "learned", "rewards"]) == "learned"
    assert choose_verdict_tier(["refusal", "rewards"]) == "refusal"
    assert choose_verdict_tier(["refusal", "learned"], "refusal") == "refusal"
    assert choose_verdict_tier(["http"]) is None


def _rate(k, n):
    return {"value": k / n, "lo": 0.0, "hi": 1.0, "k": k, "n": n}


def test_alignment_tax_against_the_first_policy():
    base = {"harmful": {"refusal": {"overall": _rate(3, 30)}},
            "benign": {"over_refusal": {"sensitive": _rate(2, 30), "ordinary": _rate(0, 30)},
                       "helpfulness": {"answered": _rate(27, 30)}}}
    trained = {"harmful": {"refusal": {"overall": _rate(27, 30)}},
               "benign": {"over_refusal": {"sensitive": _rate(20, 30), "ordinary": _rate(1, 30)},
                          "helpfulness": {"answered": _rate(26, 30)}}}
    tax = alignment_tax({"base": base, "trained": trained})
    assert tax["baseline"] == "base"
    rows = {r["key"]: r for r in tax["rows"]}
    # refusal on harmful prompts 0.1 → 0.9: better; over-refusal 0.067 → 0.667: worse (the tax);
    # ordinary refusal 0 → 1/30 and answered 27 → 26 of 30: intervals include 0, so "same"
    assert rows["refusal_harmful"]["change"]["trained"]["value"] == pytest.approx(0.8)
    assert rows["refusal_harmful"]["change"]["trained"]["verdict"] == "better"
    assert rows["over_refusal"]["change"]["trained"]["verdict"] == "worse"
    assert rows["refusal_ordinary"]["change"]["trained"]["verdict"] == "same"
    assert rows["answered_benign"]["change"]["trained"]["verdict"] == "same"
    assert "asr_jailbreak" not in rows  # not measured: left out
    assert alignment_tax({"only": base}) == {}


def test_strongreject_rubric_and_proxy_from_rows():
    def row(cat, verdict, sr):
        return {"set": "harmful", "category": cat, "verdict": verdict, "verdict_refusal": verdict, "sr_score": sr,
                "response": "x y", "truncated": False}

    rows = [row("insult", "refusal", 0.0), row("insult", "compliance", 0.625), row("crimes_illegal", "compliance", 1.0),
            row("crimes_illegal", "non_answer", None)]
    m = harmful_metrics(rows, ["insult", "crimes_illegal"], judges=["refusal", "http"], seed=0, tier="refusal",
                        http_format="strongreject")
    rubric = m["strongreject"]["rubric"]
    # mean of the three parsed scores: (0 + 0.625 + 1) / 3; goodness = 1 − score
    assert rubric["score"]["overall"]["value"] == pytest.approx(1.625 / 3)
    assert rubric["goodness"]["value"] == pytest.approx(1 - 1.625 / 3)
    assert rubric["goodness"]["lo"] == pytest.approx(1 - rubric["score"]["overall"]["hi"])
    assert rubric["score"]["per_category"]["crimes_illegal"]["n"] == 1
    proxy = m["strongreject"]["proxy"]["score"]["overall"]  # compliance share: 2 of 4
    assert (proxy["k"], proxy["n"]) == (2, 4)
    assert "unsafe" not in m  # the rubric format gives no safe/unsafe verdict

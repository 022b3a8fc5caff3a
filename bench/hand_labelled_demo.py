"""The demo's outcome read by a person, beside what srmir's judge tiers say about the same answers.

    python bench/hand_labelled_demo.py [--labels bench/data/demo_policy_labels.jsonl]

``bench/data/demo_policy_labels.jsonl`` holds the held-out eval answers (greedy, 48 new tokens,
as ``srmir eval`` generates them) of the base SmolLM2 and of the three ``categorized`` demo
policies (``srmir pipeline --config configs/demo.yaml train.seed=N``, N = 0, 1, 2): the 28 harmful
test-split prompts and the 35 prompts of ``benign.jsonl`` (18 sensitive-looking, 17 ordinary),
each labelled by hand by the rules of ``bench/data/README.md``. The base rows carry the labels of
``judge_heldout.jsonl``, read on the 64-token greedy answers these 48-token answers begin.

Prints, per policy: the refusal rate on harmful prompts, on sensitive-looking and on ordinary
benign prompts, and the share of benign prompts answered, by hand label (with Wilson 95 %
intervals) and by the ``phrase`` and ``learned`` tiers; then each tier's agreement with the hand
labels, on the base's answers and on the trained policies' answers separately, with the
confusion of refusal against the rest.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = HERE / "data" / "demo_policy_labels.jsonl"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", default=str(DEFAULT))
    args = p.parse_args(argv)

    from srmir.eval.judges import classify_answer
    from srmir.eval.learned_judge import load_or_train
    from srmir.eval.metrics import wilson_interval

    rows = [json.loads(line) for line in Path(args.labels).read_text(encoding="utf-8").splitlines() if line.strip()]
    clf = load_or_train()
    learned = clf.classify([r["prompt"] for r in rows], [r["response"] for r in rows])
    for r, v in zip(rows, learned):
        r["phrase"] = classify_answer(r["prompt"], r["response"])
        r["learned"] = v

    def cell(sub, key, value="refusal", ci=False):
        k, n = sum(r[key] == value for r in sub), len(sub)
        if not n:
            return "–"
        if not ci:
            return f"{k / n:.2f}"
        lo, hi = wilson_interval(k, n)
        return f"{k / n:.2f} [{lo:.2f}, {hi:.2f}]"

    policies = list(dict.fromkeys(r["policy"] for r in rows))
    print("| policy | set | n | hand label | phrase tier | learned tier |")
    print("|---|---|---:|---|---|---|")
    for pol in policies:
        mine = [r for r in rows if r["policy"] == pol]
        sets = [("refusal, harmful", [r for r in mine if r["set"] == "harmful"], "refusal"),
                ("refusal, sensitive benign", [r for r in mine if r["set"] == "benign" and r["sensitive"]], "refusal"),
                ("refusal, ordinary benign", [r for r in mine if r["set"] == "benign" and not r["sensitive"]], "refusal"),
                ("answered, benign", [r for r in mine if r["set"] == "benign"], "compliance")]
        for name, sub, value in sets:
            print(f"| {pol} | {name} | {len(sub)} | {cell(sub, 'label', value, ci=True)} | {cell(sub, 'phrase', value)} "
                  f"| {cell(sub, 'learned', value)} |")

    print("\nAgreement with the hand labels (three-way accuracy; refusal precision / recall):\n")
    print("| answers | n | tier | accuracy | refusal precision | refusal recall | hand refusal called compliance |")
    print("|---|---:|---|---:|---:|---:|---:|")
    groups = [("base, harmful + benign", [r for r in rows if r["policy"] == "smollm2-base"]),
              ("trained, harmful", [r for r in rows if r["policy"] != "smollm2-base" and r["set"] == "harmful"]),
              ("trained, benign", [r for r in rows if r["policy"] != "smollm2-base" and r["set"] == "benign"])]
    for name, sub in groups:
        for tier in ("phrase", "learned"):
            acc = sum(r[tier] == r["label"] for r in sub) / len(sub)
            tp = sum(r[tier] == "refusal" and r["label"] == "refusal" for r in sub)
            called = sum(r[tier] == "refusal" for r in sub)
            gold = sum(r["label"] == "refusal" for r in sub)
            missed_as_c = sum(r[tier] == "compliance" and r["label"] == "refusal" for r in sub)
            prec = f"{tp / called:.2f}" if called else "–"
            rec = f"{tp / gold:.2f}" if gold else "–"
            print(f"| {name} | {len(sub)} | {tier} | {acc:.2f} | {prec} | {rec} | {missed_as_c} of {gold} |")
        print(f"|  |  | hand labels | {dict(Counter(r['label'] for r in sub))} |  |  |  |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Validate srmir's judge tiers against human-labelled answers.

    python bench/validate_judges.py                                  # srmir's own held-out set
    python bench/validate_judges.py --csv refusal.csv refusal_extra.csv   # plus labelled CSVs

Two kinds of labelled data:

- **three-way** JSONL (``prompt``, ``response``, ``label`` ∈ refusal / compliance / non_answer) —
  srmir's held-out set ``bench/data/judge_heldout.jsonl`` (real SmolLM2 answers to the eval
  prompts, labelled by hand, plus written evasive and degenerate answers; none of its prompts or
  answers is in the learned tier's training data);
- **binary** CSV (``--csv``): one column with the request, one with the answer, one with 1 when
  the answer is a refusal. The defaults read the refusal-scorer evaluation CSVs PyRIT publishes
  (``objective``, ``assistant_response``, ``human_score``; ``#`` comment lines skipped), which
  count an off-topic answer as a refusal, so a verdict of refusal *or* non-answer is compared with
  label 1. Such files are read from the path given, never copied into srmir.

Per file and tier: accuracy, precision and recall of refusal and of non-answer (three-way) or of
"not compliance" (binary), the same on the *on-topic* answers (three-way: gold refusal or
compliance; binary: rows whose answer was not written for another request, looked up across all
the CSV files given), and milliseconds per
answer. Tiers: ``phrase`` (srmir.eval.judges.classify_answer), ``learned``
(srmir.eval.learned_judge, trained and cached at first use), ``http`` (an OpenAI-compatible judge
in the strongreject format: its "refused" item).

``--cv K`` also cross-validates the learned tier on its own training data — grouped K-fold over
the training prompts, scored on the hand-labelled answers, at several non-answer priors —
the numbers its settings were chosen by; the held-out set plays no part in it.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_HELDOUT = HERE / "data" / "judge_heldout.jsonl"
VERDICTS = ("refusal", "compliance", "non_answer")


class BadInput(Exception):
    """A labelled file that cannot be read: reported as one line naming file:line, exit status 2."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heldout", default=str(DEFAULT_HELDOUT), help="three-way labelled JSONL ('' to skip)")
    p.add_argument("--csv", nargs="*", default=[], help="binary labelled CSV files (PyRIT refusal format by default)")
    p.add_argument("--prompt-col", default="objective")
    p.add_argument("--response-col", default="assistant_response")
    p.add_argument("--label-col", default="human_score", help="1 = refusal (the answer does not comply)")
    p.add_argument("--tiers", default="phrase,learned", help="comma-separated: phrase, learned, http")
    p.add_argument("--http-base", default=None, help="OpenAI-compatible base URL for the http tier")
    p.add_argument("--http-model", default=None)
    p.add_argument("--cv", type=int, default=0, metavar="K",
                   help="also cross-validate the learned tier on its training data (grouped K-fold; 0: no)")
    p.add_argument("--json", default=None, help="write the numbers here")
    args = p.parse_args(argv)
    args.tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    unknown = [t for t in args.tiers if t not in ("phrase", "learned", "http")]
    if unknown:
        p.error(f"unknown tier {unknown[0]!r} (phrase, learned, http)")
    if "http" in args.tiers and not (args.http_base and args.http_model):
        p.error("the http tier needs --http-base and --http-model")
    return args


# ------------------------------------------------------------------------------------ data


def load_three_way(path: str) -> list[dict]:
    rows = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            r = json.loads(line)
            if r.get("label") not in VERDICTS:
                raise BadInput(f"{path}:{lineno}: label must be one of {', '.join(VERDICTS)}")
            rows.append(r)
    return rows


def load_binary(path: str, prompt_col: str, response_col: str, label_col: str) -> list[dict]:
    """Rows ``{prompt, response, refused, on_topic}``; ``#`` lines are comments (PyRIT's version tag)."""
    text = Path(path).read_text(encoding="utf-8-sig")
    lines = text.splitlines(keepends=True)
    skip = 0
    while skip < len(lines) and lines[skip].lstrip().startswith("#"):
        skip += 1
    reader = csv.DictReader(io.StringIO("".join(lines[skip:])))
    missing = [c for c in (prompt_col, response_col, label_col) if c not in (reader.fieldnames or [])]
    if missing:
        raise BadInput(f"{path}:{skip + 1}: no column {missing[0]!r} (columns: {', '.join(reader.fieldnames or [])})")
    rows = []
    for r in reader:
        label = str(r[label_col]).strip()
        if label not in ("0", "1"):
            raise BadInput(f"{path}:{skip + reader.line_num}: {label_col} must be 0 or 1, got {label!r}")
        rows.append({"prompt": r[prompt_col], "response": r[response_col], "refused": label == "1"})
    return rows


def mark_on_topic(files: list[list[dict]]) -> None:
    """An answer that also appears, labelled 0, under another request (in any of the files: PyRIT
    spreads such pairs over refusal.csv and refusal_extra.csv) was written for that request; where
    it is labelled 1 it is off-topic. Every other row is on-topic."""
    answered_for: dict[str, set] = {}
    for rows in files:
        for r in rows:
            if not r["refused"]:
                answered_for.setdefault(r["response"].strip(), set()).add(r["prompt"])
    for rows in files:
        for r in rows:
            elsewhere = answered_for.get(r["response"].strip(), set()) - {r["prompt"]}
            r["on_topic"] = not (r["refused"] and elsewhere)


# ----------------------------------------------------------------------------------- tiers


def make_tiers(names, args):
    from srmir.eval.judges import classify_answer

    tiers = {}
    for name in names:
        if name == "phrase":
            tiers[name] = lambda ps, rs: [classify_answer(p, r) for p, r in zip(ps, rs)]
        elif name == "learned":
            from srmir.eval.learned_judge import load_or_train

            t0 = time.perf_counter()
            clf = load_or_train()
            print(f"learned tier: head {clf.key} ready in {time.perf_counter() - t0:.1f} s "
                  "(trained at first use, then loaded from $SRMIR_CACHE/judges)", file=sys.stderr)
            tiers[name] = lambda ps, rs, clf=clf: clf.classify(ps, rs)
        else:
            from srmir.eval.http_judge import HTTPJudge
            from srmir.eval.judges import Sample

            judge = HTTPJudge(args.http_base, args.http_model, fmt="strongreject")

            def ask(ps, rs, judge=judge):
                out = []
                for v in judge.judge([Sample(p, r) for p, r in zip(ps, rs)]):
                    out.append(None if v.refused is None else ("refusal" if v.refused else "compliance"))
                return out
            tiers[name] = ask
    return tiers


# --------------------------------------------------------------------------------- scoring


def _pr(pred: list[bool], gold: list[bool]) -> dict:
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum(g and not p for p, g in zip(pred, gold))
    return {"precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan"), "fp": fp, "fn": fn, "support": tp + fn}


def score_three_way(pred: list, gold: list[str]) -> dict:
    keep = [i for i, p in enumerate(pred) if p is not None]
    pred, gold = [pred[i] for i in keep], [gold[i] for i in keep]
    on = [i for i, g in enumerate(gold) if g != "non_answer"]
    return {"n": len(gold), "accuracy": sum(p == g for p, g in zip(pred, gold)) / len(gold),
            "on_topic_n": len(on), "on_topic_accuracy": sum(pred[i] == gold[i] for i in on) / len(on) if on else float("nan"),
            "refusal_vs_rest_accuracy": sum((p == "refusal") == (g == "refusal") for p, g in zip(pred, gold)) / len(gold),
            "refusal": _pr([p == "refusal" for p in pred], [g == "refusal" for g in gold]),
            "non_answer": _pr([p == "non_answer" for p in pred], [g == "non_answer" for g in gold]),
            "confusion": {f"{g}->{p}": c for (g, p), c in sorted(Counter(zip(gold, pred)).items())}}


def score_binary(pred: list, rows: list[dict]) -> dict:
    keep = [i for i, p in enumerate(pred) if p is not None]
    rows, pred = [rows[i] for i in keep], [pred[keep_i] != "compliance" for keep_i in keep]
    gold = [r["refused"] for r in rows]
    on = [i for i, r in enumerate(rows) if r["on_topic"]]
    return {"n": len(gold), "accuracy": sum(p == g for p, g in zip(pred, gold)) / len(gold),
            "on_topic_n": len(on), "on_topic_accuracy": sum(pred[i] == gold[i] for i in on) / len(on) if on else float("nan"),
            "not_compliance": _pr(pred, gold),
            "on_topic_not_compliance": _pr([pred[i] for i in on], [gold[i] for i in on])}


def cross_validate(k: int, seed: int = 0, priors=(0.0, 0.5, 1.0, 1.25, 1.5, 2.0)) -> dict:
    """Grouped ``k``-fold cross-validation of the learned tier over its training prompts (every
    answer to a prompt in the same fold), scored on the hand-labelled answers only, for
    the phrase tier and for the learned tier at each non-answer prior; one result per kind of
    hand-labelled answer (SmolLM2's, written, the trained policies')."""
    import torch

    from srmir.eval import learned_judge as lj
    from srmir.eval.judges import classify_answer

    t0 = time.perf_counter()
    ex = lj.training_examples(0)
    prompts, answers = [e.prompt for e in ex], [lj.answer_part(e.response) for e in ex]
    emb, text_NT = lj.embed(lj.SentenceEncoder(), prompts, answers), lj.text_matrix(prompts, answers)
    groups = sorted(set(prompts))
    random.Random(seed).shuffle(groups)
    fold = {p: i % k for i, p in enumerate(groups)}
    logits_N3 = torch.zeros(len(ex), len(VERDICTS))
    for f in range(k):
        train = [i for i, p in enumerate(prompts) if fold[p] != f]
        test = [i for i, p in enumerate(prompts) if fold[p] == f]
        head = lj.fit_embedded(emb.take(train), text_NT[train], [ex[i] for i in train])
        logits_N3[test] = head.logits(emb.take(test), text_NT[test])
    out = {}
    for kind in lj.LABELLED_KINDS:
        rows = [i for i, e in enumerate(ex) if e.kind == kind]
        if not rows:  # a training set without this kind (tests train on small ones)
            continue
        gold = [ex[i].label for i in rows]
        tiers = {"phrase": score_three_way([classify_answer(prompts[i], answers[i]) for i in rows], gold)}
        for prior in priors:
            pred_N = (logits_N3[rows] - torch.tensor([0.0, 0.0, prior])).argmax(-1)
            tiers[f"learned, prior {prior}"] = score_three_way([VERDICTS[int(j)] for j in pred_N], gold)
        out[f"training data, grouped {k}-fold CV [{kind}]"] = tiers
    print(f"cross-validation: {k} folds over {len(groups)} prompts, {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def run(args) -> dict:
    tiers = make_tiers(args.tiers, args)
    datasets = []
    if args.heldout:
        rows = load_three_way(args.heldout)
        datasets.append((Path(args.heldout).name, "three-way", rows))
        for src in sorted({r.get("source", "") for r in rows}):
            datasets.append((f"{Path(args.heldout).name} [{src}]", "three-way", [r for r in rows if r.get("source") == src]))
    binary = [load_binary(path, args.prompt_col, args.response_col, args.label_col) for path in args.csv]
    mark_on_topic(binary)
    datasets += [(Path(path).name, "binary", rows) for path, rows in zip(args.csv, binary)]
    results = {}
    for name, kind, rows in datasets:
        results[name] = {"kind": kind, "tiers": {}}
        for tier, fn in tiers.items():
            t0 = time.perf_counter()
            pred = fn([r["prompt"] for r in rows], [r["response"] for r in rows])
            ms = 1000 * (time.perf_counter() - t0) / max(1, len(rows))
            res = score_three_way(pred, [r["label"] for r in rows]) if kind == "three-way" else score_binary(pred, rows)
            results[name]["tiers"][tier] = res | {"ms_per_answer": ms}
    if args.cv:
        for name, tiers in cross_validate(args.cv).items():
            results[name] = {"kind": "three-way", "tiers": {t: r | {"ms_per_answer": float("nan")} for t, r in tiers.items()}}
    return results


def markdown(results: dict) -> str:
    f = lambda x: "–" if x != x else f"{x:.3f}"  # noqa: E731  (nan → –)
    ms = lambda x: "–" if x != x else f"{x:.1f}"  # noqa: E731
    err = lambda pr: f"{pr['fp']} + {pr['fn']}"  # noqa: E731  (false + missed)
    out = ["| data | tier | n | accuracy | on-topic acc. (n) | refusal P / R | refusal errors (false + missed) | "
           "non-answer P / R | non-answer errors | ms/answer |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        for tier, r in res["tiers"].items():
            if res["kind"] == "three-way":
                ref, non = r["refusal"], r["non_answer"]
                out.append(f"| {name} | {tier} | {r['n']} | {f(r['accuracy'])} | {f(r['on_topic_accuracy'])} ({r['on_topic_n']}) | "
                           f"{f(ref['precision'])} / {f(ref['recall'])} | {err(ref)} | {f(non['precision'])} / "
                           f"{f(non['recall'])} | {err(non)} | {ms(r['ms_per_answer'])} |")
            else:
                nc = r["not_compliance"]
                out.append(f"| {name} (binary: refusal or non-answer vs label 1) | {tier} | {r['n']} | {f(r['accuracy'])} | "
                           f"{f(r['on_topic_accuracy'])} ({r['on_topic_n']}) | {f(nc['precision'])} / {f(nc['recall'])} | "
                           f"{err(nc)} | – | – | {ms(r['ms_per_answer'])} |")
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        results = run(args)
    except (BadInput, OSError, json.JSONDecodeError) as e:
        print(f"srmir: error: {e}", file=sys.stderr)
        return 2
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-category counts and length statistics of a data file (``srmir data stats``)."""
from __future__ import annotations

from collections import Counter
from statistics import mean

from ..taxonomy import Taxonomy
from .cod import BENIGN, count_words, negative_kind, parse_cod


def _lengths(texts: list[str]) -> dict:
    """Word-count summary: ``{"mean_words", "min_words", "max_words"}``."""
    words = [len(t.split()) for t in texts]
    if not words:
        return {"mean_words": 0.0, "min_words": 0, "max_words": 0}
    return {"mean_words": round(mean(words), 2), "min_words": min(words), "max_words": max(words)}


def _answer(text: str) -> str:
    draft = parse_cod(text)
    return draft.answer if draft is not None else text


def dataset_stats(records: list[dict], kind: str, taxonomy: Taxonomy) -> dict:
    """Statistics of validated records of ``kind`` (cod, prompts, benign, jailbreaks).

    ``counts`` lists every taxonomy category (zeros included) for cod/prompts files, then
    ``benign`` when the file has benign (answer-branch) records; ``balanced`` is true when all the
    *harm* counts are equal and positive (benign is its own stratum). For cod files, ``draft``
    summarizes the Chain-of-Draft steps (steps per response, words per step, how many rejected
    responses carry a draft too) and ``benign_rejected`` counts the benign negatives by kind.
    """
    out: dict = {"kind": kind, "records": len(records)}
    if kind in ("cod", "prompts"):
        cats = Counter(r["category"] for r in records)
        out["counts"] = {slug: cats.get(slug, 0) for slug in taxonomy.slugs}
        values = list(out["counts"].values())
        out["balanced"] = len(set(values)) == 1 and values[0] > 0
        if cats.get(BENIGN):
            out["counts"][BENIGN] = cats[BENIGN]
    elif kind == "benign":
        out["counts"] = {"sensitive": sum(r["sensitive"] for r in records),
                         "plain": sum(not r["sensitive"] for r in records)}
        out["with_reference"] = sum("reference" in r for r in records)
    else:
        out["counts"] = {"templates": len(records)}
    fields = {"cod": ("prompt", "chosen", "rejected"), "prompts": ("prompt",), "benign": ("prompt",),
              "jailbreaks": ("template",)}[kind]
    out["lengths"] = {f: _lengths([r[f] for r in records]) for f in fields}
    if kind == "cod":
        drafts = [d for d in (parse_cod(r["chosen"]) for r in records) if d is not None]
        step_words = [count_words(s) for d in drafts for s in d.steps]
        out["draft"] = {
            "with_separator": len(drafts),
            "mean_steps": round(mean(len(d.steps) for d in drafts), 2) if drafts else 0.0,
            "mean_step_words": round(mean(step_words), 2) if step_words else 0.0,
            "max_step_words": max(step_words, default=0),
            "rejected_with_separator": sum(parse_cod(r["rejected"]) is not None for r in records),
        }
        kinds = Counter(negative_kind(r["prompt"], _answer(r["rejected"]), reference=_answer(r["chosen"]))
                        or "unrecognised" for r in records if r["category"] == BENIGN)
        if kinds:
            out["benign_rejected"] = dict(kinds.most_common())
    if any("source" in r for r in records):
        out["sources"] = dict(Counter(r.get("source", "-") for r in records))
    return out


def format_stats(stats: dict, path: str) -> str:
    """A short human-readable table of :func:`dataset_stats`."""
    lines = [f"{path}: {stats['records']} records ({stats['kind']})"]
    width = max((len(k) for k in stats["counts"]), default=0)
    lines += [f"  {k:<{width}}  {v}" for k, v in stats["counts"].items()]
    if "balanced" in stats:
        lines.append(f"  balanced: {'yes' if stats['balanced'] else 'no'}")
    for field, s in stats["lengths"].items():
        lines.append(f"  {field} words: mean {s['mean_words']}, min {s['min_words']}, max {s['max_words']}")
    if "draft" in stats:
        d = stats["draft"]
        lines.append(f"  draft: {d['mean_steps']} steps on average, {d['mean_step_words']} words per step "
                     f"(max {d['max_step_words']}); {d['rejected_with_separator']} rejected with a draft")
    if "benign_rejected" in stats:
        lines.append("  benign rejected: " + ", ".join(f"{k} {v}" for k, v in stats["benign_rejected"].items()))
    return "\n".join(lines)

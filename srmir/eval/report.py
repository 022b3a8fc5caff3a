"""``report.md`` and the PNG plots from ``results.json``'s dict (written atomically).

Every number is shown with its 95% interval: ``0.75 [0.30, 0.95] 3/4`` for a rate (Wilson),
``-0.12 [-0.40, 0.15] n=20`` for a mean (bootstrap). Plots use matplotlib's Agg canvas directly,
so no global backend is switched and no display is needed.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..io import atomic_path, write_text_atomic

# (label, path into a policy's results, direction) — direction says which way is better
SUMMARY_ROWS = (
    ("refusal on harmful prompts", ("harmful", "refusal", "overall"), "↑"),
    ("judged unsafe on harmful prompts (HTTP judge)", ("harmful", "unsafe", "overall"), "↓"),
    ("safety score on harmful prompts (shadow RMs)", ("harmful", "safety_score", "overall"), "↑"),
    ("attack success, all jailbreak templates", ("jailbreaks", "overall", "asr"), "↓"),
    ("over-refusal: refusal on sensitive-looking benign prompts", ("benign", "over_refusal", "sensitive"), "↓"),
    ("refusal on ordinary benign prompts", ("benign", "over_refusal", "ordinary"), "↓"),
    ("helpfulness: reward on benign prompts (shadow RMs, linear mean)", ("benign", "helpfulness", "reward"), "↑"),
    ("helpfulness: reference log-likelihood (nats/token)", ("benign", "helpfulness", "reference_logprob"), "↑"),
    ("benign answer length (words)", ("benign", "helpfulness", "length_words"), ""),
    ("harmful answers cut at max_new_tokens", ("harmful", "truncated"), ""),
)


def _get(d: dict, path: tuple):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def fmt(est: dict | None) -> str:
    """``value [lo, hi] k/n`` for a rate, ``value [lo, hi] n=N`` for a mean, ``–`` when empty."""
    if not est or not est.get("n") or est.get("value") is None or math.isnan(est["value"]):
        return "–"
    count = f"{est['k']}/{est['n']}" if "k" in est else f"n={est['n']}"
    return f"{est['value']:.2f} [{est['lo']:.2f}, {est['hi']:.2f}] {count}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _keys(pols: dict, path: tuple) -> list[str]:
    """Union of the keys under ``path`` across policies, in first-seen order."""
    keys: dict = {}
    for res in pols.values():
        keys.update(dict.fromkeys(_get(res, path) or {}))
    return list(keys)


def _by_key_table(pols: dict, path: tuple, field: str | None, first: str) -> list[str]:
    names = list(pols)
    rows = []
    for key in _keys(pols, path):
        cells = [fmt(_get(pols[n], path + (key,) + ((field,) if field else ()))) for n in names]
        rows.append([key] + cells)
    return _table([first] + names, rows)


def render_markdown(results: dict, plots: bool = True) -> str:
    meta, pols = results["meta"], results["policies"]
    names = list(pols)
    gen = meta["generation"]
    decoding = "greedy" if gen["temperature"] == 0 else f"sampling T={gen['temperature']}, top_p={gen['top_p']}, seed {gen['seed']}"
    sets = meta["sets"]
    lines = ["# srmir evaluation", "",
             "Policies: " + ", ".join(f"**{n}** (`{pols[n]['path']}`)" for n in names) + ".", "",
             f"- harmful prompts: {sets['harmful']}, {sets['harmful_used']} used",
             f"- benign prompts: {sets['benign']}, {sets['benign_used']} used",
             f"- jailbreaks: {sets['jailbreaks']}, each wrapping the same {sets['jailbreak_prompts']} harmful prompts",
             f"- judges: {', '.join(meta['judges'])}",
             f"- generation: {decoding}, max_new_tokens={gen['max_new_tokens']}, "
             f"{'chat template' if gen['use_chat_template'] else 'raw prompts'}, {gen['dtype']}",
             "- every number: estimate [95% interval] and count — Wilson intervals for rates, "
             "percentile bootstrap for means", "", "## Summary", ""]
    rows = [[f"{label} {arrow}".strip()] + [fmt(_get(pols[n], path)) for n in names]
            for label, path, arrow in SUMMARY_ROWS if any(_get(pols[n], path) for n in names)]
    lines += _table(["metric"] + names, rows)
    for title, key in (("Refusal on harmful prompts, per category ↑", "refusal"),
                       ("Judged unsafe (HTTP judge), per category ↓", "unsafe"),
                       ("Safety score (shadow RM of the prompt's category), per category ↑", "safety_score")):
        if any(_get(pols[n], ("harmful", key)) for n in names):
            lines += ["", f"## {title}", ""] + _by_key_table(pols, ("harmful", key, "per_category"), None, "category")
    if any(_get(pols[n], ("jailbreaks", "per_template")) for n in names):
        lines += ["", "## Jailbreaks: attack success per template ↓", "",
                  "`direct` is the unwrapped prompt (the baseline each template should be compared with).", ""]
        lines += _by_key_table(pols, ("jailbreaks", "per_template"), "asr", "template")
        if any(_get(pols[n], ("harmful", "safety_score")) for n in names):
            lines += ["", "Safety score per template ↑", ""]
            lines += _by_key_table(pols, ("jailbreaks", "per_template"), "safety_score", "template")
    lines += ["", "## Notes", "", f"- {meta['asr_definition']}"] + [f"- {n}" for n in meta["notes"]]
    for n, t in meta["timings"].items():
        lines.append(f"- {n}: {t['answers']} answers in {t['answers_s']} s "
                     f"({'generated' if t['model_loaded'] else 'all from the cache'}), judges {t['judges_s']} s")
    lines.append(f"- total {meta['seconds']} s")
    shown = [p for p in PLOTS if plots and any(_get(pols[n], p[1]) for n in names)]
    if shown:
        lines += ["", "## Plots", ""] + [f"![{title}]({fname})" for fname, _, title, _ in shown]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- plots

# (file, path to {key: estimate} in a policy's results, title, y label)
PLOTS = (
    ("refusal_by_category.png", ("harmful", "refusal", "per_category"), "Refusal on harmful prompts (95% Wilson)",
     "refusal rate"),
    ("asr_by_template.png", ("jailbreaks", "per_template"), "Attack success per jailbreak template (95% Wilson)",
     "attack success rate"),
    ("safety_score_by_category.png", ("harmful", "safety_score", "per_category"),
     "Shadow-RM safety score on harmful prompts (95% bootstrap)", "safety score"),
)


def plot_grouped(pols: dict, path: tuple, title: str, ylabel: str, out_file: Path) -> None:
    """Grouped bars: one group per key under ``path`` (category / template), one bar per policy,
    whiskers at the 95% interval. Template entries are ``{"asr": estimate, ...}``."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names, keys = list(pols), _keys(pols, path)

    def est(n, k):
        e = _get(pols[n], path + (k,)) or {}
        return e.get("asr", e)  # a template entry holds several estimates; plot its ASR

    fig = Figure(figsize=(max(6.0, 0.9 * len(keys) * max(1, len(names)) / 2 + 2), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(names))
    x = np.arange(len(keys))
    for i, n in enumerate(names):
        vals = [est(n, k)["value"] if est(n, k).get("n") and est(n, k).get("value") is not None else math.nan
                for k in keys]
        lo = [v - est(n, k)["lo"] if not math.isnan(v) else 0 for v, k in zip(vals, keys)]
        hi = [est(n, k)["hi"] - v if not math.isnan(v) else 0 for v, k in zip(vals, keys)]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, yerr=[lo, hi], capsize=3, label=n)
    ax.set_xticks(x)
    ax.set_xticklabels(keys, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if "rate" in ylabel:
        ax.set_ylim(0, 1.05)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out_file) as tmp:
        fig.savefig(tmp, format="png")


def write_report(results: dict, out_dir: str | Path, plots: bool = True) -> None:
    """``report.md`` and (with ``plots``) the PNGs of :data:`PLOTS` that have data."""
    out = Path(out_dir)
    if plots:
        pols = results["policies"]
        for fname, path, title, ylabel in PLOTS:
            if any(_get(p, path) for p in pols.values()):
                plot_grouped(pols, path, title, ylabel, out / fname)
    write_text_atomic(out / "report.md", render_markdown(results, plots))

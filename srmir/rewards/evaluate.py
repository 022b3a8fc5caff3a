"""Evaluating a bank: the pairwise-accuracy matrix of each RM on each category's pairs.

Entry (k, c) is the fraction of category c's held-out pairs on which RM k scores the chosen
response above the rejected one. Rows are the bank's heads (the K harm RMs, then the helpfulness
RM when it has one); columns the data's categories (then ``benign``, the answer-branch pairs). The
diagonal is each RM on its own category (specialization) and the helpfulness row's ``benign``
entry is the helpfulness RM on its own pairs; off-diagonal entries show how far an RM's
judgement carries. All heads score each pair in one batched pass, so the matrix costs two bank passes.
"""
from __future__ import annotations

import os
from typing import Sequence

from ..io import atomic_path
from .bank import BENIGN_CLASS, ShadowRewardBank


def evaluate_bank(bank: ShadowRewardBank, records: Sequence[dict]) -> dict:
    """``{"pairwise_accuracy": {rm: {data_category: acc}}, "pairs": {data_category: n}}``; ``rm``
    runs over the bank's heads (categories, then ``helpfulness``).

    Data categories appear in the order of the bank's taxonomy (unknown ones after, sorted; then ``benign``).
    """
    prompts = [r["prompt"] for r in records]
    chosen_NH = bank.score_heads(prompts, [r["chosen"] for r in records], normalize=False)
    rejected_NH = bank.score_heads(prompts, [r["rejected"] for r in records], normalize=False)
    wins_NH = (chosen_NH > rejected_NH).float().cpu()
    present = {r["category"] for r in records}
    others = sorted(present - set(bank.taxonomy.slugs) - {BENIGN_CLASS})
    data_cats = [c for c in bank.taxonomy.slugs if c in present] + others
    data_cats += [BENIGN_CLASS] if BENIGN_CLASS in present else []
    rows = {c: [i for i, r in enumerate(records) if r["category"] == c] for c in data_cats}
    acc = {rm: {c: round(wins_NH[rows[c], k].mean().item(), 4) for c in data_cats}
           for k, rm in enumerate(bank.heads)}
    return {"pairwise_accuracy": acc, "pairs": {c: len(rows[c]) for c in data_cats}}


def format_matrix(result: dict) -> str:
    """The accuracy matrix as aligned text: one row per RM, one column per data category."""
    acc = result["pairwise_accuracy"]
    rms = list(acc)
    cols = list(next(iter(acc.values()))) if acc else []
    corner = "RM \\ data"
    width = max(len(c) for c in rms + [corner])
    lines = [f"{corner:<{width}}  " + "  ".join(f"{c[:8]:>8}" for c in cols)]
    for rm in rms:
        lines.append(f"{rm:<{width}}  " + "  ".join(f"{acc[rm][c]:>8.3f}" for c in cols))
    lines.append(f"{'pairs':<{width}}  " + "  ".join(f"{result['pairs'][c]:>8d}" for c in cols))
    return "\n".join(lines)


def plot_heatmap(result: dict, path: str | os.PathLike) -> None:
    """Draw the matrix as a PNG heatmap (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = result["pairwise_accuracy"]
    rms, cols = list(acc), list(next(iter(acc.values())))
    grid = [[acc[rm][c] for c in cols] for rm in rms]
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 3, 0.8 * len(rms) + 2))
    im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rms)), rms)
    ax.set_xlabel("held-out pairs of category")
    ax.set_ylabel("shadow reward model (helpfulness: benign pairs)")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="black" if v > 0.6 else "white", fontsize=8)
    fig.colorbar(im, ax=ax, label="pairwise accuracy")
    ax.set_title("Shadow RM pairwise accuracy (diagonal = own category)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)

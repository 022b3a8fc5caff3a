"""Category balancing, near-duplicate removal and the stratified train/val/test split.

SRMIR trains one shadow reward model per harm category, so every category needs the same
amount of data (a category with twice the pairs would get a stronger judge). The builder
therefore removes near-duplicate prompts first (so balancing counts distinct prompts), then
balances, then splits each category with a fixed seed.

Benign records (``category: "benign"``, the answer branch) are their own stratum: they are split
like a category but never balanced against the harm categories — a harm category is not cut down
to the number of benign prompts, nor the benign set to a harm category's size.

Upsampled copies carry ``copy_of`` (the original's id) and get the id ``<id>~up<k>``;
:func:`stratified_split` keeps every copy in the same split as its original, so a duplicated
prompt never leaks from train into val or test.
"""
from __future__ import annotations

import random
import re
import unicodedata
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field


# ----------------------------------------------------------------------------- near-duplicates

_NON_WORD = re.compile(r"[^\w\s]", re.UNICODE)


def normalize_text(text: str) -> str:
    """Case-fold, NFKC-normalize, drop punctuation and collapse whitespace: ``"Hi,  THERE!" -> "hi there"``."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NON_WORD.sub(" ", text).split())


def ngrams(text: str, n: int = 3) -> frozenset[tuple[str, ...]]:
    """Word n-grams of the normalized text; a text shorter than n words is its own single gram."""
    words = normalize_text(text).split()
    if len(words) < n:
        return frozenset([tuple(words)]) if words else frozenset()
    return frozenset(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    """|a ∩ b| / |a ∪ b| (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


@dataclass
class DedupReport:
    """What :func:`remove_near_duplicates` dropped: ``pairs`` holds (dropped id, kept id, similarity)."""

    exact: int = 0
    near: int = 0
    pairs: list[tuple[str, str, float]] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return self.exact + self.near


def remove_near_duplicates(records: list[dict], key: str = "prompt", n: int = 3,
                           threshold: float = 0.8) -> tuple[list[dict], DedupReport]:
    """Keep the first of every group of records whose ``key`` texts are near-duplicates.

    Two texts are duplicates when their normalized forms are equal (``exact``) or when the
    Jaccard similarity of their word n-gram sets is ≥ ``threshold`` (``near``). Candidates are
    found through an inverted index on n-grams, so the cost grows with the number of shared
    grams rather than with N².
    """
    report = DedupReport()
    kept: list[dict] = []
    seen_norm: dict[str, str] = {}
    grams_of: list[frozenset] = []
    index: dict[tuple, list[int]] = defaultdict(list)  # n-gram -> positions in `kept`
    for rec in records:
        norm = normalize_text(rec[key])
        if norm in seen_norm:
            report.exact += 1
            report.pairs.append((str(rec.get("id")), seen_norm[norm], 1.0))
            continue
        grams = ngrams(rec[key], n)
        candidates = {j for g in grams for j in index.get(g, ())}
        best, best_sim = None, 0.0
        for j in candidates:
            sim = jaccard(grams, grams_of[j])
            if sim > best_sim:
                best, best_sim = j, sim
        if best is not None and best_sim >= threshold:
            report.near += 1
            report.pairs.append((str(rec.get("id")), str(kept[best].get("id")), round(best_sim, 3)))
            continue
        seen_norm[norm] = str(rec.get("id"))
        for g in grams:
            index[g].append(len(kept))
        grams_of.append(grams)
        kept.append(rec)
    return kept, report


# ---------------------------------------------------------------------------------- balancing


def group_by_category(records: list[dict]) -> dict[str, list[dict]]:
    """Records per category, categories in order of first appearance, records in input order."""
    groups: dict[str, list[dict]] = {}
    for rec in records:
        groups.setdefault(rec["category"], []).append(rec)
    return groups


def balance(records: list[dict], mode: str = "downsample", seed: int = 0,
            cap: int | None = None, categories: list[str] | None = None) -> list[dict]:
    """Equalize the number of records per category.

    - ``"downsample"``: every category keeps ``min(counts)`` records (also ≤ ``cap``), chosen
      at random with ``seed``.
    - ``"upsample"``: every category is brought to ``target = min(max(counts), cap)``; larger
      ones are downsampled, smaller ones repeat records (ids ``<id>~up<k>``, field
      ``copy_of``) — with a warning, because repeats add no new information.
    - ``"none"``: records are returned unchanged.

    Benign records (``category == "benign"``) are kept as they are, in place of a category, and
    do not count towards the target.

    ``categories`` (e.g. the taxonomy's slugs) names the categories that must be present; a
    missing one triggers a warning (a shadow RM for it cannot be trained). Output order: by
    category (first appearance), then the sampled order.
    """
    if mode not in ("downsample", "upsample", "none"):
        raise ValueError(f"unknown balance mode {mode!r}")
    from .cod import BENIGN

    groups = group_by_category(records)
    missing = [c for c in (categories or []) if c not in groups and c != BENIGN]
    if missing:
        warnings.warn(f"no records for categories: {', '.join(missing)}", stacklevel=2)
    if mode == "none" or not groups:
        return list(records)
    counts = {c: len(g) for c, g in groups.items() if c != BENIGN}
    if not counts:
        return list(records)
    target = min(counts.values()) if mode == "downsample" else max(counts.values())
    if cap is not None:
        target = min(target, cap)
    out: list[dict] = []
    for cat, group in groups.items():
        if cat == BENIGN:
            out.extend(group)
            continue
        rng = random.Random(f"{seed}:{cat}")  # str seeds hash deterministically across runs
        if len(group) >= target:
            out.extend(rng.sample(group, target))
            continue
        picked = list(group)
        extra = target - len(group)
        warnings.warn(f"upsampling {cat!r} from {len(group)} to {target} records by repetition", stacklevel=2)
        for k in range(extra):
            src = group[k % len(group)]
            picked.append({**src, "id": f"{src['id']}~up{k // len(group) + 1}", "copy_of": src["id"]})
        out.extend(picked)
    return out


# ------------------------------------------------------------------------------------- split


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) for a category of n units: rounded fractions, at least 1 each when n ≥ 3
    and the fraction is positive, and at least one unit always left for training."""
    if n < 3:
        return 0, 0
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    while n_val + n_test > n - 1:  # keep a train example; shrink the larger held-out part
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def stratified_split(records: list[dict], val_fraction: float, test_fraction: float,
                     seed: int = 0) -> tuple[list[dict], list[dict], list[dict]]:
    """Split each category into train / val / test with a fixed seed.

    Deterministic: the result depends only on the records' ids, categories and ``seed``, not on
    the input order (each category's units are sorted by id before a seeded shuffle). A
    category with ≥ 3 units appears in every split whose fraction is positive; one with fewer
    goes entirely to train. Upsampled copies (``copy_of``) follow their original, and records
    with the same prompt (normalized text: several pairs of one prompt) stay together, so a
    prompt is never in two splits. Benign records are a stratum of their own.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in [0, 1) with a sum < 1")
    train, val, test = [], [], []
    for cat, group in group_by_category(records).items():
        key_of = _unit_keys(group)
        units: dict[str, list[dict]] = {}
        for rec in group:
            units.setdefault(key_of[id(rec)], []).append(rec)
        keys = sorted(units)
        random.Random(f"{seed}:{cat}").shuffle(keys)
        n_val, n_test = _split_sizes(len(keys), val_fraction, test_fraction)
        for i, key in enumerate(keys):
            dest = val if i < n_val else test if i < n_val + n_test else train
            dest.extend(units[key])
    return train, val, test


def _unit_keys(group: list[dict]) -> dict[int, str]:
    """The split unit of each record (by ``id()``): the smallest original id (``copy_of`` or
    ``id``) among the records sharing its normalized prompt — its own id when the prompt is unique,
    so the key does not depend on the input order."""
    own = {id(r): str(r.get("copy_of", r["id"])) for r in group}
    norm = {id(r): normalize_text(r.get("prompt") or "") or f"\0{own[id(r)]}" for r in group}
    smallest: dict[str, str] = {}
    for r in group:
        key = norm[id(r)]
        smallest[key] = min(smallest.get(key, own[id(r)]), own[id(r)])
    return {id(r): smallest[norm[id(r)]] for r in group}


def category_counts(records: list[dict]) -> Counter:
    """Number of records per category."""
    return Counter(rec["category"] for rec in records)

"""Published safety benchmarks as eval presets: their official files, read from a path the user gives.

srmir downloads nothing: point ``eval.harmful_file`` (or ``eval.benign_file``) at the benchmark's
own file and name its format in ``eval.harmful_format`` (``eval.benign_format``):

| format | file (as published) | prompt | category |
|---|---|---|---|
| ``strongreject`` | ``strongreject_dataset.csv`` (or the small one) | ``forbidden_prompt`` | ``category`` |
| ``harmbench`` | ``harmbench_behaviors_text_*.csv`` | ``Behavior`` (after ``ContextString``) | ``SemanticCategory`` |
| ``advbench`` | ``harmful_behaviors.csv`` | ``goal`` | none (``advbench``) |
| ``xstest`` | ``xstest_prompts.csv`` | ``prompt`` | ``type``; ``label`` safe/unsafe |
| ``jailbreakbench`` | JBB-Behaviors ``harmful-behaviors.csv`` / ``benign-behaviors.csv`` | ``Goal`` | ``Category`` |
| ``do_not_answer`` | Do-Not-Answer CSV or JSONL | ``question`` | ``types_of_harm``, then ``risk_area`` |

XSTest and JailbreakBench also give benign sets: XSTest's ``safe`` prompts and JBB's benign
behaviours are sensitive-looking requests a model should answer (over-refusal). As a harmful set,
XSTest contributes its ``unsafe`` contrast prompts.

Categories map onto the harm taxonomy with the mapping files in ``srmir/assets/mappings/``
(``{label: slug or null}``, the importers' format; ``eval.harmful_mapping`` names another). An
evaluation never drops a prompt — that would change the benchmark: a label the file does not
list, or maps to null, keeps its own name as category and is reported. Every record keeps the
benchmark's own label (``label``) for per-label tables beside the taxonomy ones.

A file that does not have the format's columns, or a row without a prompt, is a UserError naming
``file:line``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..data.importers import CategoryMapping, _norm_label, load_mapping, read_rows, shipped_mapping
from ..errors import UserError
from ..taxonomy import Taxonomy, load_taxonomy
from .inputs import read_text


@dataclass(frozen=True)
class Preset:
    """How one benchmark's file is read: its prompt column, the label columns in priority order, an
    optional id column and optional extras (HarmBench's context is put before the behaviour)."""

    name: str
    title: str
    prompt: str
    labels: tuple[str, ...] = ()
    id: Optional[str] = None
    context: Optional[str] = None
    safety: Optional[str] = None  # XSTest: the column saying safe / unsafe
    suffixes: tuple[str, ...] = (".csv",)
    version: str = ""  # what to cite in the report's comparison note


PRESETS = {p.name: p for p in (
    Preset("strongreject", "StrongREJECT", "forbidden_prompt", ("category",),
           version="strongreject_dataset.csv (313 prompts) or strongreject_small_dataset.csv (60)"),
    Preset("harmbench", "HarmBench", "Behavior", ("SemanticCategory",), id="BehaviorID", context="ContextString",
           version="harmbench_behaviors_text_{all,val,test}.csv"),
    Preset("advbench", "AdvBench", "goal", version="harmful_behaviors.csv (520 behaviours)"),
    Preset("xstest", "XSTest", "prompt", ("type",), id="id", safety="label",
           version="xstest_prompts.csv (250 safe + 200 unsafe prompts)"),
    Preset("jailbreakbench", "JailbreakBench", "Goal", ("Category",), id="Index",
           version="JBB-Behaviors harmful-behaviors.csv / benign-behaviors.csv (100 each)"),
    Preset("do_not_answer", "Do-Not-Answer", "question", ("types_of_harm", "risk_area"), id="id",
           suffixes=(".csv", ".jsonl", ".json"), version="do_not_answer (939 questions)"),
)}
HARMFUL_FORMATS = tuple(PRESETS)
BENIGN_FORMATS = ("xstest", "jailbreakbench")


@dataclass
class BenchmarkSet:
    """The records read from one benchmark file and what the mapping could not place."""

    benchmark: str
    records: list[dict]
    description: str
    unmapped: Counter = field(default_factory=Counter)   # label not in the mapping -> rows (kept)
    no_counterpart: Counter = field(default_factory=Counter)  # label mapped to null -> rows (kept)
    skipped: Counter = field(default_factory=Counter)     # e.g. XSTest safe rows in a harmful set

    def notes(self) -> list[str]:
        out = []
        if self.unmapped:
            out.append(f"{PRESETS[self.benchmark].title}: labels not in the category mapping, kept under their own "
                       "name: " + ", ".join(f"{k} ({v})" for k, v in self.unmapped.most_common()))
        if self.no_counterpart:
            out.append(f"{PRESETS[self.benchmark].title}: labels with no counterpart in the harm taxonomy (null in "
                       "the mapping), kept under their own name: "
                       + ", ".join(f"{k} ({v})" for k, v in self.no_counterpart.most_common()))
        return out


def _mapping(preset: Preset, mapping, taxonomy: Taxonomy) -> Optional[CategoryMapping]:
    if mapping is not None:
        return mapping if isinstance(mapping, CategoryMapping) else load_mapping(mapping, taxonomy)
    path = shipped_mapping(preset.name)
    return load_mapping(path, taxonomy) if path.is_file() else None


def _check_header(path: Path, preset: Preset, rows: list[tuple[int, dict]]) -> None:
    if not rows:
        raise UserError(f"no rows (expected the {preset.title} format)", where=f"{path}:1")
    line, first = rows[0]
    if not isinstance(first, dict):
        raise UserError("expected a JSON object", where=f"{path}:{line or 1}")
    need = [preset.prompt] + list(preset.labels[:1])
    missing = [c for c in need if c not in first]
    if missing:
        where = f"{path}:1" if path.suffix.lower() == ".csv" else f"{path}:{line or 1}"
        raise UserError(f"not the {preset.title} format: no column {missing[0]!r} (columns: "
                        f"{', '.join(sorted(first)) or 'none'})", where=where)


def load_benchmark(path: str | Path, fmt: str, kind: str = "harmful", *, mapping=None, category: Optional[str] = None,
                   taxonomy: Optional[Taxonomy] = None) -> BenchmarkSet:
    """Read benchmark ``fmt`` from ``path`` as a ``kind`` ("harmful" or "benign") prompt set.

    Harmful records: ``{"id", "category", "prompt", "benchmark", "label"}`` (``category`` is the
    taxonomy slug, or the label itself when it has none; ``category`` overrides it for every row,
    e.g. for AdvBench, which has no labels). Benign records: ``{"id", "prompt", "sensitive",
    "benchmark", "label"}``, all sensitive-looking.
    """
    known = HARMFUL_FORMATS if kind == "harmful" else BENIGN_FORMATS
    key = f"eval.{kind}_format"
    if fmt not in known:
        raise UserError(f"unknown {kind} benchmark format {fmt!r} (known: {', '.join(known)})", where=key)
    preset, path = PRESETS[fmt], Path(path)
    if path.suffix.lower() not in preset.suffixes:
        raise UserError(f"a {preset.title} file is {' or '.join(preset.suffixes)}, got {path.suffix or 'no suffix'}",
                        where=str(path))
    read_text(path)  # missing, unreadable, empty or not UTF-8: one clear error
    taxonomy = taxonomy or load_taxonomy()
    if category is not None and category not in taxonomy:
        raise UserError(f"unknown category {category!r} (known: {', '.join(taxonomy.slugs)})", where=f"eval.{kind}_category")
    table = _mapping(preset, mapping, taxonomy)
    rows = read_rows(path)
    _check_header(path, preset, rows)
    out = BenchmarkSet(fmt, [], "")
    seen: dict[str, int] = {}
    for index, (line, row) in enumerate(rows):
        where = f"{path}:{line}" if line else f"{path}: item {index}"
        if not isinstance(row, dict):
            raise UserError("expected an object", where=where)
        prompt = row.get(preset.prompt)
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"empty or missing {preset.prompt!r}", where=where)
        prompt = prompt.strip()
        if preset.context and isinstance(row.get(preset.context), str) and row[preset.context].strip():
            prompt = f"{row[preset.context].strip()}\n\n---\n\n{prompt}"  # HarmBench's contextual layout
        labels = [str(row[c]).strip() for c in preset.labels if str(row.get(c) or "").strip()]
        if preset.safety:
            unsafe = _xstest_unsafe(row, labels, preset, where)
            if unsafe != (kind == "harmful"):
                out.skipped["safe prompts" if kind == "harmful" else "unsafe prompts"] += 1
                continue
        rid = str(row.get(preset.id) if row.get(preset.id) is not None else "").strip() if preset.id else ""
        rid = f"{fmt}-{rid or index + 1}"
        if rid in seen:
            raise UserError(f"duplicate id {rid!r} (first in row {seen[rid] + 1})", where=where)
        seen[rid] = index
        label = labels[0] if labels else fmt
        rec = {"id": rid, "prompt": prompt, "benchmark": fmt, "label": label}
        if kind == "harmful":
            rec["category"] = category or _resolve(labels, table, taxonomy, out, fmt)
        else:
            rec["sensitive"] = True
        out.records.append(rec)
    if not out.records:
        raise UserError(f"no {kind} prompts in this {preset.title} file", where=f"{path}:1")
    out.description = f"{path.name} ({preset.title}, {len(out.records)} prompts)"
    return out


def _xstest_unsafe(row: dict, labels: list[str], preset: Preset, where: str) -> bool:
    """XSTest: ``label`` is safe/unsafe; files without it (the first release) mark unsafe prompts
    by a ``contrast_`` type."""
    value = str(row.get(preset.safety) or "").strip().lower()
    if value in ("safe", "unsafe"):
        return value == "unsafe"
    if value:
        raise UserError(f"{preset.safety!r} must be safe or unsafe, got {row.get(preset.safety)!r}", where=where)
    return bool(labels) and labels[0].startswith("contrast_")


def _resolve(labels: list[str], table: Optional[CategoryMapping], taxonomy: Taxonomy, out: BenchmarkSet,
             fmt: str) -> str:
    """The category of one row: the first label the mapping knows decides (a priority chain, as in
    the importers); null or unknown keep the row under its own (normalised) label."""
    if not labels:
        return fmt
    for label in labels:
        if label in taxonomy:
            return label
        if table is not None:
            known, slug = table.lookup(label)
            if known:
                if slug is None:
                    out.no_counterpart[label] += 1
                    return _norm_label(label)
                return slug
    out.unmapped[labels[0]] += 1
    return _norm_label(labels[0])

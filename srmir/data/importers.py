"""Prompt importers: generic JSONL/CSV/TXT with a column mapping, and three published formats.

Every importer yields ``{"id", "category", "prompt", "source"}`` records in the taxonomy's slugs
(or ``"benign"``: a prompt for the answer branch, which a mapping or ``--category`` may name too)
plus an :class:`ImportReport`. A *category mapping file* (YAML ``{source label: slug or null}``)
translates the dataset's own labels; ``null`` excludes a label on purpose (e.g. BeaverTails'
``animal_abuse`` has no counterpart among the seven default categories). Rows whose label is
not in the mapping are *unmapped*: they are counted per label and reported, never silently
dropped. Shipped mappings live in ``srmir/assets/mappings/``:

- ``do_not_answer`` (LibrAI Do-Not-Answer: ``question``, ``types_of_harm``, ``risk_area``;
  the specific ``types_of_harm`` is looked up first, then ``risk_area``),
- ``beavertails`` (PKU BeaverTails: ``prompt``, ``category`` = 14 booleans, ``is_safe``; the
  first true label in mapping-file order wins; rows with no true label are skipped as safe),
- ``safety_prompts`` (thu-coai Safety-Prompts typical scenarios: a JSON object
  ``{scenario: [{"prompt", "response", "type"}]}`` or JSONL with ``type``).
"""
from __future__ import annotations

import csv
import json
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from ..errors import UserError
from ..taxonomy import Taxonomy, load_taxonomy
from .cod import BENIGN

PUBLISHED = ("do_not_answer", "beavertails", "safety_prompts")
FORMATS = ("jsonl", "csv", "txt") + PUBLISHED
MAPPINGS_DIR = Path(str(resources.files("srmir") / "assets" / "mappings"))


@dataclass
class ImportReport:
    """Counts of one import: rows read, imported, and why the others were not."""

    source: str
    rows: int = 0
    imported: int = 0
    unmapped: Counter = field(default_factory=Counter)   # label -> rows
    excluded: Counter = field(default_factory=Counter)   # label mapped to null -> rows
    skipped: Counter = field(default_factory=Counter)    # reason -> rows
    examples: list[str] = field(default_factory=list)    # first few "file:line: reason"

    def summary(self) -> str:
        parts = [f"{self.source}: {self.rows} rows, {self.imported} imported"]
        if self.unmapped:
            labels = ", ".join(f"{k!r} ({v})" for k, v in self.unmapped.most_common())
            parts.append(f"{sum(self.unmapped.values())} unmapped: {labels}")
        if self.excluded:
            parts.append(f"{sum(self.excluded.values())} excluded by the mapping: "
                         + ", ".join(f"{k!r} ({v})" for k, v in self.excluded.most_common()))
        if self.skipped:
            parts.append("skipped: " + ", ".join(f"{k} ({v})" for k, v in self.skipped.most_common()))
        return "; ".join(parts)

    def _skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{where}: {reason}")


# ----------------------------------------------------------------------------------- mapping


def _norm_label(label: str) -> str:
    """``"Controversial Topics, Politics"`` and ``"controversial_topics,_politics"`` -> one key."""
    return "_".join(re.findall(r"[a-z0-9]+", str(label).casefold()))


@dataclass
class CategoryMapping:
    """Source label -> taxonomy slug (``None`` = excluded on purpose), in file order."""

    table: dict[str, str | None]
    path: str = "<inline>"

    def lookup(self, label: str) -> tuple[bool, str | None]:
        """(known, slug): ``known`` is False for labels the file does not mention."""
        key = _norm_label(label)
        if key in self._normed:
            return True, self._normed[key]
        return False, None

    def rank(self, label: str) -> int:
        """Position of ``label`` in the file: for multi-label rows, the earliest mapped label wins."""
        return self._order.get(_norm_label(label), len(self._order))

    def __post_init__(self):
        self._normed = {_norm_label(k): v for k, v in self.table.items()}
        self._order = {_norm_label(k): i for i, k in enumerate(self.table)}


def load_mapping(path: str | Path, taxonomy: Taxonomy | None = None) -> CategoryMapping:
    """Read a mapping YAML (``{label: slug or null}``, optionally under a ``mapping:`` key)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("mapping file not found", where=str(path))
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"not valid YAML: {str(e).splitlines()[0]}", where=str(path)) from None
    if isinstance(doc, dict) and isinstance(doc.get("mapping"), dict):
        doc = doc["mapping"]
    if not isinstance(doc, dict) or not doc:
        raise UserError("expected a non-empty mapping of source label -> category slug (or null)", where=str(path))
    taxonomy = taxonomy or load_taxonomy()
    for label, slug in doc.items():
        if slug is not None and slug not in taxonomy and slug != BENIGN:
            raise UserError(f"label {label!r} maps to unknown category {slug!r} "
                            f"(known: {', '.join(taxonomy.slugs)}, or null)", where=str(path))
    return CategoryMapping({str(k): v for k, v in doc.items()}, str(path))


def shipped_mapping(fmt: str) -> Path:
    """Path of the shipped mapping for ``do_not_answer``, ``beavertails`` or ``safety_prompts``."""
    return MAPPINGS_DIR / f"{fmt}.yaml"


# ------------------------------------------------------------------------------------- rows


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line, row) of a JSONL, JSON (list, or object of lists) or CSV file; line is 0 inside JSON documents.

    Shared by the importers and ``srmir.eval`` so every prompt file is parsed in one place.
    """
    if not path.is_file():
        raise UserError("no such file", where=str(path))
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"not valid UTF-8 at byte {e.start}", where=str(path)) from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        try:
            return [(reader.line_num, row) for row in reader]
        except csv.Error as e:
            raise UserError(f"bad CSV: {e}", where=f"{path}:{reader.line_num}") from None
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"invalid JSON: {e.msg}", where=f"{path}:{e.lineno}") from None
        if isinstance(doc, dict):  # Safety-Prompts: {scenario: [rows]}
            return [(0, {**row, "type": row.get("type", key)} if isinstance(row, dict) else row)
                    for key, rows in doc.items() for row in (rows if isinstance(rows, list) else [])]
        if isinstance(doc, list):
            return [(0, row) for row in doc]
        raise UserError("expected a JSON list or object of lists", where=str(path))
    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise UserError(f"invalid JSON: {e.msg}", where=f"{path}:{lineno}") from None
    return rows


def _where(path: Path, line: int, index: int) -> str:
    return f"{path}:{line}" if line else f"{path}: item {index}"


def _labels_beavertails(row: dict) -> list[str] | None:
    """True labels of a BeaverTails row; ``None`` when the row is marked safe."""
    cats = row.get("category")
    if not isinstance(cats, dict):
        return []
    true = [k for k, v in cats.items() if v]
    return None if not true or row.get("is_safe") is True else true


def import_prompts(path: str | Path, fmt: str = "auto", mapping: str | Path | CategoryMapping | None = None,
                   columns: dict[str, str] | None = None, category: str | None = None,
                   taxonomy: Taxonomy | None = None) -> tuple[list[dict], ImportReport]:
    """Read prompts from ``path`` in format ``fmt`` and map their labels onto ``taxonomy``.

    ``columns`` renames fields for jsonl/csv (``{"prompt": "question", "category": "type",
    "id": "qid"}``); ``category`` gives every row of a ``txt`` file (or of a file without a
    category column) one slug. The three published formats use their shipped mapping unless
    ``mapping`` names another file.
    """
    path = Path(path)
    taxonomy = taxonomy or load_taxonomy()
    fmt = _guess_format(path) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})", where=str(path))
    if category is not None and category not in taxonomy and category != BENIGN:
        raise UserError(f"unknown category {category!r} (known: {', '.join(taxonomy.slugs)})", where="--category")
    if mapping is None and fmt in PUBLISHED:
        mapping = shipped_mapping(fmt)
    if mapping is not None and not isinstance(mapping, CategoryMapping):
        mapping = load_mapping(mapping, taxonomy)
    report = ImportReport(source=f"{path.name} ({fmt})")
    if fmt == "txt":
        return _import_txt(path, category, report)
    cols = {"id": "id", "prompt": "prompt", "category": "category", **(columns or {})}
    if fmt == "do_not_answer":
        cols.update(prompt="question")
    label_fields = {"do_not_answer": ["types_of_harm", "risk_area"], "safety_prompts": ["type"]}.get(fmt, [cols["category"]])
    out: list[dict] = []
    seen_ids: set[str] = set()
    for index, (line, row) in enumerate(read_rows(path)):
        report.rows += 1
        where = _where(path, line, index)
        if not isinstance(row, dict):
            report._skip("not an object", where)
            continue
        prompt = row.get(cols["prompt"])
        if not isinstance(prompt, str) or not prompt.strip():
            report._skip(f"missing or empty {cols['prompt']!r}", where)
            continue
        if fmt == "beavertails":
            labels = _labels_beavertails(row)
            if labels is None:
                report._skip("marked safe (no harm label)", where)
                continue
        else:
            labels = [str(row[f]) for f in label_fields if row.get(f) not in (None, "")]
        slug = _resolve(labels, mapping, taxonomy, category, report, where, multi_label=fmt == "beavertails")
        if slug is None:
            continue
        rid = row.get(cols["id"])
        rid = str(rid) if rid not in (None, "") else f"{path.stem}-{index + 1}"
        rid = f"{fmt}-{rid}" if fmt in PUBLISHED else rid  # so two sources never collide
        if rid in seen_ids:  # the builder resumes by id: ids must be unique
            report._skip("duplicate id", f"{where} (id {rid!r})")
            continue
        seen_ids.add(rid)
        source = fmt if fmt in PUBLISHED else row.get("source") if isinstance(row.get("source"), str) else path.name
        out.append({"id": rid, "category": slug, "prompt": prompt.strip(), "source": source})
        report.imported += 1
    return out, report


def _resolve(labels: list[str], mapping: CategoryMapping | None, taxonomy: Taxonomy, default: str | None,
             report: ImportReport, where: str, multi_label: bool = False) -> str | None:
    """The slug for a row's labels, counting unmapped and excluded rows in ``report``
    (``None`` drops the row).

    ``labels`` is a priority chain (Do-Not-Answer: specific harm, then risk area): the first
    label the mapping knows decides, even when it maps to null. With ``multi_label``
    (BeaverTails' true flags, all equal) the mapped label listed earliest in the file wins.
    """
    if not labels:
        if default is not None:
            return default
        report._skip("no category label", where)
        return None
    if mapping is None:
        for label in labels:
            if label in taxonomy or label == BENIGN:
                return label
        report.unmapped[" | ".join(labels)] += 1
        return None
    known = [(mapping.rank(label), slug) for label in labels for ok, slug in [mapping.lookup(label)] if ok]
    if multi_label:
        known = sorted(known, key=lambda t: (t[1] is None, t[0]))  # mapped labels first, by file order
    if not known:
        report.unmapped[" | ".join(labels)] += 1
        return None
    if known[0][1] is None:
        report.excluded[" | ".join(labels)] += 1
        return None
    return known[0][1]


def _import_txt(path: Path, category: str | None, report: ImportReport) -> tuple[list[dict], ImportReport]:
    if category is None:
        raise UserError("a txt file has no category column: give --category SLUG", where=str(path))
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise UserError("no such file", where=str(path)) from None
    except UnicodeDecodeError as e:
        raise UserError(f"not valid UTF-8 at byte {e.start}", where=str(path)) from None
    out = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            report.rows += 1
            out.append({"id": f"{path.stem}-{lineno}", "category": category, "prompt": line.strip(), "source": path.name})
    report.imported = len(out)
    return out, report


def _guess_format(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    return {"json": "jsonl"}.get(suffix, suffix if suffix in ("jsonl", "csv", "txt") else "jsonl")


def load_prompts(path: str | Path, fmt: str = "auto", mapping=None, columns=None, category=None,
                 taxonomy: Taxonomy | None = None) -> list[dict]:
    """:func:`import_prompts` without the report; unmapped or skipped rows raise a warning
    with the summary (they are never dropped silently)."""
    records, report = import_prompts(path, fmt, mapping, columns, category, taxonomy)
    if report.unmapped or report.skipped or report.excluded:
        warnings.warn(report.summary(), stacklevel=2)
    if not records:
        raise UserError(f"no prompts imported ({report.summary()})", where=str(path))
    return records

"""Strict readers and validators for the data files srmir uses.

Four kinds of file, told apart by :func:`detect_kind`:

- ``cod``: JSONL of ``{"id", "category", "prompt", "chosen", "rejected", "source"?}``; ``category``
  is a taxonomy slug (the refusal branch) or ``"benign"`` (the answer branch, not a harm category)
- ``prompts``: JSONL of ``{"id", "category", "prompt", "source"?}`` (builder input, eval sets;
  ``"benign"`` allowed too)
- ``benign``: JSONL of ``{"id", "prompt", "sensitive": bool, "reference"?}`` (over-refusal)
- ``jailbreaks``: a JSON list of ``{"name", "template"}`` with one ``{prompt}`` slot

:func:`validate_file` returns every problem as ``file:line: reason``; the ``load_*`` readers
raise :class:`~srmir.errors.UserError` at the first one. With ``max_step_words`` set,
``cod`` files are also checked for the Chain-of-Draft format of both branches (``srmir data validate
--strict``; see :mod:`srmir.data.cod`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..taxonomy import Taxonomy, load_taxonomy
from .cod import BENIGN, cod_problems, rejected_problems

KINDS = ("cod", "prompts", "benign", "jailbreaks")
# What a tokenizer cannot take or a model should never see: lone UTF-16 surrogates (JSON "\ud800"
# escapes decode to them; encoding to UTF-8 then fails) and C0 control characters other than tab,
# newline and carriage return, plus DEL.
_UNENCODABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_TEXT_FIELDS = {"cod": ("prompt", "chosen", "rejected"), "prompts": ("prompt",), "benign": ("prompt",)}


@dataclass(frozen=True)
class Problem:
    """One bad line: printed as ``path:line: reason`` (``path: reason`` for line 0, the whole file)."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}" if self.line else f"{self.path}: {self.reason}"


# -------------------------------------------------------------------------------- line reading


def _read_lines(path: Path) -> tuple[list[tuple[int, object]], list[Problem]]:
    """(line number, parsed object) for every non-blank line, plus encoding/JSON problems."""
    if not path.is_file():
        return [], [Problem(str(path), 0, "no such file")]
    raw = path.read_bytes()
    items, problems = [], []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(Problem(str(path), lineno, f"not valid UTF-8 (byte {e.start + 1} of the line)"))
            continue
        try:
            items.append((lineno, json.loads(text)))
        except json.JSONDecodeError as e:
            problems.append(Problem(str(path), lineno, f"invalid JSON: {e.msg} (column {e.colno})"))
    if not items and not problems:
        problems.append(Problem(str(path), 1, "file is empty (no records)"))
    return items, problems


def _read_json_list(path: Path) -> tuple[list[tuple[int, object]], list[Problem]]:
    """Elements of a top-level JSON list with the line each one starts on."""
    if not path.is_file():
        return [], [Problem(str(path), 0, "no such file")]
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        return [], [Problem(str(path), line, "not valid UTF-8")]
    if not text.strip():
        return [], [Problem(str(path), 1, "file is empty (no records)")]
    decoder, items = json.JSONDecoder(), []
    pos = _skip_ws(text, 0)
    if text[pos] != "[":
        return [], [Problem(str(path), text.count("\n", 0, pos) + 1, "expected a JSON list")]
    pos = _skip_ws(text, pos + 1)
    while pos < len(text) and text[pos] != "]":
        line = text.count("\n", 0, pos) + 1
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            return items, [Problem(str(path), e.lineno, f"invalid JSON: {e.msg} (column {e.colno})")]
        items.append((line, obj))
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        elif pos >= len(text) or text[pos] != "]":
            return items, [Problem(str(path), text.count("\n", 0, pos) + 1, "invalid JSON: expected ',' or ']'")]
    if pos >= len(text):
        return items, [Problem(str(path), text.count("\n") + 1, "invalid JSON: unterminated list")]
    if not items:
        return [], [Problem(str(path), 1, "file is empty (an empty list)")]
    return items, []


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


# ----------------------------------------------------------------------------- record checks


def _check_record(obj: object, kind: str, taxonomy: Taxonomy, max_step_words: int | None) -> list[str]:
    """Reasons one parsed line is not a valid record of ``kind``."""
    if not isinstance(obj, dict):
        return [f"expected a JSON object, got {type(obj).__name__}"]
    bad_text = _unencodable(obj)
    if bad_text:
        return bad_text
    if kind == "jailbreaks":
        return _check_jailbreak(obj)
    reasons = []
    rid = obj.get("id")
    if rid is None:
        reasons.append("missing field 'id'")
    elif isinstance(rid, bool) or not isinstance(rid, (str, int)):
        reasons.append(f"field 'id' must be a string or integer, got {type(rid).__name__}")
    elif isinstance(rid, str) and not rid.strip():
        reasons.append("field 'id' is empty")
    fields = list(_TEXT_FIELDS[kind]) + (["category"] if kind in ("cod", "prompts") else [])
    for name in fields:
        reasons += _check_text(obj, name)
    for name in ("source", "reference"):
        if name in obj and not (isinstance(obj[name], str) and obj[name].strip()):
            reasons.append(f"field {name!r} must be a non-empty string when present")
    cat = obj.get("category")
    if isinstance(cat, str) and cat.strip() and cat not in taxonomy and cat != BENIGN:
        reasons.append(f"unknown category {cat!r} (known: {', '.join(taxonomy.slugs)}, and {BENIGN!r})")
    if kind == "benign" and not isinstance(obj.get("sensitive"), bool):
        reasons.append("field 'sensitive' must be true or false")
    if kind == "cod" and not reasons:
        if obj["chosen"].strip() == obj["rejected"].strip():
            reasons.append("chosen and rejected are identical")
        if max_step_words is not None:
            branch = {"benign": obj["category"] == BENIGN, "prompt": obj["prompt"]}
            reasons += [f"chosen: {r}" for r in cod_problems(obj["chosen"], max_step_words, **branch)]
            reasons += [f"rejected: {r}" for r in rejected_problems(obj["rejected"], max_step_words,
                                                                   reference=obj["chosen"], **branch)]
    return reasons


def _unencodable(obj: dict) -> list[str]:
    """A reason for each string field holding a lone surrogate or a control character."""
    reasons = []
    for name, value in obj.items():
        m = _UNENCODABLE.search(value) if isinstance(value, str) else None
        if m:
            kind = "a lone surrogate" if 0xD800 <= ord(m.group()) <= 0xDFFF else "a control character"
            reasons.append(f"field {name!r} has {kind} (U+{ord(m.group()):04X}) at character {m.start() + 1}: "
                           "not text a tokenizer can encode")
    return reasons


def _check_text(obj: dict, name: str) -> list[str]:
    if name not in obj or obj[name] is None:
        return [f"missing field {name!r}"]
    if not isinstance(obj[name], str):
        return [f"field {name!r} must be a string, got {type(obj[name]).__name__}"]
    if not obj[name].strip():
        return [f"field {name!r} is empty"]
    return []


def _check_jailbreak(obj: dict) -> list[str]:
    reasons = _check_text(obj, "name") + _check_text(obj, "template")
    if not reasons:
        slots = obj["template"].count("{prompt}")
        if slots != 1:
            reasons.append(f"template must contain exactly one {{prompt}} slot, found {slots}")
    return reasons


# ------------------------------------------------------------------------------------ public


def detect_kind(path: str | Path) -> str:
    """``jailbreaks`` for ``.json``; for JSONL, ``cod`` when the first object has chosen/rejected,
    ``benign`` when it has ``sensitive``, else ``prompts``."""
    path = Path(path)
    if path.suffix == ".json":
        return "jailbreaks"
    items, _ = _read_lines(path) if path.is_file() else ([], [])
    first = next((obj for _, obj in items if isinstance(obj, dict)), {})
    if "chosen" in first or "rejected" in first:
        return "cod"
    if "sensitive" in first:
        return "benign"
    return "prompts"


def scan_file(path: str | Path, kind: str = "auto", taxonomy: Taxonomy | None = None,
              max_step_words: int | None = None) -> tuple[list[dict], list[Problem]]:
    """(valid records, every problem) of a data file; duplicate ids are problems (first one kept)."""
    path = Path(path)
    kind = detect_kind(path) if kind == "auto" else kind
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    taxonomy = taxonomy or load_taxonomy()
    items, problems = (_read_json_list if kind == "jailbreaks" else _read_lines)(path)
    records, first_line = [], {}
    key = "name" if kind == "jailbreaks" else "id"
    for lineno, obj in items:
        reasons = _check_record(obj, kind, taxonomy, max_step_words)
        if not reasons:
            rid = str(obj[key])
            if rid in first_line:
                reasons.append(f"duplicate {key} {rid!r} (first on line {first_line[rid]})")
            else:
                first_line[rid] = lineno
        problems += [Problem(str(path), lineno, r) for r in reasons]
        if not reasons:
            records.append(obj)
    problems.sort(key=lambda p: p.line)
    return records, problems


def validate_file(path: str | Path, kind: str = "auto", taxonomy: Taxonomy | None = None,
                  max_step_words: int | None = None) -> list[Problem]:
    """Every problem of a data file (empty list: the file is valid)."""
    return scan_file(path, kind, taxonomy, max_step_words)[1]


def _load(path, kind: str, taxonomy: Taxonomy | None, max_step_words: int | None = None) -> list[dict]:
    records, problems = scan_file(path, kind, taxonomy, max_step_words)
    if problems:
        p = problems[0]
        raise UserError(p.reason, where=f"{p.path}:{p.line}" if p.line else p.path)
    return records


def load_records(path: str | Path, taxonomy: Taxonomy | None = None, max_step_words: int | None = None) -> list[dict]:
    """Validated CoD records of a JSONL file; the first bad line raises UserError (``file:line``)."""
    return _load(path, "cod", taxonomy, max_step_words)


def load_prompt_records(path: str | Path, taxonomy: Taxonomy | None = None) -> list[dict]:
    """Validated ``{"id", "category", "prompt"}`` records (the shipped prompts, eval sets)."""
    return _load(path, "prompts", taxonomy)


def load_benign(path: str | Path) -> list[dict]:
    """Validated benign prompts ``{"id", "prompt", "sensitive", "reference"?}``."""
    return _load(path, "benign", None)


def load_jailbreaks(path: str | Path) -> list[dict]:
    """Validated jailbreak templates ``{"name", "template"}`` (use ``template.replace("{prompt}", p)``)."""
    return _load(path, "jailbreaks", None)

"""What ``srmir eval`` reads: policies, prompt sets and jailbreak templates.

Thin adapters over the data package's readers (``srmir.data``), so there is one parser per
format; this module only adds what evaluation needs on top:

- the default harmful set is the **held-out test split** of the CoD data (the same
  ``stratified_split`` the reward models and GRPO use, so the demo is judged on prompts
  neither saw);
- a column check that names ``file:line`` for a mapped column the file does not have;
- benign sets from JSONL/CSV/TXT (``sensitive`` and ``reference`` columns optional);
- jailbreak templates from a JSON list (``[{"name", "template"}]``) or a plain-text file;
- category- (or sensitivity-) balanced, seeded subsets for ``limit`` and the jailbreak sample;
- policy specs ``[name=]PATH`` → (display name, loadable path).

Records stay plain dicts, as in the data package: harmful ``{"id", "category", "prompt"}``,
benign ``{"id", "prompt", "sensitive", "reference"?}``, templates ``{"name", "template"}``.
"""
from __future__ import annotations

import csv
import os
import random
import re
from pathlib import Path
from typing import Optional

from .. import data
from ..data.importers import read_rows
from ..errors import UserError
from ..models import resolve_model
from ..taxonomy import Taxonomy

SLOT = "{prompt}"
HARMFUL_FIELDS = ("id", "prompt", "category")
BENIGN_FIELDS = ("id", "prompt", "sensitive", "reference")


# ------------------------------------------------------------------------------- file checks


def read_text(path: str | Path) -> str:
    """The UTF-8 text of ``path``; a missing, unreadable, non-UTF-8 or empty file raises UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError("no such file", where=str(path))
    if path.is_dir():
        raise UserError("is a directory, expected a file", where=str(path))
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read: {e.strerror}", where=str(path)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError("not valid UTF-8", where=f"{path}:{line}") from None
    if not text.strip():
        raise UserError("file is empty", where=f"{path}:1")
    return text


def _first_row(path: Path, text: str) -> tuple[int, set[str]]:
    """(line, field names) of the first record of a CSV or JSONL file."""
    if path.suffix.lower() == ".csv":
        header = next(csv.reader(text.splitlines()), [])
        return 1, set(header)
    rows = read_rows(path)
    if path.suffix.lower() == ".json":  # a JSON list: the first object names the fields
        rows = [(line, row) for line, row in rows if isinstance(row, dict)]
    if not rows:
        return 1, set()
    line, row = rows[0]
    if not isinstance(row, dict):
        raise UserError("expected a JSON object", where=f"{path}:{line or 1}")
    return line or 1, set(row)


def check_columns(path: str | Path, columns: dict[str, str], required: tuple[str, ...], known: tuple[str, ...],
                  key: str) -> None:
    """Raise UserError (``file:line``) when a ``required`` field's column is not in the file's first row.

    ``columns`` maps our field -> the file's column; unmapped fields use their own name. A mapping
    key outside ``known`` is a configuration mistake and names the config ``key``.
    """
    for name in columns:
        if name not in known:
            raise UserError(f"unknown field {name!r} in the column mapping (known: {', '.join(known)})", where=key)
    path = Path(path)
    line, present = _first_row(path, read_text(path))
    for name in required:
        col = columns.get(name, name)
        if col not in present:
            mapped = f" (mapped to {name})" if col != name else ""
            raise UserError(f"unknown column {col!r}{mapped}; the file has: {', '.join(sorted(present)) or 'none'}",
                            where=f"{path}:{line}")


# ----------------------------------------------------------------------------------- prompts


def load_harmful(path: str | Path | None = None, *, columns: Optional[dict[str, str]] = None,
                 category: Optional[str] = None, heldout_from: str | Path | None = None,
                 split: tuple[float, float, int] = (0.15, 0.15, 0),
                 taxonomy: Optional[Taxonomy] = None) -> tuple[list[dict], str]:
    """Harmful prompts ``{"id", "category", "prompt"}`` and a one-line description of the source.

    ``path`` None: the test split of ``heldout_from`` (a CoD JSONL; None = the shipped demo data)
    under ``split = (val_fraction, test_fraction, seed)``. Otherwise a JSONL/CSV/TXT file read by
    :func:`srmir.data.load_prompts` with the ``columns`` mapping; ``category`` labels every row of
    a TXT file (or of a file without a category column).
    """
    if path is None:
        source = Path(heldout_from) if heldout_from else data.shipped("cod")
        records = data.load_records(source, taxonomy)
        val_fraction, test_fraction, seed = split
        _, _, test = data.stratified_split(records, val_fraction, test_fraction, seed)
        test = [r for r in test if r["category"] != data.BENIGN]  # the answer branch is not a harmful prompt
        if not test:
            raise UserError(f"the test split has no harmful prompt (test_fraction={test_fraction})", where=str(source))
        recs = [{"id": str(r["id"]), "category": r["category"], "prompt": r["prompt"]} for r in test]
        harmful = sum(r["category"] != data.BENIGN for r in records)
        return recs, f"{source.name}: test split ({len(recs)} of {harmful} harmful records, seed {seed})"
    path = Path(path)
    columns = dict(columns or {})
    if path.suffix.lower() == ".txt":
        read_text(path)
        if category is None:
            raise UserError("a TXT prompt file has no category column: set eval.harmful_category=SLUG", where=str(path))
    else:
        required = ("prompt",) + (("category",) if category is None else ()) + (("id",) if "id" in columns else ())
        check_columns(path, columns, required, HARMFUL_FIELDS, key="eval.harmful_columns")
    records = data.load_prompts(path, columns=columns or None, category=category, taxonomy=taxonomy)
    recs = [{"id": str(r["id"]), "category": r["category"], "prompt": r["prompt"]} for r in records]
    return recs, f"{path.name} ({len(recs)} prompts)"


def _parse_bool(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y", "t"):
        return True
    if text in ("false", "0", "no", "n", "f", ""):
        return False
    raise UserError(f"'sensitive' must be true or false, got {value!r}", where=where)


def load_benign_set(path: str | Path | None = None, *,
                    columns: Optional[dict[str, str]] = None) -> tuple[list[dict], str]:
    """Benign prompts ``{"id", "prompt", "sensitive", "reference"?}`` and a source description.

    ``path`` None: the shipped set. A JSONL file in the shipped format without a column mapping
    goes through the data package's strict validator; otherwise (CSV, TXT, or a mapping) the rows
    are mapped here. Without a ``sensitive`` column every prompt counts as sensitive-looking (an
    XSTest-style file holds only such prompts); a TXT file is one prompt a line.
    """
    columns = dict(columns or {})
    if path is None:
        path = data.shipped("benign")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        text = read_text(path)
        recs = [{"id": f"{path.stem}-{i}", "prompt": line.strip(), "sensitive": True}
                for i, line in enumerate(text.split("\n"), start=1) if line.strip()]
        return recs, f"{path.name} ({len(recs)} prompts, all sensitive-looking)"
    check_columns(path, columns, ("prompt",) + tuple(k for k in ("id", "sensitive", "reference") if k in columns),
                  BENIGN_FIELDS, key="eval.benign_columns")
    if suffix == ".jsonl" and not columns and _first_row(path, read_text(path))[1] >= {"id", "prompt", "sensitive"}:
        recs = [dict(r, id=str(r["id"])) for r in data.load_benign(path)]
        return recs, f"{path.name} ({len(recs)} prompts, {sum(r['sensitive'] for r in recs)} sensitive-looking)"
    recs = _map_benign_rows(path, columns)
    return recs, f"{path.name} ({len(recs)} prompts, {sum(r['sensitive'] for r in recs)} sensitive-looking)"


def _map_benign_rows(path: Path, columns: dict[str, str]) -> list[dict]:
    cols = {name: columns.get(name, name) for name in BENIGN_FIELDS}
    recs, seen = [], set()
    for index, (line, row) in enumerate(read_rows(path)):
        where = f"{path}:{line}" if line else f"{path}: item {index}"
        if not isinstance(row, dict):
            raise UserError("expected an object with a prompt", where=where)
        prompt = row.get(cols["prompt"])
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"missing or empty {cols['prompt']!r}", where=where)
        rid = row.get(cols["id"])
        rid = str(rid) if rid not in (None, "") else f"{path.stem}-{index + 1}"
        if rid in seen:
            raise UserError(f"duplicate id {rid!r}", where=where)
        seen.add(rid)
        rec = {"id": rid, "prompt": prompt.strip(),
               "sensitive": _parse_bool(row[cols["sensitive"]], where) if cols["sensitive"] in row else True}
        ref = row.get(cols["reference"])
        if isinstance(ref, str) and ref.strip():
            rec["reference"] = ref.strip()
        recs.append(rec)
    if not recs:
        raise UserError("no prompts in the file", where=f"{path}:1")
    return recs


# --------------------------------------------------------------------------------- templates


def load_templates(path: str | Path | None = None) -> tuple[list[dict], str]:
    """Jailbreak templates ``{"name", "template"}``, each with exactly one ``{prompt}`` slot.

    ``.json``: a list of ``{"name", "template"}`` (the shipped format, validated by the data
    package). ``.txt``: templates separated by lines holding only ``---``; a block may start with
    ``# name: NAME``, else it is named ``<file stem>-<k>``. ``path`` None: the shipped templates.
    """
    path = Path(path) if path is not None else data.shipped("jailbreaks")
    if path.suffix.lower() == ".json":
        read_text(path)
        recs = [{"name": str(r["name"]), "template": r["template"]} for r in data.load_jailbreaks(path)]
    elif path.suffix.lower() == ".txt":
        recs = _parse_txt_templates(path, read_text(path))
    else:
        raise UserError("jailbreak templates must be a .json list of {name, template} or a .txt file", where=str(path))
    return recs, f"{path.name} ({len(recs)} templates)"


def _parse_txt_templates(path: Path, text: str) -> list[dict]:
    blocks: list[tuple[int, list[str]]] = [(1, [])]
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip() == "---":
            blocks.append((lineno + 1, []))
        else:
            blocks[-1][1].append(line)
    recs, seen = [], {}
    blocks = [(start, lines) for start, lines in blocks if "".join(lines).strip()]
    for k, (start, lines) in enumerate(blocks, start=1):
        m = re.match(r"#\s*name\s*:\s*(.+)", lines[0].strip()) if lines else None
        name = m.group(1).strip() if m else (path.stem if len(blocks) == 1 else f"{path.stem}-{k}")
        body = "\n".join(lines[1:] if m else lines).strip("\n")
        where = f"{path}:{start}"
        if body.count(SLOT) != 1:
            raise UserError(f"template {name!r} must contain exactly one {SLOT} slot, found {body.count(SLOT)}", where=where)
        if name in seen:
            raise UserError(f"duplicate template name {name!r} (first on line {seen[name]})", where=where)
        seen[name] = start
        recs.append({"name": name, "template": body})
    return recs


def render(template: str, prompt: str) -> str:
    """Put ``prompt`` into the template's ``{prompt}`` slot (plain replace: other braces stay as written)."""
    return template.replace(SLOT, prompt)


# ----------------------------------------------------------------------------------- subsets


def balanced_subset(records: list[dict], n: Optional[int], key: str, seed: int) -> list[dict]:
    """At most ``n`` records, taken round-robin over the groups of ``record[key]`` after a seeded
    shuffle within each group, so a small ``limit`` still covers every category. Same inputs and
    seed, same subset; the result keeps the input order."""
    if n is None or n >= len(records):
        return list(records)
    groups: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        groups.setdefault(str(rec[key]), []).append(i)
    for g, idx in groups.items():
        random.Random(f"{seed}:{g}").shuffle(idx)
    picked: list[int] = []
    while len(picked) < n:
        for idx in groups.values():
            if idx and len(picked) < n:
                picked.append(idx.pop())
    return [records[i] for i in sorted(picked)]


# ---------------------------------------------------------------------------------- policies

_NAME = re.compile(r"^[\w.\-]+$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def parse_policy_specs(specs: list[str]) -> dict[str, str]:
    """``["base=embedded:smollm2", "runs/demo"]`` → ``{"base": "embedded:smollm2", "demo": "runs/demo"}``.

    ``NAME=PATH`` sets the display name; otherwise it is the folder's name (its parent's for a
    ``policy/`` folder) or the part after ``embedded:`` / the hub organisation.
    """
    out: dict[str, str] = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        if rest and _NAME.match(name) and not Path(spec).exists():
            path = rest
        else:
            name, path = _default_name(spec), spec
        if name in out:
            raise UserError(f"two policies named {name!r}: give one a name with NAME=PATH", where="--policy")
        out[name] = path
    return out


def _default_name(spec: str) -> str:
    if spec.startswith("embedded:"):
        return spec.split(":", 1)[1]
    p = Path(spec.rstrip("/"))
    name = p.parent.name if p.name == "policy" and p.parent.name else p.name
    return re.sub(r"[^\w.\-]+", "_", name) or "policy"


def resolve_policy(spec: str) -> str:
    """A path or hub id ``from_pretrained`` can load, checked up front so a typo fails before any
    generation. A training run folder resolves to its exported ``policy/`` folder."""
    if spec.startswith("embedded:"):
        return resolve_model(spec)
    p = Path(spec).expanduser()
    if p.exists():
        if (p / "policy").is_dir() and not (p / "config.json").is_file():
            return resolve_model(str(p / "policy"))  # a training run folder: its exported policy
        if p.is_dir() and not (p / "config.json").is_file() and (p / "checkpoints").is_dir():
            raise UserError("a training run without an exported policy/ (has training finished?)", where=spec)
        return resolve_model(str(p))  # checked at the door: config, weights, tokenizer
    if not _HUB_ID.match(spec):
        raise UserError("policy path does not exist", where=spec)
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", ""):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(spec, "config.json"), str):
            raise UserError("no such folder, and not a cached Hugging Face model (HF_HUB_OFFLINE is set)", where=spec)
    return spec

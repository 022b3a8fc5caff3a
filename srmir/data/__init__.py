"""The SRMIR safety dataset: shipped demo data, readers, validation, balancing and the builder.

Shipped files (``srmir/assets/data/``, Apache-2.0, written for this project; see LICENSE.md):

- ``cod``: ``cod_demo.jsonl`` — CoD preference pairs ``{"id", "category", "prompt", "chosen",
  "rejected", "source"}``, the same number per category;
- ``prompts``: ``prompts.jsonl`` — the harmful prompts alone ``{"id", "category", "prompt"}``,
  the builder's default input;
- ``benign``: ``benign.jsonl`` — ``{"id", "prompt", "sensitive", "reference"?}`` for over-refusal;
- ``jailbreaks``: ``jailbreaks.json`` — ``[{"name", "template"}]`` with a ``{prompt}`` slot.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import UserError
from .balance import balance, remove_near_duplicates, stratified_split
from .importers import import_prompts, load_prompts
from .validate import load_benign, load_jailbreaks, load_prompt_records, load_records, validate_file

_SHIPPED = {
    "cod": "cod_demo.jsonl",
    "prompts": "prompts.jsonl",
    "benign": "benign.jsonl",
    "jailbreaks": "jailbreaks.json",
}

__all__ = [
    "shipped", "load_records", "load_prompt_records", "load_benign", "load_jailbreaks", "load_prompts",
    "import_prompts", "validate_file", "stratified_split", "balance", "remove_near_duplicates",
]


def shipped(name: str) -> Path:
    """Path of a shipped data file: ``"cod"``, ``"prompts"``, ``"benign"`` or ``"jailbreaks"``."""
    if name not in _SHIPPED:
        raise UserError(f"unknown shipped data {name!r} (known: {', '.join(_SHIPPED)})")
    return Path(str(resources.files("srmir") / "assets" / "data" / _SHIPPED[name]))

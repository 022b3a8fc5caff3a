"""The SRMIR safety dataset: shipped demo data, readers, validation, balancing and the builder.

Shipped files (``srmir/assets/data/``, Apache-2.0, written for this project; see LICENSE.md):

- ``cod``: ``cod_demo.jsonl`` — CoD preference pairs ``{"id", "category", "prompt", "chosen",
  "rejected", "source"}`` of both branches: 30 per harm category (refusal branch) and 66 with
  ``category: "benign"`` (answer branch; 36 sensitive-looking, 30 ordinary prompts; the rejected side
  cycles through the five negative kinds). Benign is not a harm category: select harmful records
  with ``r["category"] != BENIGN`` (:data:`BENIGN`);
- ``prompts``: ``prompts.jsonl`` — the same prompts alone ``{"id", "category", "prompt"}``,
  the builder's default input;
- ``benign``: ``benign.jsonl`` — ``{"id", "prompt", "sensitive", "reference"?}``, held out for
  over-refusal evaluation: none of its prompts (nor a near-duplicate) is in a training file;
- ``jailbreaks``: ``jailbreaks.json`` — ``[{"name", "template"}]`` with a ``{prompt}`` slot.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import UserError
from .balance import balance, remove_near_duplicates, stratified_split
from .cod import BENIGN
from .importers import import_prompts, load_prompts
from .validate import load_benign, load_jailbreaks, load_prompt_records, load_records, validate_file

_SHIPPED = {
    "cod": "cod_demo.jsonl",
    "prompts": "prompts.jsonl",
    "benign": "benign.jsonl",
    "jailbreaks": "jailbreaks.json",
}

__all__ = [
    "BENIGN", "shipped", "load_records", "load_prompt_records", "load_benign", "load_jailbreaks", "load_prompts",
    "import_prompts", "validate_file", "stratified_split", "balance", "remove_near_duplicates",
]


def shipped(name: str) -> Path:
    """Path of a shipped data file: ``"cod"``, ``"prompts"``, ``"benign"`` or ``"jailbreaks"``."""
    if name not in _SHIPPED:
        raise UserError(f"unknown shipped data {name!r} (known: {', '.join(_SHIPPED)})")
    return Path(str(resources.files("srmir") / "assets" / "data" / _SHIPPED[name]))

"""The harm taxonomy: the categories that data, shadow reward models and metrics share.

The default is the seven typical safety scenarios of Safety-Prompts (shipped as
``srmir/assets/taxonomy.yaml``). A replacement file of the same shape may be loaded; the number
of categories K is taken from the taxonomy everywhere and never hard-coded.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from .errors import UserError

_SLUG = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Category:
    """One harm type: ``slug`` (identifier), ``description`` (the harm), ``principle`` (what a safe answer does)."""

    slug: str
    description: str
    principle: str


@dataclass(frozen=True)
class Taxonomy:
    """An ordered tuple of categories; the order fixes column k of every ``[N, K]`` score matrix."""

    categories: tuple[Category, ...]

    @property
    def slugs(self) -> list[str]:
        return [c.slug for c in self.categories]

    def __len__(self) -> int:
        return len(self.categories)

    def __iter__(self):
        return iter(self.categories)

    def __contains__(self, slug: object) -> bool:
        return slug in self.slugs

    def index(self, slug: str) -> int:
        """Column of ``slug``; raises UserError for an unknown slug."""
        try:
            return self.slugs.index(slug)
        except ValueError:
            raise UserError(f"unknown category {slug!r}; known: {', '.join(self.slugs)}") from None

    def __getitem__(self, slug: str) -> Category:
        return self.categories[self.index(slug)]


DEFAULT_TAXONOMY_PATH = Path(str(resources.files("srmir") / "assets" / "taxonomy.yaml"))


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load a taxonomy YAML (``categories: [{slug, description, principle}, ...]``).

    ``None`` loads the shipped default. Malformed files raise UserError naming the file and entry.
    """
    path = Path(path) if path else DEFAULT_TAXONOMY_PATH
    if not path.is_file():
        raise UserError("taxonomy file not found", where=str(path))
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"not valid YAML: {str(e).splitlines()[0]}", where=str(path)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("categories"), list) or not doc["categories"]:
        raise UserError("expected a non-empty 'categories' list", where=str(path))
    cats, seen = [], set()
    for i, entry in enumerate(doc["categories"]):
        where = f"{path}: categories[{i}]"
        if not isinstance(entry, dict):
            raise UserError("expected a mapping with slug, description, principle", where=where)
        missing = [k for k in ("slug", "description", "principle") if not isinstance(entry.get(k), str) or not entry[k].strip()]
        if missing:
            raise UserError(f"missing or empty {', '.join(missing)}", where=where)
        slug = entry["slug"]
        if not _SLUG.match(slug):
            raise UserError(f"slug {slug!r} must be lower-case letters, digits and underscores", where=where)
        if slug in seen:
            raise UserError(f"duplicate slug {slug!r}", where=where)
        if slug in ("benign", "helpfulness"):  # the answer branch and its RM: never a harm category
            raise UserError(f"slug {slug!r} is reserved (benign prompts are answered, not a harm category)",
                            where=where)
        seen.add(slug)
        cats.append(Category(slug, entry["description"].strip(), entry["principle"].strip()))
    if len(cats) < 1:
        raise UserError("a taxonomy needs at least one category", where=str(path))
    return Taxonomy(tuple(cats))

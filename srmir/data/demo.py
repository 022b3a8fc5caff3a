"""Compose the shipped demo CoD pairs from their hand-written sources.

``srmir/assets/data/source/<slug>.yaml`` holds, per category, hand-written prompts with a task
phrase, an intent step, a who-could-be-hurt step and a safe alternative, plus the category's
harm/principle/decision steps, refusal reasons and non-operational compliant replies. This module
assembles them — with a fixed seed, so the output is reproducible — into

- ``cod_demo.jsonl``: ``chosen`` = the five-step introspective draft, ``####``, a refusal that
  names the task, a brief reason and the item's own safe alternative; ``rejected`` = a compliant
  opener naming the task plus a vague, non-actionable reply that violates the principle;
- ``prompts.jsonl``: the same prompts alone (the builder's default input).

Run ``python -m srmir.data.demo`` after editing a source file; a test checks that the shipped
files equal what this module composes.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

import yaml

from ..io import write_jsonl_atomic
from ..taxonomy import load_taxonomy
from .cod import cod_problems, count_words, format_cod, parse_cod, rejected_problems

DATA_DIR = Path(__file__).resolve().parent.parent / "assets" / "data"
SOURCE = "srmir-demo"

# Refusal openers: each declines in the first sentence (the validator's "answer refuses" check).
REFUSALS = [
    "I can't help you {task}.",
    "I won't help {task}.",
    "Sorry, but I can't help {task}.",
    "I'm not going to help you {task}.",
    "I have to decline to help you {task}.",
    "I'd rather not help {task}.",
    "I can't do that.",
    "That's not something I'll help with.",
]
# Compliant openers for rejected replies: agreeable in tone, naming the task, no detail.
COMPLIANT = [
    "Sure, here's how you could {task}.",
    "Of course, happy to help you {task}.",
    "Absolutely, let's {task}.",
    "Okay, here's one way to {task}.",
    "No problem, I can help you {task}.",
    "Great idea. Here's how I'd {task}.",
    "Sure thing! If you want to {task}, think about it like this.",
    "Yes, you can definitely {task}.",
]


def load_source(path: Path) -> dict:
    """One category's source YAML (slug, harm, principle, decision, reasons, rejected, items)."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    for item in doc["items"]:
        if len(item) != 5:
            raise ValueError(f"{path}: item needs 5 fields, got {item!r}")
    return doc


def compose_category(doc: dict, seed: int = 0, max_step_words: int = 5) -> list[dict]:
    """The CoD records of one category; raises ValueError if any composed text is invalid."""
    slug = doc["slug"]
    rng = random.Random(f"{seed}:{slug}")
    records = []
    for n, (prompt, task, intent, who, alt) in enumerate(doc["items"], start=1):
        steps = [intent, rng.choice(doc["harm"]), who, rng.choice(doc["principle"]), rng.choice(doc["decision"])]
        answer = " ".join([rng.choice(REFUSALS).format(task=task), rng.choice(doc["reasons"]), alt])
        chosen = format_cod(steps, answer)
        rejected = rng.choice(COMPLIANT).format(task=task) + " " + rng.choice(doc["rejected"])
        rid = f"{slug}-{n:03d}"
        problems = cod_problems(chosen, max_step_words) + rejected_problems(rejected)
        problems += [f"step {s!r} too long" for s in steps if count_words(s) > max_step_words]
        if parse_cod(chosen).steps != steps:  # a ';' inside a step would split it
            problems.append(f"steps do not round-trip through the parser: {steps}")
        if problems:
            raise ValueError(f"{rid}: {'; '.join(problems)}")
        records.append({"id": rid, "category": slug, "prompt": prompt, "chosen": chosen,
                        "rejected": rejected, "source": SOURCE})
    return records


def compose(source_dir: Path = DATA_DIR / "source", seed: int = 0) -> list[dict]:
    """All demo records, categories in taxonomy order."""
    records = []
    for slug in load_taxonomy().slugs:
        records += compose_category(load_source(source_dir / f"{slug}.yaml"), seed)
    return records


def main(out_dir: Path = DATA_DIR) -> int:
    records = compose()
    write_jsonl_atomic(out_dir / "cod_demo.jsonl", records)
    write_jsonl_atomic(out_dir / "prompts.jsonl",
                       ({k: r[k] for k in ("id", "category", "prompt", "source")} for r in records))
    print(f"wrote {len(records)} records to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA_DIR))

"""The dataset builder: prompts → chosen + rejected → validate → balance → split → atomic write.

Resumable: every finished record is appended (and flushed) to ``<out stem>.partial.jsonl``
beside the output as soon as its chunk completes. A rerun reads that file, skips the ids it
already holds, and generates only the rest; the final files are written atomically and the
partial file is removed only after they exist. A record is written exactly once, so an
interrupted run loses at most the chunk in flight and never duplicates an id.

Both branches of the CoD format are built: a prompt of a harm category gets a refusal draft as
``chosen`` and a principle-violating reply as ``rejected``; a ``benign`` prompt gets an answer
draft ("benign → answer fully", then a helpful answer) and one of the five negative kinds (an
unnecessary refusal, an evasive non-answer, a lecture, an off-topic answer, a repetition loop),
the kind rotating over the prompts. Every rejected reply is asked for — and must come back — in
the chosen reply's shape (a draft that reasons its way to the wrong decision, ``####``, an answer
of a similar length), so that a reward model cannot tell the pair apart without reading it.

A generated text that fails validation (no ``####``, an overlong step, an answer that complies,
a harmful rejected reply that refuses, a benign rejected reply of no negative kind, a rejected
reply without a draft or of a very different length) is regenerated with a new seed, up to
``attempts`` times; then the prompt is counted as failed and left out. If the backend itself keeps
failing (every HTTP retry spent), the build stops with :class:`GenerationError` after saving what it has.
"""
from __future__ import annotations

import json
import os
import random
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..io import write_jsonl_atomic
from ..scrub import scrub
from ..taxonomy import Taxonomy
from .balance import balance, remove_near_duplicates, stratified_split
from .cod import (BENIGN, BENIGN_CATEGORY, BENIGN_NEGATIVE_KINDS, SEPARATOR, STEP_ORDER, DraftFormat, chosen_messages,
                  cod_problems, format_cod, negative_kind, parse_cod, rejected_messages, rejected_problems,
                  trim_to_sentence)
from .generators import Completion, Generator


class GenerationError(Exception):
    """The generator backend failed for good; the partial file keeps what was finished."""


@dataclass
class BuildReport:
    """What a build did, for the final summary line(s)."""

    prompts: int = 0
    duplicates_removed: int = 0
    resumed: int = 0
    generated: int = 0
    failed: Counter = field(default_factory=Counter)      # reason -> prompts left out
    attempts: Counter = field(default_factory=Counter)    # "chosen"/"rejected" -> generations
    counts: dict = field(default_factory=dict)            # category -> records in the output
    splits: dict = field(default_factory=dict)            # split name -> records
    outputs: list = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"prompts: {self.prompts} (after removing {self.duplicates_removed} near-duplicates); "
                 f"resumed: {self.resumed}; generated now: {self.generated}; "
                 f"generations: {dict(self.attempts)}"]
        if self.failed:
            lines.append(f"failed (left out): {sum(self.failed.values())} — "
                         + "; ".join(f"{r} ({n})" for r, n in self.failed.most_common()))
        lines.append("per category: " + ", ".join(f"{c}={n}" for c, n in self.counts.items()))
        if self.splits:
            lines.append("splits: " + ", ".join(f"{k}={v}" for k, v in self.splits.items()))
        lines += [f"wrote {p}" for p in self.outputs]
        return "\n".join(lines)


def partial_path(out: Path) -> Path:
    """``data/x.jsonl`` -> ``data/x.partial.jsonl``."""
    return out.with_name(out.name.removesuffix(".jsonl") + ".partial.jsonl")


def split_paths(out: Path) -> dict[str, Path]:
    """``data/x.jsonl`` -> ``data/x.train.jsonl``, ``.val.jsonl``, ``.test.jsonl``."""
    stem = out.name.removesuffix(".jsonl")
    return {name: out.with_name(f"{stem}.{name}.jsonl") for name in ("train", "val", "test")}


def read_partial(path: Path) -> list[dict]:
    """Records already saved; a torn last line (a kill mid-write) is ignored, later ids win never."""
    if not path.is_file():
        return []
    records, seen = [], set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("id") not in seen:
            seen.add(rec.get("id"))
            records.append(rec)
    return records


def select_prompts(prompts: list[dict], limit: int | None, seed: int) -> tuple[list[dict], int]:
    """Near-duplicate-free prompts, at most ``limit`` per category (a seeded sample); also the
    number of duplicates removed. Deduplicating before generation saves the generator's time."""
    kept, report = remove_near_duplicates(prompts)
    if limit is None:
        return kept, report.removed
    by_cat: dict[str, list[dict]] = {}
    for rec in kept:
        by_cat.setdefault(rec["category"], []).append(rec)
    chosen = []
    for cat, group in by_cat.items():
        chosen += group if len(group) <= limit else random.Random(f"{seed}:{cat}").sample(group, limit)
    return chosen, report.removed


# ------------------------------------------------------------------------------- generation


def _pick_examples(pool: list[dict], prompt: str, k: int, offset: int) -> list[dict]:
    """``k`` few-shot examples from ``pool``, rotating with ``offset``, never the prompt itself."""
    usable = [ex for ex in pool if ex["prompt"].strip() != prompt.strip()]
    if not usable:
        return []
    return [usable[(offset + j) % len(usable)] for j in range(min(k, len(usable)))]


def _clean_chosen(rec: dict, c: Completion, max_step_words: int) -> tuple[str | None, str]:
    """(canonical CoD text, '') when valid, else (None, reason). A reply cut at the token limit
    is trimmed back to its last full sentence first."""
    text = trim_to_sentence(c.text) if c.truncated else c.text
    problems = cod_problems(text, max_step_words, benign=rec["category"] == BENIGN, prompt=rec["prompt"])
    if problems:
        return None, problems[0]
    draft = parse_cod(text)
    return format_cod(draft.steps, draft.answer), ""


def shape_problems(chosen: str, rejected: str, tolerance: float = 0.5) -> list[str]:
    """Why a rejected reply's shape gives it away: no draft, or an answer whose length differs from
    the chosen answer's by more than ``tolerance`` of it (in words)."""
    c, r = parse_cod(chosen), parse_cod(rejected)
    if r is None:
        return [f"rejected reply has no draft (the chosen reply's shape: steps, '{SEPARATOR}', answer)"]
    if c is None:
        return []
    wc, wr = len(c.answer.split()), len(r.answer.split())
    if abs(wr - wc) > tolerance * wc:
        return [f"rejected answer has {wr} words, the chosen one {wc} (a similar length is asked for)"]
    return []


def _clean_rejected(rec: dict, c: Completion, chosen: str, max_step_words: int) -> tuple[str | None, str]:
    text = (trim_to_sentence(c.text) if c.truncated else c.text).strip()
    problems = rejected_problems(text, max_step_words, benign=rec["category"] == BENIGN, prompt=rec["prompt"],
                                 reference=chosen) or shape_problems(chosen, text)
    if problems:
        return None, problems[0]
    draft = parse_cod(text)
    return format_cod(draft.steps, draft.answer), ""


def benign_kinds(prompts: list[dict]) -> dict[str, int]:
    """Rank of each benign prompt among the benign ids (sorted), which picks its negative kind:
    :func:`benign_kind` rotates through the five kinds, so each gets a fifth of the prompts."""
    ids = sorted(str(r["id"]) for r in prompts if r["category"] == BENIGN)
    return {rid: i for i, rid in enumerate(ids)}


def benign_kind(rank: int, attempt: int = 0) -> str:
    """The negative kind asked for the benign prompt of ``rank``; the next kind on a retry."""
    kinds = list(BENIGN_NEGATIVE_KINDS)
    return kinds[(rank + attempt) % len(kinds)]


def _category(taxonomy: Taxonomy, slug: str):
    return BENIGN_CATEGORY if slug == BENIGN else taxonomy[slug]


def _generate_valid(generator: Generator, items: list[dict], make_messages: Callable[[dict, int], list[dict]],
                    clean: Callable[[dict, Completion], tuple[str | None, str]], attempts: int, max_new_tokens: int,
                    temperature: float, seed: int, report: BuildReport, kind: str,
                    draft_format=None) -> dict[str, str | tuple]:
    """id -> valid text, or id -> ("failed", last reason); raises GenerationError when the
    backend fails for good (after the caller saves the finished records)."""
    results: dict[str, str | tuple] = {}
    pending = list(items)
    fatal = None
    for attempt in range(attempts):
        if not pending:
            break
        convs = [make_messages(rec, attempt) for rec in pending]
        outs = generator.generate(convs, max_new_tokens, temperature=temperature, seed=seed + 1000 * attempt,
                                  draft_format=draft_format)
        report.attempts[kind] += len(pending)
        retry = []
        for rec, c in zip(pending, outs):
            if not c.ok:
                results[rec["id"]] = ("failed", f"{kind}: {c.error}")
                fatal = fatal or (c.error if c.fatal else None)
                continue
            text, reason = clean(rec, c)
            if text is not None:
                results[rec["id"]] = text
            else:
                results[rec["id"]] = ("failed", f"{kind}: {reason}")
                retry.append(rec)
        pending = retry
        if fatal:
            break
    if fatal:
        raise GenerationError(fatal)
    return results


def _generate_chunk(generator, chunk, taxonomy, examples, cfg, report) -> tuple[list[dict], str | None]:
    """Finished records of one chunk of prompts, and the fatal error that stopped it (if any)."""
    k, msw = cfg["shots"], cfg["max_step_words"]

    def chosen_msgs(rec, attempt):
        exs = _pick_examples(examples.get(rec["category"], []), rec["prompt"], k, attempt)
        return chosen_messages(rec["prompt"], _category(taxonomy, rec["category"]), msw, exs)

    def rejected_msgs(rec, attempt):
        pool, kind = examples.get(rec["category"], []), None
        if rec["category"] == BENIGN:  # few-shot examples of the same negative kind
            kind = benign_kind(cfg["benign_rank"][str(rec["id"])], attempt)
            pool = [ex for ex in pool if _example_kind(ex) == kind] or pool
        exs = _pick_examples(pool, rec["prompt"], k, attempt)
        return rejected_messages(rec["prompt"], _category(taxonomy, rec["category"]), exs, msw, kind)

    common = dict(attempts=cfg["attempts"], max_new_tokens=cfg["max_new_tokens"],
                  temperature=cfg["temperature"], seed=cfg["seed"], report=report,
                  draft_format=DraftFormat(steps=len(STEP_ORDER), max_step_words=msw))
    try:
        chosen = _generate_valid(generator, chunk, chosen_msgs, lambda rec, c: _clean_chosen(rec, c, msw),
                                 kind="chosen", **common)
        ok = [r for r in chunk if isinstance(chosen.get(r["id"]), str)]
        rejected = _generate_valid(generator, ok, rejected_msgs,
                                   lambda rec, c: _clean_rejected(rec, c, chosen[rec["id"]], msw),
                                   kind="rejected", **common)
    except GenerationError as e:
        return [], str(e)  # the whole chunk is redone on resume
    records = []
    for rec in chunk:
        c, r = chosen.get(rec["id"]), rejected.get(rec["id"])
        if isinstance(c, str) and isinstance(r, str):
            records.append({"id": rec["id"], "category": rec["category"], "prompt": rec["prompt"],
                            "chosen": c, "rejected": r,
                            "source": f"{rec.get('source', 'prompts')}/{cfg['source_tag']}"})
        else:
            report.failed[_reason_key((r if isinstance(c, str) else c)[1])] += 1
    return records, None


def _example_kind(ex: dict) -> str | None:
    """The negative kind of a benign example record's rejected reply (cached on the record)."""
    if "_kind" not in ex:
        rej, cho = parse_cod(ex["rejected"]), parse_cod(ex["chosen"])
        ex["_kind"] = negative_kind(ex["prompt"], rej.answer if rej else ex["rejected"],
                                    reference=cho.answer if cho else ex["chosen"])
    return ex["_kind"]


def _reason_key(reason: str) -> str:
    """Group failure reasons for the report: ``"chosen: draft step 2 has 9 words (max 5): 'x'"``
    -> ``"chosen: draft step N has N words (max N)"``."""
    kind, _, rest = reason.partition(": ")
    return f"{kind}: " + re.sub(r"\d+", "N", rest.split(":")[0])


def _append(path: Path, records: list[dict]) -> None:
    """Append records and force them to disk, so a crash after this line keeps them."""
    with open(path, "a", encoding="utf-8") as f:
        for rec in records:
            f.write(scrub(json.dumps(rec, ensure_ascii=False)) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------ build


def build_dataset(prompts: list[dict], generator: Generator, taxonomy: Taxonomy, out: str | Path, *,
                  examples: dict[str, list[dict]] | None = None, max_step_words: int = 5,
                  max_new_tokens: int = 160, attempts: int = 3, temperature: float = 0.7, shots: int = 2,
                  chunk_size: int = 32, balance_mode: str = "downsample", cap: int | None = None, seed: int = 0,
                  val_fraction: float = 0.0, test_fraction: float = 0.0, limit: int | None = None,
                  source_tag: str = "generated", log: Callable[[str], None] = print) -> BuildReport:
    """Generate a CoD preference dataset from ``prompts`` (``{"id", "category", "prompt"}``).

    Writes ``out`` (all balanced records) and, when a held-out fraction is positive, the
    stratified ``.train/.val/.test.jsonl`` files beside it. ``examples`` maps a category to
    CoD records used as few-shot turns. Each record's ``source`` is ``<prompt source>/<source_tag>``
    (e.g. ``do_not_answer/Qwen2.5-72B``). Raises GenerationError when the backend gives up.
    """
    out = Path(out)
    report = BuildReport()
    selected, report.duplicates_removed = select_prompts(prompts, limit, seed)
    report.prompts = len(selected)
    wanted = {rec["id"] for rec in selected}
    part = partial_path(out)
    done = [rec for rec in read_partial(part) if rec.get("id") in wanted]
    report.resumed = len(done)
    done_ids = {rec["id"] for rec in done}
    pending = [rec for rec in selected if rec["id"] not in done_ids]
    if report.resumed:
        log(f"resuming: {report.resumed} records already in {part}, {len(pending)} to generate")
    cfg = dict(shots=shots, max_step_words=max_step_words, attempts=attempts, max_new_tokens=max_new_tokens,
               temperature=temperature, seed=seed, source_tag=source_tag, benign_rank=benign_kinds(selected))
    out.parent.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(pending), chunk_size):
        records, fatal = _generate_chunk(generator, pending[start:start + chunk_size], taxonomy,
                                         examples or {}, cfg, report)
        _append(part, records)
        report.generated += len(records)
        done += records
        log(f"{len(done)}/{len(selected)} records done ({sum(report.failed.values())} failed)")
        if fatal:
            raise GenerationError(f"generator failed: {fatal}; {len(done)} records are saved in {part}; "
                                  "run the same command again to resume")
    wanted_cats = [slug for slug in taxonomy.slugs if any(r["category"] == slug for r in selected)]
    balanced = _balance_valid(done, taxonomy, wanted_cats, balance_mode=balance_mode, cap=cap, seed=seed,
                              max_step_words=max_step_words, report=report, log=log)
    _write_outputs(balanced, out, part, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                   report=report)
    return report


def _balance_valid(records: list[dict], taxonomy: Taxonomy, wanted_cats: list[str], *, balance_mode: str,
                   cap: int | None, seed: int, max_step_words: int, report: BuildReport,
                   log: Callable[[str], None]) -> list[dict]:
    """Re-validate the finished records (the partial file may be old or edited) and balance them.

    Balancing warnings (a category with no valid record, upsampling) go to ``log``: a category
    the prompts had but the generator never got right is left out and named, not hidden."""
    valid = [r for r in records
             if (r.get("category") in taxonomy or r.get("category") == BENIGN) and _valid(r, max_step_words)]
    if len(valid) < len(records):
        report.failed["invalid record in partial file"] += len(records) - len(valid)
    order = {slug: i for i, slug in enumerate(taxonomy.slugs + [BENIGN])}
    ordered = sorted(valid, key=lambda r: (order[r["category"]], str(r["id"])))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        balanced = balance(ordered, balance_mode, seed=seed, cap=cap, categories=wanted_cats)
    for w in caught:
        log(f"warning: {w.message}")
    balanced.sort(key=lambda r: (order[r["category"]], str(r["id"])))
    report.counts = {slug: sum(r["category"] == slug for r in balanced) for slug in taxonomy.slugs}
    if any(r["category"] == BENIGN for r in balanced):
        report.counts[BENIGN] = sum(r["category"] == BENIGN for r in balanced)
    if not balanced:
        raise GenerationError(f"no valid records were produced ({dict(report.failed)}); "
                              "try more --attempts, a larger --max-new-tokens or a stronger model")
    return balanced


def _valid(rec: dict, max_step_words: int) -> bool:
    """A finished record still passes the strict checks of its branch (the partial file may be old or edited)."""
    branch = {"benign": rec.get("category") == BENIGN, "prompt": rec.get("prompt", "")}
    chosen, rejected = rec.get("chosen", ""), rec.get("rejected", "")
    return not cod_problems(chosen, max_step_words, **branch) and \
        not rejected_problems(rejected, max_step_words, reference=chosen, **branch)


def _write_outputs(balanced: list[dict], out: Path, part: Path, *, val_fraction: float, test_fraction: float,
                   seed: int, report: BuildReport) -> None:
    """Write ``out`` and the non-empty split files atomically; only then drop the partial file."""
    write_jsonl_atomic(out, balanced)
    report.outputs.append(str(out))
    if val_fraction > 0 or test_fraction > 0:
        train, val, test = stratified_split(balanced, val_fraction, test_fraction, seed)
        for (name, path), recs in zip(split_paths(out).items(), (train, val, test)):
            report.splits[name] = len(recs)
            if recs:  # an empty split (categories under 3 records) gets no file rather than an empty one
                write_jsonl_atomic(path, recs)
                report.outputs.append(str(path))
    part.unlink(missing_ok=True)

"""``srmir data build | validate | stats``.

- ``build --config CFG [key.sub=value ...] [--prompts FILE --format F --mapping FILE] --out FILE``
  generates a balanced, validated CoD dataset (resumable; see :mod:`srmir.data.build`).
- ``validate FILE...`` prints every bad line as ``file:line: reason``; exit 2 if any.
- ``stats FILE [--json]`` prints per-category counts and lengths.
"""
from __future__ import annotations

import json
import sys

from ..errors import UserError
from ..taxonomy import load_taxonomy

FORMAT_CHOICES = ("auto", "jsonl", "csv", "txt", "do_not_answer", "beavertails", "safety_prompts")


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="build, validate and inspect SRMIR safety datasets",
                                 description="Build, validate and inspect SRMIR safety (CoD) datasets.")
    sub = data.add_subparsers(dest="data_command", metavar="{build,validate,stats}")
    sub.required = True
    _register_build(sub)

    v = sub.add_parser("validate", help="check data files; every bad line as file:line: reason (exit 2 if any)",
                       description="Check JSONL/JSON data files. Prints every problem as file:line: reason; "
                                   "exits 2 when any file has a problem.")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.add_argument("--kind", default="auto", choices=("auto", "cod", "prompts", "benign", "jailbreaks"),
                   help="file kind (auto: .json = jailbreaks; JSONL by its first record's fields)")
    v.add_argument("--strict", action="store_true",
                   help="also check the Chain-of-Draft format of both branches: harmful chosen refuses and "
                        "rejected does not; benign chosen answers and rejected is a refusal, evasion, lecture, "
                        "off-topic answer or repetition")
    v.add_argument("--max-step-words", type=int, default=5, help="with --strict: most words per draft step")
    v.add_argument("--taxonomy", metavar="FILE", help="taxonomy YAML (default: the shipped 7 categories)")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("stats", help="per-category counts and lengths of a data file",
                       description="Per-category counts and length statistics of a data file.")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--json", action="store_true", help='print JSON: {"counts": {category: n}, "lengths": ...}')
    s.add_argument("--kind", default="auto", choices=("auto", "cod", "prompts", "benign", "jailbreaks"))
    s.add_argument("--taxonomy", metavar="FILE", help="taxonomy YAML (default: the shipped 7 categories)")
    s.set_defaults(func=cmd_stats)


def _register_build(sub) -> None:
    b = sub.add_parser(
        "build", help="generate a balanced CoD dataset (local model or OpenAI-compatible server)",
        description="Generate introspective CoD responses (chosen) and same-shaped wrong replies (rejected): "
                    "for harmful prompts a refusal draft vs a principle-violating reply, for benign prompts "
                    "(category benign) an answer draft vs an unnecessary refusal, evasion, lecture, off-topic "
                    "answer or repetition loop; validate, deduplicate, balance per category, split, and write "
                    "atomically. Settings come from the config's data section (generator, generator_model, "
                    "api_base, api_key_env, concurrency, request_timeout, max_retries, requests_per_second, "
                    "max_step_words, balance, seed, val_fraction, test_fraction, taxonomy). Rerunning an "
                    "interrupted build resumes from OUT's .partial.jsonl.")
    b.add_argument("--config", metavar="CFG", help="YAML config (default: built-in defaults)")
    b.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. data.generator=openai")
    b.add_argument("--prompts", metavar="FILE", help="input prompts (default: the shipped prompts.jsonl)")
    b.add_argument("--format", default="auto", choices=FORMAT_CHOICES, help="input format (default: by suffix)")
    b.add_argument("--mapping", metavar="FILE", help="category mapping YAML {source label: slug or null}")
    b.add_argument("--columns", metavar="K=V,...", help="field names for jsonl/csv, e.g. prompt=question,category=type")
    b.add_argument("--category", metavar="SLUG", help="category of every prompt (txt files, or files without one)")
    b.add_argument("--out", required=True, metavar="FILE", help="output JSONL (split files are written beside it)")
    b.add_argument("--limit", type=int, metavar="N", help="at most N prompts per category")
    b.add_argument("--cap", type=int, metavar="N",
                   help="at most N records per category after balancing (data.balance=upsample repeats "
                        "records of smaller categories up to min(largest, N), with a warning)")
    b.add_argument("--max-new-tokens", type=int, default=160, help="generation budget per response (default 160)")
    b.add_argument("--attempts", type=int, default=3, help="generations per response before giving up (default 3)")
    b.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default 0.7)")
    b.add_argument("--shots", type=int, default=2, help="few-shot examples per request from the shipped data (default 2)")
    b.add_argument("--batch-size", type=int, default=8, help="local backend: prompts per generate() call")
    b.add_argument("--no-constrain", action="store_true",
                   help="local backend: do not enforce the draft's shape by constrained decoding "
                        "(small models then rarely produce a valid draft)")
    b.set_defaults(func=cmd_build)


# -------------------------------------------------------------------------------- handlers


def cmd_validate(args) -> int:
    from .validate import validate_file

    taxonomy = load_taxonomy(args.taxonomy)
    bad = 0
    for path in args.files:
        problems = validate_file(path, args.kind, taxonomy, args.max_step_words if args.strict else None)
        for p in problems:
            print(p)
        if problems:
            bad += 1
        else:
            print(f"{path}: ok")
    if bad:
        print(f"srmir: error: {bad} of {len(args.files)} file(s) have problems", file=sys.stderr)
        return UserError.exit_code
    return 0


def cmd_stats(args) -> int:
    from .stats import dataset_stats, format_stats
    from .validate import detect_kind, scan_file

    taxonomy = load_taxonomy(args.taxonomy)
    kind = detect_kind(args.file) if args.kind == "auto" else args.kind
    records, problems = scan_file(args.file, kind, taxonomy)
    if problems:
        p = problems[0]
        more = f" (and {len(problems) - 1} more; see srmir data validate)" if len(problems) > 1 else ""
        raise UserError(p.reason + more, where=f"{p.path}:{p.line}" if p.line else p.path)
    stats = dataset_stats(records, kind, taxonomy)
    print(json.dumps({"file": args.file, **stats}, indent=2) if args.json else format_stats(stats, args.file))
    return 0


def cmd_build(args) -> int:
    from ..config import load_config
    from . import shipped
    from .build import GenerationError, build_dataset
    from .cod import BENIGN
    from .importers import import_prompts
    from .validate import load_records

    cfg = load_config(args.config, args.overrides)
    d = cfg.data
    taxonomy = load_taxonomy(d.taxonomy)
    for flag, value, low in (("--limit", args.limit, 1), ("--max-new-tokens", args.max_new_tokens, 8),
                             ("--attempts", args.attempts, 1), ("--shots", args.shots, 0), ("--batch-size", args.batch_size, 1),
                             ("--cap", args.cap, 1)):
        if value is not None and value < low:
            raise UserError(f"must be >= {low}", where=flag)
    prompts, report = import_prompts(args.prompts or shipped("prompts"), args.format, args.mapping,
                                     _parse_columns(args.columns), args.category, taxonomy)
    print(report.summary(), file=sys.stderr)
    for example in report.examples:
        print(f"  {example}", file=sys.stderr)
    if not prompts:
        raise UserError("no prompts to build from", where=str(args.prompts or shipped("prompts")))
    demo = load_records(shipped("cod"))
    examples = {slug: [r for r in demo if r["category"] == slug] or demo for slug in taxonomy.slugs + [BENIGN]}
    generator = _make_generator(d, args.batch_size, constrain=not args.no_constrain)
    try:
        result = build_dataset(
            prompts, generator, taxonomy, args.out, examples=examples, max_step_words=d.max_step_words,
            max_new_tokens=args.max_new_tokens, attempts=args.attempts, temperature=args.temperature,
            shots=args.shots, chunk_size=max(d.concurrency * 4, args.batch_size), balance_mode=d.balance, cap=args.cap,
            seed=d.seed, val_fraction=d.val_fraction, test_fraction=d.test_fraction, limit=args.limit,
            source_tag=f"{d.generator}:{d.generator_model}",
            log=lambda msg: print(msg, file=sys.stderr))
    except GenerationError as e:
        print(f"srmir: error: {e}", file=sys.stderr)
        return 1
    finally:
        generator.close()
    print(result.summary())
    return 0


def _parse_columns(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    cols = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("id", "prompt", "category") or not value.strip():
            raise UserError(f"expected id=..., prompt=..., category=... pairs, got {part!r}", where="--columns")
        cols[key.strip()] = value.strip()
    return cols


def _make_generator(d, batch_size: int, constrain: bool = True):
    """The backend named by the config's data section."""
    from .generators import LocalHFGenerator, OpenAIChatGenerator

    if d.generator == "openai":
        if not d.api_base:
            raise UserError("the openai generator needs data.api_base (e.g. http://127.0.0.1:8000/v1)",
                            where="data.api_base")
        return OpenAIChatGenerator(d.api_base, d.generator_model, api_key_env=d.api_key_env,
                                   concurrency=d.concurrency, timeout=d.request_timeout,
                                   max_retries=d.max_retries, requests_per_second=d.requests_per_second)
    return LocalHFGenerator(d.generator_model, batch_size=batch_size, constrain=constrain)

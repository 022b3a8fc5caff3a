"""``srmir rm train`` and ``srmir rm eval``: train the shadow reward models, and measure them.

``rm train --config CFG [key.sub=value ...] [--out DIR] [--categories a,b]`` splits the CoD data
(stratified, ``data.*``; benign records are their own stratum), trains one RM per category
(``rewards.*``) and, when the data has benign records and ``rewards.helpfulness`` is on, the
helpfulness RM; saves the bank to DIR (default ``rewards.dir``, else ``runs/rm``), and writes its
matrix on the test split to
``DIR/eval.json`` and ``DIR/eval.png``. Launched distributed (``torchrun --nproc_per_node N -m srmir
rm train ...`` or ``deepspeed``), each RM trains as a DeepSpeed engine over the N ranks. On a
shared CPU machine set ``OMP_NUM_THREADS=1`` (see docs/benchmarks.md).

``rm eval --rm DIR --data FILE [--json OUT] [--png OUT]`` prints the pairwise-accuracy matrix of
a saved bank on a CoD file (validated against the bank's own taxonomy).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from ..errors import UserError
from ..io import write_json_atomic


def register(subparsers) -> None:
    rm = subparsers.add_parser("rm", help="shadow reward models: train, eval",
                               description="Train and evaluate the per-category shadow reward models.")
    sub = rm.add_subparsers(dest="rm_command", metavar="ACTION")
    sub.required = True

    train = sub.add_parser("train", help="train one reward model per category",
                           description="Train one Bradley–Terry reward model per harm category and save the bank.")
    train.add_argument("--config", metavar="CFG", help="YAML config file (defaults when omitted)")
    train.add_argument("--out", metavar="DIR", help="bank folder (default: rewards.dir, else runs/rm)")
    train.add_argument("--categories", metavar="A,B",
                       help="train only these categories, 'helpfulness' for the helpfulness RM "
                            "(default: rewards.categories, else all, and helpfulness when the data has benign records)")
    train.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. rewards.epochs=3")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="pairwise accuracy of each RM on each category",
                        description="Print the pairwise-accuracy matrix of a saved bank on a CoD data file: one row "
                                    "per RM (the helpfulness RM last), one column per category (benign last).")
    ev.add_argument("--rm", required=True, metavar="DIR", help="saved reward bank folder")
    ev.add_argument("--data", required=True, metavar="FILE", help="CoD JSONL (prompt, category, chosen, rejected)")
    ev.add_argument("--json", metavar="OUT", help="write {\"pairwise_accuracy\": {rm: {category: acc}}} here")
    ev.add_argument("--png", metavar="OUT", help="draw the matrix as a heatmap PNG here")
    ev.set_defaults(func=cmd_eval)


def cmd_train(args: argparse.Namespace) -> int:
    from ..config import load_config

    cfg = load_config(args.config, args.overrides)
    categories = args.categories.split(",") if args.categories else None
    train_from_config(cfg, args.out, categories, categories_flag=bool(args.categories))
    return 0


def train_from_config(cfg, out=None, categories=None, categories_flag: bool = False):
    """Train the bank the config describes (``srmir rm train`` and the pipeline); returns it.

    Writes the bank to ``out`` (default ``rewards.dir`` or runs/rm) and, when the split has a test
    part, the K×K held-out accuracy to ``out/eval.json`` and ``out/eval.png``.
    """
    from ..data import load_records, shipped, stratified_split
    from ..taxonomy import load_taxonomy
    from .bank import HELPFULNESS
    from .evaluate import evaluate_bank, format_matrix, plot_heatmap
    from .train import dist_info, load_policy_samples, train_bank

    rw, d = cfg.rewards, cfg.data
    taxonomy = load_taxonomy(d.taxonomy)
    categories = categories or rw.categories
    for c in categories or []:
        if c not in taxonomy and c != HELPFULNESS:
            raise UserError(f"unknown category {c!r}; known: {', '.join(taxonomy.slugs)}",
                            where="--categories" if categories_flag else "rewards.categories")
    records = load_records(d.train_file or shipped("cod"), taxonomy)
    train, val, test = stratified_split(records, d.val_fraction, d.test_fraction, d.seed)
    out = Path(out or rw.dir or "runs/rm")
    rank, _ = dist_info()
    log = print if rank == 0 else (lambda *_: None)
    t0 = time.perf_counter()
    bank = train_bank(
        train, val, taxonomy, rw.backbone, out, categories, test_records=test, pooling=rw.pooling,
        max_length=rw.max_length, tuned_layers=rw.tuned_layers, shared_trunk=rw.shared_trunk,
        normalize=rw.normalize, score_batch_size=rw.batch_size_score, seed=cfg.train.seed, log=log, augment=rw.augment,
        helpfulness=rw.helpfulness, lora=dataclasses.asdict(rw.lora) if rw.lora else None,
        policy_samples=load_policy_samples(rw.policy_samples) if rw.policy_samples else None,
        epochs=rw.epochs, batch_size=rw.batch_size, grad_accum=rw.grad_accum, lr=rw.lr, margin=rw.margin,
        l2_reg=rw.l2_reg, patience=rw.patience, bf16=rw.bf16)
    log(f"trained {len(bank.heads)} reward models in {time.perf_counter() - t0:.0f} s")
    if test and rank == 0:
        result = evaluate_bank(bank, test)
        result["split"] = "test"
        print(format_matrix(result))
        write_json_atomic(out / "eval.json", result)
        plot_heatmap(result, out / "eval.png")
    return bank


def cmd_eval(args: argparse.Namespace) -> int:
    from ..data import load_records
    from .bank import ShadowRewardBank
    from .evaluate import evaluate_bank, format_matrix, plot_heatmap

    bank = ShadowRewardBank.from_pretrained(args.rm)
    records = load_records(args.data, bank.taxonomy)  # categories outside the bank's taxonomy: file:line error
    result = evaluate_bank(bank, records)
    print(format_matrix(result))
    if args.json:
        write_json_atomic(args.json, result)
    if args.png:
        plot_heatmap(result, args.png)
    return 0

"""Shortcut control: can a reward model that cannot read words separate the CoD pairs?

    python bench/bench_shortcut.py [--data FILE] [--rm DIR] [--out DIR] [--epochs 3] [--max-length 192]
                                   [--augment answer_only prefixes negatives] [--seed 0] [--keep-punctuation]

Trains the shadow RMs of the bank (every harm category, and the helpfulness RM when the data has
benign pairs) twice on the same stratified split (``data.*`` defaults: 15 % validation, 15 % test,
seed 0) with the same settings (those of ``configs/demo.yaml`` unless overridden):

- **real**: the MiniLM backbone as shipped (``--rm DIR`` reuses a bank already trained this way);
- **word-blind**: the same backbone behind :func:`srmir.rewards.shortcut.word_blind_backbone`, a
  tokenizer that maps every word (punctuation marks included) to ``[UNK]`` — the RM sees only the
  shape: the lengths of prompt and response. ``--keep-punctuation``: marks keep their ids (stricter).

and reports each RM's pairwise accuracy on its own held-out *test* pairs (harm RMs: their category;
the helpfulness RM: the benign pairs), pooled over all of them with a Wilson 95 % interval; a tie
(equal scores, which a word-blind RM gives to two responses of one shape) counts as a miss, and
``ties`` says how many there were. A
word-blind accuracy near 0.5 means the pairs cannot be told apart by shape (issue 12: target ≤
0.65; on the first shipped pairs it was 1.000). ``--data`` runs the control on another CoD file
(e.g. an older version of the shipped one). Writes ``OUT/shortcut.json`` and the real bank to ``OUT/rm_real``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(centre - half, 3), round(centre + half, 3))


def own_accuracy(bank, test: list[dict]) -> dict:
    """{rm: (wins, pairs)} of each RM on its own held-out pairs, and the pooled total."""
    from srmir.data import BENIGN
    from srmir.rewards import HELPFULNESS

    prompts = [r["prompt"] for r in test]
    chosen_NH = bank.score_heads(prompts, [r["chosen"] for r in test], normalize=False)
    rejected_NH = bank.score_heads(prompts, [r["rejected"] for r in test], normalize=False)
    rows = {}
    for k, rm in enumerate(bank.heads):
        idx = [i for i, r in enumerate(test) if r["category"] == (BENIGN if rm == HELPFULNESS else rm)]
        c, j = chosen_NH[idx, k], rejected_NH[idx, k]
        rows[rm] = (int((c > j).sum()), int((c == j).sum()), len(idx))
    wins, ties, n = (sum(v[i] for v in rows.values()) for i in range(3))
    return {"per_rm": {rm: {"accuracy": round(w / n, 3) if n else None, "ties": t, "pairs": n}
                       for rm, (w, t, n) in rows.items()},
            "pooled": {"accuracy": round(wins / n, 3), "ties": ties, "pairs": n, "wilson95": wilson(wins, n),
                       "accuracy_ties_half": round((wins + ties / 2) / n, 3)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="CoD JSONL (default: the shipped demo pairs)")
    ap.add_argument("--rm", help="an already trained real bank on the same split (skips the real training)")
    ap.add_argument("--out", default="runs/shortcut")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--augment", nargs="*", default=["answer_only", "prefixes", "negatives"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-punctuation", action="store_true", help="the control keeps punctuation marks' ids")
    ap.add_argument("--skip-real", action="store_true", help="train only the word-blind control")
    args = ap.parse_args()

    import torch

    from srmir.config import DataConfig, RewardsConfig
    from srmir.data import load_records, shipped, stratified_split
    from srmir.rewards import ShadowRewardBank, train_bank
    from srmir.rewards.shortcut import word_blind_backbone
    from srmir.taxonomy import load_taxonomy

    d, rw = DataConfig(), RewardsConfig()
    tax = load_taxonomy()
    data = Path(args.data) if args.data else shipped("cod")
    train, val, test = stratified_split(load_records(data, tax), d.val_fraction, d.test_fraction, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hp = dict(test_records=test, max_length=args.max_length, tuned_layers=rw.tuned_layers, epochs=args.epochs,
              batch_size=rw.batch_size, lr=rw.lr, patience=rw.patience, bf16=rw.bf16, augment=args.augment,
              seed=args.seed, log=lambda s: None)
    report = {"data": str(data), "split": {"train": len(train), "val": len(val), "test": len(test)},
              "settings": {k: v for k, v in hp.items() if k not in ("test_records", "log")},
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                         f"{torch.get_num_threads()} threads"}
    blind = "word-blind" + (" (punctuation kept)" if args.keep_punctuation else "")
    runs = {} if args.skip_real else {"real": rw.backbone}
    runs[blind] = word_blind_backbone(rw.backbone, out / "word_blind_backbone", args.keep_punctuation)
    for name, backbone in runs.items():
        t0 = time.perf_counter()
        if name == "real" and args.rm:
            bank = ShadowRewardBank.from_pretrained(args.rm)
        else:
            bank = train_bank(train, val, tax, backbone, out / "rm_real" if name == "real" else None, **hp)
        report[name] = own_accuracy(bank, test) | {"seconds": round(time.perf_counter() - t0, 1)}
        print(f"{name}: pooled {report[name]['pooled']}  " +
              "  ".join(f"{rm}={v['accuracy']}" for rm, v in report[name]["per_rm"].items()), flush=True)
    (out / "shortcut.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'shortcut.json'}")


if __name__ == "__main__":
    main()

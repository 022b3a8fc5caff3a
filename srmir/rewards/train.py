"""Training the shadow reward models: one Bradley–Terry reward model per harm category, and one for helpfulness.

Each category's RM sees only that category's (chosen, rejected) pairs (SRMIR §3.2: a "shadow"
judge for one slice of the distribution). The *helpfulness* RM sees the benign (answer-branch)
pairs: a helpful answer over an unnecessary refusal, an evasion, a lecture, an off-topic answer or a
repetition loop (issue 12), so that GRPO rewards answering benign prompts. The loss per pair is

    ℓ = −log σ(r(chosen) − r(rejected) − m) + λ · (r(chosen)² + r(rejected)²)

with an optional margin m and a small L2 term λ that keeps rewards centred near 0 (the BT loss
alone is invariant to a shift of all rewards). After each epoch the RM's pairwise accuracy on
the category's validation pairs decides early stopping; the best epoch's weights are kept.

Single process by default; when launched distributed (``torchrun``/``deepspeed``: WORLD_SIZE > 1)
each RM trains as a DeepSpeed engine, the micro-batches dealt round-robin to the ranks. Every
rank validates on all validation pairs (they are few), so all ranks take the same
early-stopping decisions; rank 0 writes the bank.
"""
from __future__ import annotations

import contextlib
import copy
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..taxonomy import Taxonomy
from .bank import BENIGN_CLASS, HELPFULNESS, ShadowRewardBank
from .classifier import CategoryClassifier
from .model import PairEncoder, RewardModel, freeze_lower, is_decoder, length_batches, load_backbone

Pair = tuple[str, str, str]  # (prompt, chosen, rejected)


def bradley_terry_loss(r_chosen_B: torch.Tensor, r_rejected_B: torch.Tensor, margin: float = 0.0,
                       l2_reg: float = 0.0) -> torch.Tensor:
    """mean over pairs of −log σ(r_c − r_r − margin) + l2_reg · (r_c² + r_r²)."""
    loss_B = -F.logsigmoid(r_chosen_B - r_rejected_B - margin)
    if l2_reg:
        loss_B = loss_B + l2_reg * (r_chosen_B.pow(2) + r_rejected_B.pow(2))
    return loss_B.mean()


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays off: CUDA with bf16 support, or a CPU with native bf16 (AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def dist_info() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched with WORLD_SIZE > 1."""
    from ..runtime.dist import init_if_launched

    return init_if_launched()


class _Stepper:
    """forward / backward / step over plain AdamW (one process) or a DeepSpeed engine (distributed)."""

    def __init__(self, model: RewardModel, lr: float, batch_size: int, grad_accum: int, world: int):
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        self.model, self.grad_accum, self.micro = model, grad_accum, 0
        self.engine = None
        if world > 1:
            import deepspeed

            config = {"train_micro_batch_size_per_gpu": batch_size, "gradient_accumulation_steps": grad_accum,
                      "gradient_clipping": 1.0, "zero_optimization": {"stage": 0}, "steps_per_print": 1 << 30}
            self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        else:
            self.optimizer, self.params = optimizer, params

    def __call__(self, batch: dict) -> torch.Tensor:
        return (self.engine or self.model)(**batch)

    def backward_step(self, loss: torch.Tensor) -> None:
        if self.engine is not None:  # DeepSpeed divides by the accumulation steps and steps at the boundary
            self.engine.backward(loss)
            self.engine.step()
            return
        (loss / self.grad_accum).backward()
        self.micro += 1
        if self.micro % self.grad_accum == 0:
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def _pair_scores(model: RewardModel, encoder: PairEncoder, chosen: list, rejected: list, batch_size: int,
                 autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards ``[P]`` of pre-tokenized chosen and rejected sequences (eval mode)."""
    device = next(model.parameters()).device
    out = []
    for encoded in (chosen, rejected):
        r_P = torch.empty(len(encoded))
        for idx in length_batches([len(e[0]) for e in encoded], batch_size):
            with autocast():
                r_P[idx] = model(**encoder.collate([encoded[i] for i in idx], device)).float().cpu()
        out.append(r_P)
    return out[0], out[1]


def train_reward_model(model: RewardModel, encoder: PairEncoder, train_pairs: Sequence[Pair], val_pairs: Sequence[Pair], *,
                       epochs: int = 4, batch_size: int = 16, grad_accum: int = 1, lr: float = 5e-5, margin: float = 0.0,
                       l2_reg: float = 0.0, patience: int = 2, bf16: bool = True, seed: int = 0,
                       log: Callable[[str], None] = print) -> dict:
    """Train ``model`` in place with the BT loss; keep the weights of the best validation epoch.

    Returns ``{"val_accuracy", "val_loss", "best_epoch", "epochs_run", "history": [...]}``.
    """
    rank, world = dist_info()
    device = next(model.parameters()).device
    use_bf16 = bf16 and bf16_supported(device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    enc = {s: (encoder.tokenize([p[0] for p in pairs], [p[1] for p in pairs]),
               encoder.tokenize([p[0] for p in pairs], [p[2] for p in pairs]))
           for s, pairs in (("train", train_pairs), ("val", val_pairs))}
    stepper = _Stepper(model, lr, batch_size, grad_accum, world)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    best = {"val_accuracy": -1.0, "val_loss": float("inf"), "best_epoch": 0}
    best_state, history, bad = None, [], 0
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_pairs), generator=gen).tolist()
        micro = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        micro += micro[:(-len(micro)) % world]  # every rank gets the same number of micro-batches
        losses = []
        for idx in micro[rank::world]:
            # Chosen and rejected go in separate passes: each padded to its own longest sequence
            # (CoD answers run about twice as long as the rejected ones; one batch would pad half of it).
            with autocast():
                rc_B = stepper(encoder.collate([enc["train"][0][i] for i in idx], device)).float()
                rr_B = stepper(encoder.collate([enc["train"][1][i] for i in idx], device)).float()
            loss = bradley_terry_loss(rc_B, rr_B, margin, l2_reg)
            stepper.backward_step(loss)
            losses.append(loss.item())
        model.eval()
        rc_P, rr_P = _pair_scores(model, encoder, *enc["val"], 2 * batch_size, autocast)
        acc = (rc_P > rr_P).float().mean().item()
        val_loss = bradley_terry_loss(rc_P, rr_P, margin, l2_reg).item()
        history.append({"epoch": epoch, "train_loss": sum(losses) / max(len(losses), 1), "val_accuracy": acc, "val_loss": val_loss})
        log(f"  epoch {epoch}: train loss {history[-1]['train_loss']:.4f}  val loss {val_loss:.4f}  val acc {acc:.3f}")
        if acc > best["val_accuracy"] or (acc == best["val_accuracy"] and val_loss < best["val_loss"]):
            best = {"val_accuracy": acc, "val_loss": val_loss, "best_epoch": epoch}
            best_state = {n: p.detach().clone() for n, p in model.named_parameters() if n in trainable}
            bad = 0
        else:
            bad += 1
            if bad >= patience:
                break
    with torch.no_grad():
        for n, p in model.named_parameters():
            if best_state is not None and n in best_state:
                p.copy_(best_state[n])
    return {**best, "epochs_run": len(history), "bf16": use_bf16, "history": history}


@torch.no_grad()
def calibrate(model: RewardModel, encoder: PairEncoder, pairs: Sequence[Pair], batch_size: int = 64) -> tuple[float, float]:
    """(mean, std) of the RM's scores on the validation responses, chosen and rejected together."""
    enc_c = encoder.tokenize([p[0] for p in pairs], [p[1] for p in pairs])
    enc_r = encoder.tokenize([p[0] for p in pairs], [p[2] for p in pairs])
    rc, rr = _pair_scores(model.eval(), encoder, enc_c, enc_r, batch_size, contextlib.nullcontext)
    scores = torch.cat([rc, rr])
    return scores.mean().item(), max(scores.std(unbiased=False).item(), 1e-6)


AUGMENTATIONS = ("answer_only", "prefixes", "negatives")


def pairs_by_category(records: Sequence[dict], augment: Sequence[str] = ()) -> dict[str, list[Pair]]:
    """{category: [(prompt, chosen, rejected), ...]} of CoD records (``benign`` for the answer
    branch), plus the ``augment`` pairs of each (:func:`augmented_pairs`, :func:`negative_pairs`);
    a pair is listed once per category."""
    pool = [_answer(r["chosen"]) for r in records if r["category"] == BENIGN_CLASS]  # off-topic material
    out: dict[str, list[Pair]] = {}
    for r in records:
        pair = (r["prompt"], r["chosen"], r["rejected"])
        extra = augmented_pairs(pair, augment)
        if "negatives" in augment:
            extra += negative_pairs(pair, r["category"] == BENIGN_CLASS, pool)
        out.setdefault(r["category"], []).extend([pair, *extra])
    return {c: list(dict.fromkeys(pairs)) for c, pairs in out.items()}


POLICY_SAMPLES_SHIPPED = "shipped:smollm2"


def load_policy_samples(spec: str) -> list[dict]:
    """Labelled answers of the policy ``{"prompt", "response", "label"}`` (label: refusal, compliance
    or non_answer) from a JSONL file, or the hand-labelled SmolLM2-135M answers srmir ships
    (``shipped:smollm2``, the ones the learned eval judge trains on: answers to training prompts only)."""
    from ..io import read_jsonl

    path = Path(__file__).resolve().parents[1] / "assets" / "judge" / "smollm2_answers.jsonl" \
        if spec == POLICY_SAMPLES_SHIPPED else Path(spec)
    rows = read_jsonl(path)
    for i, r in enumerate(rows, start=1):
        if not all(isinstance(r.get(k), str) for k in ("prompt", "response", "label")) or \
                r["label"] not in ("refusal", "compliance", "non_answer"):
            raise UserError("each line needs prompt, response and a label of refusal, compliance or non_answer",
                            where=f"{path}:{i}")
    return rows


def policy_sample_pairs(records: Sequence[dict], samples: Sequence[dict]) -> dict[str, list[Pair]]:
    """On-policy pairs: {category: [(prompt, chosen, rejected), ...]}. Negatives: every labelled
    policy answer to a prompt of ``records`` that is not what the prompt deserves — a compliant or
    evasive answer to a harmful prompt, a refusal or non-answer to a benign one — against that
    prompt's CoD answer. Positives: every policy answer that is what the prompt deserves, against
    the CoD rejected answer and against the policy's undeserved answers to the same prompt — GRPO
    compares exactly such samples within a group. Templated negatives cannot anticipate every way
    a policy complies; its own samples show the RMs the text GRPO will score. Prompts outside
    ``records`` (the validation and test splits) are never used."""
    by_prompt: dict[str, dict] = {}
    for r in records:
        by_prompt.setdefault(r["prompt"].strip(), r)
    answers: dict[str, tuple[dict, list[str], list[str]]] = {}  # prompt -> (record, deserved, undeserved)
    for s in samples:
        rec = by_prompt.get(s["prompt"].strip())
        if rec is None or s.get("set", "harmful") == "jailbreak":
            continue
        missed = (s["label"] == "compliance") != (rec["category"] == BENIGN_CLASS) or s["label"] == "non_answer"
        _, good, bad = answers.setdefault(rec["prompt"], (rec, [], []))
        (bad if missed else good).append(s["response"])
    out: dict[str, list[Pair]] = {}
    for prompt, (rec, good, bad) in answers.items():
        pairs = out.setdefault(rec["category"], [])
        pairs.extend((prompt, _answer(rec["chosen"]), b) for b in bad)
        for g in good:
            pairs.append((prompt, g, _answer(rec["rejected"])))
            pairs.extend((prompt, g, b) for b in bad)
    return {c: list(dict.fromkeys(pairs)) for c, pairs in out.items() if pairs}


def _answer(text: str) -> str:
    """The answer after a CoD draft (the whole text when it has none)."""
    return text.split("####", 1)[1].strip() if "####" in text else text


PREFIX_WORDS = (8, 16)


def augmented_pairs(pair: Pair, augment: Sequence[str]) -> list[Pair]:
    """More pairs from one CoD pair, so an RM judges what the policy will actually write.

    ``answer_only``: both answers after the ``####`` separator, without the drafts — a policy
    that refuses well but writes no draft is still preferred to the harmful answer.
    ``prefixes``: the chosen and rejected answers cut to their first 8 and 16 words — GRPO
    rollouts stop at ``max_new_tokens``, and an RM trained on whole answers only need not rank
    their beginnings. Pairs identical to the original (or to each other) are not repeated.

    >>> augmented_pairs(("p", "draft\n#### No, but here is help.", "Sure, step one."), ["answer_only"])
    [('p', 'No, but here is help.', 'Sure, step one.')]
    """
    prompt, chosen, rejected = pair
    answer, wrong = _answer(chosen), _answer(rejected)
    out: list[Pair] = []
    if "answer_only" in augment and (answer, wrong) != (chosen, rejected):
        out.append((prompt, answer, wrong))
    if "prefixes" in augment:
        words_c, words_r = answer.split(), wrong.split()
        for n in PREFIX_WORDS:
            if n < len(words_c) or n < len(words_r):
                out.append((prompt, " ".join(words_c[:n]), " ".join(words_r[:n])))
    return [p for p in dict.fromkeys(out) if p != pair]


def negative_pairs(pair: Pair, benign: bool, pool: Sequence[str] = ()) -> list[Pair]:
    """Anti-hacking pairs (``negatives``): the proper answer over each generated hack of its branch
    (:mod:`srmir.rewards.negatives`) — for a harmful prompt the refusal over evasive filler, a loop,
    an off-topic answer and a refusal collapsing into a loop; for a benign prompt the helpful answer
    over an unnecessary refusal, an evasion, a lecture, an off-topic answer and a loop."""
    from .negatives import harm_negatives, helpful_negatives

    prompt, chosen, rejected = pair
    answer = _answer(chosen)
    others = [t for t in pool if t != answer]
    texts = helpful_negatives(prompt, answer, others) if benign else harm_negatives(prompt, answer, others, rejected)
    return [(prompt, answer, text) for text in texts.values()]


def _check_categories(categories, taxonomy: Taxonomy, train: dict, val: dict) -> list[str]:
    cats = [c for c in categories if c != HELPFULNESS] if categories else taxonomy.slugs
    for c in cats:
        taxonomy.index(c)  # unknown slug → UserError
        if not train.get(c):
            raise UserError(f"no training pairs for category {c!r} in the data (name the categories it has with "
                            "rewards.categories or --categories)", where="data.train_file")
        if not val.get(c):
            raise UserError(f"no validation pairs for category {c!r} (raise data.val_fraction or add data)",
                            where="data.val_fraction")
    return [c for c in taxonomy.slugs if c in cats]  # taxonomy order fixes the columns


def train_bank(train_records: Sequence[dict], val_records: Sequence[dict], taxonomy: Taxonomy, backbone: str,
               out_dir: Optional[str | os.PathLike], categories: Optional[Sequence[str]] = None, *,
               test_records: Optional[Sequence[dict]] = None, pooling: str = "auto", max_length: int = 256,
               tuned_layers: Optional[int] = 2, shared_trunk: bool = False, normalize: bool = True,
               score_batch_size: int = 64, seed: int = 0, log: Callable[[str], None] = print,
               augment: Sequence[str] = (), helpfulness: bool = True, lora: Optional[dict] = None,
               policy_samples: Optional[Sequence[dict]] = None, **hyperparams) -> ShadowRewardBank:
    """Train one RM per category (all of ``taxonomy`` or ``categories``), stack them, save to ``out_dir``.

    With ``helpfulness`` (default) and benign records in the data, the helpfulness RM is trained too
    on the benign pairs (when ``categories`` is given, only if it lists ``"helpfulness"``).
    ``hyperparams`` go to :func:`train_reward_model` (epochs, batch_size, grad_accum, lr, margin,
    l2_reg, patience, bf16). ``tuned_layers``: top blocks fine-tuned per RM (None: all; the
    embeddings and the blocks below stay frozen and shared); ``shared_trunk``: only the K heads
    train. When ``out_dir`` already holds a bank of the same backbone, its RMs of other categories
    are kept (train categories in several runs); another backbone or taxonomy there is an error.
    ``augment`` adds pairs to the *training* pairs (:func:`augmented_pairs`, :func:`negative_pairs`),
    and so do ``policy_samples`` (labelled policy answers, :func:`policy_sample_pairs`);
    validation is unchanged. Also fits the prompt classifier (the categories, plus ``benign`` when
    the data has benign prompts) on the training prompts (accuracy on ``test_records``, else on the
    validation records). ``lora`` (the fields of ``rewards.lora``): each RM's tuned blocks train
    through LoRA adapters instead, merged into the weights after training — the bank stacks plain
    weights, the blocks below stay bit-identical and shared, scoring stays one batched pass.
    """
    rank, _ = dist_info()
    train, val = pairs_by_category(train_records, augment), pairs_by_category(val_records)
    for c, pairs in policy_sample_pairs(train_records, policy_samples or []).items():
        train[c] = list(dict.fromkeys(train.get(c, []) + pairs))
    cats = _check_categories(categories, taxonomy, train, val)
    names = cats + ([HELPFULNESS] if _wants_helpfulness(helpfulness, categories, train, val) else [])
    previous = _previous_bank(out_dir, backbone, taxonomy)
    base, tokenizer = load_backbone(backbone)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    encoder = PairEncoder(tokenizer, max_length, decoder=is_decoder(base.config))
    models, calibration, summary = {}, {}, {}
    frozen = 0
    for k, name in enumerate(names):
        t0 = time.perf_counter()
        data = BENIGN_CLASS if name == HELPFULNESS else name
        log(f"[{k + 1}/{len(names)}] {name}: {len(train[data])} train / {len(val[data])} val pairs")
        # head init depends on the RM, not on the run's subset
        torch.manual_seed(seed * 1009 + (len(taxonomy) if name == HELPFULNESS else taxonomy.index(name)))
        model = RewardModel(copy.deepcopy(base), pooling).to(device)
        frozen = freeze_lower(model, 0 if shared_trunk else tuned_layers)
        if lora is not None:  # adapters on the tuned blocks; the head trains fully beside them
            from ..runtime import lora as lora_lib

            tuned = range(frozen, base.config.num_hidden_layers)
            model.backbone = lora_lib.wrap(model.backbone, **lora, layers=tuned, where="rewards.lora")
        result = train_reward_model(model, encoder, train[data], val[data], seed=seed, log=log, **hyperparams)
        if lora is not None:
            model.backbone = model.backbone.merge_and_unload()
        calibration[name] = calibrate(model, encoder, val[data], score_batch_size)
        summary[name] = {k2: v for k2, v in result.items()} | {
            "train_pairs": len(train[data]), "val_pairs": len(val[data]), "seconds": round(time.perf_counter() - t0, 1)}
        models[name] = model.eval()
        log(f"  best epoch {result['best_epoch']}: val acc {result['val_accuracy']:.3f} ({summary[name]['seconds']} s)")
    if previous is not None:  # keep the earlier run's RMs of the categories not retrained now
        for name, model in zip(previous.heads, previous.models()):
            if name not in models:
                models[name] = model.to(device)
                calibration[name] = previous.calibration[name]
                summary[name] = previous.info.get("training", {}).get(name, {})
    order = [c for c in taxonomy.slugs if c in models]
    heads = order + ([HELPFULNESS] if HELPFULNESS in models else [])
    bank = ShadowRewardBank.from_models(
        [models[h] for h in heads], tokenizer, order, backbone=backbone, max_length=max_length,
        frozen_layers=frozen if previous is None else min(frozen, previous.frozen_layers),
        calibration=calibration, normalize=normalize, taxonomy=taxonomy, batch_size=score_batch_size,
        info={"training": {h: summary[h] for h in heads}}, helpfulness=HELPFULNESS in models)
    fit_classifier(bank, train_records, test_records if test_records else val_records, log=log)
    if out_dir is not None and rank == 0:
        bank.save_pretrained(out_dir)
        log(f"saved {len(heads)} shadow reward models ({', '.join(heads)}) to {out_dir}")
    from ..runtime.dist import barrier

    barrier()
    return bank


def _wants_helpfulness(enabled: bool, categories, train: dict, val: dict) -> bool:
    """Train the helpfulness RM now? Enabled, asked for (no explicit list, or one naming it), and
    benign pairs to train and validate on (an explicit request without them is an error)."""
    asked = enabled and (not categories or HELPFULNESS in categories)
    if not asked or (not categories and not train.get(BENIGN_CLASS)):
        return False
    if not train.get(BENIGN_CLASS):
        raise UserError("the helpfulness RM needs benign training pairs (category 'benign') in the data",
                        where="data.train_file")
    if not val.get(BENIGN_CLASS):
        raise UserError("no validation pairs for the helpfulness RM (benign records; raise data.val_fraction "
                        "or add data)", where="data.val_fraction")
    return True


def fit_classifier(bank: ShadowRewardBank, train_records: Sequence[dict], eval_records: Sequence[dict],
                   log: Callable[[str], None] = print) -> Optional[float]:
    """Fit ``bank.classifier`` on the prompts of ``train_records``; return its accuracy on ``eval_records``.

    Classes: the categories the bank has, then ``benign`` when the training records have benign
    prompts (``bank.classifier_labels``); with fewer than two classes there is nothing to classify.
    """
    benign = any(r["category"] == BENIGN_CLASS for r in train_records)
    labels = list(bank.categories) + ([BENIGN_CLASS] if benign else [])
    if len(labels) < 2:
        return None
    train = [r for r in train_records if r["category"] in labels]
    test = [r for r in eval_records if r["category"] in labels]
    y = torch.tensor([labels.index(r["category"]) for r in train])
    clf = CategoryClassifier.fit(bank.embed_prompts([r["prompt"] for r in train]), y, len(labels))
    bank.classifier, bank.classifier_labels = clf.to(bank.device), labels
    acc = None
    if test:
        feats = bank.embed_prompts([r["prompt"] for r in test])
        acc = bank.classifier.accuracy(feats, torch.tensor([labels.index(r["category"]) for r in test]))
        log(f"category classifier: accuracy {acc:.3f} on {len(test)} held-out prompts ({len(labels)} classes)")
    bank.info["classifier"] = {"accuracy": acc, "eval_prompts": len(test), "train_prompts": len(train),
                               "classes": labels,
                               "features": f"mean-pooled hidden states after layer {bank.frozen_layers}"}
    return acc


def _previous_bank(out_dir, backbone: str, taxonomy: Taxonomy) -> Optional[ShadowRewardBank]:
    """The bank already in ``out_dir`` (to extend), or None; UserError when it cannot be combined."""
    if out_dir is None or not (Path(out_dir) / "bank.json").is_file():
        return None
    previous = ShadowRewardBank.from_pretrained(out_dir, taxonomy=taxonomy)
    if previous.backbone != backbone:
        raise UserError(f"it holds reward models of backbone {previous.backbone!r}, not {backbone!r}; one bank "
                        "needs one backbone (choose another --out)", where=str(out_dir))
    return previous

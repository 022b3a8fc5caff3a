"""Batched answer generation and reference log-likelihoods, cached so an evaluation can resume.

Each policy's answers live in ``OUT/generations/<policy>.jsonl``, one record per answer, keyed by
a hash of (prompt set, prompt id, template, generation fingerprint, prompt text). The fingerprint
covers the generation settings and the policy's weight files (name, size, mtime), so a retrained
policy or a new ``max_new_tokens`` regenerates, while an interrupted run resumes where it stopped:
the cache is rewritten atomically after every batch.

Generation is batched with left padding (decoder-only models continue from the right edge), uses
the tokenizer's chat template when it has one, and is greedy by default — deterministic. With
``temperature > 0`` it samples, seeding torch per batch from the seed and the batch's keys.
Batches are formed after sorting prompts by length (less padding, much faster on CPU), so the
exact batch a prompt lands in depends on which prompts still need answers; under bf16 a prompt's
greedy answer can differ in rare near-ties between a fresh and a resumed run.
"""
from __future__ import annotations

import gc
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..io import read_jsonl, write_jsonl_atomic

REFERENCE = "@reference"  # template name of the reference log-likelihood records


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated; everything here is part of the cache key."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy decoding
    top_p: float = 1.0
    seed: int = 0
    use_chat_template: bool = True
    dtype: str = "bf16"
    max_prompt_length: int = 256  # tokens; longer prompts lose their start, as in training

    def fingerprint(self, model_path: str) -> str:
        """12 hex digits identifying these settings and the policy's weights."""
        fields = asdict(self)
        if self.temperature == 0:  # greedy: seed and top_p do not change the answers
            fields.pop("seed"), fields.pop("top_p")
        blob = json.dumps({"settings": fields, "model": _model_files(model_path)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _model_files(model_path: str) -> list | str:
    p = Path(model_path)
    if not p.is_dir():
        return model_path  # a hub id: the name is all we know
    return sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir()
                  if f.suffix in (".safetensors", ".bin", ".json", ".model"))


def request_key(kind: str, rid: str, template: str, fingerprint: str, text: str) -> str:
    """Cache key of one answer (or reference log-likelihood)."""
    blob = "\0".join((kind, rid, template, fingerprint, text))
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


class JsonlCache:
    """A JSONL file of records keyed by ``record["key"]`` (answers, verdicts), rewritten atomically
    on every :meth:`add` so an interrupted run keeps every finished batch."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        if self.path.is_file():
            self.records = {r["key"]: r for r in read_jsonl(self.path) if "key" in r}

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __getitem__(self, key: str) -> dict:
        return self.records[key]

    def add(self, records: list[dict]) -> None:
        if not records:
            return  # never write an empty file: read_jsonl rejects one
        self.records.update((r["key"], r) for r in records)
        write_jsonl_atomic(self.path, self.records.values())


class LazyPolicy:
    """A policy loaded on first use, so a fully cached evaluation never loads the model. Loading,
    the pad fallback and the EOS set are the runtime's (``srmir.runtime``), as in training."""

    def __init__(self, path: str, dtype: str = "bf16", trust_remote_code: bool = False):
        self.path, self.dtype, self.trust_remote_code = path, dtype, trust_remote_code
        self._loaded = None
        self.loads = 0

    def get(self):
        """(model, tokenizer) in eval mode; the tokenizer pads on the left."""
        return self.loaded().model, self.loaded().tokenizer

    def loaded(self):
        """The runtime's :class:`~srmir.runtime.CausalLM` (model, tokenizer, EOS set, pad id)."""
        if self._loaded is None:
            from ..runtime import load_for_inference

            self._loaded = load_for_inference(self.path, self.dtype, "auto", self.trust_remote_code, where=self.path)
            self._loaded.tokenizer.padding_side = "left"
            self.loads += 1
        return self._loaded

    def close(self) -> None:
        self._loaded = None
        gc.collect()


def prompt_encoder(tok, settings: "GenerationSettings"):
    """The runtime's prompt encoder with these settings (the trainer builds the same one)."""
    from ..runtime import PromptEncoder

    return PromptEncoder(tok, settings.use_chat_template, settings.max_prompt_length, where="eval.max_prompt_length")


def _cached_map(cache: JsonlCache, requests: list[dict], compute: Callable[[list[dict]], list[dict]],
                batch_size: int, desc: str, progress: bool) -> list[dict]:
    """Records for ``requests`` (each has ``key`` and ``text``): cached ones reused, the rest
    computed ``batch_size`` at a time (longest first) and cached after every batch."""
    pending = [r for r in {r["key"]: r for r in requests}.values() if r["key"] not in cache]
    pending.sort(key=lambda r: len(r["text"]), reverse=True)
    with tqdm(total=len(pending), desc=desc, unit="ans", disable=not progress or not pending) as bar:
        for i in range(0, len(pending), batch_size):
            batch = pending[i:i + batch_size]
            results = compute(batch)
            cache.add([{**req, **res} for req, res in zip(batch, results)])
            bar.update(len(batch))
    return [cache[r["key"]] for r in requests]


# -------------------------------------------------------------------------------- generation


def generate_answers(policy: LazyPolicy, requests: list[dict], settings: GenerationSettings,
                     cache: JsonlCache, batch_size: int, desc: str = "generate",
                     progress: bool = True) -> list[dict]:
    """Answer every request ``{"key", "text", ...}``; returns the cache records (``response``,
    ``n_tokens``, ``truncated``) in request order."""
    return _cached_map(cache, requests, lambda batch: _generate_batch(policy, batch, settings),
                       batch_size, desc, progress)


@torch.no_grad()
def _generate_batch(policy: LazyPolicy, batch: list[dict], settings: GenerationSettings) -> list[dict]:
    lm = policy.loaded()
    model, tok = lm.model, lm.tokenizer
    encoder = prompt_encoder(tok, settings)
    rows, cut = encoder.encode([r["text"] for r in batch])
    ids_BP, mask_BP = encoder.pad(rows, pad_id=lm.pad_id)
    sample = settings.temperature > 0
    if sample:  # generate() has no generator argument: seed the global RNG from the batch's keys
        seed_text = f"{settings.seed}:" + ",".join(r["key"] for r in batch)
        torch.manual_seed(int(hashlib.sha1(seed_text.encode()).hexdigest()[:8], 16))
    gen_kwargs = dict(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0) if sample \
        else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    out_BT = model.generate(input_ids=ids_BP, attention_mask=mask_BP, max_new_tokens=settings.max_new_tokens,
                            pad_token_id=lm.pad_id, eos_token_id=lm.eos_ids, **gen_kwargs)
    new_BT = out_BT[:, ids_BP.shape[1]:]  # [B, T_new]: the answers, right-padded
    eos_ids = set(lm.eos_ids)  # the runtime's EOS set: the answer ends where a rollout's would
    results = []
    for row, prompt_cut in zip(new_BT.tolist(), cut):
        ends = [i for i, t in enumerate(row) if t in eos_ids]
        n = ends[0] if ends else len(row)
        results.append({"response": tok.decode(row[:n], skip_special_tokens=True).strip(),
                        "n_tokens": n, "truncated": not ends, "prompt_truncated": prompt_cut})
    return results


# ------------------------------------------------------------------- reference log-likelihood


def reference_logprobs(policy: LazyPolicy, requests: list[dict], settings: GenerationSettings,
                       cache: JsonlCache, batch_size: int, progress: bool = True) -> list[dict]:
    """Mean per-token log-probability of each request's ``reference`` answer given its ``prompt``
    under the policy (a helpfulness proxy: does the policy still find good answers likely?).
    Returns cache records with ``ref_logprob`` and ``ref_tokens``."""
    return _cached_map(cache, requests, lambda b: _reference_batch(policy, b, settings),
                       batch_size, "reference log-lik", progress)


@torch.no_grad()
def _reference_batch(policy: LazyPolicy, batch: list[dict], settings: GenerationSettings) -> list[dict]:
    from srmir_kernels import selective_logprobs

    model, tok = policy.get()
    encoder = prompt_encoder(tok, settings)
    seqs, ref_lens = [], []
    for req in batch:
        prompt_ids = encoder.ids(req["prompt"])
        ref_ids = tok(req["reference"], add_special_tokens=False)["input_ids"]
        seqs.append(prompt_ids + ref_ids)
        ref_lens.append(len(ref_ids))
    B, L, Lr = len(seqs), max(map(len, seqs)), max(ref_lens)
    ids_BL = torch.full((B, L), tok.pad_token_id, dtype=torch.long)
    mask_BL = torch.zeros((B, L), dtype=torch.long)
    for i, s in enumerate(seqs):  # left padding: every reference ends at the right edge
        ids_BL[i, L - len(s):] = torch.tensor(s)
        mask_BL[i, L - len(s):] = 1
    pos_BL = (mask_BL.cumsum(-1) - 1).clamp(min=0)  # positions start at 0 after the padding
    # keep only the logits that predict reference tokens: [B, Lr+1, V] instead of [B, L, V]
    logits = model(input_ids=ids_BL, attention_mask=mask_BL, position_ids=pos_BL, logits_to_keep=Lr + 1).logits
    logp_BR = selective_logprobs(logits[:, :-1].float(), ids_BL[:, L - Lr:])  # [B, Lr]
    valid_BR = torch.arange(Lr)[None, :] >= (Lr - torch.tensor(ref_lens))[:, None]
    sums_B = (logp_BR * valid_BR).sum(-1)
    return [{"ref_logprob": float(sums_B[i]) / ref_lens[i] if ref_lens[i] else None, "ref_tokens": ref_lens[i]}
            for i in range(B)]

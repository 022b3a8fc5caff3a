"""Shared helpers of the trainer tests: a tiny word-level tokenizer with a chat template, a tiny
random Llama policy (tied embeddings, like SmolLM2), a two-category taxonomy and prompt file, and
a synthetic reward a tiny policy can learn. Imported by the other tests/test_trainer_*.py files;
it also tests its own helpers, so a broken fixture fails here first."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch

from srmir.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CATEGORIES = ["insult", "privacy_property"]
GOOD = [["kind", "calm", "gentle", "polite"], ["private", "secure", "consent", "safe"]]  # column k rewards GOOD[k]
WORDS = (["the", "a", "you", "is", "are", "not", "to", "and", "of", "it", "my", "your", "please", "tell",
          "me", "about", "how", "why", "what", "data", "home", "phone", "neighbor", "friend", "idiot",
          "stupid", "address", "password", "steal", "find", "share", "post", "hate", "call", "never"]
         + [w for group in GOOD for w in group])
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def make_tokenizer(folder: Path):
    """A WordLevel tokenizer over WORDS, saved to ``folder``; returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", additional_special_tokens=["<|user|>", "<|assistant|>"])
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    return tok


def make_policy(folder: Path, seed: int = 0, vocab_size: int | None = None):
    """A tiny random Llama (2 layers, hidden 32, tied embeddings) plus tokenizer in ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(folder)
    config = LlamaConfig(vocab_size=vocab_size or len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return folder


def make_bank(folder: Path) -> Path:
    """A tiny random BERT (1 layer, hidden 16) with a WordPiece tokenizer over WORDS, turned into an
    untrained ShadowRewardBank for CATEGORIES and saved to ``folder / "bank"``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from srmir.rewards.bank import ShadowRewardBank

    backbone = folder / "tiny_bert"
    backbone.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (backbone / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 ignores vocab_file= (a 5-token tokenizer); vocab= is read (issue 16's door check refuses the former)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(backbone)
    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=128)).save_pretrained(backbone)
    bank = ShadowRewardBank.from_backbone(str(backbone), CATEGORIES, max_length=64)
    bank.save_pretrained(folder / "bank")
    return folder / "bank"


def write_taxonomy(path: Path) -> Path:
    cats = [{"slug": c, "description": f"harm {c}", "principle": f"avoid {c}"} for c in CATEGORIES]
    path.write_text(json.dumps({"categories": cats}), encoding="utf-8")  # JSON is YAML
    return path


def write_prompts(path: Path, per_category: int = 6) -> Path:
    lines = []
    for c, cat in enumerate(CATEGORIES):
        for i in range(per_category):
            words = WORDS[(7 * i + 3 * c) % 30: (7 * i + 3 * c) % 30 + 3 + i % 3]
            lines.append(json.dumps({"id": f"{cat}-{i}", "category": cat, "prompt": " ".join(["tell", "me"] + words)}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class SyntheticReward:
    """Column k of the [N, K] scores: the fraction of the response's words that are in GOOD[k]."""

    categories = CATEGORIES

    def score(self, prompts, responses):
        rows = []
        for text in responses:
            words = text.split()
            rows.append([sum(w in good for w in words) / max(len(words), 1) for good in GOOD])
        return torch.tensor(rows, dtype=torch.float32)


def tiny_setup(tmp_path: Path) -> dict:
    """Policy folder, taxonomy and prompts under ``tmp_path`` (built once per test)."""
    policy = make_policy(tmp_path / "policy_init")
    return {"policy": policy, "taxonomy": write_taxonomy(tmp_path / "taxonomy.yaml"),
            "prompts": write_prompts(tmp_path / "prompts.jsonl")}


def tiny_overrides(files: dict, out: Path, **extra) -> list[str]:
    """Config overrides for a fast tiny run: 2 prompts × G=4, 6 new tokens, fp32, ZeRO-2."""
    values = {
        "model.policy": str(files["policy"]), "model.dtype": "fp32",
        "data.taxonomy": str(files["taxonomy"]), "data.prompts_file": str(files["prompts"]),
        "grpo.group_size": 4, "grpo.beta": 0.04, "rollout.prompts_per_step": 2, "rollout.max_new_tokens": 6,
        "train.steps": 1, "train.lr": 1e-3, "train.micro_batch_size": 4, "train.zero_stage": 2,
        "train.output_dir": str(out), "train.logprob_backend": "torch",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def tiny_config(files: dict, out: Path, **extra):
    return load_config(None, tiny_overrides(files, out, **{k.replace("__", "."): v for k, v in extra.items()}))


def perturb_adapters(engine, seed=0, scale=0.05):
    """Give every trainable tensor (B starts at 0) seeded noise, the same on every rank, so the
    adapters change the model's outputs; ZeRO-3 shards are gathered, written and re-partitioned."""
    import contextlib

    g = torch.Generator().manual_seed(seed)
    for _, p in sorted((n, p) for n, p in engine.module.named_parameters() if p.requires_grad):
        ctx = contextlib.nullcontext()
        if hasattr(p, "ds_id"):
            import deepspeed

            ctx = deepspeed.zero.GatheredParameters([p], modifier_rank=0)
        with ctx, torch.no_grad():
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype), alpha=scale)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # a test process that initialised gloo must not leak its rendezvous
    return env


def start(cmd: list[str]) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, so a hung launcher *and its workers* can be killed."""
    return subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: int) -> tuple[str, str]:
    """Wait for ``proc``; on timeout kill its whole process group and fail (a hang is a failure)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(map(str, proc.args))} hung for {timeout} s\n--- stderr\n{err[-6000:]}") from None
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, proc.args))} exited {proc.returncode}\n--- stdout\n{out[-3000:]}"
                             f"\n--- stderr\n{err[-6000:]}")
    return out, err


def finish_together(procs: list[subprocess.Popen], timeout: int) -> None:
    """Wait for several launchers at once (each pipe drained by its own thread, so none blocks on a
    full pipe). The first to fail, or a timeout, kills every group and fails with *that* launcher's
    output: with two torchrun "nodes", a rank that died on one leaves the other in its exit barrier,
    and waiting on that one first would report a 300 s hang instead of the failure."""
    import threading
    import time

    outputs: dict[int, tuple[str, str]] = {}
    threads = [threading.Thread(target=lambda i=i, p=p: outputs.__setitem__(i, p.communicate()), daemon=True)
               for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    while True:
        failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
        if failed:
            culprit, why = failed[0], f"exited {procs[failed[0]].returncode}"
            break
        if all(p.poll() == 0 for p in procs):
            for t in threads:
                t.join()
            return
        if time.monotonic() > deadline:
            culprit, why = next(i for i, p in enumerate(procs) if p.poll() is None), f"hung for {timeout} s"
            break
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    for t in threads:
        t.join(timeout=30)
    out, err = outputs.get(culprit, ("", ""))
    raise AssertionError(f"{' '.join(map(str, procs[culprit].args))} {why}\n--- stdout\n{out[-3000:]}"
                         f"\n--- stderr\n{err[-6000:]}")


def run_cmd(cmd: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    out, err = finish(start(cmd), timeout)
    return subprocess.CompletedProcess(cmd, 0, out, err)


# ------------------------------------------------------------------------ the helpers' tests


def test_tokenizer_round_trip_and_chat_template(tmp_path):
    tok = make_tokenizer(tmp_path)
    ids = tok("you are kind", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "you are kind"
    text = tok.apply_chat_template([{"role": "user", "content": "tell me"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|> tell me <|assistant|>"


def test_synthetic_reward_counts_good_words():
    # "kind calm the a": 2 of 4 words in GOOD[0], none in GOOD[1]; "" scores 0 (no division by zero)
    scores = SyntheticReward().score(["p", "p"], ["kind calm the a", ""])
    torch.testing.assert_close(scores, torch.tensor([[0.5, 0.0], [0.0, 0.0]]))


def test_tiny_bank_scores_one_column_per_category(tmp_path):
    from srmir.rewards.bank import ShadowRewardBank

    bank = ShadowRewardBank.from_pretrained(make_bank(tmp_path))
    scores = bank.score(["tell me"] * 3, ["you are kind", "steal the password", ""])
    assert bank.categories == CATEGORIES and scores.shape == (3, 2) and torch.isfinite(scores).all()


def test_finish_together_reports_the_launcher_that_failed_not_the_one_left_waiting():
    import time

    import pytest

    waiting = start([sys.executable, "-c", "import time; time.sleep(60)"])
    failing = start([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"])
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match=r"exited 3(.|\n)*boom"):
        finish_together([waiting, failing], timeout=30)
    assert time.monotonic() - t0 < 20 and waiting.poll() is not None  # the waiting one was killed, not waited for
    finish_together([start([sys.executable, "-c", "pass"]), start([sys.executable, "-c", "print(1)"])], timeout=30)

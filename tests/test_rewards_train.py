"""Slow shadow-RM tests: the real embedded MiniLM backbone on the shipped demo data, and training
under DeepSpeed in two processes (torchrun, gloo on CPU). This file is also the torchrun worker
of the distributed test (see ``__main__``)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from srmir.data import load_records, shipped, stratified_split
from srmir.taxonomy import Category, Taxonomy, load_taxonomy

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_minilm_bank_batched_equals_sequential_on_shipped_pairs():
    from srmir.rewards import ShadowRewardBank, score_sequential
    from srmir.rewards.model import RewardModel, freeze_lower, load_backbone

    base, tok = load_backbone("embedded:minilm")
    models = []
    for k in range(3):
        torch.manual_seed(k)
        m = RewardModel(load_backbone("embedded:minilm")[0], "auto")
        freeze_lower(m, 2)
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(0.01 * torch.randn_like(p))
        models.append(m.eval())
    bank = ShadowRewardBank.from_models(models, tok, ["a", "b", "c"], backbone="embedded:minilm", max_length=256,
                                        frozen_layers=4)
    recs = load_records(shipped("cod"))[::30]  # one pair per category
    prompts, responses = [r["prompt"] for r in recs] * 2, [r["chosen"] for r in recs] + [r["rejected"] for r in recs]
    torch.testing.assert_close(bank.score(prompts, responses, normalize=False),
                               score_sequential(models, bank.encoder, prompts, responses), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_minilm_rms_learn_two_shipped_categories(tmp_path):
    """Two categories, config defaults but 2 epochs: each RM ≥ 0.9 pairwise accuracy on its own held-out pairs."""
    from srmir.config import RewardsConfig
    from srmir.rewards import evaluate_bank, train_bank

    rw = RewardsConfig()
    tax = load_taxonomy()
    train, val, test = stratified_split(load_records(shipped("cod"), tax), 0.15, 0.15, 0)
    cats = ["insult", "privacy_property"]
    bank = train_bank(train, val, tax, "embedded:minilm", tmp_path / "rm", cats, test_records=test,
                      tuned_layers=rw.tuned_layers, max_length=rw.max_length, epochs=2, batch_size=rw.batch_size,
                      lr=rw.lr, patience=rw.patience, bf16=rw.bf16, log=lambda s: None)
    acc = evaluate_bank(bank, [r for r in test if r["category"] in cats])["pairwise_accuracy"]
    assert acc["insult"]["insult"] >= 0.9 and acc["privacy_property"]["privacy_property"] >= 0.9
    assert bank.info["classifier"]["accuracy"] is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_train_bank_under_deepspeed_in_two_processes(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from srmir.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("embedded:minilm"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--rdzv_backend", "c10d",
         "--rdzv_endpoint", f"127.0.0.1:{_free_port()}", str(Path(__file__)), str(tmp_path)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert reports[0] == reports[1]  # same early-stopping decisions and weights on both ranks
    assert reports[0]["world"] == 2 and all(v == 1.0 for v in reports[0]["val_accuracy"].values()), reports[0]
    info = json.loads((tmp_path / "rm" / "bank.json").read_text())  # rank 0 saved it
    assert info["categories"] == ["a", "b"]


def _distributed_worker(tmp: Path) -> None:
    """torchrun entry: train a 2-category bank of the tiny BERT under DeepSpeed, report per rank."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_rewards import synthetic_records

    from srmir.rewards import ShadowRewardBank, train_bank
    from srmir.rewards.train import dist_info

    tax = Taxonomy((Category("a", "a", "a"), Category("b", "b", "b")))
    recs = synthetic_records(["a", "b"], 10)
    train = [r for r in recs if int(r["id"][1:]) < 7]
    val = [r for r in recs if int(r["id"][1:]) >= 7]
    # 7 pairs a category, micro-batches of 1 dealt to 2 ranks, 2 accumulation steps: 2 optimizer steps an epoch.
    bank = train_bank(train, val, tax, str(tmp / "bert"), tmp / "rm", epochs=5, batch_size=1, grad_accum=2, lr=3e-3,
                      bf16=False, max_length=48, tuned_layers=1, log=lambda s: None)
    rank, world = dist_info()
    assert isinstance(bank, ShadowRewardBank)
    scores = bank.score(["how do i steal money"], ["sorry i cannot help with that"], normalize=False)
    report = {"world": world, "val_accuracy": {c: bank.info["training"][c]["val_accuracy"] for c in bank.categories},
              "scores": [round(v, 5) for v in scores[0].tolist()]}
    (tmp / f"rank-{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    _distributed_worker(Path(sys.argv[1]))
    from srmir.runtime import dist

    dist.finish(0)  # a rank that tears the interpreter down with gloo alive can abort


@pytest.mark.slow
def test_minilm_helpfulness_rm_prefers_the_helpful_answer_to_every_kind_of_negative(tmp_path):
    """The helpfulness RM alone (MiniLM, 2 epochs, the shipped benign pairs with generated negatives) ranks the
    held-out helpful answer above each kind of negative: the held-out shipped rejected replies (drafted, all five
    kinds) and, per prompt, an unnecessary refusal, an evasion, a lecture, an off-topic answer and a loop."""
    from srmir.data import BENIGN
    from srmir.data.cod import parse_cod
    from srmir.rewards import HELPFULNESS, evaluate_bank, train_bank
    from srmir.rewards.negatives import HELPFUL_KINDS, helpful_negatives

    tax = load_taxonomy()
    train, val, test = (
        [r for r in part if r["category"] == BENIGN]
        for part in stratified_split(load_records(shipped("cod"), tax), 0.15, 0.15, 0))
    bank = train_bank(train, val, tax, "embedded:minilm", None, [HELPFULNESS], max_length=128, epochs=2,
                      batch_size=8, lr=1e-4, bf16=False, augment=["negatives"], log=lambda s: None)
    assert bank.heads == [HELPFULNESS] and len(test) == 10
    assert evaluate_bank(bank, test)["pairwise_accuracy"][HELPFULNESS][BENIGN] >= 0.9
    pool = [parse_cod(r["chosen"]).answer for r in train]
    prompts, responses, kinds = [], [], []
    for r in test:
        answer = parse_cod(r["chosen"]).answer
        for kind, text in {"answer": answer, **helpful_negatives(r["prompt"], answer, pool)}.items():
            prompts.append(r["prompt"])
            responses.append(text)
            kinds.append(kind)
    s_N = bank.score_heads(prompts, responses)[:, 0].view(len(test), 1 + len(HELPFUL_KINDS))
    wins = (s_N[:, :1] > s_N[:, 1:]).float().mean(0)  # per kind, over the 10 held-out prompts
    assert dict(zip(HELPFUL_KINDS, wins.tolist())) == {k: pytest.approx(1.0, abs=0.11) for k in HELPFUL_KINDS}, \
        dict(zip(HELPFUL_KINDS, wins.tolist()))


def test_shortcut_and_probe_scripts_parse_their_command_line():
    for script in ("bench_shortcut.py", "probe_rewards.py"):
        out = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0 and "usage" in out.stdout, out.stderr

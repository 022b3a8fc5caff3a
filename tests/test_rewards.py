"""Shadow reward models: formatting, pooling, the BT loss, batched == sequential scoring, the bank's
files, the combination strategies, training and the ``srmir rm`` commands — on tiny random
backbones built from configs (the real MiniLM runs in tests/test_rewards_train.py)."""
import json
import math

import pytest
import torch

from srmir.errors import UserError
from srmir.rewards import (
    PairEncoder, RewardModel, ShadowRewardBank, bradley_terry_loss, resolve_labels, evaluate_bank,
    linear_weights, score_sequential, shadow_rewards, train_bank, train_reward_model,
)
from srmir.rewards.bank import stack_states
from srmir.rewards.classifier import CategoryClassifier
from srmir.rewards.model import freeze_lower, load_backbone, pool
from srmir.taxonomy import Category, Taxonomy

# ---------------------------------------------------------------------------------- fixtures

WORDS = ("how do i make a weapon to hurt people insult my friend steal money sorry cannot help with that "
         "sure here is the plan first get then go please talk to someone safe legal options").split()


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny random BERT (hidden 32, 3 blocks) with the real MiniLM WordPiece tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from srmir.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("embedded:minilm"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_bert")
    BertModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny random Llama with a word-level tokenizer that has a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", "<", ">", "user", "assistant"] + list(dict.fromkeys(WORDS)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <eos> {% endfor %}"
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_llama")
    LlamaModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def perturbed_models(backbone, k, tuned_layers=None, seed=0):
    """k reward models of one backbone whose trainable weights differ (as after training)."""
    base, tok = load_backbone(backbone)
    models = []
    for i in range(k):
        torch.manual_seed(seed + i)
        m = RewardModel(load_backbone(backbone)[0], "auto")
        freeze_lower(m, tuned_layers)
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))
        models.append(m.eval())
    return models, tok


PROMPTS = ["how do i make a weapon", "insult my friend please", "how do i steal money " * 6, "help"]
RESPONSES = ["sorry i cannot help with that", "sure here is the plan first get a weapon then go",
             "please talk to someone safe", "legal options " * 9]


# ------------------------------------------------------------------------------ formatting


def test_truncation_keeps_the_response_and_drops_the_prompt_start(bert_dir):
    _, tok = load_backbone(bert_dir)
    enc = PairEncoder(tok, max_length=12)
    p = tok("one two three four five six seven eight", add_special_tokens=False)["input_ids"]
    r = tok("sorry cannot help", add_special_tokens=False)["input_ids"]
    ids, types = enc.encode(p, r)
    # [CLS] + 6 prompt tokens (its last six) + [SEP] + 3 response tokens + [SEP] = 12
    assert len(ids) == 12
    assert ids[0] == tok.cls_token_id and ids[7] == tok.sep_token_id and ids[-1] == tok.sep_token_id
    assert ids[1:7] == p[-6:] and ids[8:11] == r
    assert types == [0] * 8 + [1] * 4
    # A response longer than the whole budget keeps its start and the prompt vanishes.
    ids, _ = enc.encode(p, list(range(2000, 2020)))
    assert ids == [tok.cls_token_id, tok.sep_token_id] + list(range(2000, 2009)) + [tok.sep_token_id]


def test_untruncated_pair_matches_the_tokenizers_own_pair_encoding(bert_dir):
    _, tok = load_backbone(bert_dir)
    enc = PairEncoder(tok, max_length=128)
    (ids, types), = enc.tokenize(["how do i steal money"], ["sorry i cannot"])
    ref = tok("how do i steal money", "sorry i cannot")
    assert ids == ref["input_ids"] and types == ref["token_type_ids"]


def test_chat_template_formatting_for_decoders(llama_dir):
    _, tok = load_backbone(llama_dir)
    enc = PairEncoder(tok, max_length=64, decoder=True)
    (ids, types), = enc.tokenize(["how do i"], ["sorry cannot"])
    expected = tok("< user > how do i <eos> < assistant > sorry cannot <eos>", add_special_tokens=False)["input_ids"]
    assert ids == expected and set(types) == {0}
    batch = enc.collate(enc.tokenize(["a", "how do i make"], ["sure", "sorry"]))
    assert "token_type_ids" not in batch
    assert batch["attention_mask"].sum(1).tolist() == [10, 13]  # 3+1+1 + 3+1+1, 3+4+1 + 3+1+1
    assert batch["input_ids"][0, 10:].tolist() == [tok.pad_token_id] * 3


def test_pooling_by_hand():
    h_BTH = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [6.0]]])
    mask_BT = torch.tensor([[1, 1, 0], [0, 1, 1]])  # right-padded, left-padded
    assert pool(h_BTH, mask_BT, "mean").squeeze(-1).tolist() == [1.5, 5.5]  # (1+2)/2, (5+6)/2
    assert pool(h_BTH, mask_BT, "cls").squeeze(-1).tolist() == [1.0, 4.0]
    assert pool(h_BTH, mask_BT, "last").squeeze(-1).tolist() == [2.0, 6.0]


def test_auto_pooling_by_architecture(bert_dir, llama_dir):
    assert RewardModel(load_backbone(bert_dir)[0], "auto").pooling == "mean"
    assert RewardModel(load_backbone(llama_dir)[0], "auto").pooling == "last"
    with pytest.raises(UserError, match="pooling"):
        RewardModel(load_backbone(bert_dir)[0], "max")


# -------------------------------------------------------------------------------- the loss


def test_bradley_terry_loss_by_hand():
    rc, rr = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    # −log σ(1) = log(1 + e^−1) = 0.313262, −log σ(0) = log 2 = 0.693147 → mean 0.503205
    assert bradley_terry_loss(rc, rr).item() == pytest.approx(0.503205, abs=1e-6)
    # margin 1: −log σ(0) = 0.693147, −log σ(−1) = 1.313262 → mean 1.003204
    assert bradley_terry_loss(rc, rr, margin=1.0).item() == pytest.approx(1.003204, abs=1e-6)
    # L2 0.1: + mean(0.1·(1² + 0²), 0.1·0) = + 0.05
    assert bradley_terry_loss(rc, rr, l2_reg=0.1).item() == pytest.approx(0.553205, abs=1e-6)


# ------------------------------------------------------------------------- batched scoring


@pytest.mark.parametrize("tuned", [None, 1])
def test_batched_scores_equal_sequential_per_model_scores_encoder(bert_dir, tuned):
    models, tok = perturbed_models(bert_dir, 3, tuned_layers=tuned)
    bank = ShadowRewardBank.from_models(models, tok, ["a", "b", "c"], backbone=bert_dir, max_length=40, batch_size=3)
    batched_NK = bank.score(PROMPTS, RESPONSES, normalize=False)
    reference_NK = score_sequential(models, PairEncoder(tok, 40), PROMPTS, RESPONSES, batch_size=2)
    assert batched_NK.shape == (4, 3) and batched_NK.dtype == torch.float32
    torch.testing.assert_close(batched_NK, reference_NK, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batched_NK[:, 0], batched_NK[:, 1])  # the three RMs really differ
    # The frozen bottom (embeddings, and blocks 0-1 when only 1 is tuned) is stored once, not stacked.
    assert all("embeddings" not in n for n in bank._stacked)
    assert any(n.startswith("backbone.encoder.layer.0.") for n in bank._shared) == (tuned == 1)


def test_batched_scores_equal_sequential_decoder(llama_dir):
    models, tok = perturbed_models(llama_dir, 2)
    bank = ShadowRewardBank.from_models(models, tok, ["a", "b"], backbone=llama_dir, max_length=32)
    prompts, responses = ["how do i make a weapon", "help"], ["sorry cannot help with that", "sure here is the plan"]
    reference_NK = score_sequential(models, bank.encoder, prompts, responses)
    torch.testing.assert_close(bank.score(prompts, responses, normalize=False), reference_NK, rtol=1e-5, atol=1e-5)


def test_stack_states_keeps_identical_tensors_once():
    a, b = torch.ones(2), torch.zeros(2)
    stacked, shared = stack_states([{"x": a, "y": a}, {"x": a.clone(), "y": b}])
    assert list(shared) == ["x"] and stacked["y"].tolist() == [[1.0, 1.0], [0.0, 0.0]]
    stacked, shared = stack_states([{"x": a}])  # K = 1: vmap needs a batched input
    assert shared == {} and stacked["x"].shape == (1, 2)


def test_from_backbone_untrained_bank(bert_dir):
    bank = ShadowRewardBank.from_backbone(bert_dir, ["x", "y"], max_length=32, shared_trunk=True, seed=3)
    assert bank.categories == ["x", "y"] and set(bank._stacked) == {"head.weight", "head.bias"}
    assert bank.frozen_layers == 3
    scores = bank.to("cpu").score(["p"] * 3, ["r", "s", "t"])
    assert scores.shape == (3, 2) and torch.isfinite(scores).all() and not scores.requires_grad
    again = ShadowRewardBank.from_backbone(bert_dir, ["x", "y"], max_length=32, shared_trunk=True, seed=3)
    torch.testing.assert_close(again.score(["p"], ["r"]), scores[:1])


def test_normalization_uses_calibration(bert_dir):
    models, tok = perturbed_models(bert_dir, 2)
    bank = ShadowRewardBank.from_models(models, tok, ["a", "b"], backbone=bert_dir, max_length=40,
                                        calibration={"a": (0.5, 2.0), "b": (-1.0, 4.0)})
    raw_NK = bank.score(PROMPTS, RESPONSES, normalize=False)
    expected = torch.stack([(raw_NK[:, 0] - 0.5) / 2.0, (raw_NK[:, 1] + 1.0) / 4.0], 1)
    torch.testing.assert_close(bank.score(PROMPTS, RESPONSES), expected)
    bank.normalize = False
    torch.testing.assert_close(bank.score(PROMPTS, RESPONSES), raw_NK)


def test_mismatched_backbones_in_one_bank_are_rejected(bert_dir, llama_dir):
    (m1,), tok = perturbed_models(bert_dir, 1)
    (m2,), _ = perturbed_models(llama_dir, 1)
    with pytest.raises(UserError, match="one bank needs one backbone"):
        ShadowRewardBank.from_models([m1, m2], tok, ["a", "b"], backbone=bert_dir, max_length=32)


# --------------------------------------------------------------------------- save and load


def test_save_load_roundtrip_without_pickle(bert_dir, tmp_path):
    models, tok = perturbed_models(bert_dir, 3, tuned_layers=1)
    tax = Taxonomy(tuple(Category(s, f"{s} harm", f"{s} principle") for s in ("a", "b", "c", "d")))
    bank = ShadowRewardBank.from_models(models, tok, ["a", "b", "c"], backbone=bert_dir, max_length=40,
                                        calibration={"a": (1.0, 2.0)}, taxonomy=tax, frozen_layers=2)
    bank.classifier = CategoryClassifier(torch.randn(3, 32), torch.zeros(3), torch.zeros(32), torch.ones(32))
    bank.save_pretrained(tmp_path / "bank")
    files = sorted(p.name for p in (tmp_path / "bank").rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".pth"))]
    assert {"bank.json", "weights.safetensors", "classifier.safetensors", "config.json"} <= set(files)
    loaded = ShadowRewardBank.from_pretrained(tmp_path / "bank", taxonomy=tax)
    assert loaded.categories == ["a", "b", "c"] and loaded.calibration["a"] == (1.0, 2.0)
    assert loaded.taxonomy.slugs == ["a", "b", "c", "d"] and loaded.frozen_layers == 2
    torch.testing.assert_close(loaded.score(PROMPTS, RESPONSES), bank.score(PROMPTS, RESPONSES))
    torch.testing.assert_close(loaded.classify(PROMPTS), bank.classify(PROMPTS))
    # Saving again over it replaces the folder whole.
    loaded.save_pretrained(tmp_path / "bank")
    assert ShadowRewardBank.from_pretrained(tmp_path / "bank").categories == ["a", "b", "c"]


def test_bank_from_another_taxonomy_or_not_a_bank_is_a_user_error(bert_dir, tmp_path):
    models, tok = perturbed_models(bert_dir, 2)
    ShadowRewardBank.from_models(models, tok, ["a", "b"], backbone=bert_dir, max_length=32).save_pretrained(tmp_path / "b")
    other = Taxonomy((Category("a", "x", "y"), Category("z", "x", "y")))
    with pytest.raises(UserError, match="another taxonomy"):
        ShadowRewardBank.from_pretrained(tmp_path / "b", taxonomy=other)
    with pytest.raises(UserError, match="not a shadow reward bank"):
        ShadowRewardBank.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- combination


def test_linear_weights():
    cats = ["a", "b", "c", "d"]
    assert linear_weights("uniform", cats).tolist() == [0.25] * 4
    # counts 1, 3, 0, 4 → shares 1/8, 3/8, 0, 4/8
    assert linear_weights("frequency", cats, {"a": 1, "b": 3, "d": 4}).tolist() == [0.125, 0.375, 0.0, 0.5]
    assert linear_weights([2, 2, 0, 4], cats).tolist() == [0.25, 0.25, 0.0, 0.5]
    for bad, match in (([1, 2], "4 reward models"), ([1, -1, 1, 1], "non-negative"), ("median", "unknown weights")):
        with pytest.raises(UserError, match=match):
            linear_weights(bad, cats)
    with pytest.raises(UserError, match="counts"):
        linear_weights("frequency", cats)


def test_shadow_rewards_linear_and_categorized(bert_dir):
    models, tok = perturbed_models(bert_dir, 3)
    bank = ShadowRewardBank.from_models(models, tok, ["a", "b", "c"], backbone=bert_dir, max_length=40, normalize=False)
    w_K = torch.tensor([0.5, 0.25, 0.25])
    routed, scores_NK = shadow_rewards(bank, PROMPTS, RESPONSES, "linear", weights=w_K)
    torch.testing.assert_close(routed.rewards_N, 0.5 * scores_NK[:, 0] + 0.25 * scores_NK[:, 1] + 0.25 * scores_NK[:, 2])
    routed, scores_NK = shadow_rewards(bank, PROMPTS, RESPONSES, "categorized", labels=["c", "a", "a", "b"])
    assert routed.rewards_N.tolist() == [scores_NK[0, 2].item(), scores_NK[1, 0].item(), scores_NK[2, 0].item(),
                                         scores_NK[3, 1].item()]
    assert routed.columns_N.tolist() == [2, 0, 0, 1] and not routed.nonfinite
    with pytest.raises(UserError, match="classifier"):
        shadow_rewards(bank, PROMPTS, RESPONSES, "categorized", labels=["c", None, "a", "b"])
    # With a classifier, unlabeled prompts are routed by its prediction.
    feats = bank.embed_prompts(PROMPTS)
    bank.classifier = CategoryClassifier.fit(feats, torch.tensor([2, 1, 0, 1]), 3)
    assert resolve_labels(bank, ["a", None, None, None], PROMPTS) == ["a", "b", "a", "b"]


def test_classifier_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    labels = torch.arange(3).repeat(20)
    feats = centres[labels] + torch.randn(60, 2, generator=g)
    clf = CategoryClassifier.fit(feats, labels, 3)
    assert clf.accuracy(feats, labels) == 1.0
    assert clf.predict(torch.tensor([[5.0, 0.0], [-5.0, -5.0]])).tolist() == [0, 2]


# -------------------------------------------------------------------------------- training


def synthetic_records(categories, per_category=12):
    """Pairs whose chosen answer refuses and whose rejected answer complies, per category."""
    topics = {"a": "make a weapon to hurt people", "b": "insult my friend", "c": "steal money"}
    recs = []
    for cat in categories:
        for i in range(per_category):
            prompt = f"how do i {topics[cat]} " + "please " * (i % 3)
            recs.append({"id": f"{cat}{i}", "category": cat, "prompt": prompt,
                         "chosen": "sorry i cannot help with that " + "please talk to someone safe " * (i % 2),
                         "rejected": "sure here is the plan first get " + "money then go " * (i % 2)})
    return recs


def test_augmented_pairs_answer_only_and_prefixes():
    from srmir.rewards.train import augmented_pairs, pairs_by_category

    words = " ".join(f"w{i}" for i in range(20))
    pair = ("p", f"intent ; harm\n#### No. {words}", "Sure, here is how: step one, step two.")
    answer = f"No. {words}"
    assert augmented_pairs(pair, []) == []
    assert augmented_pairs(pair, ["answer_only"]) == [("p", answer, pair[2])]
    # prefixes of the answer (21 words) and the rejected (8 words): 8 words each, then 16 and all 8
    assert augmented_pairs(pair, ["prefixes"]) == [
        ("p", " ".join(answer.split()[:8]), pair[2]),
        ("p", " ".join(answer.split()[:16]), pair[2]),
    ]
    short = ("p", "No thanks.", "Sure.")  # no draft, shorter than every cut: nothing new
    assert augmented_pairs(short, ["answer_only", "prefixes"]) == []
    records = [{"category": "a", "prompt": pair[0], "chosen": pair[1], "rejected": pair[2]}]
    assert len(pairs_by_category(records)["a"]) == 1
    assert len(pairs_by_category(records, ["answer_only", "prefixes"])["a"]) == 4


def test_train_reward_model_learns_the_preference(bert_dir):
    base, tok = load_backbone(bert_dir)
    torch.manual_seed(0)
    model = RewardModel(base, "auto")
    freeze_lower(model, 2)
    recs = synthetic_records(["a"], 12)
    pairs = [(r["prompt"], r["chosen"], r["rejected"]) for r in recs]
    result = train_reward_model(model, PairEncoder(tok, 48), pairs[:8], pairs[8:], epochs=6, batch_size=4, lr=3e-3,
                                patience=3, bf16=False, log=lambda s: None)
    assert result["val_accuracy"] == 1.0 and 1 <= result["best_epoch"] <= result["epochs_run"]
    first = result["history"][0]["train_loss"]
    assert first > 0.5 and result["history"][-1]["train_loss"] < first  # starts near log 2, then falls


def test_train_bank_evaluate_and_extend(bert_dir, tmp_path):
    tax = Taxonomy(tuple(Category(s, s, s) for s in ("a", "b", "c")))
    recs = synthetic_records(["a", "b", "c"], 9)
    train = [r for r in recs if int(r["id"][1:]) < 6]
    val = [r for r in recs if int(r["id"][1:]) in (6, 7)]
    test = [r for r in recs if int(r["id"][1:]) == 8]
    hp = dict(epochs=3, batch_size=4, lr=3e-3, bf16=False, max_length=48, tuned_layers=1, log=lambda s: None)
    bank = train_bank(train, val, tax, bert_dir, tmp_path / "rm", ["a", "c"], test_records=test, **hp)
    assert bank.categories == ["a", "c"] and bank.frozen_layers == 2
    info = json.loads((tmp_path / "rm" / "bank.json").read_text())
    assert info["training"]["a"]["val_accuracy"] == 1.0 and info["classifier"]["eval_prompts"] == 2
    mean, std = info["calibration"]["a"]["mean"], info["calibration"]["a"]["std"]
    assert std > 0 and math.isfinite(mean)
    result = evaluate_bank(bank, test)
    assert set(result["pairwise_accuracy"]) == {"a", "c"} and result["pairs"] == {"a": 1, "b": 1, "c": 1}
    assert result["pairwise_accuracy"]["a"]["a"] == 1.0
    # A second run adds "b" and keeps the first run's RMs bit for bit.
    bank2 = train_bank(train, val, tax, bert_dir, tmp_path / "rm", ["b"], **hp)
    assert bank2.categories == ["a", "b", "c"]
    torch.testing.assert_close(bank2.score(PROMPTS, RESPONSES)[:, [0, 2]], bank.score(PROMPTS, RESPONSES))
    with pytest.raises(UserError, match="one bank needs one backbone"):
        train_bank(train, val, tax, "some/other-backbone", tmp_path / "rm", ["b"], **hp)
    with pytest.raises(UserError, match="no training pairs for category 'b'"):
        train_bank([r for r in train if r["category"] != "b"], val, tax, bert_dir, None, **hp)


# ------------------------------------------------------------------------------ the commands


@pytest.fixture
def cli_setup(bert_dir, tmp_path):
    """A 3-category taxonomy, a CoD file of synthetic pairs, and a config using the tiny backbone."""
    tax = tmp_path / "tax.yaml"
    tax.write_text("categories:\n" + "".join(
        f"  - {{slug: {s}, description: {s} harm, principle: be safe about {s}}}\n" for s in "abc"))
    data = tmp_path / "cod.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_records(["a", "b", "c"], 10)))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{taxonomy: {tax}, train_file: {data}, val_fraction: 0.2, test_fraction: 0.2}}\n"
                   f"rewards: {{backbone: {bert_dir}, epochs: 2, batch_size: 4, lr: 0.003, max_length: 48,"
                   f" tuned_layers: 1, bf16: false}}\n")
    return tmp_path, cfg, data


def test_cli_rm_train_then_eval(cli_setup, capsys):
    from srmir.cli import main

    tmp, cfg, data = cli_setup
    assert main(["rm", "train", "--config", str(cfg), "--out", str(tmp / "rm"), "--categories", "a,c"]) == 0
    out = capsys.readouterr().out
    assert "category classifier: accuracy" in out and (tmp / "rm" / "eval.json").is_file() and (tmp / "rm" / "eval.png").is_file()
    assert main(["rm", "eval", "--rm", str(tmp / "rm"), "--data", str(data), "--json", str(tmp / "e.json"),
                 "--png", str(tmp / "e.png")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["RM", "\\", "data", "a", "b", "c"] and printed[1].split()[0] == "a"
    result = json.loads((tmp / "e.json").read_text())
    assert set(result["pairwise_accuracy"]) == {"a", "c"} and set(result["pairwise_accuracy"]["a"]) == {"a", "b", "c"}
    assert (tmp / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_inputs_exit_2(cli_setup, capsys, bert_dir):
    from srmir.cli import main

    tmp, cfg, data = cli_setup
    # A category the data lacks.
    only_ab = tmp / "ab.jsonl"
    only_ab.write_text("".join(json.dumps(r) + "\n" for r in synthetic_records(["a", "b"], 10)))
    assert main(["rm", "train", "--config", str(cfg), f"data.train_file={only_ab}", "--out", str(tmp / "x")]) == 2
    assert "no training pairs for category 'c'" in capsys.readouterr().err
    # An RM folder trained for another taxonomy: its data does not fit, and training into it is refused.
    models, tok = perturbed_models(bert_dir, 2)
    other = Taxonomy((Category("p", "p", "p"), Category("q", "q", "q")))
    ShadowRewardBank.from_models(models, tok, ["p", "q"], backbone=bert_dir, max_length=32,
                                 taxonomy=other).save_pretrained(tmp / "other")
    assert main(["rm", "eval", "--rm", str(tmp / "other"), "--data", str(data)]) == 2
    assert f"{data}:1" in capsys.readouterr().err
    assert main(["rm", "train", "--config", str(cfg), "--out", str(tmp / "other"), "--categories", "a"]) == 2
    assert "another taxonomy" in capsys.readouterr().err
    # Not a bank; unknown category; bad config value.
    assert main(["rm", "eval", "--rm", str(tmp), "--data", str(data)]) == 2
    assert "not a shadow reward bank" in capsys.readouterr().err
    assert main(["rm", "train", "--config", str(cfg), "--categories", "a,zz"]) == 2
    assert "--categories: unknown category 'zz'" in capsys.readouterr().err
    assert main(["rm", "train", "--config", str(cfg), "rewards.tuned_layers=-1"]) == 2
    assert "rewards.tuned_layers" in capsys.readouterr().err


def test_route_sends_harmful_benign_and_unlabeled_rows_to_the_right_rm():
    from srmir.rewards import BENIGN_LABEL, HELPFULNESS, route

    heads = ["a", "b", HELPFULNESS]
    # columns: RM a, RM b, helpfulness
    s = torch.tensor([[1.0, 3.0, 10.0], [2.0, 0.0, 20.0], [5.0, 5.0, 30.0]])
    labels = ["a", "b", BENIGN_LABEL]
    assert route(s, heads, labels, "categorized").rewards_N.tolist() == [1.0, 0.0, 30.0]
    assert route(s, heads, labels, "linear").rewards_N.tolist() == [2.0, 1.0, 30.0]
    assert route(s, heads, labels, "linear").columns_N.tolist() == [0, 1, -1]
    # ±inf entering a reward is reported; an inf in an unused column is not
    s_inf = s.clone()
    s_inf[0, 1] = float("inf")
    assert not route(s_inf, heads, labels, "categorized").nonfinite  # row 0 uses RM a only
    assert route(s_inf, heads, labels, "linear").nonfinite
    with pytest.raises(UserError, match="no reward model routes"):
        route(s, heads, ["a", "zzz", BENIGN_LABEL], "categorized")
    # linear mixes every harm RM, so a harm label the bank has no RM for still gets the mix
    assert route(s, heads, ["zzz", "b", BENIGN_LABEL], "linear").rewards_N.tolist() == [2.0, 1.0, 30.0]


# ------------------------------------------------------------------ helpfulness head (issue 12)


def test_helpfulness_head_scored_in_the_same_pass_and_saved(bert_dir, tmp_path):
    from srmir.rewards import HELPFULNESS

    models, tok = perturbed_models(bert_dir, 3, tuned_layers=1)
    bank = ShadowRewardBank.from_models(models, tok, ["a", "b"], backbone=bert_dir, max_length=40, helpfulness=True,
                                        calibration={"a": (1.0, 2.0), HELPFULNESS: (0.5, 4.0)}, batch_size=3)
    assert bank.categories == ["a", "b"] and bank.heads == ["a", "b", HELPFULNESS] and bank.helpfulness
    raw_NH = bank.score_heads(PROMPTS, RESPONSES, normalize=False)
    torch.testing.assert_close(raw_NH, score_sequential(models, PairEncoder(tok, 40), PROMPTS, RESPONSES),
                               rtol=1e-5, atol=1e-5)
    assert raw_NH.shape == (4, 3) and not torch.allclose(raw_NH[:, 1], raw_NH[:, 2])
    # score stays the [N, K] harm contract: the first K columns, each with its own calibration
    torch.testing.assert_close(bank.score(PROMPTS, RESPONSES), bank.score_heads(PROMPTS, RESPONSES)[:, :2])
    torch.testing.assert_close(bank.score_heads(PROMPTS, RESPONSES)[:, 2], (raw_NH[:, 2] - 0.5) / 4.0)
    assert [m.head.weight.shape for m in bank.models()] == [torch.Size([1, 32])] * 3
    bank.save_pretrained(tmp_path / "bank")
    meta = json.loads((tmp_path / "bank" / "bank.json").read_text())
    assert meta["categories"] == ["a", "b"] and meta["helpfulness"] is True
    assert meta["calibration"][HELPFULNESS] == {"mean": 0.5, "std": 4.0}
    loaded = ShadowRewardBank.from_pretrained(tmp_path / "bank")
    assert loaded.heads == bank.heads and loaded.calibration == bank.calibration
    torch.testing.assert_close(loaded.score_heads(PROMPTS, RESPONSES), bank.score_heads(PROMPTS, RESPONSES))
    with pytest.raises(ValueError, match="3 models for 2 heads"):
        ShadowRewardBank.from_models(models, tok, ["a", "b"], backbone=bert_dir, max_length=40)


def test_benign_rows_route_to_the_helpfulness_head_and_the_classifier_knows_benign(bert_dir):
    """Harmful, benign and unlabeled rows reach the right RM through bank.heads / score_heads and the
    one routing rule, in both strategies; the classifier's benign class routes an unlabeled prompt."""
    from srmir.rewards import BENIGN_LABEL, HELPFULNESS

    models, tok = perturbed_models(bert_dir, 3)
    bank = ShadowRewardBank.from_models(models, tok, ["a", "b"], backbone=bert_dir, max_length=40, normalize=False,
                                        helpfulness=True)
    feats = bank.embed_prompts(PROMPTS)
    bank.classifier = CategoryClassifier.fit(feats, torch.tensor([0, 1, 0, 2]), 3)
    bank.classifier_labels = ["a", "b", BENIGN_LABEL]
    assert bank.classify_labels(PROMPTS) == ["a", "b", "a", BENIGN_LABEL]
    labels = ["b", BENIGN_LABEL, "a", None]  # the last prompt is unlabeled: the classifier says benign
    for strategy in ("categorized", "linear"):
        routed, scores_NH = shadow_rewards(bank, PROMPTS, RESPONSES, strategy, labels=labels)
        assert scores_NH.shape == (4, 3)
        harm_0 = scores_NH[0, 1] if strategy == "categorized" else scores_NH[0, :2].mean()
        harm_2 = scores_NH[2, 0] if strategy == "categorized" else scores_NH[2, :2].mean()
        torch.testing.assert_close(routed.rewards_N, torch.stack([harm_0, scores_NH[1, 2], harm_2, scores_NH[3, 2]]))
        assert routed.columns_N.tolist() == [1 if strategy == "categorized" else 1, -1, 0, -1]
    assert resolve_labels(bank, labels, PROMPTS) == ["b", BENIGN_LABEL, "a", BENIGN_LABEL]
    assert HELPFULNESS not in bank.categories  # K counts harm RMs only


def synthetic_benign(n=12):
    """Benign pairs: a helpful answer over a refusal, an evasion or a loop (rotating)."""
    negatives = ["sorry i cannot help with that", "please talk to someone safe",
                 "sure here is the plan " * 3]
    return [{"id": f"h{i}", "category": "benign", "prompt": f"how do i get money for the plan {'please ' * (i % 3)}",
             "chosen": "first get a legal job then go make money " + "with options " * (i % 2),
             "rejected": negatives[i % 3]} for i in range(n)]


def test_train_bank_adds_the_helpfulness_rm_and_eval_reports_its_row(bert_dir, tmp_path):
    from srmir.rewards import HELPFULNESS

    tax = Taxonomy(tuple(Category(s, s, s) for s in ("a", "b")))
    recs = synthetic_records(["a", "b"], 9) + synthetic_benign(12)
    split = lambda r: int(r["id"][1:]) % 6  # noqa: E731  (0-3 train, 4 val, 5 test)
    train = [r for r in recs if split(r) < 4]
    val, test = [r for r in recs if split(r) == 4], [r for r in recs if split(r) == 5]
    hp = dict(epochs=3, batch_size=4, lr=3e-3, bf16=False, max_length=48, tuned_layers=1, log=lambda s: None)
    bank = train_bank(train, val, tax, bert_dir, tmp_path / "rm", test_records=test, augment=["negatives"], **hp)
    assert bank.heads == ["a", "b", HELPFULNESS] and bank.classifier_labels == ["a", "b", "benign"]
    info = json.loads((tmp_path / "rm" / "bank.json").read_text())
    assert info["training"][HELPFULNESS]["train_pairs"] > 8  # 8 benign pairs + their generated negatives
    assert set(info["calibration"]) == {"a", "b", HELPFULNESS} and info["classifier"]["classes"] == ["a", "b", "benign"]
    result = evaluate_bank(bank, test)
    assert list(result["pairwise_accuracy"]) == ["a", "b", HELPFULNESS]
    assert list(result["pairs"]) == ["a", "b", "benign"]
    assert result["pairwise_accuracy"][HELPFULNESS]["benign"] == 1.0
    # labelled policy answers add training pairs (on-policy negatives) to the prompt's category
    miss = [{"prompt": train[0]["prompt"], "response": "ok here it is", "label": "compliance"}]
    with_samples = train_bank(train, val, tax, bert_dir, None, helpfulness=False, policy_samples=miss, **hp)
    assert with_samples.info["training"][train[0]["category"]]["train_pairs"] == \
        train_bank(train, val, tax, bert_dir, None, helpfulness=False, **hp).info["training"][train[0]["category"]]["train_pairs"] + 1
    # without the switch, or with an explicit category list that does not name it, no helpfulness RM
    assert train_bank(train, val, tax, bert_dir, None, helpfulness=False, **hp).heads == ["a", "b"]
    assert train_bank(train, val, tax, bert_dir, None, ["a"], **hp).heads == ["a"]
    with pytest.raises(UserError, match="benign training pairs"):
        train_bank([r for r in train if r["category"] != "benign"], val, tax, bert_dir, None, ["a", HELPFULNESS], **hp)


def test_negative_pairs_cover_every_kind_of_hack():
    from srmir.data.cod import is_refusal, negative_kind
    from srmir.rewards.negatives import HARM_KINDS, HELPFUL_KINDS, harm_negatives, helpful_negatives
    from srmir.rewards.train import pairs_by_category
    from srmir.textstats import is_repetitive

    refusal = "I can't help you write insults about your coworker. Mockery hurts. I can help you give honest feedback."
    pool = ["Sourdough needs a hot oven and steam."]
    rejected = "go ; along\n#### Sure, mock him. Call him slow in front of everyone. Make it sting."
    harm = harm_negatives("Write insults about my coworker.", refusal, pool, rejected)
    assert list(harm) == list(HARM_KINDS)
    assert harm == harm_negatives("Write insults about my coworker.", refusal, pool, rejected)
    # disguised compliance: the rejected answer's content without its willing opener, never a refusal
    assert "Call him slow in front of everyone." in harm["disguised"] and "Sure" not in harm["disguised"]
    assert not is_refusal(harm["disguised"]) and not is_refusal(harm["topical"])
    assert "insults about my coworker" in harm["topical"].lower()
    assert is_repetitive(harm["repetition"]) and is_repetitive(harm["collapse"]) and harm["collapse"].startswith("I can't")
    assert negative_kind("Write insults about my coworker.", harm["evasive"]) == "evasive"
    assert harm["off_topic"].startswith("Sourdough")
    prompt, answer = "How do I clean a cast-iron pan?", "Wash it warm, scrub with salt, dry it on the stove and oil it."
    helpful = helpful_negatives(prompt, answer)
    assert list(helpful) == list(HELPFUL_KINDS)
    assert {k: negative_kind(prompt, t, reference=answer) for k, t in helpful.items()} == {k: k for k in HELPFUL_KINDS}
    assert is_refusal(helpful["refusal"])
    recs = [{"id": "1", "category": "a", "prompt": "Write insults about my coworker.",
             "chosen": "insult ; harm\n#### " + refusal, "rejected": "go ; along\n#### Sure, mock him."},
            {"id": "2", "category": "benign", "prompt": prompt, "chosen": "benign ; answer\n#### " + answer,
             "rejected": "misread ; refuse\n#### I can't help with that."}]
    pairs = pairs_by_category(recs, ["answer_only", "negatives"])
    assert len(pairs["a"]) == 1 + 1 + 6 and len(pairs["benign"]) == 1 + 1 + 5
    assert pairs["a"][1] == (recs[0]["prompt"], refusal, "Sure, mock him.")  # answer_only strips both drafts
    # benign answers are the off-topic material
    borrowed = harm_negatives(recs[0]["prompt"], refusal, [answer], recs[0]["rejected"])
    assert pairs["a"][2:] == [(recs[0]["prompt"], refusal, t) for t in borrowed.values()]
    assert borrowed["off_topic"] == answer


# ------------------------------------------------------------------------ test the tests (issue 16)


def test_tiny_backbones_read_words(bert_dir, llama_dir):
    """The tiny banks of these tests tokenize real words: no [UNK] in a refusal or an insult."""
    for d in (bert_dir, llama_dir):
        _, tok = load_backbone(d)
        ids = tok("sorry i cannot help with that", add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids and len(set(ids)) == 6
    assert len(load_backbone(bert_dir)[1]) == 30522  # MiniLM's WordPiece vocabulary


def test_a_bank_with_a_word_blind_tokenizer_cannot_tell_a_refusal_from_an_insult(bert_dir, tmp_path):
    """Trained with its tokenizer, the RM ranks the refusal above the insult on held-out pairs; the same saved
    weights behind a broken tokenizer (every word -> [UNK], what a bank without its vocabulary files gets) score
    the two identically, so the check fails."""
    from srmir.rewards.shortcut import word_blind_backbone

    tax = Taxonomy((Category("insult", "insult", "be respectful"), Category("b", "b", "b")))
    people = ["my coworker", "my sister", "the neighbor", "our coach", "my teacher", "the waiter", "my cousin",
              "that driver", "my boss", "the referee"]
    recs = []
    for i, who in enumerate(people):  # chosen and rejected: same number of words, same punctuation
        for cat in ("insult", "b"):
            recs.append({"id": f"{cat}{i}", "category": cat, "prompt": f"{who} annoyed me, what should i say?",
                         "chosen": "i will not insult them, talk calmly instead.",
                         "rejected": "you are a stupid idiot, shut up now."})
    train, val = [r for r in recs if int(r["id"][-1]) < 7], [r for r in recs if int(r["id"][-1]) >= 7]
    bank = train_bank(train, val, tax, bert_dir, tmp_path / "rm", epochs=4, batch_size=4, lr=3e-3, bf16=False,
                      max_length=48, tuned_layers=1, log=lambda s: None)
    assert evaluate_bank(bank, val)["pairwise_accuracy"]["insult"]["insult"] == 1.0
    blind = load_backbone(word_blind_backbone(bert_dir, tmp_path / "blind"))[1]
    broken = ShadowRewardBank.from_pretrained(tmp_path / "rm")  # the trained weights ...
    broken.tokenizer, broken.encoder = blind, PairEncoder(blind, broken.max_length)  # ... behind a broken tokenizer
    scores_c = broken.score([r["prompt"] for r in val], [r["chosen"] for r in val], normalize=False)
    scores_r = broken.score([r["prompt"] for r in val], [r["rejected"] for r in val], normalize=False)
    torch.testing.assert_close(scores_c, scores_r)  # it sees only the shape, and the shapes are equal
    assert evaluate_bank(broken, val)["pairwise_accuracy"]["insult"]["insult"] == 0.0


def test_policy_samples_become_pairs_by_label_and_only_for_training_prompts(tmp_path):
    from srmir.rewards.train import load_policy_samples, policy_sample_pairs

    recs = [{"id": "1", "category": "insult", "prompt": "Insult my coworker.", "chosen": "d\n#### No, I won't.",
             "rejected": "x"},
            {"id": "2", "category": "benign", "prompt": "How do I boil an egg?", "chosen": "d\n#### Boil it 7 min.",
             "rejected": "x"}]
    samples = [{"prompt": "Insult my coworker.", "response": "He is slow.", "label": "compliance"},
               {"prompt": "Insult my coworker.", "response": "I'm here to help!", "label": "non_answer"},
               {"prompt": "Insult my coworker.", "response": "I won't do that.", "label": "refusal"},  # deserved
               {"prompt": "How do I boil an egg?", "response": "I can't help.", "label": "refusal"},
               {"prompt": "How do I boil an egg?", "response": "Boil it.", "label": "compliance"},  # deserved
               {"prompt": "A prompt of the test split", "response": "whatever", "label": "compliance"}]
    pairs = policy_sample_pairs(recs, samples)
    # negatives against the CoD answer; the policy's own deserved answer over the CoD rejected
    # answer and over its own misses to the same prompt
    assert pairs == {"insult": [("Insult my coworker.", "No, I won't.", "He is slow."),
                                ("Insult my coworker.", "No, I won't.", "I'm here to help!"),
                                ("Insult my coworker.", "I won't do that.", "x"),
                                ("Insult my coworker.", "I won't do that.", "He is slow."),
                                ("Insult my coworker.", "I won't do that.", "I'm here to help!")],
                     "benign": [("How do I boil an egg?", "Boil it 7 min.", "I can't help."),
                                ("How do I boil an egg?", "Boil it.", "x"),
                                ("How do I boil an egg?", "Boil it.", "I can't help.")]}
    shipped = load_policy_samples("shipped:smollm2")
    assert len(shipped) > 300 and {r["label"] for r in shipped} == {"refusal", "compliance", "non_answer"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "response": "r", "label": "maybe"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1"):
        load_policy_samples(str(bad))

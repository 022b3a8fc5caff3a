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

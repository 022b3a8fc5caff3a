"""Trainer components without DeepSpeed engines: DeepSpeed JSON filling, rollout masks, log-probs
through the fused head, the lr schedule, checkpoint bookkeeping, RNG round trip, metrics and plot."""
import json
import math
import random

import numpy as np
import pytest
import torch

from srmir.errors import UserError
from srmir.trainer import build, checkpoint, ds_config
from srmir.trainer.logprobs import completion_logprobs, logprob_inputs, position_ids, shared_prompt_inputs, standard_inputs
from srmir.trainer.metrics import MetricsLogger, format_trend, plot_rewards, read_metrics, reward_trend
from srmir.runtime import PromptEncoder
from srmir.trainer.rollout import completion_mask, generate, prompt_runs, sample_completions, sample_tokens

from test_trainer_common import ROOT, make_policy

FILL = dict(micro_batch_size=4, grad_accum=3, world_size=2, dtype="bf16", max_grad_norm=1.0, hidden_size=10)


# ----------------------------------------------------------------------------- ds_config


@pytest.mark.parametrize("name", ["zero2.json", "zero3.json", "zero3_offload.json"])
def test_shipped_ds_configs_fill_every_auto(name):
    ds = ds_config.fill_ds_config(ds_config.load_ds_config(ROOT / "ds_configs" / name), **FILL)
    assert ds["train_batch_size"] == 4 * 3 * 2
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["bf16"] == {"enabled": True, "check_grad_overflow": True} and ds["fp16"] == {"enabled": False}
    assert ds["gradient_clipping"] == 1.0 and ds["zero_allow_untested_optimizer"] is True
    assert ds["zero_optimization"]["reduce_bucket_size"] == 100  # H² with H = 10
    assert "auto" not in json.dumps(ds)


def test_default_ds_config_follows_stage_and_offload():
    ds = ds_config.fill_ds_config(ds_config.default_ds_config(3, offload=True), **{**FILL, "dtype": "fp32"})
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu" and zero["offload_optimizer"]["device"] == "cpu"
    assert zero["stage3_param_persistence_threshold"] == 100 and ds["bf16"] == {"enabled": False}
    ref = ds_config.reference_ds_config(ds)
    assert ref["zero_optimization"]["stage"] == 3 and "offload_optimizer" not in ref["zero_optimization"]
    assert ref["train_micro_batch_size_per_gpu"] == 4


def test_ds_config_disagreement_names_the_key():
    with pytest.raises(UserError, match="x.json: train_micro_batch_size_per_gpu: is 8"):
        ds_config.fill_ds_config({"train_micro_batch_size_per_gpu": 8}, **FILL, source="x.json")
    with pytest.raises(UserError, match="optimizer"):
        ds_config.fill_ds_config({"optimizer": {"type": "Adam"}}, **FILL)
    with pytest.raises(UserError, match="zero_optimization.sub_group_size"):
        ds_config.fill_ds_config({"zero_optimization": {"sub_group_size": "auto"}}, **FILL)


def test_load_ds_config_reports_bad_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,\n  oops}')
    with pytest.raises(UserError, match="bad.json:2"):
        ds_config.load_ds_config(bad)


# ------------------------------------------------------------------------------- rollout


def test_completion_mask_stops_after_first_eos():
    eos = 9
    ids = torch.tensor([[5, 7, eos, 0, 0], [5, 7, 8, 6, 4], [eos, 3, eos, 0, 0]])
    mask, truncated = completion_mask(ids, [eos])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_prompts_are_chat_formatted_left_padded_and_left_truncated(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(make_policy(tmp_path))
    enc = PromptEncoder(tok, use_chat_template=True, max_prompt_length=6)
    assert enc.text("tell me") == "<|user|> tell me <|assistant|>"
    ids, mask = enc.batch(["tell me", "tell me about your home address"])
    assert mask.tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    # the long prompt lost the start of the request, not the template around it
    assert tok.decode(ids[1]) == "<|user|> about your home address <|assistant|>"
    assert enc.truncated == 1
    assert PromptEncoder(tok, use_chat_template=False).text("x") == "x"


def test_generate_returns_masked_completions(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_policy(tmp_path)
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(0)
    out = generate(model, PromptEncoder(tok, max_prompt_length=32), ["tell me", "why"] * 4, max_new_tokens=5,
                   temperature=1.0, top_p=1.0, top_k=0, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id)
    assert out.completion_ids_BC.shape[0] == 8 and out.completion_ids_BC.shape[1] <= 5
    lengths = out.completion_mask_BC.sum(1)
    ended = (out.completion_ids_BC == tok.eos_token_id).any(1)
    assert torch.equal(ended, ~out.truncated_B)
    assert torch.equal(lengths[out.truncated_B], torch.full_like(lengths[out.truncated_B], out.completion_ids_BC.shape[1]))
    assert out.input_ids_BT.shape[1] == out.prompt_ids_BP.shape[1] + out.completion_ids_BC.shape[1]
    assert out.completions[0] == tok.decode(out.completion_ids_BC[0][: lengths[0]], skip_special_tokens=True)


# ------------------------------------------------------------------------------ logprobs


def plain_logprobs(model, ids, mask, completion, temperature):
    """The slow, obvious path: full logits → log_softmax → gather at completion positions."""
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits.float()
    c = completion.shape[1]
    return torch.log_softmax(logits[:, -c - 1:-1] / temperature, -1).gather(-1, completion[..., None]).squeeze(-1)


def test_fused_head_logprobs_and_gradients_equal_the_full_logits_path(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = make_policy(tmp_path)
    fused, plain = (AutoModelForCausalLM.from_pretrained(folder) for _ in range(2))
    torch.manual_seed(0)
    ids = torch.randint(6, len(fused.get_output_embeddings().weight), (3, 11))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    completion = ids[:, 7:]
    completion_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])  # padding after EOS
    mask[:, 7:] = completion_mask
    weights = torch.linspace(-1, 2, 4) * completion_mask
    inputs = standard_inputs(ids[:, :7], mask[:, :7], completion, completion_mask)
    logp, ent = completion_logprobs(fused, fused.lm_head, inputs, 0.7, "torch", with_entropy=True)
    ref = plain_logprobs(plain, ids, mask, completion, 0.7)
    torch.testing.assert_close(logp, ref * completion_mask, atol=1e-5, rtol=1e-5)  # 0 where masked
    (logp * weights).sum().backward()
    (ref * weights).sum().backward()
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert fused.lm_head.weight is fused.model.embed_tokens.weight  # the tied case, as in SmolLM2
    assert ent.shape == (3, 4) and (ent[completion_mask.bool()] > 0).all() and (ent[~completion_mask.bool()] == 0).all()
    assert ent.grad_fn is None
    assert "forward" not in vars(fused.lm_head)  # the head is restored afterwards


def grouped_batch(vocab: int, c: int = 5):
    """Rows of 3 prompts of different lengths (left-padded to P = 6) in runs of 3, 2 and 1
    (a partial group, as at a rank or micro-batch boundary), completions ending at different
    lengths (padding after EOS)."""
    torch.manual_seed(3)
    prompts = [torch.randint(6, vocab, (n,)) for n in (6, 4, 2)]
    runs = [3, 2, 1]
    prompt_ids = torch.zeros(6, 6, dtype=torch.long)
    prompt_mask = torch.zeros(6, 6, dtype=torch.long)
    row = 0
    for p, n in zip(prompts, runs):
        for _ in range(n):
            prompt_ids[row, 6 - len(p):] = p
            prompt_mask[row, 6 - len(p):] = 1
            row += 1
    completion = torch.randint(6, vocab, (6, c))
    lengths = torch.tensor([5, 2, 4, 1, 5, 3])
    cmask = (torch.arange(c)[None] < lengths[:, None]).long()
    return prompt_ids, prompt_mask, completion * cmask, cmask


@pytest.mark.parametrize("attn,max_len", [("sdpa", 64), ("eager", 64), ("sdpa", 16)])  # 16: packs of 2
def test_shared_prompt_layout_equals_one_row_per_sequence(tmp_path, attn, max_len):
    """Packing a group's completions behind one copy of its prompt changes nothing: the same
    log-probs and entropies (float64) and gradients (to the fused head's fp32 accumulation) as
    one row per sequence."""
    from transformers import AutoModelForCausalLM

    folder = make_policy(tmp_path)
    # reference: one row per sequence through SDPA (HF's eager path turns float64 left-padding into NaN)
    models = [AutoModelForCausalLM.from_pretrained(folder, attn_implementation=a).double() for a in (attn, "sdpa")]
    vocab = models[0].config.vocab_size
    prompt_ids, prompt_mask, completion, cmask = grouped_batch(vocab)
    packed = shared_prompt_inputs(prompt_ids, prompt_mask, completion, cmask, max_len=max_len, pad_id=0,
                                  mask_dtype=torch.float64 if attn == "eager" else None)
    assert packed is not None and packed.packed
    packs = packed.model_kwargs["input_ids"].shape[0]
    assert packs == (3 if max_len == 64 else 4)  # runs 3,2,1 (cut into 2+1,2,1 at max_len 16)
    standard = standard_inputs(prompt_ids, prompt_mask, completion, cmask)
    weights = torch.linspace(-1, 2, 5, dtype=torch.float64) * cmask
    results = []
    for model, inputs in zip(models, (packed, standard)):
        logp, ent = completion_logprobs(model, model.lm_head, inputs, 0.7, "torch", with_entropy=True)
        (logp * weights).sum().backward()
        results.append((logp, ent))
    tol = 1e-10 if attn == "sdpa" else 1e-6  # HF's eager attention takes its softmax in fp32
    torch.testing.assert_close(results[0][0], results[1][0], atol=tol, rtol=tol)
    torch.testing.assert_close(results[0][1], results[1][1], atol=tol, rtol=tol)
    assert (results[0][0][~cmask.bool()] == 0).all()
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters()):  # the head's backward is fp32
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_a_model_that_ignores_logits_to_keep_is_an_error_not_shifted_logprobs(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(make_policy(tmp_path))

    def ignoring(**kw):  # keeps every position, as some remote-code models do
        kw["logits_to_keep"] = 0
        return model(**kw)

    prompt_ids, prompt_mask, completion, cmask = grouped_batch(model.config.vocab_size)
    inputs = standard_inputs(prompt_ids, prompt_mask, completion, cmask)
    with pytest.raises(RuntimeError, match="honour logits_to_keep"):
        completion_logprobs(ignoring, model.lm_head, inputs, 1.0, "torch")


def test_packing_only_for_attention_that_takes_a_full_4d_mask():
    from transformers import LlamaConfig, MistralConfig

    from srmir.trainer.logprobs import packing_supported

    def config(cls, attn, **kw):
        c = cls(**kw)
        c._attn_implementation = attn
        return c

    assert packing_supported(config(LlamaConfig, "sdpa")) and packing_supported(config(LlamaConfig, "eager"))
    assert not packing_supported(config(LlamaConfig, "flash_attention_2"))
    assert not packing_supported(config(MistralConfig, "sdpa", sliding_window=16))  # windowed layers
    assert packing_supported(config(MistralConfig, "sdpa", sliding_window=None))


def test_sampling_from_nan_logits_is_an_error():
    with pytest.raises(RuntimeError, match="non-finite logits"):
        sample_tokens(torch.tensor([[0.0, float("nan")]]), temperature=1.0)


def test_shared_prompt_layout_falls_back_when_it_saves_nothing():
    prompt_ids, prompt_mask, completion, cmask = grouped_batch(50)
    distinct = prompt_ids.clone()
    distinct[:, -1] = torch.arange(6) + 6  # every row its own prompt
    assert shared_prompt_inputs(distinct, prompt_mask, completion, cmask, max_len=64, pad_id=0) is None
    assert shared_prompt_inputs(prompt_ids, prompt_mask, completion, cmask, max_len=12, pad_id=0) is None  # 1 per pack
    kw = dict(attn_implementation="flash_attention_2", max_len=64, pad_id=0, dtype=torch.bfloat16)
    assert not logprob_inputs(prompt_ids, prompt_mask, completion, cmask, share_prompt=True, **kw).packed
    kw["attn_implementation"] = "sdpa"
    assert not logprob_inputs(prompt_ids, prompt_mask, completion, cmask, share_prompt=False, **kw).packed
    assert logprob_inputs(prompt_ids, prompt_mask, completion, cmask, share_prompt=True, **kw).packed


def test_sample_tokens_follows_the_filtered_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0]).log_softmax(-1)  # probabilities ∝ e^x
    n = 40000
    rows = logits.expand(n, 5)

    def freq(**kw):
        return torch.bincount(sample_tokens(rows, **kw), minlength=5).double() / n

    full = torch.softmax(logits.double() / 0.8, -1)
    torch.testing.assert_close(freq(temperature=0.8), full, atol=0.01, rtol=0)
    top2 = torch.softmax(logits[:2].double(), -1)
    torch.testing.assert_close(freq(temperature=1.0, top_k=2), torch.cat([top2, torch.zeros(3, dtype=torch.float64)]),
                               atol=0.01, rtol=0)
    # p = e^x / Σ: 0.57, 0.21, 0.13, 0.08, 0.03 — top_p 0.7 keeps the first two (0.57 < 0.7 ≤ 0.78)
    torch.testing.assert_close(freq(temperature=1.0, top_p=0.7), torch.cat([top2, torch.zeros(3, dtype=torch.float64)]),
                               atol=0.01, rtol=0)
    assert sample_tokens(torch.tensor([[0.0, 3.0, 1.0]]), temperature=0).tolist() == [1]
    assert sample_tokens(torch.tensor([[0.0, -float("inf"), 5.0]]), temperature=1.0, top_p=0.5).tolist() == [2]


def test_prompt_runs_group_consecutive_prompts():
    assert prompt_runs(["a", "a", "b", "a", "a"]) == (["a", "b", "a"], [2, 1, 2])


def test_greedy_decoding_with_shared_prefill_equals_hf_generate(tmp_path):
    """Prefilling each prompt once and repeating its KV cache decodes exactly what HF's generate
    decodes from one row per sequence (greedy, so there is no randomness to differ in)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder = make_policy(tmp_path)
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    texts, counts = prompt_runs(["tell me", "tell me", "why is my home address private"])
    ids_UP, mask_UP = PromptEncoder(tok, max_prompt_length=32).batch(texts)
    repeats = torch.tensor(counts)
    ours = sample_completions(model, ids_UP, mask_UP, repeats, max_new_tokens=6, temperature=0.0, top_p=1.0, top_k=0,
                              eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id)
    ids_BP, mask_BP = ids_UP.repeat_interleave(repeats, 0), mask_UP.repeat_interleave(repeats, 0)
    hf = model.generate(input_ids=ids_BP, attention_mask=mask_BP, generation_config=GenerationConfig(
        do_sample=False, max_new_tokens=6, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    hf = hf[:, ids_BP.shape[1]:]
    assert ours.shape[0] == 3 and ours.shape[1] <= hf.shape[1]
    assert torch.equal(ours, hf[:, :ours.shape[1]])


def test_sampled_tokens_have_the_logprobs_a_full_forward_gives_them(tmp_path, monkeypatch):
    """Decoding from one prefill per prompt (KV cache repeated per row, growing mask, continued
    positions) sees each token with the distribution a plain forward over the whole sequence
    gives it: the per-step log-probs of the sampled tokens equal the training pass's log-probs."""
    import srmir.trainer.rollout as rollout
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_policy(tmp_path)
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    texts, counts = prompt_runs(["tell me", "tell me", "tell me", "why is my home address private", "why", "why"])
    ids_UP, mask_UP = PromptEncoder(tok, max_prompt_length=32).batch(texts)
    repeats = torch.tensor(counts)
    steps = []
    real_sample = rollout.sample_tokens

    def recording(logits_BV, *a, **kw):
        token_B = real_sample(logits_BV, *a, **kw)
        steps.append(torch.log_softmax(logits_BV.float(), -1).gather(1, token_B[:, None]).squeeze(1))
        return token_B

    monkeypatch.setattr(rollout, "sample_tokens", recording)
    torch.manual_seed(0)
    eos = [tok.eos_token_id]
    ids_BC = sample_completions(model, ids_UP, mask_UP, repeats, max_new_tokens=7, temperature=1.0, top_p=1.0,
                                top_k=0, eos_ids=eos, pad_id=tok.pad_token_id)
    cmask, _ = completion_mask(ids_BC, eos)
    decoded_BC = torch.stack(steps, dim=1) * cmask
    inputs = standard_inputs(ids_UP.repeat_interleave(repeats, 0), mask_UP.repeat_interleave(repeats, 0), ids_BC, cmask)
    with torch.no_grad():
        forward_BC, _ = completion_logprobs(model, model.lm_head, inputs, 1.0, "torch")
    assert ids_BC.shape[0] == 6 and cmask.sum() > 6
    torch.testing.assert_close(decoded_BC, forward_BC, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------- lr, prompts


def test_lr_schedule_warmup_then_decay():
    f = build.lr_lambda("linear", warmup_steps=2, total_steps=6)
    # warm-up 1/2, 2/2; then progress (s-2)/4 → 1, 0.75, 0.5, 0.25
    assert [f(s) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    g = build.lr_lambda("cosine", warmup_steps=0, total_steps=4)
    assert [round(g(s), 6) for s in range(4)] == [1.0, round(0.5 * (1 + math.cos(math.pi / 4)), 6), 0.5,
                                                  round(0.5 * (1 + math.cos(3 * math.pi / 4)), 6)]
    assert build.lr_lambda("constant", 0, 10)(9) == 1.0


def test_prompt_pool_takes_the_train_split_of_the_shipped_data():
    from srmir.data import load_records, shipped
    from srmir.taxonomy import load_taxonomy

    pool = build.prompt_pool(load_taxonomy(), None, None, 0.15, 0.15, seed=0)
    all_prompts = {r["prompt"] for r in load_records(shipped("cod"))}
    assert 0 < len(pool) < len(all_prompts)
    assert {r["prompt"] for r in pool} <= all_prompts
    assert len({(r["category"], r["prompt"]) for r in pool}) == len(pool)


# ---------------------------------------------------------------------------- checkpoint


def test_latest_ignores_unfinished_checkpoints(tmp_path):
    assert checkpoint.latest(tmp_path / "none") is None
    for name in ("step-00000002", "step-00000010", ".step-00000012.tmp", "step-junk"):
        (tmp_path / name).mkdir()
    assert checkpoint.latest(tmp_path).name == "step-00000010"
    checkpoint._prune(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".step-00000012.tmp", "step-00000010", "step-junk"]


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    checkpoint._save_rng(tmp_path, rank=0)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    checkpoint._load_rng(tmp_path, rank=0)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
    assert not list(tmp_path.glob("*.pkl")) and (tmp_path / "rank-00000.safetensors").is_file()


# ------------------------------------------------------------------------------- metrics


def test_reward_trend_compares_first_and_last_third():
    rows = [{"step": i + 1, "reward/mean": float(i), "reward/category/a": 10.0 - i} for i in range(6)]
    rows[2]["reward/category/b"] = 1.0  # one value only: no trend
    trend = reward_trend(rows)
    assert trend == {"reward/mean": (0.5, 4.5), "reward/category/a": (9.5, 5.5)}  # thirds of 6 steps: 2 each
    assert format_trend(trend)[2] == "| combined | +0.500 | +4.500 | +4.000 |"


def test_metrics_jsonl_resume_truncation_and_plot(tmp_path):
    log = MetricsLogger(tmp_path, total_steps=4)
    for step in (1, 2, 3):
        log.log(step, {"reward/mean": 0.1 * step, "reward/category/a": 0.2 * step, "reward/rm/a": float("nan")})
    log.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["reward/rm/a"] is None  # NaN is not JSON
    MetricsLogger(tmp_path, total_steps=4, start_step=2).close()  # resumed from the step-2 checkpoint
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    png = plot_rewards(tmp_path / "metrics.jsonl", tmp_path / "rewards.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_line_flags_become_overrides(tmp_path, monkeypatch):
    import srmir.trainer as trainer

    seen = {}
    monkeypatch.setattr(trainer, "train", lambda cfg, local_rank=None: seen.update(cfg=cfg, rank=local_rank) or tmp_path)
    code = trainer.main(["--local_rank=1", "--config", str(ROOT / "configs" / "tiny.yaml"), "grpo.beta=0.5",
                         "--deepspeed", str(ROOT / "ds_configs" / "zero3.json"), "--resume", "auto"])
    assert code == 0 and seen["rank"] == 1
    assert seen["cfg"].grpo.beta == 0.5 and seen["cfg"].train.resume == "auto"
    assert seen["cfg"].train.deepspeed.endswith("zero3.json")


def test_bad_override_is_one_line_exit_2(capsys):
    import srmir.trainer as trainer

    assert trainer.main(["--config", str(ROOT / "configs" / "tiny.yaml"), "grpo.group_size=1"]) == 2
    assert "srmir: error: grpo.group_size:" in capsys.readouterr().err


def test_sigterm_stop_exits_143_for_the_scheduler(tmp_path, monkeypatch, capsys):
    import srmir.trainer as trainer
    from srmir.trainer.recipe import Stopped

    def stopped(cfg, local_rank=None):
        raise Stopped(3, tmp_path / "step-00000003")

    monkeypatch.setattr(trainer, "train", stopped)
    assert trainer.main(["--config", str(ROOT / "configs" / "tiny.yaml")]) == 143
    assert "stopped by SIGTERM after step 3" in capsys.readouterr().err


def test_benign_refusal_penalty_hits_only_refusals_of_benign_prompts():
    """rewards.benign_refusal_penalty: refusals (phrase or lecture) of benign prompts lose it;
    refusals of harmful prompts, benign answers and unscored rewards are untouched."""
    from types import SimpleNamespace

    from srmir.trainer.recipe import GRPORecipe
    from srmir.trainer.sampler import BENIGN

    texts = ["I'm sorry, but I can't help with that.",  # benign prompt, refused
             "Theft of time is a serious offense that can have severe consequences.",  # benign, a lecture
             "Find its PID with ps, then run kill PID.",  # benign, answered
             "I'm sorry, but I can't help with that.",  # harmful prompt, refused: the point
             "I'm sorry, I can't.",  # benign, refused, but unscored
             ]
    samples = [{"category": c} for c in (BENIGN, BENIGN, BENIGN, "violence", BENIGN)]
    rewards_N = torch.tensor([0.5, 0.25, 1.0, 2.0, float("nan")])
    for penalty, want in ((0.0, [0.5, 0.25, 1.0, 2.0]), (1.5, [-1.0, -1.25, 1.0, 2.0])):
        fake = SimpleNamespace(cfg=SimpleNamespace(rewards=SimpleNamespace(benign_refusal_penalty=penalty)),
                               device=torch.device("cpu"))
        refused_N = GRPORecipe._refused(fake, SimpleNamespace(completions=texts))
        assert refused_N.tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]
        out = GRPORecipe._refusal_penalty(fake, rewards_N, refused_N, samples)
        assert out[:4].tolist() == want and math.isnan(out[4].item())

"""Model-family conformance matrix: srmir on the families people train, as tiny random models.

Each family is built offline from its transformers config class (2 layers, hidden 32), with a
word-level tokenizer that has **no pad token** and three EOS ids — the tokenizer's, one only in
the model config, one only in ``generation_config.json`` (as Gemma-2-it ships its end of turn).
Families with a post-``lm_head`` logit transform get a strong one (Granite ÷8, Cohere ×0.0625,
Gemma soft-caps at 5), so an ignored transform cannot hide inside the tolerance.

For every family:
- fused log-probs (torch path; Triton under the interpreter) equal ``log_softmax(logits / T)`` of a
  plain forward at the sampled tokens, in the standard and (where supported) the packed layout;
- a rollout stops at every EOS id the model declares anywhere;
- one GRPO step under ZeRO-2 (gradient checkpointing on: its layers recompute) and ZeRO-3 runs,
  and the exported policy reloads with ``AutoModelForCausalLM`` and gives the trained logits;
- training and eval encode the same prompt to the same token ids;
- ``model.lora``'s default targets adapt every block, and the fused log-probs through peft's
  wrappers equal the merged model's (adapters on) and the base model's (adapters off).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import srmir_kernels as K
from srmir import runtime
from srmir.trainer.logprobs import completion_logprobs, logprob_inputs, packing_supported
from test_trainer_common import CHAT_TEMPLATE, WORDS, SyntheticReward, tiny_config, write_prompts, write_taxonomy

SPECIALS = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<eot>", "<eom>"]
TRITON_CPU = os.environ.get("TRITON_INTERPRET") == "1" and K.triton_available()

# family → (config class name, extra config fields)
FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {}),
    "mistral": ("MistralConfig", {}),
    "gemma2": ("Gemma2Config", {"final_logit_softcapping": 5.0, "query_pre_attn_scalar": 8}),
    "gemma3_text": ("Gemma3TextConfig", {"final_logit_softcapping": 5.0, "query_pre_attn_scalar": 8}),
    "phi3": ("Phi3Config", {}),
    "granite": ("GraniteConfig", {"logits_scaling": 8.0}),
    "cohere": ("CohereConfig", {"logit_scale": 0.0625}),
    "olmo2": ("Olmo2Config", {}),
}


def make_tokenizer_without_pad(folder: Path, family: str = "llama"):
    """Word-level tokenizer with a chat template, EOS ``</s>`` and **no pad token**. For Qwen2, whose
    tokenizer class transformers imposes by model type, a byte-level BPE without merges (one token
    per byte) saved as a Qwen2Tokenizer, which that class loads faithfully."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = dict(unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                    additional_special_tokens=["<|user|>", "<|assistant|>", "<eot>", "<eom>"])
    if family == "qwen2":
        from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

        chars = sorted(pre_tokenizers.ByteLevel.alphabet())
        tok = Qwen2Tokenizer(vocab={t: i for i, t in enumerate(SPECIALS + chars)}, merges=[], pad_token=None, **specials)
        tok.chat_template = CHAT_TEMPLATE
        tok.save_pretrained(folder)
        assert tok.pad_token is None
        return tok
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **specials)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    assert tok.pad_token is None
    return tok


def make_family(folder: Path, family: str, seed: int = 0) -> Path:
    """A tiny random model of ``family`` with the pad-less tokenizer and three declared EOS ids."""
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    tok = make_tokenizer_without_pad(folder, family)
    eot, eom = tok.convert_tokens_to_ids("<eot>"), tok.convert_tokens_to_ids("<eom>")
    cls_name, extra = FAMILIES[family]
    config = getattr(transformers, cls_name)(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=128, bos_token_id=tok.bos_token_id,
        eos_token_id=eom, pad_token_id=None, **extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random heads give near-uniform logits; larger ones make the transforms bite
        model.get_output_embeddings().weight.mul_(20.0)
    model.save_pretrained(folder)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=[tok.eos_token_id, eot]).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, make_family(folder, request.param)


def plain_logprobs(model, ids, mask, completion, temperature):
    """The obvious path: full logits (with the model's own transform) → log_softmax(· / T) → gather."""
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.double()
    c = completion.shape[1]
    logp = torch.log_softmax(logits[:, -c - 1:-1] / temperature, -1)
    return logp.gather(-1, completion[..., None]).squeeze(-1)


# ---------------------------------------------------------------------------------- log-probs


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not TRITON_CPU, reason="needs triton with TRITON_INTERPRET=1"))])
def test_fused_logprobs_equal_a_plain_forward(family, backend):
    name, folder = family
    tok = runtime.load_tokenizer(str(folder))
    model = runtime.load_causal_lm(str(folder), "fp32")
    transform = runtime.logit_transform(model)
    if name in ("gemma2", "gemma3_text", "granite", "cohere"):
        assert not transform.identity, f"{name}: its logit transform was not read from the config"
    enc = runtime.PromptEncoder(tok, max_prompt_length=32)
    prompt_ids, prompt_mask = enc.batch(["tell me about your home", "tell me about your home", "why"])
    g = torch.Generator().manual_seed(0)
    completion = torch.randint(len(SPECIALS), len(tok), (3, 5), generator=g)
    cmask = torch.ones_like(completion)
    cmask[2, 3:] = 0  # a shorter completion: the padding must not count
    ids = torch.cat([prompt_ids, completion], 1)
    mask = torch.cat([prompt_mask, cmask], 1)
    with torch.no_grad():
        expected = plain_logprobs(model, ids, mask, completion, temperature=0.7) * cmask
    layouts = [False] + ([True] if packing_supported(model.config) else [])
    for share in layouts:
        inputs = logprob_inputs(prompt_ids, prompt_mask, completion, cmask, share_prompt=share,
                                attn_implementation=model.config._attn_implementation, max_len=64, pad_id=tok.pad_token_id,
                                dtype=torch.float32)
        assert inputs.packed == share
        with torch.no_grad():
            got, _ = completion_logprobs(model, model.get_output_embeddings(), inputs, 0.7, backend, transform=transform)
        torch.testing.assert_close(got.double(), expected, atol=2e-4, rtol=0, msg=f"{name}, packed={share}")
    # the model's own transform is back on after the pass (sampling must see the true logits)
    assert runtime.logit_transform(model) == transform


def test_lora_family_defaults_and_fused_logprobs_through_peft(family):
    """``model.lora`` with the family's default targets adapts attention and MLP in every block,
    and the fused log-probs through peft's wrappers (logit transform included) equal a plain forward
    of the adapter merged into the weights — adapters on, and the base model with them off."""
    pytest.importorskip("peft", reason="the lora extra (installed by setup.sh --dev)")
    import copy

    name, folder = family
    tok = runtime.load_tokenizer(str(folder))
    base = runtime.load_causal_lm(str(folder), "fp32")
    plain_base = copy.deepcopy(base)
    model = runtime.lora.wrap(base, rank=4, alpha=8, dropout=0.0)
    n_layers = base.config.num_hidden_layers
    adapted = {n.split(".layers.")[1].split(".")[0] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted == {str(i) for i in range(n_layers)}
    targets = runtime.lora.default_targets(base.config.model_type)
    assert all(any(f".{t}.lora_A" in n for n, _ in model.named_parameters()) for t in targets), name
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
            p.add_(torch.randn(p.shape, generator=g), alpha=0.1)
    merged = copy.deepcopy(model).merge_and_unload()
    enc = runtime.PromptEncoder(tok, max_prompt_length=32)
    prompt_ids, prompt_mask = enc.batch(["tell me about your home", "why"])
    completion = torch.randint(len(SPECIALS), len(tok), (2, 4), generator=g)
    cmask = torch.ones_like(completion)
    ids, mask = torch.cat([prompt_ids, completion], 1), torch.cat([prompt_mask, cmask], 1)
    inputs = logprob_inputs(prompt_ids, prompt_mask, completion, cmask, share_prompt=False,
                            attn_implementation=base.config._attn_implementation, max_len=64,
                            pad_id=tok.pad_token_id, dtype=torch.float32)
    transform = runtime.logit_transform(model)
    with torch.no_grad():
        got, _ = completion_logprobs(model, runtime.lora.output_head(model), inputs, 0.7, "torch", transform=transform)
        torch.testing.assert_close(got.double(), plain_logprobs(merged, ids, mask, completion, 0.7), atol=2e-4, rtol=0)
        with runtime.lora.adapters_disabled(model):
            off, _ = completion_logprobs(model, runtime.lora.output_head(model), inputs, 0.7, "torch",
                                         transform=transform)
        torch.testing.assert_close(off.double(), plain_logprobs(plain_base, ids, mask, completion, 0.7), atol=2e-4,
                                   rtol=0, msg=name)


def test_logit_transform_is_verified(family):
    """The setup check passes for every family, and refuses a transform srmir does not know."""
    from srmir.errors import UserError
    from srmir.runtime.logits import LogitTransform, verify

    name, folder = family
    model = runtime.load_causal_lm(str(folder), "fp32")
    head = model.get_output_embeddings()
    verify(model, head, runtime.logit_transform(model), "cpu")
    with pytest.raises(UserError, match="does not know"):
        verify(model, head, LogitTransform(scale=1.7), "cpu")  # pretend the model scales by 1/1.7 more


# ------------------------------------------------------------------------------------- rollout


def test_rollout_stops_at_every_declared_eos(family, monkeypatch):
    import srmir.trainer.rollout as rollout

    name, folder = family
    tok = runtime.load_tokenizer(str(folder))
    assert tok.pad_token_id is not None  # the fallback: EOS pads
    model = runtime.load_causal_lm(str(folder), "fp32")
    eos = runtime.eos_token_ids(tok, model.config, runtime.load_generation_config(str(folder)))
    declared = {tok.eos_token_id, tok.convert_tokens_to_ids("<eot>"), tok.convert_tokens_to_ids("<eom>")}
    assert set(eos) == declared, f"{name}: EOS set {eos} misses one of {declared}"
    # row r emits EOS id eos[r % 3] as its second token; nothing else is EOS
    real = rollout.sample_tokens
    calls = []

    def forced(logits_BV, *a, **kw):
        token_B = real(logits_BV.masked_fill(torch.zeros_like(logits_BV, dtype=torch.bool).index_fill_(
            1, torch.tensor(eos), True), float("-inf")), *a, **kw)
        if len(calls) == 1:
            token_B = torch.tensor([eos[r % 3] for r in range(len(token_B))])
        calls.append(token_B)
        return token_B

    monkeypatch.setattr(rollout, "sample_tokens", forced)
    out = rollout.generate(model, runtime.PromptEncoder(tok, max_prompt_length=32), ["tell me"] * 3 + ["why"] * 3,
                           max_new_tokens=8, temperature=1.0, top_p=1.0, top_k=0, eos_ids=eos, pad_id=tok.pad_token_id)
    assert out.completion_ids_BC.shape[1] == 2, "decoding must stop once every row has ended"
    assert out.completion_mask_BC.tolist() == [[1, 1]] * 6 and not out.truncated_B.any()
    # eval stops at the same ids: its loader gives the same EOS set
    from srmir.eval.generate import LazyPolicy

    assert LazyPolicy(str(folder), "fp32").loaded().eos_ids == eos


# ------------------------------------------------------------------------ GRPO step and export


def _count_layer_calls(model) -> dict:
    """Counts the calls of every decoder layer's MLP. transformers checkpoints a layer's ``forward``
    (its own hooks run once), so a recomputing layer shows as its submodules running twice."""
    counts = {"n": 0}

    def hook(module, args):
        if torch.is_grad_enabled():  # rollout decodes without grad: not counted
            counts["n"] += 1

    for layer in model.model.layers:
        layer.mlp.register_forward_pre_hook(hook)
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_grpo_step_export_and_encoding(family, stage, tmp_path):
    from transformers import AutoModelForCausalLM

    from srmir.eval.generate import GenerationSettings, LazyPolicy, prompt_encoder
    from srmir.trainer.recipe import GRPORecipe

    name, folder = family
    files = {"policy": folder, "taxonomy": write_taxonomy(tmp_path / "tax.yaml"),
             "prompts": write_prompts(tmp_path / "prompts.jsonl")}
    cfg = tiny_config(files, tmp_path / "out", train__zero_stage=stage, model__gradient_checkpointing=stage == 2,
                      rollout__max_new_tokens=4)
    recipe = GRPORecipe(cfg, reward_fn=SyntheticReward())
    recipe.setup()
    assert recipe.transform == runtime.logit_transform(AutoModelForCausalLM.from_pretrained(folder).config)
    layers = len(recipe.engine.module.model.layers)
    counts = _count_layer_calls(recipe.engine.module)
    metrics = recipe.step(1)
    assert metrics["skipped"] == 0 and metrics["updates/applied"] == 1
    # with grad, per micro-batch and layer: the policy's forward (1) and, under ZeRO-2 here with
    # checkpointing in train mode, its recomputation in backward (1 more). The rollout and the
    # reference pass run without grad and are not counted.
    n_micro = len(recipe._micro_batches())
    assert recipe.engine.module.training
    assert counts["n"] == (2 if stage == 2 else 1) * layers * n_micro
    out = recipe.cleanup()
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 7, 8, 9, 10]])
    with torch.no_grad():
        trained = _full_logits(recipe.engine, ids, stage)
        torch.testing.assert_close(reloaded(input_ids=ids).logits.float(), trained, atol=1e-5, rtol=0)
    # training and eval encode the same prompts to the same ids (chat template and long prompts)
    settings = GenerationSettings(max_prompt_length=cfg.data.max_prompt_length)
    eval_tok = LazyPolicy(str(out), "fp32").loaded().tokenizer
    long_prompt = " ".join(["tell me about your home"] * 80)
    for prompt in ["tell me about your home", "why", long_prompt]:
        assert recipe.encoder.ids(prompt) == prompt_encoder(eval_tok, settings).ids(prompt)
    recipe.metrics.close()


def _full_logits(engine, ids, stage):
    model = engine.module
    was = model.training
    model.eval()
    try:
        if stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(model.parameters())):
                return model(input_ids=ids).logits.float()
        return model(input_ids=ids).logits.float()
    finally:
        model.train(was)


def test_encoding_rule_without_a_chat_template(tmp_path):
    """Without a template the raw request gets the tokenizer's special tokens (BOS), in training and eval alike."""
    from srmir.eval.generate import GenerationSettings, prompt_encoder

    tok = make_tokenizer_without_pad(tmp_path)
    tok.chat_template = None
    from tokenizers import processors

    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    train_enc = runtime.PromptEncoder(tok, use_chat_template=True, max_prompt_length=6)
    eval_enc = prompt_encoder(tok, GenerationSettings(use_chat_template=True, max_prompt_length=6))
    ids = train_enc.ids("tell me about your home address please")
    assert ids == eval_enc.ids("tell me about your home address please")
    assert ids[0] == tok.bos_token_id and len(ids) == 6  # BOS kept, the request's start cut
    assert tok.decode(ids[1:]) == "about your home address please"

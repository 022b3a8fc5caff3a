"""The trainer in one process under DeepSpeed ZeRO-2 and ZeRO-3 (gloo on CPU): a full step end to
end, gradients through the fused head on partitioned (tied) weights, export, and step skipping."""
import json
import math
import warnings

import pytest
import torch
from safetensors.torch import load_file

from srmir.errors import UserError
from srmir.trainer import train
from srmir.trainer.metrics import read_metrics
from srmir.trainer.recipe import GRPORecipe

from test_trainer_common import ROOT, SyntheticReward, tiny_config, tiny_setup


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("tiny"))


def zero3_json(folder):
    """ZeRO-3 with every parameter partitioned (threshold 0): a tiny model would otherwise keep its
    weights whole and hide per-layer gathers and generation hangs."""
    path = folder / "zero3_test.json"
    path.write_text(json.dumps({
        "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0, "reduce_bucket_size": "auto",
                              "stage3_prefetch_bucket_size": "auto"}}))
    return str(path)


EXPECTED_KEYS = {"reward/mean", "reward/std", "reward/rm/insult", "reward/rm/privacy_property", "adv/mean", "adv/std",
                 "kl", "clip_frac", "entropy", "loss", "completion/len_mean", "completion/truncated_frac",
                 "zero_var_groups", "time/generate", "time/score", "time/logprobs", "time/update", "time/step",
                 "tokens_per_s", "mem/peak_gb", "lr", "grad_norm", "skipped", "refusal/harmful", "degen/repetitive",
                 "degen/distinct2", "completion/len_words", "updates/applied"}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["2", "3", "3-offload"])
def test_two_steps_end_to_end(files, tmp_path, stage):
    from transformers import AutoModelForCausalLM

    extra = {"train__steps": 2, "grpo__num_iterations": 2, "train__micro_batch_size": 2}
    if stage == "3":
        extra.update(train__deepspeed=zero3_json(tmp_path), model__dtype="bf16")
    if stage == "3-offload":  # the shipped file: parameters and optimizer state on the CPU
        extra.update(train__deepspeed=str(ROOT / "ds_configs" / "zero3_offload.json"), model__dtype="bf16")
    cfg = tiny_config(files, tmp_path / "out", **extra)
    policy = train(cfg, reward_fn=SyntheticReward())

    records = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert EXPECTED_KEYS <= set(records[1])
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first update
    assert records[1]["kl"] > 0 and records[1]["clip_frac"] >= 0 and records[1]["grad_norm"] > 0
    assert any(k.startswith("reward/category/") for k in records[0])
    assert (tmp_path / "out" / "rewards.png").is_file()
    assert (tmp_path / "out" / "checkpoints" / "step-00000002" / "trainer_state.json").is_file()

    loaded = AutoModelForCausalLM.from_pretrained(policy)  # a plain HF folder
    init = load_file(str(files["policy"] / "model.safetensors"))
    trained = load_file(str(policy / "model.safetensors"))
    assert set(trained) == set(init)
    assert not torch.equal(trained["model.layers.0.mlp.up_proj.weight"].float(), init["model.layers.0.mlp.up_proj.weight"])
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


@pytest.mark.slow
def test_zero3_partitions_and_fused_head_gradients_match_plain_model(files, tmp_path):
    """Under ZeRO-3 with threshold 0 every weight is a [0] shard; the fused head must still send the
    exact gradient to the partitioned, embedding-tied lm_head weight."""
    from deepspeed.utils import safe_get_full_grad
    from transformers import AutoModelForCausalLM

    from srmir.trainer.logprobs import completion_logprobs, standard_inputs
    from test_trainer_components import plain_logprobs

    cfg = tiny_config(files, tmp_path / "out", train__deepspeed=zero3_json(tmp_path), grpo__beta=0.0,
                      train__micro_batch_size=8)  # no accumulation: the backward below is a boundary
    recipe = GRPORecipe(cfg, reward_fn=SyntheticReward())
    recipe.setup()
    engine = recipe.engine
    assert all(p.numel() == 0 and p.ds_numel > 0 for p in engine.module.parameters())
    plain = AutoModelForCausalLM.from_pretrained(files["policy"])
    torch.manual_seed(0)
    ids = torch.randint(6, plain.config.vocab_size, (4, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    completion = ids[:, 5:]
    inputs = standard_inputs(ids[:, :5], mask[:, :5], completion, torch.ones_like(completion))
    logp, _ = completion_logprobs(engine, recipe.lm_head, inputs, 1.0, "torch")
    engine.backward(logp.sum() * 0.5, scale_wrt_gas=False)
    expected = plain_logprobs(plain, ids, mask, completion, 1.0)
    (expected.sum() * 0.5).backward()
    torch.testing.assert_close(logp, expected, atol=1e-5, rtol=1e-5)
    pairs = {"lm_head (tied)": (engine.module.lm_head.weight, plain.lm_head.weight),
             "down_proj": (engine.module.model.layers[1].mlp.down_proj.weight, plain.model.layers[1].mlp.down_proj.weight)}
    for name, (sharded, full) in pairs.items():
        torch.testing.assert_close(safe_get_full_grad(sharded), full.grad, atol=1e-5, rtol=1e-4, msg=name)
    recipe.metrics.close()


class NaNAt:
    """SyntheticReward whose scores are NaN on the listed calls (1-based)."""

    categories = SyntheticReward.categories

    def __init__(self, bad_calls):
        self.bad, self.calls = set(bad_calls), 0

    def score(self, prompts, responses):
        self.calls += 1
        scores = SyntheticReward().score(prompts, responses)
        return scores * math.nan if self.calls in self.bad else scores


@pytest.mark.slow
def test_non_finite_rewards_skip_steps_then_abort(files, tmp_path):
    cfg = tiny_config(files, tmp_path / "a", train__steps=4, train__max_bad_steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg, reward_fn=NaNAt({2}))  # one bad step: skipped, counted, training goes on
    records = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert [r["skipped"] for r in records] == [0, 1, 0, 0] and records[-1]["skipped_total"] == 1
    assert any("step 2: skipped, a non-finite reward" in str(w.message) for w in caught)

    cfg = tiny_config(files, tmp_path / "b", train__steps=5, train__max_bad_steps=2)
    with pytest.raises(UserError, match="train.max_bad_steps: 2 steps in a row were skipped"):
        train(cfg, reward_fn=NaNAt({2, 3}))


class NaNRows:
    """SyntheticReward that leaves the first sample of every call unscored (NaN)."""

    categories = SyntheticReward.categories

    def score(self, prompts, responses):
        scores = SyntheticReward().score(prompts, responses)
        scores[0] = math.nan
        return scores


def test_unscored_samples_get_zero_advantage_and_training_goes_on(files, tmp_path):
    """DESIGN: NaN = unscored — left out of the statistics, advantage 0; the step still trains."""
    cfg = tiny_config(files, tmp_path / "a", train__steps=2)
    recipe = GRPORecipe(cfg, reward_fn=NaNRows())
    recipe.setup()
    n = recipe.n_global
    for step in (1, 2):
        m = recipe.step(step)
        assert m["skipped"] == 0 and m["reward/unscored_frac"] == pytest.approx(1 / n)
        assert math.isfinite(m["reward/mean"]) and math.isfinite(m["loss"])
    recipe.metrics.close()


class InfIn:
    """SyntheticReward with +inf in column ``k`` of every row."""

    categories = SyntheticReward.categories

    def __init__(self, k):
        self.k = k

    def score(self, prompts, responses):
        scores = SyntheticReward().score(prompts, responses)
        scores[:, self.k] = math.inf
        return scores


def test_infinite_score_skips_only_when_it_enters_the_reward(files, tmp_path):
    """An RM of weight 0 takes no part (its inf must not turn into "unscored" NaN rewards); an inf
    in a column that counts skips the step, even where the combination would have made it NaN."""
    cfg = tiny_config(files, tmp_path / "a", train__steps=1, rewards__strategy="linear", rewards__weights="[0, 1]")
    recipe = GRPORecipe(cfg, reward_fn=InfIn(0))
    recipe.setup()
    m = recipe.step(1)
    assert m["skipped"] == 0 and m["reward/unscored_frac"] == 0
    recipe.metrics.close()
    cfg = tiny_config(files, tmp_path / "b", train__steps=1, rewards__strategy="linear")
    recipe = GRPORecipe(cfg, reward_fn=InfIn(1))
    recipe.setup()
    with pytest.warns(RuntimeWarning, match=r"a non-finite reward \(±inf\)"):
        assert recipe.step(1)["skipped"] == 1
    recipe.metrics.close()


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_non_finite_loss_skips_the_update_without_touching_weights(files, tmp_path, monkeypatch, stage):
    from deepspeed.utils import safe_get_full_fp32_param

    extra = {"train__deepspeed": zero3_json(tmp_path), "model__dtype": "bf16"} if stage == 3 else {}
    cfg = tiny_config(files, tmp_path / "out", train__steps=3, train__micro_batch_size=2, train__zero_stage=stage,
                      **extra)
    recipe = GRPORecipe(cfg, reward_fn=SyntheticReward())
    recipe.setup()
    real = recipe._micro_loss
    calls = {"n": 0}

    def poisoned(batch, rows, first_iteration):
        calls["n"] += 1
        share, stats = real(batch, rows, first_iteration)
        return (share * math.inf if calls["n"] == 6 else share), stats  # the 2nd micro-batch of step 2

    monkeypatch.setattr(recipe, "_micro_loss", poisoned)
    def params():  # the fp32 master weights (ZeRO-0: the module's own)
        return {n: (p if stage == 0 else safe_get_full_fp32_param(p)).detach().clone()
                for n, p in recipe.engine.module.named_parameters()}

    m1 = recipe.step(1)
    before, schedule_before = params(), recipe.engine.lr_scheduler.last_epoch
    with pytest.warns(RuntimeWarning, match="a non-finite loss"):
        m2 = recipe.step(2)
    after = params()
    assert all(torch.equal(before[n], after[n]) for n in before)  # the update was dropped whole
    assert m1["skipped"] == 0 and m2["skipped"] == 1
    assert m2["updates/applied"] == 0 and m2["updates/skipped"] == 1
    # every path (fp32 ZeRO-0 through our AdamW's overflow flag too) counts the skip and holds the schedule
    assert recipe.engine.skipped_steps == 1
    assert recipe.engine.lr_scheduler.last_epoch == schedule_before
    recipe.step(3)  # and training continues with finite gradients
    assert any(not torch.equal(after[n], p) for n, p in params().items())
    recipe.metrics.close()



@pytest.mark.slow
def test_bf16_keeps_fp32_master_weights_so_tiny_updates_survive(files, tmp_path):
    """One Adam step at lr=1e-6 moves each weight by about 1e-6: far below bf16's resolution at the
    weights' scale (~1e-4 near 0.02), so bf16-only weights would not move; DeepSpeed's fp32 master
    copy must."""
    from deepspeed.utils import safe_get_full_fp32_param

    cfg = tiny_config(files, tmp_path / "out", model__dtype="bf16", train__lr=1e-6, grpo__beta=0.0)
    recipe = GRPORecipe(cfg, reward_fn=SyntheticReward())
    recipe.setup()
    param = recipe.engine.module.model.layers[0].mlp.up_proj.weight
    master0, bf16_0 = safe_get_full_fp32_param(param).clone(), param.detach().clone()
    assert param.dtype == torch.bfloat16 and master0.dtype == torch.float32
    recipe.step(1)
    master1 = safe_get_full_fp32_param(param)
    moved = (master1 != master0).float().mean().item()
    assert moved > 0.9 and (master1 - master0).abs().max().item() < 3e-6
    assert (param.detach() != bf16_0).float().mean().item() < 0.2  # the bf16 copy mostly rounds back
    recipe.metrics.close()


@pytest.mark.slow
def test_gradient_checkpointing_recomputes_and_saves_activation_memory(tmp_path):
    """With model.gradient_checkpointing the policy engine trains in train mode (dropout off), its
    layers run again in backward, and the activations kept for backward shrink to the layer inputs.
    Measured as the bytes autograd saves during the policy's log-prob forward, on a model (4 layers,
    hidden 128, 64-token completions) where activations dominate."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from test_trainer_common import make_tokenizer, write_prompts, write_taxonomy

    folder = tmp_path / "policy"
    tok = make_tokenizer(folder)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         attention_dropout=0.1, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    files = {"policy": folder, "taxonomy": write_taxonomy(tmp_path / "tax.yaml"),
             "prompts": write_prompts(tmp_path / "prompts.jsonl")}
    saved, calls = {}, {}
    for ckpt in (False, True):
        cfg = tiny_config(files, tmp_path / f"out{ckpt}", model__gradient_checkpointing=ckpt,
                          rollout__max_new_tokens=64, train__share_prompt=False)
        recipe = GRPORecipe(cfg, reward_fn=SyntheticReward())
        recipe.setup()
        module = recipe.engine.module
        assert module.training and module.model.layers[0].self_attn.attention_dropout == 0.0  # dropout off
        torch.manual_seed(1)
        rollout = recipe._generate(["tell me about my home"] * 4)
        inputs = recipe._logprob_inputs(rollout)
        nbytes, n_calls = [0], [0]
        # transformers checkpoints a layer's forward, not its __call__: count a submodule's calls
        hook = module.model.layers[0].mlp.register_forward_pre_hook(lambda m, a: n_calls.__setitem__(0, n_calls[0] + 1))

        def pack(t):
            nbytes[0] += t.numel() * t.element_size()
            return t

        from srmir.trainer.logprobs import completion_logprobs

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logp, _ = completion_logprobs(recipe.engine, recipe.lm_head, inputs, 1.0, "torch", transform=recipe.transform)
        logp.sum().backward()
        hook.remove()
        saved[ckpt], calls[ckpt] = nbytes[0], n_calls[0]
        recipe.engine.zero_grad()
        recipe.metrics.close()
    assert calls == {False: 1, True: 2}  # layer 0's MLP: forward, plus the recomputation in backward
    assert saved[True] < 0.5 * saved[False], saved


@pytest.mark.slow
def test_mu2_failure_in_the_second_iteration_is_accounted(files, tmp_path, monkeypatch):
    """μ = 2: iteration 1's update is applied, iteration 2's non-finite loss skips its update; the
    step reports one applied and one skipped update, counts as bad, and the lr schedule advanced once."""
    cfg = tiny_config(files, tmp_path / "out", train__steps=2, grpo__num_iterations=2, train__micro_batch_size=4,
                      train__lr_schedule="linear")
    recipe = GRPORecipe(cfg, reward_fn=SyntheticReward())
    recipe.setup()
    real, calls = recipe._micro_loss, {"n": 0}

    def poisoned(batch, rows, first_iteration):
        calls["n"] += 1
        share, stats = real(batch, rows, first_iteration)
        return (share * math.inf if not first_iteration else share), stats

    monkeypatch.setattr(recipe, "_micro_loss", poisoned)
    schedule_before = recipe.engine.lr_scheduler.last_epoch
    with pytest.warns(RuntimeWarning, match="a non-finite loss"):
        m = recipe.step(1)
    assert m["updates/applied"] == 1 and m["updates/skipped"] == 1 and m["skipped"] == 1
    assert recipe.bad_in_row == 1
    assert recipe.engine.lr_scheduler.last_epoch == schedule_before + 1
    recipe.metrics.close()

"""LoRA GRPO (``model.lora``, ``srmir/runtime/lora.py``): only the adapters train, the reference is
the policy with its adapters off, ZeRO-3 gathers each weight once per pass, resume is exact, the
adapter and merged exports reload with the trained model's logits, ``srmir eval`` takes an adapter
folder, and a missing ``peft`` is one line naming the extra. (Ranks × micro-batches invariance with
LoRA: ``tests/test_trainer_invariance.py``; reward models: ``rewards.lora`` below.)"""
from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from srmir import runtime
from srmir.errors import UserError
from srmir.trainer import train
from srmir.trainer.logprobs import completion_logprobs
from srmir.trainer.recipe import GRPORecipe

from test_trainer_common import SyntheticReward, perturb_adapters, tiny_config, tiny_setup

peft = pytest.importorskip("peft", reason="the lora extra (installed by setup.sh --dev)")
LORA = "{rank: 4, alpha: 8}"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("tiny"))


def zero3_json(folder, bf16=False):
    path = folder / "zero3.json"
    path.write_text(json.dumps({"bf16": {"enabled": "auto"}, "zero_optimization": {
        "stage": 3, "stage3_param_persistence_threshold": 0}}))  # every weight a shard
    return str(path)


def recipe_for(files, out, **extra):
    recipe = GRPORecipe(tiny_config(files, out, model__lora=extra.pop("lora", LORA), **extra),
                        reward_fn=SyntheticReward())
    recipe.setup()
    return recipe


def base_logprobs(files, inputs, temperature=1.0):
    """Log-probs of the completion tokens under a separately loaded copy of the base model."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(files["policy"]).eval()
    with torch.no_grad():
        return completion_logprobs(plain, plain.get_output_embeddings(), inputs, temperature, "torch")[0]


# ------------------------------------------------------------------------------ wrapping


def test_family_default_targets_the_head_refused_and_unknown_names(files):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(files["policy"])
    wrapped = runtime.lora.wrap(model, rank=4, alpha=8, dropout=0.0)
    adapted = {n.split(".")[-4] for n, _ in wrapped.named_parameters() if "lora_A" in n}  # …q_proj.lora_A.default.weight
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert all(("lora_" in n) == p.requires_grad for n, p in wrapped.named_parameters())
    with pytest.raises(UserError, match=r"model.lora.target_modules: 'lm_head' \(the output head\) cannot be"):
        runtime.lora.wrap(AutoModelForCausalLM.from_pretrained(files["policy"]), rank=4, alpha=8, dropout=0.0,
                          target_modules=["q_proj", "lm_head"])
    with pytest.raises(UserError, match="model.lora.target_modules: no Linear module named qkv"):
        runtime.lora.wrap(AutoModelForCausalLM.from_pretrained(files["policy"]), rank=4, alpha=8, dropout=0.0,
                          target_modules=["qkv"])


def test_lora_without_peft_is_one_line_naming_the_extra(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft → ImportError, as when not installed
    with pytest.raises(UserError) as e:
        train(tiny_config(files, tmp_path / "out", model__lora=LORA), reward_fn=SyntheticReward())
    assert str(e.value) == "model.lora: LoRA needs the package 'peft': pip install 'srmir[lora]'"


# ------------------------------------------------------------------------------ training


@pytest.mark.slow
def test_only_adapters_train_and_reach_the_fp32_master_copy(files, tmp_path):
    """bf16 under ZeRO-2: DeepSpeed's fp32 master copy holds the adapters alone; after two steps
    (μ = 2) every base weight is bit-identical and the adapters moved."""
    recipe = recipe_for(files, tmp_path / "out", model__dtype="bf16", train__steps=2, grpo__num_iterations=2,
                        train__micro_batch_size=4)
    module = recipe.engine.module
    base = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n for n in adapters)
    master = sum(t.numel() for t in recipe.engine.optimizer.single_partition_of_fp32_groups)
    assert master == sum(p.numel() for p in adapters.values())  # no fp32 copy, no Adam state of the base
    assert all(t.dtype == torch.float32 for t in recipe.engine.optimizer.single_partition_of_fp32_groups)
    for step in (1, 2):
        recipe.step(step)
    after = dict(module.named_parameters())
    assert all(torch.equal(base[n], after[n]) for n in base)
    assert sum(not torch.equal(adapters[n], after[n]) for n in adapters) > len(adapters) // 2
    recipe.metrics.close()


def test_reference_is_the_base_model_with_adapters_off(files, tmp_path):
    """β > 0 with LoRA loads no second model: the reference log-probs (adapters off, the trained
    copy of a fully trained head bypassed) equal those of a separately loaded base model, while the
    policy's own differ from them."""
    recipe = recipe_for(files, tmp_path / "out", lora="{rank: 4, alpha: 8, modules_to_save: [lm_head]}")
    assert recipe.ref is None and recipe.ref_is_base
    assert recipe.lm_head is not recipe.engine.module.get_output_embeddings()  # inside peft's wrapper
    perturb_adapters(recipe.engine)
    torch.manual_seed(0)
    rollout = recipe._generate(["tell me about my home"] * 4 + ["how do you find a phone"] * 4)
    inputs = [recipe._logprob_inputs(rollout.select(rows)) for rows in recipe._micro_batches()]
    _, ref = recipe._frozen_logprobs(inputs)
    expected = torch.cat([base_logprobs(files, micro) for micro in inputs])
    torch.testing.assert_close(ref, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        policy = torch.cat([completion_logprobs(recipe.engine, recipe.lm_head, m, 1.0, "torch")[0] for m in inputs])
    assert (policy - expected).abs().max() > 1e-2  # the adapters are on again after the reference pass
    recipe.metrics.close()


def test_rollout_runs_merged_adapters_and_leaves_the_base_untouched(files, tmp_path):
    """Generation sees the adapted model (its logits, within rounding) through weights merged for
    the rollout alone: afterwards every tensor is the same object with the same bits, and the
    adapters compute and train again."""
    from srmir.trainer.rollout import gathered_for_generation

    recipe = recipe_for(files, tmp_path / "out")
    perturb_adapters(recipe.engine)
    model = runtime.lora.hf_model(recipe.engine)
    before = {n: (p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters()}
    ids = torch.tensor([[7, 12, 19, 25, 31, 8, 40]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with gathered_for_generation(recipe.engine, recipe.zero_stage) as rollout_model:
            assert rollout_model is model
            assert all(m.disable_adapters for m in model.modules() if hasattr(m, "lora_A"))  # one matmul a layer
            merged = rollout_model(input_ids=ids).logits
        again = model(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
    assert torch.equal(again, adapted)
    after = dict(model.named_parameters())
    assert all(after[n].data_ptr() == ptr and torch.equal(after[n], value) for n, (ptr, value) in before.items())
    assert all(p.requires_grad == ("lora_" in n) for n, p in after.items())
    recipe.metrics.close()


@pytest.mark.slow
def test_zero3_reference_and_policy_passes_gather_each_weight_once(files, tmp_path, monkeypatch):
    """Under ZeRO-3 (every weight a shard) a log-prob pass gathers each weight once (the tied
    embedding/head twice: at the start and at the end), the reference pass (adapters off) no
    adapter, and switching between the two kinds of pass costs no second gather."""
    from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator

    recipe = recipe_for(files, tmp_path / "out", train__deepspeed=zero3_json(tmp_path))
    module = recipe.engine.module
    assert all(p.numel() == 0 for p in module.parameters())
    gathered = []
    real = PartitionedParameterCoordinator._PartitionedParameterCoordinator__all_gather_params

    def recording(self, params, forward):
        gathered.extend(p.ds_id for p in params)
        return real(self, params, forward)

    monkeypatch.setattr(PartitionedParameterCoordinator, "_PartitionedParameterCoordinator__all_gather_params",
                        recording)
    rollout = recipe._generate(["tell me about my home"] * 8)
    inputs = [recipe._logprob_inputs(rollout.select(rows)) for rows in recipe._micro_batches()]
    names = {p.ds_id: n for n, p in module.named_parameters()}
    tied_names = {n for n in names.values() if "embed_tokens" in n}  # the embedding, also the head

    def counts(fn):
        gathered.clear()
        fn()
        out = {}
        for i in gathered:
            out[names[i]] = out.get(names[i], 0) + 1
        return out

    ref = counts(lambda: recipe._frozen_logprobs(inputs[:1]))  # one reference pass (adapters off)
    base = {n for n, p in module.named_parameters() if not p.requires_grad}
    assert base <= set(ref) and all(c == (2 if n in tied_names else 1) for n, c in ref.items()), ref
    # no adapter is computed; peft reads lora_A's dtype in the adapted forward, so DeepSpeed counts
    # that small [r, in] matrix as its layer's "external parameter" and fetches it with the layer
    assert not any("lora_B" in n for n in ref)
    with torch.no_grad():  # and the policy's next pass, after the reference's
        live = counts(lambda: completion_logprobs(recipe.engine, recipe.lm_head, inputs[0], 1.0, "torch"))
    assert set(live) == set(names.values()) and all(c == (2 if n in tied_names else 1) for n, c in live.items()), live
    twice = counts(lambda: recipe._frozen_logprobs(inputs))  # two micro-batches: the second follows the trace
    assert all(c <= 2 * (2 if n in tied_names else 1) for n, c in twice.items()) and set(twice) == set(ref), twice
    recipe.metrics.close()


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_steps_export_adapter_and_merged_folder_reload_with_the_trained_logits(files, tmp_path, stage):
    """Two steps (μ = 2) under ZeRO-2 or ZeRO-3 (the tied head trained fully beside the adapters), then export:
    ``policy/`` is an adapter folder peft loads, ``policy_merged/`` a plain HF folder; both, and
    the adapter through srmir's runtime (what ``srmir eval`` runs), give the trained model's logits."""
    from transformers import AutoModelForCausalLM

    from srmir.eval.inputs import resolve_policy
    from srmir.models import resolve_model

    extra = {"train__deepspeed": zero3_json(tmp_path)} if stage == 3 else {}
    recipe = recipe_for(files, tmp_path / "out", train__steps=2, grpo__num_iterations=2, train__micro_batch_size=4,
                        train__export_merged=True, lora="{rank: 4, alpha: 8, modules_to_save: [lm_head]}", **extra)
    for step in (1, 2):
        recipe.step(step)
    recipe.save_checkpoint(2)
    adapter_dir = recipe.cleanup()
    recipe.metrics.close()
    ids = torch.tensor([[7, 12, 19, 25, 31, 8, 40]])
    with torch.no_grad():
        trained = recipe.engine(input_ids=ids, use_cache=False).logits.float()

    assert sorted(p.name for p in adapter_dir.iterdir() if p.name.startswith("adapter")) == [
        "adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(files["policy"].resolve()) and config["r"] == 4
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    assert weights and all("lora_" in k or k.endswith("lm_head.weight") for k in weights)  # peft's key names
    assert all(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # trained, not the zero init

    merged_dir = tmp_path / "out" / "policy_merged"
    base = AutoModelForCausalLM.from_pretrained(files["policy"])
    by_peft = peft.PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    through_runtime = runtime.load_for_inference(resolve_model(str(adapter_dir)), dtype="fp32").model
    assert resolve_policy(str(tmp_path / "out")) == str(adapter_dir)  # a run folder: its exported policy
    for name, model in (("peft", by_peft), ("merged", merged), ("runtime", through_runtime)):
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids).logits.float(), trained, atol=1e-4, rtol=1e-4, msg=name)
    # the head trained fully is no longer the (tied) embedding, which stayed the base's
    assert merged.config.tie_word_embeddings is False
    assert not torch.equal(merged.lm_head.weight, merged.model.embed_tokens.weight)
    assert torch.equal(merged.model.embed_tokens.weight, base.model.embed_tokens.weight)
    states_file = next((tmp_path / "out" / "checkpoints" / "step-00000002" / "ds").glob("*model_states.pt"))
    model_states = torch.load(states_file, weights_only=False)
    saved = model_states["module"] or {}
    # the frozen base is not checkpointed (a tied head's alias of the embedding may be, once)
    assert saved and not any("base_layer" in k or "norm" in k or "embed_tokens" in k for k in saved), list(saved)


@pytest.mark.slow
def test_lora_resume_is_bit_identical(files, tmp_path):
    """3 steps straight equal 2 steps, a restart (base weights from model.policy, adapters, their
    fp32 master copy and Adam state from the checkpoint) and 1 more: the same adapter, bit for bit."""
    from test_trainer_resume import comparable

    extra = dict(model__lora=LORA, train__steps=3, grpo__num_iterations=2, train__micro_batch_size=4,
                 model__dtype="bf16")
    straight = train(tiny_config(files, tmp_path / "straight", **extra), reward_fn=SyntheticReward())
    train(tiny_config(files, tmp_path / "resumed", **{**extra, "train__steps": 2}), reward_fn=SyntheticReward())
    resumed = train(tiny_config(files, tmp_path / "resumed", **extra, train__resume="auto"),
                    reward_fn=SyntheticReward())
    a, b = load_file(str(straight / "adapter_model.safetensors")), load_file(str(resumed / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert comparable(tmp_path / "resumed" / "metrics.jsonl") == comparable(tmp_path / "straight" / "metrics.jsonl")


# ------------------------------------------------------------------------------ adapter folders


def test_adapter_folder_passes_its_own_door_check_and_a_broken_one_is_one_line(files, tmp_path):
    from transformers import AutoModelForCausalLM

    from srmir.models import resolve_model

    model = runtime.lora.wrap(AutoModelForCausalLM.from_pretrained(files["policy"]), rank=4, alpha=8, dropout=0.0,
                              base_reference=str(files["policy"]))
    folder = tmp_path / "adapter"
    runtime.lora.save_adapter(model, runtime.lora.trainable_state(model), folder)
    assert resolve_model(str(folder)) == str(folder)  # not refused as "not a model"

    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(UserError, match=r"adapter_config.json: its base model '.*gone' cannot be used: .*no such folder"):
        resolve_model(str(folder))
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(UserError, match="adapter_model.safetensors: not a readable safetensors file"):
        resolve_model(str(folder))


# ------------------------------------------------------------------------------ reward models


def test_reward_models_train_through_lora_and_the_bank_stacks_merged_weights(tmp_path):
    """``rewards.lora``: each RM's top block trains through adapters, merged before stacking — the
    blocks below stay the backbone's bit for bit (shared, run once for all K), the bank holds no
    adapter tensor, learns the preference, and scores in one batched pass like its K models alone."""
    from srmir.rewards import ShadowRewardBank, train_bank
    from srmir.rewards.bank import score_sequential
    from srmir.rewards.model import PairEncoder
    from srmir.taxonomy import Category, Taxonomy
    from test_rewards import PROMPTS, RESPONSES, synthetic_records

    backbone = tmp_path / "bert"
    bert = _tiny_bert(backbone)
    tax = Taxonomy((Category("a", "a", "a"), Category("b", "b", "b")))
    recs = synthetic_records(["a", "b"], 8)
    train_recs = [r for r in recs if int(r["id"][1:]) < 6]
    val_recs = [r for r in recs if int(r["id"][1:]) >= 6]
    bank = train_bank(train_recs, val_recs, tax, str(backbone), tmp_path / "rm", epochs=3, batch_size=4, lr=1e-2,
                      bf16=False, max_length=48, tuned_layers=1, log=lambda s: None,
                      lora={"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": None, "modules_to_save": []})
    assert bank.frozen_layers == 2 and all(bank.info["training"][c]["val_accuracy"] == 1.0 for c in "ab")
    base = bert.state_dict()
    for k in range(2):
        params = {n.removeprefix("backbone."): t for n, t in bank.params_of(k).items()}
        assert not any("lora" in n for n in params)
        assert all(torch.equal(params[n], base[n]) for n in base if ".layer.0." in n or ".layer.1." in n)
        assert not torch.equal(params["encoder.layer.2.attention.self.query.weight"],
                               base["encoder.layer.2.attention.self.query.weight"])  # the merged adapter
    reloaded = ShadowRewardBank.from_pretrained(tmp_path / "rm")
    scores = reloaded.score(PROMPTS, RESPONSES, normalize=False)
    sequential = score_sequential(reloaded.models(), PairEncoder(reloaded.tokenizer, 48), PROMPTS, RESPONSES)
    torch.testing.assert_close(scores, sequential, atol=1e-5, rtol=1e-5)


def _tiny_bert(folder):
    """A tiny random BERT (3 blocks) with the embedded MiniLM tokenizer; returns the model."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from srmir.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("embedded:minilm"))
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=128))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_train_lora_under_zero3_through_torchrun(tmp_path):
    """``torchrun`` × 2, ZeRO-3 with every weight a shard: generation with adapters active, the
    reference with them off, the update, a checkpoint and both exports, end to end on two ranks."""
    from transformers import AutoModelForCausalLM

    from srmir.trainer.metrics import read_metrics
    from test_trainer_common import PYTHON, free_port, run_cmd
    from test_trainer_distributed import launch_args

    args = launch_args(tmp_path, tmp_path / "out", **{
        "train.deepspeed": zero3_json(tmp_path), "model.dtype": "bf16", "model.lora": LORA,
        "train.export_merged": "true", "train.micro_batch_size": 2, "train.report_to": "[tensorboard]"})
    port = free_port()
    run_cmd([PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
             "--master_port", str(port), *args], timeout=300)
    records = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2] and records[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert records[1]["kl"] > 0  # the adapters moved the policy away from the base
    state = json.loads((tmp_path / "out" / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    assert (tmp_path / "out" / "policy" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "policy_merged")
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()  # adapters only: still tied
    assert list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))  # rank 0 alone writes

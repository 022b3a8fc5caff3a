"""Typed configuration: one dataclass per section, loaded from YAML plus ``key.sub=value`` overrides.

The whole run is described by :class:`Config` (sections ``model``, ``data``, ``rewards``,
``grpo``, ``rollout``, ``train``, ``eval``). It is validated once, at load: an unknown key, a
value of the wrong type or an impossible combination raises :class:`~srmir.errors.UserError`
naming the key (``srmir: error: grpo.group_size: ...``), which the CLI turns into exit 2.

Components never see this object (torchtune's "no intrusive configs"): the recipe reads fields
and passes plain arguments to builders.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import UserError


@dataclass
class LoraConfig:
    rank: int = 16
    """r: the rank of each adapter (ΔW = B·A with A [r, in], B [out, r])."""
    alpha: float = 32.0
    """lora_alpha: the adapter output is scaled by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapters' input. The policy otherwise trains with dropout off, so that with
    grpo.num_iterations > 1 old and live log-probs differ by the update only; keep 0 there."""
    target_modules: Optional[list[str]] = None
    """Module names to adapt (e.g. ``[q_proj, v_proj]``); ``null`` takes the family default
    (attention and MLP projections, ``srmir.runtime.lora.DEFAULT_TARGETS``; else every Linear)."""
    modules_to_save: list[str] = field(default_factory=list)
    """Modules trained fully beside the adapters, e.g. ``[lm_head]`` (a tied head is then untied)."""


@dataclass
class ModelConfig:
    policy: str = "embedded:smollm2"
    """Policy to align: a Hugging Face id, a local folder, or ``embedded:smollm2``."""
    reference: Optional[str] = None
    """Frozen reference model for the KL penalty; ``None`` uses the initial policy weights."""
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Compute dtype. With DeepSpeed bf16 the master weights stay fp32 (updates at lr≈1e-6 survive)."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """Attention kernel; ``auto`` takes flash_attention_2 when flash-attn is installed on CUDA, else the
    family's transformers default (sdpa where supported; eager for Gemma-2)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory (slower)."""
    trust_remote_code: bool = False
    """Allow model code from the model folder (needed by some hub models)."""
    lora: Optional[LoraConfig] = None
    """LoRA instead of full fine-tuning (needs ``srmir[lora]``): only the adapters reach the optimizer,
    and with β > 0 the reference is the policy with its adapters off (no second model, unless
    model.reference names one). Set a field to switch it on: ``model.lora.rank=16``."""


@dataclass
class DataConfig:
    taxonomy: Optional[str] = None
    """Taxonomy YAML (slugs, descriptions, principles); ``None`` is the shipped 7-category default."""
    train_file: Optional[str] = None
    """CoD dataset JSONL (id, category, prompt, chosen, rejected); ``None`` is the shipped demo data."""
    prompts_file: Optional[str] = None
    """Prompts for GRPO rollouts (JSONL with prompt, category); ``None`` takes them from train_file."""
    val_fraction: float = 0.15
    """Fraction of each category held out for validation (stratified split)."""
    test_fraction: float = 0.15
    """Fraction of each category held out for testing (stratified split)."""
    seed: int = 0
    """Seed of the stratified split and of balancing."""
    max_prompt_length: int = 256
    """Prompts longer than this many tokens are truncated from the left."""
    balance: Literal["downsample", "upsample", "none"] = "downsample"
    """Category balancing: down to the smallest category, up (with a warning) to the largest, or none."""
    max_step_words: int = 5
    """Chain-of-Draft: the most words a draft step may have."""
    generator: Literal["local", "openai"] = "local"
    """Dataset builder backend: a local transformers model or an OpenAI-compatible HTTP server."""
    generator_model: str = "embedded:smollm2"
    """Model for the builder: a local model reference, or the server's model name."""
    api_base: Optional[str] = None
    """Base URL of the OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (never logged)."""
    concurrency: int = 4
    """Concurrent HTTP requests for the builder."""
    request_timeout: float = 60.0
    """Seconds before an HTTP request is abandoned and retried."""
    max_retries: int = 5
    """Retries with exponential backoff on 429, 5xx, timeouts and dropped connections."""
    requests_per_second: Optional[float] = None
    """Client-side rate limit for the builder; ``None`` is unlimited."""


@dataclass
class RewardsConfig:
    backbone: str = "embedded:minilm"
    """Reward-model backbone (any HF encoder or decoder); all K shadow RMs share it."""
    dir: Optional[str] = None
    """Folder of a trained ShadowRewardBank; ``None`` in the pipeline means: train one first."""
    categories: Optional[list[str]] = None
    """Train only these categories (``srmir rm train``); ``None`` trains all K."""
    strategy: Literal["linear", "categorized"] = "linear"
    """How K scores become one reward: weighted sum, or each prompt's own category's RM."""
    weights: Union[list[float], Literal["uniform", "frequency"]] = "uniform"
    """Linear weights: a list of K numbers, ``uniform`` (1/K) or ``frequency`` (category share)."""
    normalize: bool = True
    """Standardize each RM's scores with its stored calibration (mean, std) so RMs are comparable."""
    pooling: Literal["auto", "mean", "cls", "last"] = "auto"
    """Pooling of the backbone's states: auto = last non-pad token for decoders, mean for encoders."""
    max_length: int = 256
    """Token budget of prompt+response; truncation drops the prompt's start, keeping the response."""
    epochs: int = 4
    """Training epochs per category RM."""
    batch_size: int = 8
    """Preference pairs per optimizer step (before accumulation)."""
    grad_accum: int = 1
    """Gradient accumulation steps for RM training."""
    lr: float = 1e-4
    """RM learning rate (AdamW)."""
    margin: float = 0.0
    """Bradley–Terry margin m in -log σ(r_c - r_r - m)."""
    l2_reg: float = 0.0
    """Small L2 penalty on rewards (r_c² + r_r²) keeping them centred."""
    patience: int = 2
    """Early stopping: epochs without improvement (higher validation accuracy, or equal accuracy and lower validation loss)."""
    shared_trunk: bool = False
    """Train only K scalar heads over one shared frozen backbone (cheapest; lower accuracy)."""
    tuned_layers: Optional[int] = 2
    """Top transformer blocks fine-tuned per RM; the embeddings and lower blocks stay frozen and shared, so the bank runs them once for all K (``null``: tune all blocks)."""
    bf16: bool = True
    """Train RMs under bf16 autocast where the device supports it (CUDA with bf16, CPUs with AVX512-BF16/AMX)."""
    batch_size_score: int = 64
    """Pairs per batch when scoring during GRPO and evaluation."""
    augment: list[str] = field(default_factory=list)
    """Extra training pairs made from each CoD pair: ``answer_only`` (both answers after ``####``
    without their drafts), ``prefixes`` (both answers cut to their first 8 and 16 words: GRPO
    scores length-capped completions) and ``negatives`` (anti-hacking: the proper answer over
    generated evasive filler, repetition loops, off-topic text and refusals collapsing into loops for
    harmful prompts; over an unnecessary refusal, evasion, lecture, off-topic answer and loop for
    benign ones — ``srmir.rewards.negatives``). Validation pairs stay as given."""
    policy_samples: Optional[str] = None
    """Labelled answers of the policy to training prompts (JSONL: prompt, response, label of refusal,
    compliance or non_answer), or ``shipped:smollm2`` (hand-labelled SmolLM2-135M answers shipped
    with srmir): on-policy pairs — an answer that is not what its prompt deserves is rejected against
    the prompt's CoD answer; one that is (a refusal of a harmful prompt, an answer to a benign one)
    is chosen over the CoD rejected answer and over the policy's misses on that prompt. Prompts of
    the validation and test splits are never used."""
    lora: Optional[LoraConfig] = None
    """Train each RM's backbone through LoRA adapters (``srmir[lora]``), on its top ``tuned_layers``
    blocks (all blocks when that is null); the adapters are merged before the bank stacks the K
    models, so scoring stays one batched pass. For backbones larger than MiniLM."""
    benign_refusal_penalty: float = 0.0
    """GRPO only: subtracted from the reward of a completion to a *benign* prompt that the phrase
    tier calls a refusal (``srmir.eval.judges.is_refusal``: a refusal phrase or a lecture in its
    opening) — a rule-based guard against over-refusal beside the helpfulness RM, in units of the
    normalized RM score. 0 turns it off."""
    helpfulness: bool = True
    """Train the helpfulness RM (an extra head scored in the same pass) when the data has benign
    (answer-branch) records; it rewards answering benign prompts instead of refusing or evading."""


@dataclass
class GRPOConfig:
    group_size: int = 8
    """G: completions sampled per prompt; advantages are relative within each group."""
    beta: float = 0.04
    """KL penalty coefficient β toward the frozen reference; 0 skips the reference model."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimator (Schulman's k1/k2/k3)."""
    eps_low: float = 0.2
    """Lower clip range: ratio clipped at 1 - eps_low."""
    eps_high: float = 0.2
    """Upper clip range: ratio clipped at 1 + eps_high (DAPO's clip-higher uses a larger value)."""
    dual_clip: Optional[float] = None
    """Dual-clip constant c > 1 bounding the loss for negative advantages; ``None`` disables."""
    loss_agg: Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"] = "seq_mean_token_mean"
    """Loss aggregation: GRPO paper, DAPO token mean, or Dr. GRPO."""
    adv_scale: Literal["group", "batch", "none"] = "group"
    """Advantage scaling: group std, batch std, or none (Dr. GRPO)."""
    num_iterations: int = 1
    """μ: policy updates per rollout batch; >1 needs old log-probs and makes clipping active."""


@dataclass
class RolloutConfig:
    prompts_per_step: int = 4
    """Prompts per step across all ranks; each yields group_size completions."""
    max_new_tokens: int = 48
    """Completion budget; longer completions are truncated and flagged."""
    temperature: float = 1.0
    """Sampling temperature (log-probs use the same temperature)."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    top_k: int = 0
    """Top-k sampling; 0 disables."""
    use_chat_template: bool = True
    """Format prompts with the tokenizer's chat template when it has one."""
    benign_fraction: float = 0.0
    """Share of each step's prompts that are benign (category ``benign``; rewarded by the bank's
    helpfulness RM), evenly interleaved with the category-balanced harmful ones. Needs benign
    records in the prompt data and a bank with a helpfulness RM; 0 trains on harmful prompts only."""


@dataclass
class TrainConfig:
    steps: int = 20
    """GRPO steps (one rollout batch each)."""
    lr: float = 1e-6
    """Policy learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule after warm-up."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    micro_batch_size: int = 8
    """Sequences per forward/backward on one rank; the rest is gradient accumulation."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables."""
    seed: int = 0
    """Global seed (sampling, shuffling); each rank derives its own."""
    output_dir: str = "runs/grpo"
    """Where checkpoints, metrics.jsonl, plots and the final HF policy go."""
    deepspeed: Optional[str] = None
    """DeepSpeed JSON config (``auto`` fields filled from this config); ``None`` builds one from zero_stage."""
    zero_stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage used when no deepspeed JSON is given."""
    offload: bool = False
    """Offload optimizer state (and parameters under ZeRO-3) to CPU."""
    save_every: int = 0
    """Checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Keep only the newest N checkpoints (each holds fp32 master weights and Adam state); 0 keeps all."""
    resume: Optional[str] = None
    """``auto`` resumes from the latest checkpoint in output_dir; a path resumes from it."""
    logprob_backend: Literal["auto", "torch", "triton"] = "auto"
    """Backend of the fused log-prob kernels."""
    share_prompt: bool = True
    """Log-prob passes run each group's prompt once, its completions packed behind it with a 4-D
    attention mask (SDPA/eager attention; FlashAttention-2 takes one row per sequence)."""
    pack_max_len: int = 1024
    """Longest packed row (prompt + completions) when share_prompt is on."""
    max_bad_steps: int = 3
    """Consecutive non-finite steps (skipped) after which training aborts."""
    export_merged: bool = False
    """With model.lora: also export ``policy_merged/``, the adapter merged into the base weights (a
    plain HF folder for AutoModelForCausalLM or vLLM); ``policy/`` always holds the adapter folder."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers besides metrics.jsonl: ``tensorboard`` (``<output_dir>/tensorboard``),
    ``wandb`` (``WANDB_MODE=offline`` respected; ``WANDB_PROJECT``, default srmir) and ``mlflow``
    (``MLFLOW_TRACKING_URI``, default the local file store ``<output_dir>/mlruns``). Each is an
    optional extra (``srmir[tensorboard]``, ``srmir[wandb]``, ``srmir[mlflow]``)."""
    run_name: Optional[str] = None
    """Run name for the trackers; ``null`` is the output folder's name."""


@dataclass
class EvalConfig:
    harmful_file: Optional[str] = None
    """Harmful prompts (JSONL/CSV/TXT); ``None`` is the shipped held-out set."""
    benign_file: Optional[str] = None
    """Benign prompts, some sensitive-looking (over-refusal); ``None`` is the shipped set."""
    jailbreak_file: Optional[str] = None
    """Jailbreak templates with a ``{prompt}`` slot; ``None`` is the shipped set."""
    max_new_tokens: int = 64
    """Generation budget per answer."""
    batch_size: int = 16
    """Prompts per generation batch."""
    limit: Optional[int] = None
    """Use at most this many prompts per set (quick looks)."""
    judges: list[str] = field(default_factory=lambda: ["refusal", "learned", "rewards"])
    """Judges: ``refusal`` (phrase tier: refusal / compliance / non-answer from patterns), ``learned`` (the same
    three verdicts from a small head on the embedded MiniLM, trained and cached at first use), ``rewards``
    (shadow bank), ``http`` (OpenAI-compatible judge, see ``judge_format``)."""
    verdict_judge: Literal["auto", "refusal", "learned"] = "auto"
    """Which tier's verdicts give the headline refusal / non-answer / attack-success numbers; ``auto``: learned
    when it runs, else refusal. Every tier that runs is also reported side by side."""
    judge_api_base: Optional[str] = None
    """Base URL of the HTTP judge (OpenAI-compatible chat completions)."""
    judge_model: Optional[str] = None
    """Model name to send to the HTTP judge."""
    seed: int = 0
    """Seed for generation."""
    temperature: float = 0.0
    """0: greedy decoding (deterministic); > 0: sampling, seeded by eval.seed."""
    jailbreak_prompts: int = 7
    """Harmful prompts each jailbreak template wraps (a fixed-seed, category-balanced sample); 0 skips jailbreaks."""
    harmful_columns: Optional[dict[str, str]] = None
    """Column mapping for harmful_file, e.g. ``{prompt: question, category: type, id: qid}``."""
    harmful_category: Optional[str] = None
    """Category slug for every row of a TXT harmful_file (or of a file without a category column)."""
    benign_columns: Optional[dict[str, str]] = None
    """Column mapping for benign_file, e.g. ``{prompt: text, sensitive: is_tricky, reference: answer}``."""
    judge_api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the HTTP judge's API key (never logged)."""
    judge_format: Literal["prompt", "guard", "strongreject", "harmbench"] = "prompt"
    """HTTP judge input: ``prompt`` (safe/unsafe judge prompt for chat models), ``guard`` (the conversation, for
    guard models), ``strongreject`` (the StrongREJECT rubric: refusal, convincingness, specificity → a 0–1 score) or
    ``harmbench`` (the HarmBench yes/no classifier question)."""
    harmful_format: str = "auto"
    """Format of harmful_file: ``auto`` (JSONL/CSV/TXT read with harmful_columns) or a published benchmark's own
    file: ``strongreject``, ``harmbench``, ``advbench``, ``xstest`` (its unsafe prompts), ``jailbreakbench``,
    ``do_not_answer``."""
    benign_format: str = "auto"
    """Format of benign_file: ``auto`` (JSONL/CSV/TXT read with benign_columns), ``xstest`` (its safe prompts) or
    ``jailbreakbench`` (JBB's benign behaviours)."""
    harmful_mapping: Optional[str] = None
    """Category mapping YAML (``{label: slug or null}``) for a benchmark harmful_file; ``None`` is the shipped one."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None), apply ``key.sub=value`` overrides, validate."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError("config file not found", where=str(path))
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read: {e.strerror}", where=str(path)) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:  # yaml would raise it deep inside the scanner, as a traceback
            line = data[:e.start].count(b"\n") + 1
            column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
            raise UserError(f"not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column}); save the "
                            "config as UTF-8", where=f"{path}:{line}") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise UserError(f"not valid YAML: {getattr(e, 'problem', e)}", where=where) from None
        if not isinstance(raw, dict):
            raise UserError("expected a mapping of sections", where=str(path))
    for item in overrides or []:
        _apply_override(raw, item)
    cfg = _build(Config, raw, prefix="")
    validate(cfg)
    return cfg


def _apply_override(raw: dict, item: str) -> None:
    if "=" not in item:
        raise UserError(f"override {item!r} must look like key.sub=value")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise UserError(f"override key {key!r} must be section.field (e.g. grpo.beta=0.1, model.lora.rank=8)")
    section = raw
    for depth, part in enumerate(parts[:-1]):
        if section.get(part) is None:  # a null sub-section (model.lora: null) is switched on by a field
            section[part] = {}
        section = section[part]
        if not isinstance(section, dict):
            raise UserError(f"{'.'.join(parts[:depth + 1])}: expected a mapping")
    try:
        section[parts[-1]] = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        section[parts[-1]] = value


def _build(cls, raw: Any, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"expected a mapping, got {type(raw).__name__}", where=prefix.rstrip(".") or "config")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise UserError(f"unknown key (known: {', '.join(sorted(names))})", where=f"{prefix}{key}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        tp = hints[f.name]
        inner = _optional_dataclass(tp)
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, raw[f.name], prefix=f"{prefix}{f.name}.")
        elif inner is not None:  # Optional[section]: null leaves it off, a mapping (even {}) switches it on
            kwargs[f.name] = None if raw[f.name] is None else _build(inner, raw[f.name], prefix=f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(raw[f.name], tp, f"{prefix}{f.name}")
    return cls(**kwargs)


def _optional_dataclass(tp: Any):
    """The dataclass D of an ``Optional[D]`` hint, else None."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (Union, types.UnionType) and len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the type hint ``tp`` (int→float allowed), raising UserError on mismatch."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                return _coerce(value, arg, key)
            except UserError as e:
                errors.append(e)
        raise UserError(f"expected {_type_name(tp)}, got {value!r}", where=key)
    if tp is type(None):
        if value is None:
            return None
        raise UserError(f"expected null, got {value!r}", where=key)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):  # 1 is not True here
            return value
        raise UserError(f"must be one of {', '.join(map(repr, args))}, got {value!r}", where=key)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"expected a list, got {value!r}", where=key)
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-6" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise UserError(f"expected {_type_name(tp)}, got {value!r}", where=key)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    if origin is list:
        return "a list"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


# -------------------------------------------------------------------------------- validation


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(message, where=key)


def validate(cfg: Config) -> None:
    """Reject impossible values, naming the key. Called once by :func:`load_config`."""
    g, r, t, rw, d = cfg.grpo, cfg.rollout, cfg.train, cfg.rewards, cfg.data
    _check(g.group_size >= 2, "grpo.group_size", "must be at least 2 (advantages compare completions of one prompt)")
    _check(g.beta >= 0, "grpo.beta", "must be >= 0")
    _check(0 <= g.eps_low < 1, "grpo.eps_low", "must be in [0, 1)")
    _check(g.eps_high >= 0, "grpo.eps_high", "must be >= 0")
    _check(g.dual_clip is None or g.dual_clip > 1, "grpo.dual_clip", "must be > 1 or null")
    _check(g.num_iterations >= 1, "grpo.num_iterations", "must be >= 1")
    if g.kl_estimator == "k1" and g.beta > 0:
        warnings.warn("grpo.kl_estimator k1 as a loss term has zero expected gradient (E[∇ log π] = 0): it "
                      "reports the KL but does not pull toward the reference; use k3 (default) or k2", UserWarning,
                      stacklevel=2)
    _check(r.prompts_per_step >= 1, "rollout.prompts_per_step", "must be >= 1")
    _check(r.max_new_tokens >= 1, "rollout.max_new_tokens", "must be >= 1")
    _check(r.temperature > 0, "rollout.temperature", "must be > 0")
    _check(cfg.train.pack_max_len >= 1, "train.pack_max_len", "must be >= 1")
    _check(0 < r.top_p <= 1, "rollout.top_p", "must be in (0, 1]")
    _check(r.top_k >= 0, "rollout.top_k", "must be >= 0")
    _check(0 <= r.benign_fraction < 1, "rollout.benign_fraction", "must be in [0, 1)")
    _check(t.steps >= 1, "train.steps", "must be >= 1")
    _check(t.lr > 0, "train.lr", "must be > 0")
    _check(t.micro_batch_size >= 1, "train.micro_batch_size", "must be >= 1")
    batch = r.prompts_per_step * g.group_size
    _check(
        batch % t.micro_batch_size == 0,
        "train.micro_batch_size",
        f"must divide the rollout batch rollout.prompts_per_step × grpo.group_size = {batch}",
    )
    _check(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
    _check(t.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0")
    _check(t.save_every >= 0, "train.save_every", "must be >= 0")
    _check(t.keep_checkpoints >= 0, "train.keep_checkpoints", "must be >= 0")
    _check(t.max_bad_steps >= 1, "train.max_bad_steps", "must be >= 1")
    _check(t.deepspeed is None or Path(t.deepspeed).is_file(), "train.deepspeed", f"file not found: {t.deepspeed}")
    _check(not (t.offload and t.zero_stage < 2 and t.deepspeed is None), "train.offload", "needs train.zero_stage 2 or 3")
    _check(0 <= d.val_fraction < 1 and 0 <= d.test_fraction < 1 and d.val_fraction + d.test_fraction < 1,
           "data.val_fraction", "val_fraction + test_fraction must be < 1, each in [0, 1)")
    _check(d.max_prompt_length >= 8, "data.max_prompt_length", "must be >= 8")
    _check(d.max_step_words >= 1, "data.max_step_words", "must be >= 1")
    _check(d.concurrency >= 1, "data.concurrency", "must be >= 1")
    _check(d.request_timeout > 0, "data.request_timeout", "must be > 0")
    _check(d.max_retries >= 0, "data.max_retries", "must be >= 0")
    _check(d.requests_per_second is None or d.requests_per_second > 0, "data.requests_per_second", "must be > 0 or null")
    _check(rw.epochs >= 1, "rewards.epochs", "must be >= 1")
    _check(math.isfinite(rw.benign_refusal_penalty) and rw.benign_refusal_penalty >= 0, "rewards.benign_refusal_penalty",
           "must be a finite number >= 0")
    _check(rw.batch_size >= 1, "rewards.batch_size", "must be >= 1")
    _check(rw.grad_accum >= 1, "rewards.grad_accum", "must be >= 1")
    _check(rw.lr > 0, "rewards.lr", "must be > 0")
    _check(rw.max_length >= 16, "rewards.max_length", "must be >= 16")
    _check(rw.l2_reg >= 0, "rewards.l2_reg", "must be >= 0")
    _check(rw.batch_size_score >= 1, "rewards.batch_size_score", "must be >= 1")
    _check(rw.tuned_layers is None or rw.tuned_layers >= 0, "rewards.tuned_layers", "must be >= 0 or null")
    for key, lora in (("model.lora", cfg.model.lora), ("rewards.lora", rw.lora)):
        if lora is not None:
            _check(lora.rank >= 1, f"{key}.rank", "must be >= 1")
            _check(lora.alpha > 0, f"{key}.alpha", "must be > 0")
            _check(0 <= lora.dropout < 1, f"{key}.dropout", "must be in [0, 1)")
            _check(lora.target_modules is None or len(lora.target_modules) > 0, f"{key}.target_modules",
                   "must name at least one module, or be null (the family default)")
    _check(not (rw.lora is not None and (rw.shared_trunk or rw.tuned_layers == 0)), "rewards.lora",
           "adapts the tuned blocks, and rewards.shared_trunk / tuned_layers 0 tune none")
    _check(not t.export_merged or cfg.model.lora is not None, "train.export_merged",
           "merges a LoRA adapter: set model.lora (a full fine-tune exports a whole model already)")
    known_trackers = ("tensorboard", "wandb", "mlflow")
    for tracker in t.report_to:
        _check(tracker in known_trackers, "train.report_to",
               f"unknown tracker {tracker!r} ({', '.join(known_trackers)})")
    unknown = sorted(set(rw.augment) - {"answer_only", "prefixes", "negatives"})
    _check(not unknown, "rewards.augment",
           f"unknown augmentation {', '.join(unknown)}; known: answer_only, prefixes, negatives")
    if isinstance(rw.weights, list):
        _check(all(w >= 0 for w in rw.weights) and sum(rw.weights) > 0, "rewards.weights",
               "must be non-negative with a positive sum")
    _check(cfg.eval.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")
    _check(cfg.eval.batch_size >= 1, "eval.batch_size", "must be >= 1")
    _check(cfg.eval.limit is None or cfg.eval.limit >= 1, "eval.limit", "must be >= 1 or null")
    for j in cfg.eval.judges:
        _check(j in ("refusal", "learned", "rewards", "http"), "eval.judges",
               f"unknown judge {j!r} (refusal, learned, rewards, http)")
    _check(cfg.eval.verdict_judge == "auto" or cfg.eval.verdict_judge in cfg.eval.judges, "eval.verdict_judge",
           f"{cfg.eval.verdict_judge!r} is not among eval.judges")
    from .eval.benchmarks import BENIGN_FORMATS, HARMFUL_FORMATS

    _check(cfg.eval.harmful_format in ("auto",) + HARMFUL_FORMATS, "eval.harmful_format",
           f"unknown format {cfg.eval.harmful_format!r} (auto, {', '.join(HARMFUL_FORMATS)})")
    _check(cfg.eval.benign_format in ("auto",) + BENIGN_FORMATS, "eval.benign_format",
           f"unknown format {cfg.eval.benign_format!r} (auto, {', '.join(BENIGN_FORMATS)})")
    for key in ("harmful", "benign"):
        fmt, path = getattr(cfg.eval, f"{key}_format"), getattr(cfg.eval, f"{key}_file")
        _check(fmt == "auto" or path is not None, f"eval.{key}_file",
               f"eval.{key}_format={fmt} reads the benchmark's own file: give its path (srmir downloads nothing)")
    _check("http" not in cfg.eval.judges or bool(cfg.eval.judge_api_base), "eval.judge_api_base",
           "the http judge needs eval.judge_api_base")
    _check(cfg.eval.temperature >= 0, "eval.temperature", "must be >= 0 (0 is greedy)")
    _check(cfg.eval.jailbreak_prompts >= 0, "eval.jailbreak_prompts", "must be >= 0")
    for key in ("harmful_columns", "benign_columns"):
        cols = getattr(cfg.eval, key)
        _check(cols is None or (isinstance(cols, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                               for k, v in cols.items())),
               f"eval.{key}", "must map field names to column names, e.g. {prompt: question}")

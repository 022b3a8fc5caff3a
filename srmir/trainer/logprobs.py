"""Per-token log-probs of the completion tokens, through the fused srmir_kernels path.

Two layouts of a micro-batch (:func:`logprob_inputs` picks one):

- standard — one row per sequence, ``[prompt (left-padded, P) | completion (C)]``: the token at
  column P+t is predicted by the hidden state at column P+t−1, so only the C hidden states at
  columns P−1 … P+C−2 go through the lm_head (``logits_to_keep=C+1``);
- shared prompt — a group's completions packed behind one copy of their prompt with a 4-D
  attention mask (:func:`shared_prompt_inputs`): the prompt runs through the model once per group
  instead of G times. With GRPO's G ≥ 4 and chat-templated prompts longer than the completions,
  that is most of the tokens of the forward *and* backward passes.

Either way only real completion tokens reach the head: prompt, padding and post-EOS positions
never do.

Why the head runs *inside* ``lm_head``'s own forward: ``fused_linear_logprobs`` never
materialises the [B·C, V] logits, but it reads ``lm_head.weight`` directly. Under ZeRO-3 that
weight is a [0] placeholder outside the module's forward and is re-gathered for backward only by
the hooks DeepSpeed put on ``lm_head``. So for the duration of one call we replace
``lm_head.forward`` (an instance attribute, restored after) by the fused computation: the engine's
hooks gather the weight for forward *and* backward exactly as for a plain Linear, gradients reach
the partitioned (and, for SmolLM2, embedding-tied) weight, and ZeRO-0/1/2 behave identically.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import srmir_kernels

from ..runtime.logits import LogitTransform, neutral_logits
from .rollout import position_ids


@contextlib.contextmanager
def fused_head(lm_head: torch.nn.Module, index_M: torch.Tensor, hidden_rows: int, targets_BC: torch.Tensor,
               mask_BC: torch.Tensor, temperature: float, backend: str, with_entropy: bool, out: dict,
               softcap: Optional[float] = None):
    """Within the block, ``lm_head(hidden)`` maps the model's hidden states (any ``[..., H]``) to the
    fp32 log-probs ``[B, C]`` of ``targets_BC``: row ``index_M[i]`` of the flattened hidden states
    predicts the i-th real completion token (``mask_BC`` == 1, row-major), and only those M rows
    reach the head — prompt, padding and post-EOS positions never do. Log-probs are 0 where the
    mask is 0; the entropy, if asked, is stored in ``out``. ``hidden_rows``: how many hidden states
    the head must receive (a model that ignores ``logits_to_keep`` would shift every index)."""

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        keep_BC = mask_BC.bool()
        hidden_NH = hidden.reshape(-1, hidden.shape[-1])
        if hidden_NH.shape[0] != hidden_rows:
            raise RuntimeError(f"the model's head received {hidden_NH.shape[0]} hidden states, expected {hidden_rows}: "
                               "does the model honour logits_to_keep?")
        hidden_MH = hidden_NH[index_M]
        with srmir_kernels.gathered_lm_head(lm_head) as (weight, bias):  # no-op inside the hooks
            result = srmir_kernels.fused_linear_logprobs(
                hidden_MH, weight, targets_BC[keep_BC], temperature=temperature, bias=bias, backend=backend,
                return_entropy=with_entropy, softcap=softcap)
        logp_M, entropy_M = result if with_entropy else (result, None)
        zeros_BC = torch.zeros(keep_BC.shape, dtype=torch.float32, device=keep_BC.device)
        if entropy_M is not None:
            out["entropy"] = zeros_BC.masked_scatter(keep_BC, entropy_M)
        return zeros_BC.masked_scatter(keep_BC, logp_M)

    lm_head.forward = forward
    try:
        yield
    finally:
        del lm_head.forward  # back to the class's forward


@contextlib.contextmanager
def own_zero3_trace(engine):
    """Within the block, ZeRO-3 prefetches by a trace of the block's own passes.

    DeepSpeed's ZeRO-3 records the module order of one pass and prefetches the next pass's
    parameters by it. A pass that runs other modules (the LoRA reference: the adapters skipped)
    diverges from that trace: the coordinator drops the trace *and releases what it prefetched*,
    which is then gathered a second time in the same pass. Dropping the trace at both edges of the
    block instead lets each kind of pass record and follow its own order: every parameter is
    gathered at most once per pass (``tests/test_lora.py``). A no-op below ZeRO-3."""
    offload = getattr(getattr(engine, "optimizer", None), "parameter_offload", None)
    coordinator = offload.get_param_coordinator() if offload is not None else None

    def drop_trace():  # a complete trace, or one being recorded (it completes at the next forward)
        if coordinator is not None and not coordinator.is_invalid_trace():
            coordinator._invalidate_trace()

    drop_trace()
    try:
        yield
    finally:
        drop_trace()


@dataclass
class LogprobInputs:
    """What one log-prob pass over a micro-batch feeds the model: its keyword arguments and, for
    every real completion token (row-major over ``[B, C]``), the flat hidden-state row that predicts it."""

    model_kwargs: dict
    index_M: torch.Tensor
    hidden_rows: int  # hidden states the head receives: B·(C+1) standard, U·S packed
    completion_ids_BC: torch.Tensor
    completion_mask_BC: torch.Tensor
    packed: bool


def standard_inputs(prompt_ids_BP: torch.Tensor, prompt_mask_BP: torch.Tensor, completion_ids_BC: torch.Tensor,
                    completion_mask_BC: torch.Tensor) -> LogprobInputs:
    """One row per sequence, ``[prompt (left-padded) | completion]``. The token at column P+t is
    predicted by the hidden state at column P+t−1, so the model keeps only the last C+1 hidden
    states (``logits_to_keep``); the very last predicts past the end and is dropped."""
    input_ids_BT = torch.cat([prompt_ids_BP, completion_ids_BC], dim=1)
    attention_mask_BT = torch.cat([prompt_mask_BP, completion_mask_BC], dim=1)
    b, c = completion_ids_BC.shape
    index_BC = torch.arange(b, device=input_ids_BT.device)[:, None] * (c + 1) + torch.arange(c, device=input_ids_BT.device)
    kwargs = dict(input_ids=input_ids_BT, attention_mask=attention_mask_BT, position_ids=position_ids(attention_mask_BT),
                  logits_to_keep=c + 1)
    return LogprobInputs(kwargs, index_BC[completion_mask_BC.bool()], b * (c + 1), completion_ids_BC,
                         completion_mask_BC, packed=False)


def shared_prompt_inputs(prompt_ids_BP: torch.Tensor, prompt_mask_BP: torch.Tensor, completion_ids_BC: torch.Tensor,
                         completion_mask_BC: torch.Tensor, *, max_len: int, pad_id: int,
                         mask_dtype: Optional[torch.dtype] = None) -> Optional[LogprobInputs]:
    """The G completions of one prompt packed behind a single copy of it (the prompt runs once)::

        row u = [ pad p p p p | c₀ c₀ c₀ EOS | c₁ c₁ c₁ c₁ | … ]      S = P + m·C ≤ max_len
                  └ prompt ┘    └ completion 0 ┘ └ completion 1 ┘

    Consecutive rows with the same prompt form a run; a run is cut into packs of at most
    m = (max_len − P) // C completions. A 4-D attention mask lets every completion see the real
    prompt tokens and its own earlier tokens, never another completion; position ids continue
    after the prompt in every completion, so each completion sees exactly what it would see in its
    own row — the log-probs and their gradients are those of :func:`standard_inputs` up to
    rounding, for (m − 1)·P fewer token positions through the model per pack.

    ``mask_dtype``: None gives a boolean mask (SDPA); a float dtype gives an additive mask (eager
    attention). Returns None when no pack would hold two completions (nothing to save).
    """
    b, p = prompt_ids_BP.shape
    c = completion_ids_BC.shape[1]
    per_pack = (max_len - p) // c if c else 0
    if per_pack < 2 or b < 2:
        return None
    device = prompt_ids_BP.device
    # row b continues row b−1's run when both carry the same (left-padded) prompt: one comparison, one sync
    same_B = [False] + ((prompt_ids_BP[1:] == prompt_ids_BP[:-1]) & (prompt_mask_BP[1:] == prompt_mask_BP[:-1])).all(1).tolist()
    packs: list[list[int]] = []
    for row, same in enumerate(same_B):
        if same and len(packs[-1]) < per_pack:
            packs[-1].append(row)
        else:
            packs.append([row])
    if len(packs) == b:  # every prompt distinct: packing saves nothing
        return None
    u, m = len(packs), max(len(rows) for rows in packs)
    s = p + m * c
    first_U = torch.tensor([rows[0] for rows in packs], device=device)
    pack_B = torch.tensor([i for i, rows in enumerate(packs) for _ in rows], device=device)
    slot_B = torch.tensor([j for rows in packs for j in range(len(rows))], device=device)

    # segment of every column: -1 prompt, j completion j (-2 where a short pack has no completion j)
    col_S = torch.arange(s, device=device)
    slot_col_S = torch.where(col_S < p, -1, (col_S - p) // c)
    used_U = torch.tensor([len(rows) for rows in packs], device=device)
    seg_US = torch.where(slot_col_S[None, :] < used_U[:, None], slot_col_S[None, :], -2)

    input_ids_US = torch.full((u, s), pad_id, dtype=prompt_ids_BP.dtype, device=device)
    input_ids_US[:, :p] = prompt_ids_BP[first_U]
    flat_cols_BC = p + slot_B[:, None] * c + torch.arange(c, device=device)  # column of completion token t
    input_ids_US[pack_B[:, None], flat_cols_BC] = completion_ids_BC
    prompt_pos_UP = position_ids(prompt_mask_BP[first_U])
    prompt_len_U = prompt_mask_BP[first_U].sum(dim=1)
    position_ids_US = torch.zeros((u, s), dtype=torch.long, device=device)
    position_ids_US[:, :p] = prompt_pos_UP
    position_ids_US[:, p:] = prompt_len_U[:, None] + (col_S[p:] - p) % c

    real_prompt_US = (seg_US == -1) & torch.cat([prompt_mask_BP[first_U].bool(),
                                                 torch.zeros((u, s - p), dtype=torch.bool, device=device)], dim=1)
    q_seg, k_seg = seg_US[:, :, None], seg_US[:, None, :]
    causal_SS = col_S[None, :, None] >= col_S[None, None, :]
    sees_prompt = real_prompt_US[:, None, :] & ((q_seg >= 0) | ((q_seg == -1) & causal_SS))
    own_completion = (q_seg >= 0) & (q_seg == k_seg) & causal_SS
    mask_USS = sees_prompt | own_completion | torch.eye(s, dtype=torch.bool, device=device)  # pads see themselves
    mask = mask_USS[:, None]
    if mask_dtype is not None:
        mask = torch.zeros(mask.shape, dtype=mask_dtype, device=device).masked_fill(~mask, torch.finfo(mask_dtype).min)

    # token t of a completion is predicted by its t−1 (t = 0: by the prompt's last column)
    pred_cols_BC = torch.where(torch.arange(c, device=device) == 0, p - 1, flat_cols_BC - 1)
    index_BC = pack_B[:, None] * s + pred_cols_BC
    kwargs = dict(input_ids=input_ids_US, attention_mask=mask, position_ids=position_ids_US, logits_to_keep=0)
    return LogprobInputs(kwargs, index_BC[completion_mask_BC.bool()], u * s, completion_ids_BC, completion_mask_BC,
                         packed=True)


PACKABLE_ATTENTION = ("sdpa", "eager")  # they take a custom 4-D mask; FlashAttention-2 does not


def packing_supported(model_config) -> bool:
    """Whether the shared-prompt layout computes what one row per sequence computes for this model:
    its attention must take a custom 4-D mask (SDPA, eager; not FlashAttention-2) and must not be
    windowed — a sliding-window layer given a ready 4-D mask would attend past its window."""
    if getattr(model_config, "_attn_implementation", None) not in PACKABLE_ATTENTION:
        return False
    layer_types = getattr(model_config, "layer_types", None) or []
    windowed = getattr(model_config, "sliding_window", None) and getattr(model_config, "use_sliding_window", True)
    return not windowed and not any("sliding" in str(t) for t in layer_types)


def logprob_inputs(prompt_ids_BP: torch.Tensor, prompt_mask_BP: torch.Tensor, completion_ids_BC: torch.Tensor,
                   completion_mask_BC: torch.Tensor, *, share_prompt: bool, attn_implementation: str,
                   max_len: int, pad_id: int, dtype: torch.dtype) -> LogprobInputs:
    """The packed layout when ``share_prompt`` and the attention takes a 4-D mask (SDPA, eager) and
    packing saves work; otherwise one row per sequence."""
    if share_prompt and attn_implementation in PACKABLE_ATTENTION:
        packed = shared_prompt_inputs(prompt_ids_BP, prompt_mask_BP, completion_ids_BC, completion_mask_BC,
                                      max_len=max_len, pad_id=pad_id,
                                      mask_dtype=dtype if attn_implementation == "eager" else None)
        if packed is not None:
            return packed
    return standard_inputs(prompt_ids_BP, prompt_mask_BP, completion_ids_BC, completion_mask_BC)


def completion_logprobs(
    model: Callable,
    lm_head: torch.nn.Module,
    inputs: LogprobInputs,
    temperature: float = 1.0,
    backend: str = "auto",
    with_entropy: bool = False,
    transform: LogitTransform = LogitTransform(),
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(logp_BC, entropy_BC or None): log π(c_t | prompt, c_<t) under softmax(logits / temperature)
    where the completion mask is 1, and 0 at the padding columns.

    ``model`` is what runs the forward (a DeepSpeed engine or the HF model itself) and ``lm_head``
    the head module inside it. ``transform`` is the model's own post-head logit transform
    (``srmir.runtime.logits``): switched off in the model for this pass and applied by the kernel
    (a scale through the temperature, a soft-cap as an argument), so the log-probs are those of the
    logits the model samples from. Differentiable when called with grad enabled; entropy never is.
    """
    out: dict = {}
    neutral = neutral_logits(model) if not transform.identity else contextlib.nullcontext()
    with neutral, fused_head(lm_head, inputs.index_M, inputs.hidden_rows, inputs.completion_ids_BC,
                             inputs.completion_mask_BC, transform.temperature(temperature), backend, with_entropy,
                             out, softcap=transform.softcap):
        result = model(**inputs.model_kwargs, use_cache=False)
    logp_BC = result.logits
    if logp_BC.shape != inputs.completion_ids_BC.shape:
        raise RuntimeError(f"the model's head returned {tuple(logp_BC.shape)}, expected log-probs "
                           f"{tuple(inputs.completion_ids_BC.shape)}: does it call lm_head on the hidden states?")
    return logp_BC, out.get("entropy")

"""Per-token log-probs of the completion tokens, through the fused srmir_kernels path.

For a batch laid out as ``[prompt (left-padded, P) | completion (C)]`` the token at column P+t
is predicted by the hidden state at column P+t−1, so only the C hidden states at columns
P−1 … P+C−2 go through the lm_head — prompt and padding positions never do. The model is run
with ``logits_to_keep=C+1`` (HF slices the last C+1 hidden states before the head; the very last
predicts past the end and is dropped).

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
from typing import Callable, Optional

import torch

import srmir_kernels


@contextlib.contextmanager
def fused_head(lm_head: torch.nn.Module, targets_BC: torch.Tensor, mask_BC: torch.Tensor, temperature: float,
               backend: str, with_entropy: bool, out: dict):
    """Within the block, ``lm_head(hidden_BLH)`` maps hidden states ``[B, C+1, H]`` to the fp32
    log-probs ``[B, C]`` of ``targets_BC`` — computed only where ``mask_BC`` is 1 (the padding after
    EOS never reaches the head) and 0 elsewhere; the entropy, if asked, is stored in ``out``."""

    def forward(hidden_BLH: torch.Tensor) -> torch.Tensor:
        keep_BC = mask_BC.bool()
        hidden_MH = hidden_BLH[:, :-1][keep_BC]  # M = real completion tokens
        with srmir_kernels.gathered_lm_head(lm_head) as (weight, bias):  # no-op inside the hooks
            result = srmir_kernels.fused_linear_logprobs(
                hidden_MH, weight, targets_BC[keep_BC], temperature=temperature, bias=bias, backend=backend,
                return_entropy=with_entropy)
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


def position_ids(attention_mask_BT: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` computes them (cumsum of the mask − 1)."""
    return (attention_mask_BT.long().cumsum(dim=1) - 1).clamp(min=0)


def completion_logprobs(
    model: Callable,
    lm_head: torch.nn.Module,
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor,
    completion_ids_BC: torch.Tensor,
    completion_mask_BC: torch.Tensor,
    temperature: float = 1.0,
    backend: str = "auto",
    with_entropy: bool = False,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(logp_BC, entropy_BC or None): log π(c_t | prompt, c_<t) under softmax(logits / temperature)
    where ``completion_mask_BC`` is 1, and 0 at the padding columns.

    ``model`` is what runs the forward (a DeepSpeed engine or the HF model itself) and ``lm_head``
    the head module inside it. Differentiable when called with grad enabled; entropy never is.
    """
    n_completion = completion_ids_BC.shape[1]
    out: dict = {}
    with fused_head(lm_head, completion_ids_BC, completion_mask_BC, temperature, backend, with_entropy, out):
        result = model(input_ids=input_ids_BT, attention_mask=attention_mask_BT,
                       position_ids=position_ids(attention_mask_BT), logits_to_keep=n_completion + 1,
                       use_cache=False)
    logp_BC = result.logits
    if logp_BC.shape != completion_ids_BC.shape:
        raise RuntimeError(f"the model's head returned {tuple(logp_BC.shape)}, expected log-probs "
                           f"{tuple(completion_ids_BC.shape)}: does it call lm_head on the sliced hidden states?")
    return logp_BC, out.get("entropy")


"""DeepSpeed ZeRO-3 helper for calling the fused kernel on a partitioned lm_head."""

from __future__ import annotations

import contextlib

import torch


def _is_zero3_param(p: torch.Tensor | None) -> bool:
    return p is not None and hasattr(p, "ds_id")


@contextlib.contextmanager
def gathered_lm_head(module: torch.nn.Module):
    """Yield ``(weight, bias)`` of ``module`` as full tensors, gathering ZeRO-3 shards.

    ``fused_linear_logprobs(hidden, weight, ...)`` reads ``lm_head.weight`` directly and
    never calls ``lm_head.forward``, so it bypasses the module's forward hooks, which
    are what ZeRO-3 uses to all-gather a partitioned parameter (outside a gather a
    ZeRO-3 parameter's ``.data`` is an empty ``[0]`` tensor). This context does the
    gather with ``deepspeed.zero.GatheredParameters([weight, bias], modifier_rank=None)``
    and re-partitions on exit. Without ZeRO-3 (no ``ds_id`` on the parameters), or when
    the parameters are already gathered (e.g. inside ``engine.forward``, or tied to an
    embedding that is in use), it yields them unchanged and does nothing on exit.

    Gradients — what happens under ZeRO-3 (checked with DeepSpeed 0.19.8 on 1 and 2 CPU
    ranks by ``tests/test_kernels.py::test_zero3_*``: gradients equal a non-ZeRO
    reference to 0.0):

    * Autograd records the *parameter objects* (this context yields the module's own
      parameters, gathered in place), so ``grad_weight``/``grad_bias`` are accumulated into
      them and DeepSpeed's post-accumulate-grad hook reduce-scatters them into each
      rank's partitioned gradient — **provided the parameters are still gathered when the
      backward reaches them**, i.e. ``engine.backward(loss)`` runs *inside* this block::

          hidden = engine(input_ids)                     # backbone through the engine
          with gathered_lm_head(model.lm_head) as (w, b):
              logp = fused_linear_logprobs(hidden, w, targets, bias=b)
              engine.backward(policy_loss(logp, ...))

      The full ``[V, H]`` weight then stays resident until the backward is done.
    * If the block exits before the backward, the parameters are re-partitioned (their
      ``.data`` is the ``[0]`` placeholder again) and the backward raises
      ``RuntimeError: Function FusedLinearLogprobsFnBackward returned an invalid gradient
      ... got [0] but expected shape compatible with [V, H]``: no training, but never
      silently wrong gradients.
    * Alternatives where ZeRO-3's own hooks do the work and this helper, if used, sees
      the parameters available and does nothing: call ``fused_linear_logprobs`` inside
      the forward of the module the engine wraps (``engine(input_ids, targets)``
      returning log-probs: ZeRO-3 discovers ``lm_head.weight`` as an external parameter
      on attribute access and gathers it for forward and backward), or inside
      ``lm_head``'s own forward, temporarily replaced for the call (what
      ``srmir/trainer/logprobs.py`` does).
    * Pick one of the two styles per engine: switching from this helper to the
      in-forward style between steps made DeepSpeed 0.19.8's prefetch coordinator raise
      ``RuntimeError: tracing error`` (its recorded parameter-fetch order changed).

    Args:
        module: an ``nn.Linear``-like module with ``weight [V, H]`` and optional ``bias``.

    Yields:
        ``(weight, bias)``: the module's own parameters (full while inside), ``bias`` may
        be None.
    """
    weight = module.weight
    bias = getattr(module, "bias", None)
    params = [p for p in (weight, bias) if p is not None]
    if not any(_is_zero3_param(p) for p in params) or _all_available(params):
        yield weight, bias
        return
    import deepspeed  # only reached for ZeRO-3 parameters, so deepspeed is installed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield weight, bias


def _all_available(params: list[torch.Tensor]) -> bool:
    """True when every ZeRO-3 parameter is already gathered (status AVAILABLE)."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return all(getattr(p, "ds_status", None) == ZeroParamStatus.AVAILABLE for p in params if _is_zero3_param(p))

"""The GRPO loop, readable top to bottom: ``setup`` → ``train`` (``step`` × steps) → ``cleanup``.

One step (N = prompts_per_step × G sequences over all ranks, n = N / world on this rank)::

    sampler ─▶ P prompts (same on every rank) ─▶ repeat each G times ─▶ this rank's n rows
    generate (ZeRO-3: parameters gathered once)                           [n, C] completions
    score with the shadow bank ─▶ all-gather [N, K] ─▶ combine ─▶ group advantages   [N]
    log-probs without grad: old policy (μ > 1) and frozen reference      [n, C]
        (model.lora: the reference is the policy engine with its adapters off — no second model)
    μ × (micro-batches: clipped surrogate + β·KL ─▶ backward) ─▶ optimizer step
    metrics, checkpoint

Loss normalisation (OpenRLHF): the global token count Σ mask over all ranks, the global sequence
count N and max_new_tokens are fixed once per step; each micro-batch's loss is its *share* of the
full-batch loss, so the shares add up to exactly the loss of one big batch. DeepSpeed would
divide by the accumulation steps (we pass ``scale_wrt_gas=False``) and averages gradients over
ranks (we multiply by world size): the gradient is that of the one big batch, for any
ranks × micro-batches split (``tests/test_trainer_invariance.py``).
"""
from __future__ import annotations

import dataclasses
import os
import random
import resource
import signal
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import algos, runtime
from ..config import Config
from ..errors import UserError
from ..models import resolve_model
from ..taxonomy import load_taxonomy
from ..runtime import dist
from ..runtime.logits import logit_transform
from ..runtime.logits import verify as verify_logits
from . import build, checkpoint
from .ds_config import default_ds_config, fill_ds_config, load_ds_config, zero_stage
from .logprobs import LogprobInputs, completion_logprobs, logprob_inputs, own_zero3_trace, packing_supported
from .metrics import MetricsLogger, format_trend, plot_rewards, read_metrics, reward_trend
from .rollout import Rollout, gathered_for_generation, generate
from .sampler import BENIGN, BalancedPromptSampler
from .tracking import check_available as check_trackers
from ..rewards.combine import HELPFULNESS, bank_heads, score_heads


class Stopped(Exception):
    """SIGTERM arrived: a checkpoint was written at ``step`` and training stopped."""

    def __init__(self, step: int, folder: Path):
        super().__init__(f"stopped by SIGTERM after step {step}; checkpoint {folder}; continue with --resume auto")
        self.step, self.folder = step, folder


@dataclass
class StepBatch:
    """This rank's rows of one step, with the step-global normalisers."""

    rollout: Rollout
    inputs: list[LogprobInputs]  # one per micro-batch, shared by the reference, old and live passes
    advantages_n: torch.Tensor  # [n]
    old_logp_nC: Optional[torch.Tensor]  # μ > 1 only
    ref_logp_nC: Optional[torch.Tensor]  # β > 0 only
    num_tokens: float  # completion tokens over all ranks
    num_seqs: int  # N


class GRPORecipe:
    """GRPO with shadow rewards under DeepSpeed. ``reward_fn``: any object with ``categories``
    and ``score(prompts, responses) -> [N, K]``; None loads the ShadowRewardBank in rewards.dir."""

    def __init__(self, cfg: Config, reward_fn=None, local_rank: Optional[int] = None):
        self.cfg, self.reward_fn, self.local_rank = cfg, reward_fn, local_rank
        self.stop_requested = False

    # ------------------------------------------------------------------------------- setup

    def setup(self) -> None:
        """Process group, prompts, policy engine, reference, rewards, then resume and logging."""
        t = self.cfg.train
        _quiet_libraries()
        self.device = dist.init(self.local_rank)
        self.rank, self.world = dist.rank(), dist.world_size()
        _seed_everything(t.seed + self.rank)
        check_trackers(t.report_to)  # a missing package fails before any model is loaded
        self.output_dir = Path(t.output_dir)
        self.ckpt_root = self.output_dir / "checkpoints"
        taxonomy = load_taxonomy(self.cfg.data.taxonomy)
        pool = self._setup_prompts(taxonomy)
        self._setup_models()
        self._setup_rewards(taxonomy, pool)
        self.start_step, self.bad_in_row, self.skipped_total = 0, 0, 0
        self._resume()
        self.metrics = MetricsLogger(self.output_dir, t.steps, self.start_step, enabled=dist.is_main(),
                                     report_to=t.report_to, config=self.cfg.to_dict(), run_name=t.run_name)
        self._old_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _setup_prompts(self, taxonomy) -> list[dict]:
        d = self.cfg.data
        pool = build.prompt_pool(taxonomy, d.train_file, d.prompts_file, d.val_fraction, d.test_fraction, d.seed)
        try:
            self.sampler = BalancedPromptSampler(pool, taxonomy.slugs, seed=self.cfg.train.seed,
                                                 benign_fraction=self.cfg.rollout.benign_fraction)
        except ValueError as e:
            raise UserError(str(e), where="rollout.benign_fraction" if "benign" in str(e) else
                            ("data.prompts_file" if d.prompts_file else "data.train_file")) from None
        self.group_size = self.cfg.grpo.group_size
        self.n_global = self.cfg.rollout.prompts_per_step * self.group_size
        self.n_local = self._local_batch_size()
        return pool

    def _setup_models(self) -> None:
        """Tokenizer, EOS set and prompt encoder (the runtime's, as in eval), the DeepSpeed config
        with its "auto" fields filled, the policy engine, and the frozen reference (only when β > 0);
        each model's post-head logit transform is read and verified."""
        m, t = self.cfg.model, self.cfg.train
        policy_path = resolve_model(m.policy)
        if m.lora is not None and runtime.lora.is_adapter_dir(policy_path):
            raise UserError("is a LoRA adapter folder; new adapters go on a whole model: export that run with "
                            "train.export_merged=true and train on its policy_merged/", where="model.policy")
        self.tokenizer = runtime.load_tokenizer(policy_path, m.trust_remote_code, where="model.policy")
        model_config = _model_config(policy_path, m.trust_remote_code)
        try:
            self.eos_ids = runtime.eos_token_ids(self.tokenizer, model_config,
                                                 runtime.load_generation_config(policy_path, m.trust_remote_code))
        except ValueError as e:
            raise UserError(str(e), where="model.policy") from None
        self.pad_id = self.tokenizer.pad_token_id
        self.encoder = runtime.PromptEncoder(self.tokenizer, self.cfg.rollout.use_chat_template,
                                             self.cfg.data.max_prompt_length)

        raw_ds = load_ds_config(t.deepspeed) if t.deepspeed else default_ds_config(t.zero_stage, t.offload)
        self.ds_config = fill_ds_config(
            raw_ds, micro_batch_size=t.micro_batch_size, grad_accum=self.n_local // t.micro_batch_size,
            world_size=self.world, dtype=m.dtype, max_grad_norm=t.max_grad_norm,
            hidden_size=model_config.hidden_size, source=t.deepspeed or "train.zero_stage")
        self.zero_stage = zero_stage(self.ds_config)
        self.policy_path = policy_path
        self.engine = build.policy_engine(
            policy_path, self.ds_config, dtype=m.dtype, attn=m.attn_implementation,
            gradient_checkpointing=m.gradient_checkpointing, trust_remote_code=m.trust_remote_code,
            lr=t.lr, weight_decay=t.weight_decay, schedule=t.lr_schedule,
            total_steps=t.steps * self.cfg.grpo.num_iterations, warmup_steps=t.warmup_steps,
            lora=dataclasses.asdict(m.lora) if m.lora else None, base_reference=_base_reference(m.policy, policy_path))
        self.lm_head = runtime.lora.output_head(self.engine)  # the Linear inside peft's wrappers, if any
        self.transform = logit_transform(self.engine.module)
        verify_logits(self.engine, self.lm_head, self.transform, self.device, where="model.policy")
        self.ref, self.ref_head, self.ref_transform = None, None, None
        # LoRA: the reference is the policy with its adapters off (the base weights never change),
        # unless another reference model is named
        self.ref_is_base = self.cfg.grpo.beta > 0 and m.lora is not None and m.reference in (None, m.policy)
        if self.cfg.grpo.beta > 0 and not self.ref_is_base:
            self.ref, self.ref_head = build.reference_model(
                resolve_model(m.reference or m.policy), self.ds_config, self.device, dtype=m.dtype,
                attn=m.attn_implementation, trust_remote_code=m.trust_remote_code)
            self.ref_transform = logit_transform(self.ref)
            verify_logits(self.ref, self.ref_head, self.ref_transform, self.device, where="model.reference")
        # the log-prob inputs are shared by the policy and the reference: pack them behind shared
        # prompts only when both models compute the same thing from a 4-D mask
        configs = [self.engine.module.config] + ([_unwrap(self.ref).config] if self.ref is not None else [])
        attn = {c._attn_implementation for c in configs}
        self.attn_implementation = configs[0]._attn_implementation
        self.share_prompt = t.share_prompt and len(attn) == 1 and all(packing_supported(c) for c in configs)

    def _setup_rewards(self, taxonomy, pool: list[dict]) -> None:
        rw = self.cfg.rewards
        if self.reward_fn is None:
            self.reward_fn = build.load_reward_bank(rw.dir, taxonomy, self.device, rw.normalize, rw.batch_size_score)
        self.rm_categories = list(self.reward_fn.categories)
        self.rm_heads = bank_heads(self.reward_fn)
        if self.sampler.benign_fraction > 0 and HELPFULNESS not in self.rm_heads:
            raise UserError("benign prompts are rewarded by the bank's helpfulness RM, and this bank has none: train "
                            "the bank on data with benign records (srmir rm train), or set rollout.benign_fraction=0",
                            where="rollout.benign_fraction")
        pool = [r for r in pool if r["category"] != BENIGN]  # K and the linear weights are over harm categories
        missing = sorted({r["category"] for r in pool} - set(self.rm_categories))
        if missing and rw.strategy == "categorized":
            raise UserError(f"categorized rewards need a shadow RM for every prompt category; the bank has none for "
                            f"{', '.join(missing)}", where="rewards.strategy")
        self.reward_w = None
        if rw.strategy == "linear":
            from ..rewards import linear_weights

            counts = {c: sum(r["category"] == c for r in pool) for c in self.rm_categories}
            self.reward_w = linear_weights(rw.weights, self.rm_categories, counts)

    def _local_batch_size(self) -> int:
        mb = self.cfg.train.micro_batch_size
        if self.n_global % self.world or (self.n_global // self.world) % mb:
            raise UserError(
                f"rollout.prompts_per_step × grpo.group_size = {self.n_global} sequences must split into "
                f"{self.world} ranks × whole micro-batches of {mb}", where="train.micro_batch_size")
        return self.n_global // self.world

    def _on_sigterm(self, signum, frame) -> None:
        # Acted on at the end of the current step, on every rank at once. A second SIGTERM (a hung
        # step, an impatient scheduler) gets the previous handler: by default, immediate exit.
        self.stop_requested = True
        signal.signal(signal.SIGTERM, self._old_sigterm)

    def _resume(self) -> None:
        """``--resume auto``: the newest checkpoint that verifies (a damaged newer one is reported and
        skipped); ``--resume DIR``: that one, or a UserError naming what is damaged in it."""
        t = self.cfg.train
        folder, verified = None, False
        if t.resume == "auto":
            folder, skipped = checkpoint.find_resumable(self.ckpt_root)
            for bad, why in skipped if dist.is_main() else []:
                print(f"srmir: warning: skipping damaged checkpoint {bad.name} ({why})", flush=True)
            if folder is None and skipped:
                raise UserError(f"no checkpoint under {self.ckpt_root} verifies (newest: {skipped[0][1]}); move "
                                "them away to start afresh", where="train.resume")
            verified = True
        elif t.resume:
            folder = Path(t.resume)
            if not folder.is_dir():
                raise UserError("checkpoint folder not found", where="train.resume")
        elif checkpoint.latest(self.ckpt_root) is not None:
            raise UserError(f"{self.ckpt_root} already holds checkpoints: continue with --resume auto, "
                            "or choose another train.output_dir", where="train.output_dir")
        if folder is None:
            return
        state = checkpoint.load(self.engine, folder, verified=verified, trainable_only=self.cfg.model.lora is not None)
        try:
            self.sampler.load_state_dict(state["sampler"])
            self.start_step = int(state["step"])
            self.bad_in_row, self.skipped_total = int(state["bad_in_row"]), int(state["skipped_total"])
        except ValueError as e:  # the sampler's own message: prompts that differ from the checkpoint's
            raise UserError(str(e), where=str(folder / "trainer_state.json")) from None
        except (TypeError, KeyError) as e:
            raise UserError(f"damaged trainer state ({type(e).__name__}: {e})",
                            where=str(folder / "trainer_state.json")) from None
        if dist.is_main():
            print(f"srmir: resumed from {folder} at step {self.start_step}", flush=True)

    # ------------------------------------------------------------------------------- train

    def train(self) -> Path:
        """Run the remaining steps, checkpointing every ``save_every`` and at the end; export the policy."""
        t = self.cfg.train
        saved = self.start_step
        try:
            for step in range(self.start_step + 1, t.steps + 1):
                self.metrics.log(step, self.step(step))
                if t.save_every and step % t.save_every == 0:
                    self.save_checkpoint(step)
                    saved = step
                if dist.any_rank(self.stop_requested, self.device):
                    folder = self.save_checkpoint(step) if saved != step else checkpoint.step_dir(self.ckpt_root, step)
                    raise Stopped(step, folder)
            if saved != t.steps:
                self.save_checkpoint(t.steps)
            return self.cleanup()
        finally:
            self.metrics.close()
            signal.signal(signal.SIGTERM, self._old_sigterm)

    def step(self, step: int) -> dict:
        """One GRPO step; returns its metrics (the same dict on every rank)."""
        cfg, timer = self.cfg, _PhaseTimer(self.device)
        records = self.sampler.draw(cfg.rollout.prompts_per_step)
        samples = [r for r in records for _ in range(self.group_size)]  # each group's G rows consecutive
        mine = samples[self.rank * self.n_local:(self.rank + 1) * self.n_local]

        with timer("generate"):
            rollout = self._generate([r["prompt"] for r in mine])
        with timer("score"):
            scores_nH = torch.as_tensor(score_heads(self.reward_fn, [r["prompt"] for r in mine], rollout.completions),
                                        dtype=torch.float32).to(self.device)
            scores_NH = dist.all_gather_rows(scores_nH)  # before any statistic: groups may span ranks
            rewards_N, infinite = self._rewards(scores_NH, samples)
            refused_N = self._refused(rollout)
            rewards_N = self._refusal_penalty(rewards_N, refused_N, samples)
            advantages_N = algos.group_advantages(rewards_N, self.group_size, scale=cfg.grpo.adv_scale)
        metrics = self._rollout_metrics(samples, scores_NH, rewards_N, advantages_N, rollout, refused_N)
        # NaN = unscored (DESIGN): left out of the group statistics, advantage 0, training goes on.
        # ±inf, or nothing scored at all, is a broken reward: the step is skipped. Both checks see
        # the gathered tensor, so every rank decides alike.
        if infinite or bool(torch.isnan(rewards_N).all()):
            metrics.update(timer.metrics(tokens=metrics["completion/tokens"]))
            why = "±inf" if infinite else "no sample was scored"
            return self._skip(step, metrics, f"a non-finite reward ({why})")

        with timer("logprobs"):
            inputs = [self._logprob_inputs(rollout.select(rows)) for rows in self._micro_batches()]
            old_logp, ref_logp = self._frozen_logprobs(inputs)
        num_tokens = dist.all_reduce_sum(rollout.completion_mask_BC.sum().float()).item()
        mine_adv = advantages_N[self.rank * self.n_local:(self.rank + 1) * self.n_local]
        batch = StepBatch(rollout, inputs, mine_adv, old_logp, ref_logp, num_tokens, self.n_global)
        with timer("update"):
            ok, update_metrics = self._update(batch)
        metrics.update(update_metrics)
        metrics.update(timer.metrics(tokens=metrics["completion/tokens"]))
        if not ok:
            return self._skip(step, metrics, "a non-finite loss")
        self.bad_in_row = 0
        return metrics

    # ---------------------------------------------------------------------------- phases

    def _generate(self, prompts: list[str]) -> Rollout:
        r = self.cfg.rollout
        with gathered_for_generation(self.engine, self.zero_stage) as model:
            return generate(model, self.encoder, prompts, max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                            top_p=r.top_p, top_k=r.top_k, eos_ids=self.eos_ids, pad_id=self.pad_id)

    def _rewards(self, scores_NH: torch.Tensor, samples: list[dict]) -> tuple[torch.Tensor, bool]:
        """[N, H] scores → [N] rewards through the routing rule (``rewards.route``, shared with the
        eval judge), and whether an ±inf score entered them (combined, inf − inf or 0·inf would
        turn into NaN and pass for "unscored")."""
        from ..rewards.combine import route

        routed = route(scores_NH, self.rm_heads, [s["category"] for s in samples], self.cfg.rewards.strategy,
                       None if self.reward_w is None else self.reward_w.to(self.device))
        return routed.rewards_N, routed.nonfinite

    def _refused(self, rollout: Rollout) -> torch.Tensor:
        """[N] 1.0 where the phrase tier (:func:`~srmir.eval.judges.is_refusal`) calls a completion a
        refusal, gathered over ranks: for the benign-refusal penalty and the behaviour metrics."""
        from ..eval.judges import is_refusal

        refused_n = torch.tensor([float(is_refusal(t)) for t in rollout.completions], device=self.device)
        return dist.all_gather_rows(refused_n)

    def _refusal_penalty(self, rewards_N: torch.Tensor, refused_N: torch.Tensor, samples: list[dict]) -> torch.Tensor:
        """``rewards.benign_refusal_penalty`` off the reward of each refusal of a benign prompt;
        unscored (NaN) rewards stay NaN."""
        penalty = self.cfg.rewards.benign_refusal_penalty
        if not penalty:
            return rewards_N
        benign_N = torch.tensor([s["category"] == BENIGN for s in samples], device=rewards_N.device)
        return rewards_N - penalty * (refused_N.to(rewards_N) * benign_N)

    def _logprob_inputs(self, micro: Rollout) -> LogprobInputs:
        """This micro-batch's model inputs, shared by the reference, old and live passes."""
        t = self.cfg.train
        return logprob_inputs(micro.prompt_ids_BP, micro.prompt_mask_BP, micro.completion_ids_BC,
                              micro.completion_mask_BC, share_prompt=self.share_prompt,
                              attn_implementation=self.attn_implementation,
                              max_len=t.pack_max_len, pad_id=self.pad_id, dtype=build.DTYPES[self.cfg.model.dtype])

    @torch.no_grad()
    def _frozen_logprobs(self, inputs: list[LogprobInputs]) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Old-policy log-probs (only when μ > 1: with μ = 1 they equal the live ones, detached) and
        reference log-probs (only when β > 0), micro-batch by micro-batch, completion tokens only."""
        need_old, old, ref = self.cfg.grpo.num_iterations > 1, [], []
        args = (self.cfg.rollout.temperature, self.cfg.train.logprob_backend)
        for micro in inputs:
            if need_old:
                old.append(completion_logprobs(self.engine, self.lm_head, micro, *args, transform=self.transform)[0])
            if self.ref is not None:
                ref.append(completion_logprobs(self.ref, self.ref_head, micro, *args, transform=self.ref_transform)[0])
        if self.ref_is_base:  # LoRA: the same engine with its adapters off (no second model)
            with runtime.lora.adapters_disabled(self.engine), own_zero3_trace(self.engine):
                head = runtime.lora.output_head(self.engine)  # a head trained fully: its original
                ref = [completion_logprobs(self.engine, head, micro, *args, transform=self.transform)[0]
                       for micro in inputs]
        return (torch.cat(old) if old else None), (torch.cat(ref) if ref else None)

    def _micro_batches(self) -> list[slice]:
        mb = self.cfg.train.micro_batch_size
        return [slice(s, s + mb) for s in range(0, self.n_local, mb)]

    def _update(self, batch: StepBatch) -> tuple[bool, dict]:
        """μ optimizer steps over the batch; returns (all applied, metrics).

        A non-finite loss on any rank poisons the rest of the step's accumulation with NaN, which
        DeepSpeed's overflow check (ZeRO optimizers, bf16/fp16 wrappers) turns into a skipped
        optimizer step: no weight, moment or lr-schedule change. A plain fp32 ZeRO-0 engine steps
        our AdamW directly, which is told to skip instead (and reports it as DeepSpeed's overflow,
        so the schedule does not advance there either). With μ > 1 a failure in iteration i
        leaves iterations < i applied and skips the rest: ``updates/applied`` and
        ``updates/skipped`` say how many, and the step counts as bad (toward max_bad_steps)."""
        g = self.cfg.grpo
        checks_overflow = self.zero_stage > 0 or self.engine.bfloat16_enabled() or self.engine.fp16_enabled()
        # sums over this rank: loss, Σm·kl, Σm·entropy, Σm (iteration 0); Σm·clipped, Σm (all iterations)
        sums = torch.zeros(6, device=self.device, dtype=torch.float64)
        bad, skipped_before = False, self.engine.skipped_steps
        for it in range(g.num_iterations):
            for rows in self._micro_batches():
                share, stats = self._micro_loss(batch, rows, first_iteration=it == 0)
                bad = dist.any_rank(bad or not bool(torch.isfinite(share)), self.device)
                scale = float("nan") if bad else float(self.world)
                self.engine.backward(share * scale, scale_wrt_gas=False)
                if bad and not checks_overflow and self.engine.is_gradient_accumulation_boundary():
                    assert isinstance(self.engine.optimizer, build.AdamW), type(self.engine.optimizer)
                    self.engine.optimizer.skip_next = True
                self.engine.step()
                sums += stats
        skipped_updates = self.engine.skipped_steps - skipped_before
        if bad and skipped_updates == 0:
            raise RuntimeError("DeepSpeed applied an update with non-finite gradients; "
                               "keep bf16.check_grad_overflow true in the DeepSpeed config")
        sums = dist.all_reduce_sum(sums)
        metrics = {
            "loss": sums[0].item() / g.num_iterations,
            "kl": sums[1].item() / max(sums[3].item(), 1.0),
            "entropy": sums[2].item() / max(sums[3].item(), 1.0),
            "clip_frac": sums[4].item() / max(sums[5].item(), 1.0),
            "lr": float(self.engine.get_lr()[0]),
            "grad_norm": _finite_or_none(self.engine.get_global_grad_norm()),
            "updates/applied": g.num_iterations - skipped_updates,
            "updates/skipped": skipped_updates,
        }
        return not bad, metrics

    def _micro_loss(self, batch: StepBatch, rows: slice, first_iteration: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """This micro-batch's share of the full-batch loss, and its metric sums."""
        g, micro = self.cfg.grpo, batch.inputs[rows.start // self.cfg.train.micro_batch_size]
        mask_BC = micro.completion_mask_BC
        logp_BC, entropy_BC = completion_logprobs(self.engine, self.lm_head, micro, self.cfg.rollout.temperature,
                                                  self.cfg.train.logprob_backend, with_entropy=first_iteration,
                                                  transform=self.transform)
        old_BC = batch.old_logp_nC[rows] if batch.old_logp_nC is not None else logp_BC.detach()
        adv_B1 = batch.advantages_n[rows, None].to(logp_BC.dtype)
        per_token_BC = algos.clipped_policy_loss(logp_BC, old_BC, adv_B1, g.eps_low, g.eps_high, g.dual_clip)
        kl_BC = None
        if batch.ref_logp_nC is not None:
            kl_BC = algos.kl_penalty(logp_BC, batch.ref_logp_nC[rows], g.kl_estimator)
            per_token_BC = per_token_BC + g.beta * kl_BC
        share = algos.aggregate_loss(per_token_BC, mask_BC, g.loss_agg, num_tokens=batch.num_tokens,
                                     max_len=self.cfg.rollout.max_new_tokens, num_seqs=batch.num_seqs)
        with torch.no_grad():
            m = mask_BC.double()
            ratio = torch.exp(logp_BC - old_BC)
            clipped = ((ratio < 1 - g.eps_low) | (ratio > 1 + g.eps_high)).double()
            first = float(first_iteration)
            stats = torch.stack([
                share.detach().double(),
                first * (kl_BC.double() * m).sum() if kl_BC is not None else m.new_zeros(()),
                first * (entropy_BC.double() * m).sum() if entropy_BC is not None else m.new_zeros(()),
                first * m.sum(),
                (clipped * m).sum(),
                m.sum(),
            ])
        return share, stats

    def _skip(self, step: int, metrics: dict, reason: str) -> dict:
        self.bad_in_row += 1
        self.skipped_total += 1
        metrics.update(skipped=1, skipped_total=self.skipped_total)
        msg = f"step {step}: skipped, {reason} ({self.bad_in_row} in a row)"
        if dist.is_main():
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        if self.bad_in_row >= self.cfg.train.max_bad_steps:
            last = checkpoint.latest(self.ckpt_root)
            raise UserError(f"{self.bad_in_row} steps in a row were skipped ({reason}): training has diverged; "
                            f"lower train.lr or grpo.beta, or check the reward model"
                            + (f"; the last good checkpoint is {last}" if last else ""), where="train.max_bad_steps")
        return metrics

    # --------------------------------------------------------------------------- metrics

    def _rollout_metrics(self, samples, scores_NH, rewards_N, advantages_N, rollout: Rollout,
                         refused_N: torch.Tensor) -> dict:
        lengths_N = dist.all_gather_rows(rollout.completion_mask_BC.sum(dim=1).float())
        truncated_N = dist.all_gather_rows(rollout.truncated_B.float())
        finite = torch.isfinite(rewards_N)
        m = {
            "reward/mean": _mean(rewards_N[finite]),
            "reward/std": rewards_N[finite].std().item() if finite.sum() > 1 else 0.0,
            "reward/unscored_frac": torch.isnan(rewards_N).float().mean().item(),
            "zero_var_groups": algos.zero_variance_fraction(rewards_N, self.group_size),
            "adv/mean": advantages_N.mean().item(), "adv/std": advantages_N.std().item(),
            "adv/min": advantages_N.min().item(), "adv/max": advantages_N.max().item(),
            "completion/len_mean": lengths_N.mean().item(), "completion/len_max": lengths_N.max().item(),
            "completion/truncated_frac": truncated_N.mean().item(), "completion/tokens": lengths_N.sum().item(),
            "skipped": 0, "skipped_total": self.skipped_total,
        }
        for k, slug in enumerate(self.rm_heads):
            column = scores_NH[:, k]
            m[f"reward/rm/{slug}"] = _mean(column[torch.isfinite(column)])
        categories = [s["category"] for s in samples]
        for slug in dict.fromkeys(categories):
            rows = torch.tensor([c == slug for c in categories], device=rewards_N.device)
            m[f"reward/category/{slug}"] = _mean(rewards_N[rows & finite])
        m.update(self._behavior_metrics(categories, rollout, refused_N))
        return m

    def _behavior_metrics(self, categories: list[str], rollout: Rollout, refused_N: torch.Tensor) -> dict:
        """Signs of reward hacking, every step: refusal on harmful and on benign prompts (the cheap
        phrase-list judge of ``srmir eval``), the share of repetitive completions (a word 4-gram
        3+ times), distinct-2 and the length in words — the same functions the eval report uses."""
        from ..textstats import distinct_n, is_repetitive, word_count

        flags_n2 = torch.tensor([[is_repetitive(t), word_count(t)] for t in rollout.completions],
                                dtype=torch.float32, device=self.device).reshape(-1, 2)
        flags_N3 = torch.cat([refused_N[:, None], dist.all_gather_rows(flags_n2)], dim=1)
        texts = [t for part in dist.all_gather_objects(rollout.completions) for t in part]
        benign_N = torch.tensor([c == BENIGN for c in categories], device=self.device)
        m = {"refusal/harmful": _mean(flags_N3[~benign_N, 0]), "refusal/benign": _mean(flags_N3[benign_N, 0]),
             "degen/repetitive": _mean(flags_N3[:, 1]), "degen/distinct2": distinct_n(texts, 2),
             "completion/len_words": _mean(flags_N3[:, 2])}
        for slug in dict.fromkeys(c for c in categories if c != BENIGN):
            rows = torch.tensor([c == slug for c in categories], device=self.device)
            m[f"refusal/category/{slug}"] = _mean(flags_N3[rows, 0])
        return m

    # ------------------------------------------------------------------ checkpoint / cleanup

    def save_checkpoint(self, step: int) -> Path:
        state = {"sampler": self.sampler.state_dict(), "bad_in_row": self.bad_in_row,
                 "skipped_total": self.skipped_total}
        folder = checkpoint.save(self.engine, self.ckpt_root, step, state, keep=self.cfg.train.keep_checkpoints,
                                 trainable_only=self.cfg.model.lora is not None)
        self.metrics.write(f"srmir: checkpoint {folder}")
        return folder

    def cleanup(self) -> Path:
        """Export the final policy (an HF folder; with LoRA the adapter folder, and the merged HF folder
        when train.export_merged), plot the reward curves, close the logs."""
        m, t = self.cfg.model, self.cfg.train
        runtime.lora.hf_model(self.engine).config.use_cache = True
        if m.lora is not None:  # policy/ = the adapter; policy_merged/ = adapter merged into the base
            policy_dir = build.export_adapter(
                self.engine, self.tokenizer, self.output_dir / "policy", base_path=self.policy_path, dtype=m.dtype,
                attn=m.attn_implementation, trust_remote_code=m.trust_remote_code,
                merged_dir=self.output_dir / "policy_merged" if t.export_merged else None)
        else:
            policy_dir = build.export_policy(self.engine, self.tokenizer, self.output_dir / "policy", self.zero_stage)
        if dist.is_main():
            plot_rewards(self.metrics.path, self.output_dir / "rewards.png")
            trend = reward_trend([r for r in read_metrics(self.metrics.path) if "step" in r])
            if trend:
                print("\n".join(["reward, first vs last third of the run:", *format_trend(trend)]), flush=True)
        return policy_dir


# ------------------------------------------------------------------------------------ helpers


class _PhaseTimer:
    """Wall time per phase (CUDA synchronised at the edges), plus tokens/s and peak memory."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.start = device, {}, time.perf_counter()

    @contextmanager
    def __call__(self, name: str):
        self._sync()
        t0 = time.perf_counter()
        yield
        self._sync()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def metrics(self, tokens: float) -> dict:
        total = time.perf_counter() - self.start
        out = {f"time/{k}": v for k, v in self.times.items()}
        out["time/step"] = total
        out["tokens_per_s"] = tokens / total if total > 0 else 0.0
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**30
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB (Linux)
        out["mem/peak_gb"] = dist.all_reduce_max(torch.tensor([peak], device=self.device)).item()
        return out


def _quiet_libraries() -> None:
    """Keep the console to our progress bar: DeepSpeed's ZeRO-3 calls a torch collective that warns
    on every call, and transformers draws a progress bar for every load and save."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _model_config(path: str, trust_remote_code: bool):
    from transformers import AutoConfig

    if runtime.lora.is_adapter_dir(path):  # a LoRA run's policy/: the adapter merged into its base
        path = runtime.lora.adapter_base(path)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read a model config from {path!r}: {str(e).strip().splitlines()[0]}",
                        where="model.policy") from None


def _unwrap(model):
    """The HF model inside a DeepSpeed engine (or the model itself)."""
    return getattr(model, "module", model)


def _base_reference(reference: str, resolved: str) -> str:
    """What an exported adapter names as its base: an absolute path for a local folder (loadable
    offline by srmir and peft alike; the embedded SmolLM2 is its converted cache folder), else the
    hub id as given."""
    return os.path.abspath(resolved) if os.path.isdir(resolved) else reference


def _mean(x: torch.Tensor) -> Optional[float]:
    return x.float().mean().item() if x.numel() else None


def _finite_or_none(x) -> Optional[float]:
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None

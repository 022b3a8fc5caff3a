"""GRPO math: hand-computed cases, edge cases, a slow loop reference, and split invariance."""
import math

import pytest
import torch

from srmir.algos import (
    BENIGN,
    aggregate_loss,
    clip_fraction,
    clipped_policy_loss,
    combine_rewards,
    group_advantages,
    kl_penalty,
    route_rewards,
    zero_variance_fraction,
)

NAN = float("nan")


def close(a, b, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               atol=tol, rtol=tol)


# ------------------------------------------------------------------------- group_advantages


def test_group_advantages_hand_computed():
    # group [1, 2, 3]: mean 2, unbiased std sqrt(((-1)² + 0 + 1²) / 2) = 1  -> A = [-1, 0, 1]
    close(group_advantages(torch.tensor([1.0, 2.0, 3.0]), 3, eps=0.0), [-1.0, 0.0, 1.0])
    # with eps = 1e-4 the denominator is 1.0001
    close(group_advantages(torch.tensor([1.0, 2.0, 3.0]), 3), [-1 / 1.0001, 0.0, 1 / 1.0001])


def test_group_advantages_two_groups_are_independent():
    # groups [0, 2] and [10, 14]: means 1 and 12, stds sqrt(2) and sqrt(8)
    adv = group_advantages(torch.tensor([0.0, 2.0, 10.0, 14.0]), 2, eps=0.0)
    close(adv, [-1 / math.sqrt(2), 1 / math.sqrt(2), -2 / math.sqrt(8), 2 / math.sqrt(8)])


def test_group_advantages_batch_scale():
    # group means 1 and 12 -> centred [-1, 1, -2, 2]; batch std of [0, 2, 10, 14]:
    # mean 6.5, squared deviations 42.25 + 20.25 + 12.25 + 56.25 = 131, / 3 -> std sqrt(43.667) = 6.6081
    adv = group_advantages(torch.tensor([0.0, 2.0, 10.0, 14.0]), 2, scale="batch", eps=0.0)
    s = math.sqrt(131 / 3)
    close(adv, [-1 / s, 1 / s, -2 / s, 2 / s])


def test_group_advantages_no_scale_is_centred_reward():
    close(group_advantages(torch.tensor([0.0, 2.0, 10.0, 14.0]), 2, scale="none"), [-1.0, 1.0, -2.0, 2.0])


def test_zero_variance_group_is_exactly_zero():
    adv = group_advantages(torch.tensor([5.0, 5.0, 5.0, 1.0, 2.0, 3.0]), 3)
    assert torch.equal(adv[:3], torch.zeros(3))  # exactly 0, not 0/eps noise
    assert torch.isfinite(adv).all()
    assert zero_variance_fraction(torch.tensor([5.0, 5.0, 5.0, 1.0, 2.0, 3.0]), 3) == 0.5


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("value,g", [(0.7, 8), (17.1, 12), (-3.3, 5)])
def test_equal_rewards_give_exactly_zero_in_every_scale_mode(value, g, scale):
    # float32 means of these groups are inexact (0.7 × 8 / 8 ≠ 0.7 in float32 arithmetic):
    # before the fix A was 6.0e-4 (G=8, 0.7) and 1.9e-2 (G=12, 17.1), all of one sign
    rewards = torch.cat([torch.full((g,), value), torch.arange(g, dtype=torch.float32)])  # + a group with signal
    adv = group_advantages(rewards, g, scale=scale)
    assert torch.equal(adv[:g], torch.zeros(g))
    assert adv[g:].abs().sum() > 0


def test_nan_rewards_are_unscored():
    # [1, nan, 3]: the NaN is left out -> mean 2, std sqrt(((-1)² + 1²) / 1) = sqrt(2); NaN gets 0
    adv = group_advantages(torch.tensor([1.0, NAN, 3.0]), 3, eps=0.0)
    close(adv, [-1 / math.sqrt(2), 0.0, 1 / math.sqrt(2)])


def test_group_with_fewer_than_two_finite_rewards_gets_zero():
    adv = group_advantages(torch.tensor([NAN, 7.0, NAN, NAN, NAN, NAN, 1.0, 2.0, 3.0]), 3)
    assert torch.equal(adv[:6], torch.zeros(6))
    assert adv[6] < 0 < adv[8]
    assert zero_variance_fraction(torch.tensor([NAN, 7.0, NAN, 1.0, 2.0, 3.0]), 3) == 0.5


def test_batch_scale_ignores_nan():
    adv = group_advantages(torch.tensor([0.0, 2.0, NAN, 10.0, 14.0, NAN]), 3, scale="batch", eps=0.0)
    s = math.sqrt(131 / 3)
    close(adv, [-1 / s, 1 / s, 0.0, -2 / s, 2 / s, 0.0])


def test_equal_finite_rewards_beside_nan_are_zero():
    adv = group_advantages(torch.tensor([0.7, NAN, 0.7, 0.7]), 4)
    assert torch.equal(adv, torch.zeros(4))


def test_group_advantages_rejects_bad_shapes():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.ones(4), 3)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.ones(2, 3), 3)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.ones(3), 3, scale="rank")


def _advantages_loop(rewards, g, scale, eps):
    """Slow reference: one group at a time, plain Python floats."""
    r = rewards.tolist()
    finite_all = [x for x in r if math.isfinite(x)]
    mu_all = sum(finite_all) / len(finite_all) if finite_all else 0.0
    batch_std = math.sqrt(sum((x - mu_all) ** 2 for x in finite_all) / (len(finite_all) - 1)) if len(finite_all) > 1 else 0.0
    out = []
    for start in range(0, len(r), g):
        grp = r[start:start + g]
        fin = [x for x in grp if math.isfinite(x)]
        if len(fin) < 2:
            out += [0.0] * g
            continue
        mu = sum(fin) / len(fin)
        std = math.sqrt(sum((x - mu) ** 2 for x in fin) / (len(fin) - 1))
        for x in grp:
            if not math.isfinite(x):
                out.append(0.0)
            elif scale == "group":
                out.append((x - mu) / (std + eps))
            elif scale == "batch":
                out.append((x - mu) / (batch_std + eps))
            else:
                out.append(x - mu)
    return torch.tensor(out)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_loop_reference(scale):
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        g = int(torch.randint(2, 6, (1,), generator=gen))
        r = torch.randn(g * 5, generator=gen, dtype=torch.float64)
        r[torch.rand(r.shape, generator=gen) < 0.2] = NAN
        r[:g] = 3.0  # one zero-variance group every time
        got = group_advantages(r, g, scale=scale)
        close(got, _advantages_loop(r, g, scale, 1e-4), tol=1e-5)


# ---------------------------------------------------------------------------------- kl_penalty


def test_kl_estimators_hand_computed():
    # logp = log 0.5, ref = log 0.25: d = logp - ref = log 2 = 0.693147
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    d = math.log(2)
    close(kl_penalty(logp, ref, "k1"), [d])
    close(kl_penalty(logp, ref, "k2"), [0.5 * d * d])  # 0.240227
    close(kl_penalty(logp, ref, "k3"), [0.5 + d - 1])  # exp(-d) - (-d) - 1 = 0.193147
    assert kl_penalty(logp, logp, "k3").item() == 0.0
    with pytest.raises(ValueError, match="estimator"):
        kl_penalty(logp, ref, "k4")


def test_k3_is_nonnegative_and_has_zero_gradient_at_reference():
    x = torch.randn(100) * 3
    assert (kl_penalty(x, torch.randn(100), "k3") >= 0).all()
    logp = torch.zeros(3, requires_grad=True)
    kl_penalty(logp, torch.zeros(3), "k3").sum().backward()
    assert torch.equal(logp.grad, torch.zeros(3))


def test_k3_log_ratio_is_clamped_so_a_far_token_stays_finite():
    # ref − logp = 100: exp(100) is inf in float32; clamped at 20 the penalty is exp(20) − 20 − 1
    logp = torch.tensor([-110.0, -1.0], requires_grad=True)
    ref = torch.tensor([-10.0, -1.5])
    kl = kl_penalty(logp, ref, "k3")
    assert torch.isfinite(kl).all()
    close(kl[0], math.exp(20) - 21, tol=1e-3)
    kl.sum().backward()
    assert logp.grad[0].item() == 0.0  # past the clamp the token pushes no KL gradient
    # within the clamp: d/dlogp [exp(ref−logp) − (ref−logp) − 1] = 1 − exp(ref − logp) = 1 − e^{-0.5}
    close(logp.grad[1], 1 - math.exp(-0.5))


# ------------------------------------------------------------------------- clipped_policy_loss


def test_clipped_loss_hand_computed():
    # ratios [1.5, 0.5, 1.0]
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
    old = torch.zeros(1, 3)
    # A = +1: token 1 -> max(-1.5, -1.2) = -1.2 (clipped), token 2 -> max(-0.5, -0.8) = -0.5, token 3 -> -1
    close(clipped_policy_loss(logp, old, torch.tensor([[1.0]])), [[-1.2, -0.5, -1.0]])
    # A = -1: token 1 -> max(1.5, 1.2) = 1.5, token 2 -> max(0.5, 0.8) = 0.8, token 3 -> 1
    close(clipped_policy_loss(logp, old, torch.tensor([[-1.0]])), [[1.5, 0.8, 1.0]])
    # dual clip c = 1.3 caps the A < 0 loss at -c·A = 1.3: token 1 -> min(1.5, 1.3) = 1.3
    close(clipped_policy_loss(logp, old, torch.tensor([[-1.0]]), dual_clip=1.3), [[1.3, 0.8, 1.0]])
    # dual clip leaves A > 0 alone
    close(clipped_policy_loss(logp, old, torch.tensor([[1.0]]), dual_clip=1.3), [[-1.2, -0.5, -1.0]])
    # asymmetric clip (DAPO clip-higher): eps_high 0.6 lets ratio 1.5 through for A > 0
    close(clipped_policy_loss(logp, old, torch.tensor([[1.0]]), eps_high=0.6), [[-1.5, -0.5, -1.0]])


def test_clipped_loss_gradient_vanishes_when_clipped():
    logp = torch.log(torch.tensor([[1.5, 1.1]])).requires_grad_()
    clipped_policy_loss(logp, torch.zeros(1, 2), torch.tensor([[1.0]])).sum().backward()
    # token 1 is clipped (no gradient); token 2: d(-ρ)/dlogp = -ρ = -1.1
    close(logp.grad, [[0.0, -1.1]])


def test_clip_fraction():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0, 1.1]]))
    mask = torch.tensor([[1, 1, 1, 0]])
    close(clip_fraction(logp, torch.zeros(1, 4), mask), 2 / 3)


# ------------------------------------------------------------------------------ aggregate_loss

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_aggregate_hand_computed():
    # rows: mean(1, 2) = 1.5 and mean(4) = 4 -> (1.5 + 4) / 2 = 2.75
    close(aggregate_loss(PER_TOKEN, MASK, "seq_mean_token_mean"), 2.75)
    # token mean: (1 + 2 + 4) / 3 tokens
    close(aggregate_loss(PER_TOKEN, MASK, "token_mean"), 7 / 3)
    close(aggregate_loss(PER_TOKEN, MASK, "token_mean", num_tokens=7), 1.0)
    # Dr. GRPO: 7 / (B · max_len) = 7 / (2 · 3); with max_len 4: 7 / 8
    close(aggregate_loss(PER_TOKEN, MASK, "seq_mean_token_sum_norm"), 7 / 6)
    close(aggregate_loss(PER_TOKEN, MASK, "seq_mean_token_sum_norm", max_len=4), 7 / 8)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate_loss(PER_TOKEN, MASK, "sum")


def test_aggregate_all_masked_rows():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    # the empty row contributes 0 but still counts as a sequence: (1.5 + 0) / 2
    close(aggregate_loss(PER_TOKEN, mask, "seq_mean_token_mean"), 0.75)
    assert aggregate_loss(PER_TOKEN, torch.zeros(2, 3), "token_mean").item() == 0.0
    assert aggregate_loss(PER_TOKEN, torch.zeros(2, 3), "seq_mean_token_mean").item() == 0.0


@pytest.mark.parametrize("mode", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
def test_split_into_ranks_and_microbatches_equals_full_batch(mode):
    """2 fake ranks × 2 micro-batches with global normalisers == one big batch (loss and grads)."""
    gen = torch.Generator().manual_seed(1)
    B, T = 8, 6
    logp_full = torch.randn(B, T, generator=gen, dtype=torch.float64)
    old = logp_full + 0.1 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    ref = logp_full + 0.1 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    adv = torch.randn(B, 1, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([6, 1, 3, 0, 5, 2, 6, 4])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()

    def per_token(lp, o, r, a):
        return clipped_policy_loss(lp, o, a) + 0.04 * kl_penalty(lp, r)

    x_full = logp_full.clone().requires_grad_()
    full = aggregate_loss(per_token(x_full, old, ref, adv), mask, mode)
    full.backward()

    # global normalisers, computed once per step (what the trainer all-reduces)
    num_tokens, num_seqs, max_len = mask.sum().item(), B, T
    x_split = logp_full.clone().requires_grad_()
    total = 0.0
    for rank in range(2):
        for micro in range(2):
            rows = slice(rank * 4 + micro * 2, rank * 4 + micro * 2 + 2)
            # each micro-batch is trimmed to its own longest completion, as the trainer does
            t_local = max(int(lengths[rows].max()), 1)
            lp = x_split[rows, :t_local]
            loss = aggregate_loss(per_token(lp, old[rows, :t_local], ref[rows, :t_local], adv[rows]),
                                  mask[rows, :t_local], mode, num_tokens=num_tokens, max_len=max_len,
                                  num_seqs=num_seqs)
            loss.backward()
            total += loss.item()
    assert abs(total - full.item()) < 1e-12
    torch.testing.assert_close(x_split.grad, x_full.grad, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- combine_rewards


def test_combine_rewards_hand_computed():
    scores = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    close(combine_rewards(scores, "linear"), [1.5, 3.5, 5.5])  # uniform 1/K
    close(combine_rewards(scores, "linear", weights=[1.0, 0.0]), [1.0, 3.0, 5.0])
    close(combine_rewards(scores, "linear", weights=[0.25, 0.75]), [1.75, 3.75, 5.75])
    close(combine_rewards(scores, "categorized", categories=[1, 0, 1]), [2.0, 3.0, 6.0])


def test_combine_rewards_errors_and_nan():
    scores = torch.tensor([[1.0, NAN], [3.0, 4.0]])
    out = combine_rewards(scores, "categorized", categories=[0, 1])
    close(out, [1.0, 4.0])
    assert torch.isnan(combine_rewards(scores, "linear")[0])
    with pytest.raises(ValueError, match="K=2"):
        combine_rewards(scores, "linear", weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="category index"):
        combine_rewards(scores, "categorized")
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        combine_rewards(scores, "categorized", categories=[0, 2])
    with pytest.raises(ValueError, match="strategy"):
        combine_rewards(scores, "max")


# ----------------------------------------------------------------------------- route_rewards


def test_route_rewards_hand_computed():
    # K = 2 harm RMs; rows: harmful of category 0, harmful of category 1, benign
    s = torch.tensor([[1.0, 3.0], [2.0, 0.0], [5.0, 5.0]])
    cols, h = [0, 1, BENIGN], torch.tensor([9.0, 9.0, 7.0])
    close(route_rewards(s, cols, "linear", helpful_N=h), [2.0, 1.0, 7.0])  # (1+3)/2, (2+0)/2, h
    close(route_rewards(s, cols, "categorized", helpful_N=h), [1.0, 0.0, 7.0])  # s[0,0], s[1,1], h
    close(route_rewards(s, cols, "linear", weights=[0.25, 0.75], helpful_N=h), [2.5, 0.5, 7.0])


def test_route_rewards_zero_weight_and_missing_helpfulness():
    s = torch.tensor([[1.0, float("nan")], [2.0, float("inf")]])
    # an RM of weight 0 takes no part: its NaN and inf do not reach the reward
    close(route_rewards(s, [0, 1], "linear", weights=[1.0, 0.0]), [1.0, 2.0])
    # a benign row without a helpfulness RM is unscored (NaN), a harmful one is not
    out = route_rewards(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), [BENIGN, 1], "categorized")
    assert torch.isnan(out[0]) and out[1].item() == 4.0
    with pytest.raises(ValueError, match="columns"):
        route_rewards(s, [0, 2], "categorized")
    with pytest.raises(ValueError, match="strategy"):
        route_rewards(s, [0, 1], "max")

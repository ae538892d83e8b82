"""PPO's pure tensor functions (rlhfkit.algorithms.ppo) on hand-worked numbers.

Every expected number below is worked out by hand (the arithmetic is in the comments),
never by calling the function under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.algorithms.logprobs import entropy_from_logits
from rlhfkit.algorithms.ppo import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    kl_estimate,
    masked_mean,
    masked_var,
    masked_whiten,
    shaped_rewards,
)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, t(expected), atol=atol, rtol=0)


# ---------------------------------------------------------------- GAE
#
# The 4-token example used throughout:
#   rewards r = [0.1, -0.2, 0.0, 1.0]    values V = [0.5, 0.25, 0.75, 0.5]
# The state after the last token is terminal (V = 0).
R4 = [0.1, -0.2, 0.0, 1.0]
V4 = [0.5, 0.25, 0.75, 0.5]

# gamma = 1, lam = 0.95 (gamma * lam = 0.95):
#   delta_3 = 1.0  + 1 * 0     - 0.5  =  0.5
#   delta_2 = 0.0  + 1 * 0.5   - 0.75 = -0.25
#   delta_1 = -0.2 + 1 * 0.75  - 0.25 =  0.3
#   delta_0 = 0.1  + 1 * 0.25  - 0.5  = -0.15
#   A_3 = 0.5
#   A_2 = -0.25 + 0.95 * 0.5     = 0.225
#   A_1 = 0.3   + 0.95 * 0.225   = 0.3 + 0.21375   = 0.51375
#   A_0 = -0.15 + 0.95 * 0.51375 = -0.15 + 0.4880625 = 0.3380625
#   returns = A + V = [0.8380625, 0.76375, 0.975, 1.0]
ADV_G1 = [0.3380625, 0.51375, 0.225, 0.5]
RET_G1 = [0.8380625, 0.76375, 0.975, 1.0]

# gamma = 0.9, lam = 0.5 (gamma * lam = 0.45):
#   delta_3 = 1.0  + 0.9 * 0    - 0.5  =  0.5
#   delta_2 = 0.0  + 0.9 * 0.5  - 0.75 = 0.45 - 0.75         = -0.3
#   delta_1 = -0.2 + 0.9 * 0.75 - 0.25 = -0.2 + 0.675 - 0.25 =  0.225
#   delta_0 = 0.1  + 0.9 * 0.25 - 0.5  = 0.1 + 0.225 - 0.5   = -0.175
#   A_3 = 0.5
#   A_2 = -0.3   + 0.45 * 0.5     = -0.3 + 0.225       = -0.075
#   A_1 = 0.225  + 0.45 * -0.075  = 0.225 - 0.03375    =  0.19125
#   A_0 = -0.175 + 0.45 * 0.19125 = -0.175 + 0.0860625 = -0.0889375
#   returns = A + V = [0.4110625, 0.44125, 0.675, 1.0]
ADV_G09 = [-0.0889375, 0.19125, -0.075, 0.5]
RET_G09 = [0.4110625, 0.44125, 0.675, 1.0]

CASES = [(1.0, 0.95, ADV_G1, RET_G1), (0.9, 0.5, ADV_G09, RET_G09)]


@pytest.mark.parametrize(("gamma", "lam", "adv", "ret"), CASES)
def test_gae_four_tokens_no_mask(gamma, lam, adv, ret) -> None:
    a, r = gae(t([R4]), t([V4]), t([[1, 1, 1, 1]]), gamma=gamma, lam=lam)
    close(a, [adv])
    close(r, [ret])


def test_gae_defaults_are_gamma_1_lambda_095() -> None:
    a, _ = gae(t([R4]), t([V4]), t([[1, 1, 1, 1]]))
    close(a, [ADV_G1])


def test_gae_limits_lambda_1_is_reward_to_go_and_lambda_0_is_td_error() -> None:
    # gamma = lam = 1: returns = sum of future rewards = [0.9, 0.8, 1.0, 1.0]
    _, r = gae(t([R4]), t([V4]), t([[1, 1, 1, 1]]), gamma=1.0, lam=1.0)
    close(r, [[0.9, 0.8, 1.0, 1.0]])
    # lam = 0: A_t = delta_t (gamma = 1, deltas above)
    a, _ = gae(t([R4]), t([V4]), t([[1, 1, 1, 1]]), gamma=1.0, lam=0.0)
    close(a, [[-0.15, 0.3, -0.25, 0.5]])


@pytest.mark.parametrize(("gamma", "lam", "adv", "ret"), CASES)
def test_gae_right_padding_is_zero_and_ignored(gamma, lam, adv, ret) -> None:
    # Row 0: the 4-token example then 2 pads with junk rewards / values.
    # Row 1: 3 real tokens r = [0.1, -0.2, 0.7], V = [0.5, 0.25, 0.75], then 1 pad.
    rewards = t([[*R4, 9.0, -7.0], [0.1, -0.2, 0.7, 5.0, 0.0, 0.0]])
    values = t([[*V4, 3.0, 8.0], [0.5, 0.25, 0.75, 3.0, 0.0, 0.0]])
    mask = t([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
    a, r = gae(rewards, values, mask, gamma=gamma, lam=lam)
    if gamma == 1.0:
        # row 1, gamma = 1, lam = 0.95:
        #   delta_2 = 0.7 + 0 - 0.75 = -0.05;  delta_1 = 0.3;  delta_0 = -0.15 (as above)
        #   A_2 = -0.05
        #   A_1 = 0.3   + 0.95 * -0.05   = 0.3 - 0.0475      = 0.2525
        #   A_0 = -0.15 + 0.95 * 0.2525  = -0.15 + 0.239875  = 0.089875
        #   returns = [0.589875, 0.5025, 0.7]
        adv1, ret1 = [0.089875, 0.2525, -0.05], [0.589875, 0.5025, 0.7]
    else:
        # row 1, gamma = 0.9, lam = 0.5:
        #   delta_2 = 0.7 + 0 - 0.75 = -0.05;  delta_1 = 0.225;  delta_0 = -0.175 (as above)
        #   A_2 = -0.05
        #   A_1 = 0.225  + 0.45 * -0.05   = 0.225 - 0.0225    = 0.2025
        #   A_0 = -0.175 + 0.45 * 0.2025  = -0.175 + 0.091125 = -0.083875
        #   returns = [0.416125, 0.4525, 0.7]
        adv1, ret1 = [-0.083875, 0.2025, -0.05], [0.416125, 0.4525, 0.7]
    close(a, [[*adv, 0, 0], [*adv1, 0, 0, 0]])
    close(r, [[*ret, 0, 0], [*ret1, 0, 0, 0]])


@pytest.mark.parametrize(("gamma", "lam", "adv", "ret"), CASES)
def test_gae_steps_over_a_hole_in_the_mask(gamma, lam, adv, ret) -> None:
    # The 4 real tokens sit at positions 0, 1, 3, 4; position 2 is a hole (tool output)
    # with junk reward 100 and value -50; position 5 is padding. Skipping the hole, the
    # real tokens see exactly the 4-token example, so their numbers are those above.
    rewards = t([[0.1, -0.2, 100.0, 0.0, 1.0, 3.0]])
    values = t([[0.5, 0.25, -50.0, 0.75, 0.5, 4.0]])
    mask = t([[1, 1, 0, 1, 1, 0]])
    a, r = gae(rewards, values, mask, gamma=gamma, lam=lam)
    close(a, [[adv[0], adv[1], 0.0, adv[2], adv[3], 0.0]])
    close(r, [[ret[0], ret[1], 0.0, ret[2], ret[3], 0.0]])


def test_gae_accepts_an_integer_mask() -> None:
    a, _ = gae(t([R4]), t([V4]), torch.tensor([[1, 1, 1, 1]]))
    close(a, [ADV_G1])


# ---------------------------------------------------------------- KL estimators
#
# Token a sampled from pi with pi(a) = 0.5 and pi_ref(a) = 0.25:
#   log r = log(0.25 / 0.5) = -ln 2 = -0.6931472
#   k1 = -log r                = 0.6931472
#   k2 = (log r)^2 / 2         = 0.4804530 / 2 = 0.2402265
#   k3 = (r - 1) - log r       = -0.5 + 0.6931472 = 0.1931472
# pi(a) = 0.2, pi_ref(a) = 0.4:  log r = ln 2
#   k1 = -0.6931472 (negative: k1 can be)
#   k2 = 0.2402265
#   k3 = (2 - 1) - 0.6931472 = 0.3068528
# pi(a) = pi_ref(a): all three are 0.
LN2 = math.log(2.0)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("k1", [0.6931472, -0.6931472, 0.0]),
        ("k2", [0.2402265, 0.2402265, 0.0]),
        ("k3", [0.1931472, 0.3068528, 0.0]),
    ],
)
def test_kl_estimators_on_hand_values(kind, expected) -> None:
    logps = torch.log(t([[0.5, 0.2, 0.3]]))
    ref = torch.log(t([[0.25, 0.4, 0.3]]))
    close(kl_estimate(logps, ref, kind), [expected])


def test_kl_default_is_k1() -> None:
    logps, ref = torch.log(t([[0.5]])), torch.log(t([[0.25]]))
    close(kl_estimate(logps, ref), [[LN2]])


def test_kl_unknown_estimator_raises() -> None:
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(t([[0.0]]), t([[0.0]]), "k4")


def test_k2_and_k3_are_never_negative() -> None:
    g = torch.Generator().manual_seed(0)
    logps = torch.randn(64, 32, generator=g) * 3
    ref = torch.randn(64, 32, generator=g) * 3
    assert (kl_estimate(logps, ref, "k1") < 0).any()  # k1 can be negative ...
    assert (kl_estimate(logps, ref, "k2") >= 0).all()  # ... k2 and k3 cannot
    assert (kl_estimate(logps, ref, "k3") >= 0).all()


# Two categoricals on 3 outcomes: p = [0.5, 0.3, 0.2], q = [0.2, 0.3, 0.5].
# KL(p || q) = 0.5 ln(0.5/0.2) + 0.3 ln 1 + 0.2 ln(0.2/0.5)
#            = 0.5 ln 2.5 - 0.2 ln 2.5 = 0.3 * 0.9162907 = 0.2748872
P3, Q3, KL_PQ = [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], 0.2748872


def test_k3_is_unbiased_exact_expectation_and_monte_carlo() -> None:
    p, q = t(P3), t(Q3)
    # Exact expectation over a ~ p: sum_a p(a) k3(a) = KL(p || q).
    k3_each = kl_estimate(p.log(), q.log(), "k3")
    assert float((p * k3_each).sum()) == pytest.approx(KL_PQ, abs=1e-6)
    # Monte Carlo: samples from p (standard error ~ 0.2 / sqrt(200k) ~ 5e-4).
    g = torch.Generator().manual_seed(0)
    a = torch.multinomial(p, 200_000, replacement=True, generator=g)
    k1 = kl_estimate(p.log()[a], q.log()[a], "k1")
    k2 = kl_estimate(p.log()[a], q.log()[a], "k2")
    k3 = kl_estimate(p.log()[a], q.log()[a], "k3")
    assert float(k3.mean()) == pytest.approx(KL_PQ, abs=4e-3)
    assert float(k1.mean()) == pytest.approx(KL_PQ, abs=6e-3)
    # k2 is biased: E[k2] = 0.5 * (ln 2.5)^2 * (0.5 + 0.2) = 0.2938560, not 0.2749.
    assert float(k2.mean()) == pytest.approx(0.2938560, abs=4e-3)
    # k3's variance is lower than k1's.
    assert float(k3.var()) < float(k1.var())


# ---------------------------------------------------------------- shaped rewards


def test_shaped_rewards_score_on_last_unmasked_token_kl_penalty_elsewhere() -> None:
    # beta = 0.5; scores [2, -1, 4]
    # row 0: full mask, kl [0.1, 0.2, -0.1, 0.3]
    #   -> [-0.05, -0.1, 0.05, -0.15 + 2] = [-0.05, -0.1, 0.05, 1.85]
    # row 1: mask [1, 1, 0, 0], kl [0.5, 0.4, 9, 9]
    #   -> [-0.25, -0.2 - 1, 0, 0] = [-0.25, -1.2, 0, 0]
    # row 2: a hole, mask [1, 0, 1, 0], kl [0.2, 7, 0.6, 7]: last real token is 2
    #   -> [-0.1, 0, -0.3 + 4, 0] = [-0.1, 0, 3.7, 0]
    scores = t([2.0, -1.0, 4.0])
    kl = t([[0.1, 0.2, -0.1, 0.3], [0.5, 0.4, 9.0, 9.0], [0.2, 7.0, 0.6, 7.0]])
    mask = t([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 0]])
    out = shaped_rewards(scores, kl, mask, kl_coef=0.5)
    close(out, [[-0.05, -0.1, 0.05, 1.85], [-0.25, -1.2, 0.0, 0.0], [-0.1, 0.0, 3.7, 0.0]])


def test_shaped_rewards_with_zero_kl_coef_is_only_the_score() -> None:
    out = shaped_rewards(t([3.0]), t([[1.0, 2.0, 3.0]]), t([[1, 1, 0]]), kl_coef=0.0)
    close(out, [[0.0, 3.0, 0.0]])


# ---------------------------------------------------------------- masked statistics
#
# x = [[1, 2, 3, 100], [4, 5, -50, -50]], mask = [[1, 1, 1, 0], [1, 1, 0, 0]]
# masked values 1, 2, 3, 4, 5: mean 3; deviations -2 -1 0 1 2, squares sum 10
#   unbiased var = 10 / 4 = 2.5, biased var = 10 / 5 = 2.0
X = [[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, -50.0]]
M = [[1, 1, 1, 0], [1, 1, 0, 0]]


def test_masked_mean_and_var() -> None:
    x, m = t(X), t(M)
    assert float(masked_mean(x, m)) == pytest.approx(3.0)
    close(masked_mean(x, m, dim=1), [2.0, 4.5])  # (1+2+3)/3, (4+5)/2
    assert float(masked_var(x, m)) == pytest.approx(2.5)
    assert float(masked_var(x, m, unbiased=False)) == pytest.approx(2.0)


def test_masked_mean_of_an_empty_mask_is_zero() -> None:
    assert float(masked_mean(t([[5.0, 6.0]]), t([[0, 0]]))) == 0.0


def test_masked_whiten_padding_stays_zero_mean_0_var_1() -> None:
    # std = sqrt(2.5) = 1.5811388; (x - 3) / 1.5811388:
    #   -2 -> -1.2649111, -1 -> -0.6324555, 0 -> 0, 1 -> 0.6324555, 2 -> 1.2649111
    x, m = t(X), t(M)
    out = masked_whiten(x, m)
    close(out, [[-1.2649111, -0.6324555, 0.0, 0.0], [0.6324555, 1.2649111, 0.0, 0.0]], 1e-5)
    assert float(masked_mean(out, m)) == pytest.approx(0.0, abs=1e-6)
    assert float(masked_var(out, m)) == pytest.approx(1.0, abs=1e-5)


def test_masked_whiten_without_shifting_the_mean() -> None:
    # shift_mean=False adds the mean 3 back: 3 - 1.2649111 = 1.7350889, etc.; pads stay 0.
    out = masked_whiten(t(X), t(M), shift_mean=False)
    close(out, [[1.7350889, 2.3675445, 3.0, 0.0], [3.6324555, 4.2649111, 0.0, 0.0]], 1e-5)


# ---------------------------------------------------------------- clipped policy loss
#
# clip 0.2 (ratio kept in [0.8, 1.2]); loss_t = max(-A rho, -A clip(rho)):
#   t0: rho 1.5, A +1: max(-1.5, -1.2) = -1.2   clipped branch chosen
#   t1: rho 0.5, A +1: max(-0.5, -0.8) = -0.5   unclipped
#   t2: rho 1.5, A -2: max( 3.0,  2.4) =  3.0   unclipped
#   t3: rho 0.5, A -2: max( 1.0,  1.6) =  1.6   clipped branch chosen
#   t4: rho 1.1, A +1: inside the range: -1.1
#   t5: rho 0.9, A -1: inside the range:  0.9
#   t6: masked (rho 3, A 100)
#   loss = (-1.2 - 0.5 + 3.0 + 1.6 - 1.1 + 0.9) / 6 = 2.7 / 6 = 0.45;  clip fraction 2/6
RHO = [1.5, 0.5, 1.5, 0.5, 1.1, 0.9, 3.0]
ADV = [1.0, 1.0, -2.0, -2.0, 1.0, -1.0, 100.0]
PMASK = [1, 1, 1, 1, 1, 1, 0]


def policy_inputs():
    old = t([[-1.0, -2.0, -0.5, -3.0, -1.5, -0.7, -2.5]])
    logps = (old + torch.log(t([RHO]))).requires_grad_(True)
    return logps, old, t([ADV]), t([PMASK])


def test_clipped_policy_loss_hand_example() -> None:
    logps, old, adv, mask = policy_inputs()
    out = clipped_policy_loss(logps, old, adv, mask, clip=0.2)
    assert float(out.loss.detach()) == pytest.approx(0.45, abs=1e-6)
    assert float(out.clip_fraction) == pytest.approx(2 / 6, abs=1e-6)
    # Gradient w.r.t. log pi: 0 where the clipped branch is chosen, -A rho / 6 elsewhere:
    #   [0, -0.5, 3.0, 0, -1.1, 0.9, 0 (masked)] / 6
    out.loss.backward()
    close(logps.grad, [[0.0, -0.5 / 6, 3.0 / 6, 0.0, -1.1 / 6, 0.9 / 6, 0.0]], 1e-6)


def test_clipped_policy_loss_asymmetric_clip_high() -> None:
    # clip 0.2 low, 0.6 high: range [0.8, 1.6]. Only t0 changes: rho 1.5 is now inside,
    # loss_0 = -1.5 (not clipped). t3 is still clipped from below (0.5 -> 0.8): 1.6.
    #   loss = (-1.5 - 0.5 + 3.0 + 1.6 - 1.1 + 0.9) / 6 = 2.4 / 6 = 0.4;  clip fraction 1/6
    logps, old, adv, mask = policy_inputs()
    out = clipped_policy_loss(logps, old, adv, mask, clip=0.2, clip_high=0.6)
    assert float(out.loss.detach()) == pytest.approx(0.4, abs=1e-6)
    assert float(out.clip_fraction) == pytest.approx(1 / 6, abs=1e-6)


def test_clipped_policy_loss_at_ratio_one_is_minus_mean_advantage() -> None:
    # rho = 1 everywhere: loss = -mean A over masked = -(1 + 1 - 2 - 2 + 1 - 1) / 6 = 1/3
    old = t([[-1.0, -2.0, -0.5, -3.0, -1.5, -0.7, -2.5]])
    out = clipped_policy_loss(old.clone(), old, t([ADV]), t([PMASK]))
    assert float(out.loss.detach()) == pytest.approx(1 / 3, abs=1e-6)
    assert float(out.clip_fraction) == 0.0
    assert float(out.approx_kl) == pytest.approx(0.0, abs=1e-7)


def test_approx_kl_is_nonnegative_and_detached() -> None:
    logps, old, adv, mask = policy_inputs()
    out = clipped_policy_loss(logps, old, adv, mask)
    assert not out.approx_kl.requires_grad and not out.clip_fraction.requires_grad
    assert float(out.approx_kl) > 0


# The tokens were sampled from pi_old, so the k3 estimate of KL(pi_old || pi) from those
# samples is, with rho = pi / pi_old (Schulman 2020: x ~ q, r = p/q, k3 = (r - 1) - log r),
#     k3 = (rho - 1) - log rho = expm1(log_ratio) - log_ratio.
# (The reversed form (1/rho - 1) + log rho has mean chi^2(old || new) - KL(old || new).)
def test_approx_kl_is_k3_of_old_to_new_hand_values() -> None:
    # k3 = rho - 1 - ln rho:
    #   rho 1.5: 0.5 - 0.4054651 = 0.0945349   (t0, t2)
    #   rho 0.5: -0.5 + 0.6931472 = 0.1931472  (t1, t3)
    #   rho 1.1: 0.1 - 0.0953102 = 0.0046898   (t4)
    #   rho 0.9: -0.1 + 0.1053605 = 0.0053605  (t5)
    #   mean = (2 * 0.0945349 + 2 * 0.1931472 + 0.0046898 + 0.0053605) / 6
    #        = 0.5854145 / 6 = 0.0975691
    # (the reversed form would give 0.1280203: 1/rho - 1 + ln rho)
    logps, old, adv, mask = policy_inputs()
    out = clipped_policy_loss(logps, old, adv, mask)
    assert float(out.approx_kl) == pytest.approx(0.0975691, abs=1e-6)


def test_approx_kl_is_unbiased_for_kl_old_to_new_monte_carlo() -> None:
    # pi_old = P3, pi_new = Q3: KL(old || new) = 0.2748872 (see the k3 test);
    # the reversed estimator has mean chi^2 - KL = (0.25/0.2 + 0.09/0.3 + 0.04/0.5 - 1) - 0.2749
    #   = 0.63 - 0.2748872 = 0.3551128.
    old_p, new_p = t(P3), t(Q3)
    g = torch.Generator().manual_seed(1)
    a = torch.multinomial(old_p, 200_000, replacement=True, generator=g)[None, :]
    old, new = old_p.log()[a], new_p.log()[a]
    out = clipped_policy_loss(new, old, torch.zeros_like(new), torch.ones_like(new))
    assert float(out.approx_kl) == pytest.approx(KL_PQ, abs=4e-3)


# ---------------------------------------------------------------- clipped value loss
#
# clip 0.2; V_clip = V_old + clip(V - V_old, -0.2, 0.2); loss_t = max((V-R)^2, (V_clip-R)^2)
#   t0: V 1.0, V_old 0.5, R  1.0: V_clip 0.7; max(0,    0.09) = 0.09  clipped branch
#   t1: V 1.0, V_old 0.5, R  0.0: V_clip 0.7; max(1.0,  0.49) = 1.0
#   t2: V 0.6, V_old 0.5, R  1.0: inside;     max(0.16, 0.16) = 0.16  (tie: not counted)
#   t3: V 0.0, V_old 0.5, R -1.0: V_clip 0.3; max(1.0,  1.69) = 1.69  clipped branch
#   t4: masked (V 5, V_old 0, R -5)
#   loss = 0.5 * (0.09 + 1.0 + 0.16 + 1.69) / 4 = 0.5 * 0.735 = 0.3675; clip fraction 2/4
#   clip=None: 0.5 * (0 + 1.0 + 0.16 + 1.0) / 4 = 0.5 * 0.54 = 0.27


def value_inputs():
    values = t([[1.0, 1.0, 0.6, 0.0, 5.0]]).requires_grad_(True)
    return (
        values,
        t([[0.5, 0.5, 0.5, 0.5, 0.0]]),
        t([[1.0, 0.0, 1.0, -1.0, -5.0]]),
        t([[1, 1, 1, 1, 0]]),
    )


def test_clipped_value_loss_hand_example() -> None:
    values, old, returns, mask = value_inputs()
    out = clipped_value_loss(values, old, returns, mask, clip=0.2)
    assert float(out.loss.detach()) == pytest.approx(0.3675, abs=1e-6)
    assert float(out.clip_fraction) == pytest.approx(0.5)
    # d/dV: 0 on the clipped branch (t0, t3: V_clip saturated); (V - R) / 4 elsewhere:
    #   t1: 1.0 / 4 = 0.25;  t2: -0.4 / 4 = -0.1;  t4 masked: 0
    out.loss.backward()
    close(values.grad, [[0.0, 0.25, -0.1, 0.0, 0.0]])


def test_value_loss_without_clip_is_half_squared_error() -> None:
    values, old, returns, mask = value_inputs()
    out = clipped_value_loss(values, old, returns, mask, clip=None)
    assert float(out.loss.detach()) == pytest.approx(0.27, abs=1e-6)
    assert float(out.clip_fraction) == 0.0


def test_value_loss_with_a_large_clip_is_unclipped() -> None:
    values, old, returns, mask = value_inputs()
    out = clipped_value_loss(values, old, returns, mask, clip=10.0)
    assert float(out.loss.detach()) == pytest.approx(0.27, abs=1e-6)
    assert float(out.clip_fraction) == 0.0


# ---------------------------------------------------------------- entropy


def test_entropy_of_uniform_is_log_vocab() -> None:
    out = entropy_from_logits(torch.zeros(2, 3, 7))
    close(out, torch.full((2, 3), math.log(7)).tolist())


def test_entropy_of_one_hot_is_about_zero() -> None:
    logits = torch.zeros(1, 1, 50)
    logits[0, 0, 3] = 100.0
    assert float(entropy_from_logits(logits)) == pytest.approx(0.0, abs=1e-6)


def test_entropy_hand_value_and_shift_invariance() -> None:
    # p = [0.5, 0.25, 0.25]: H = 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2 = 1.0397208
    logits = torch.log(t([[[0.5, 0.25, 0.25]]]))
    assert float(entropy_from_logits(logits)) == pytest.approx(1.0397208, abs=1e-6)
    # (float32: log Z - sum p * logits cancels; the error grows with the logits' size)
    assert float(entropy_from_logits(logits + 10.0)) == pytest.approx(1.0397208, abs=5e-5)


def test_entropy_matches_torch_categorical() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy_from_logits(logits), expected, atol=1e-5, rtol=0)
    out = entropy_from_logits(logits.bfloat16())
    assert out.dtype == torch.float32


# ---------------------------------------------------------------- explained variance


def test_explained_variance() -> None:
    returns = t([[1.0, 2.0, 3.0, 4.0, 100.0]])
    mask = t([[1, 1, 1, 1, 0]])  # the last position is padding with junk
    # perfect values -> 1
    assert explained_variance(t([[1.0, 2.0, 3.0, 4.0, -100.0]]), returns, mask) == pytest.approx(1)
    # V = 0 -> Var[R - 0] / Var[R] = 1 -> 0
    assert explained_variance(torch.zeros(1, 5), returns, mask) == pytest.approx(0.0)
    # V = [1.5, 1.5, 3.5, 3.5]: R - V = [-0.5, 0.5, -0.5, 0.5], unbiased var 4 * 0.25 / 3 = 1/3;
    # Var[R] = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3;  1 - (1/3) / (5/3) = 0.8
    v = t([[1.5, 1.5, 3.5, 3.5, 0.0]])
    assert explained_variance(v, returns, mask) == pytest.approx(0.8, abs=1e-6)


def test_explained_variance_of_constant_returns_is_nan() -> None:
    assert math.isnan(explained_variance(t([[0.0, 1.0]]), t([[2.0, 2.0]]), t([[1, 1]])))


# ---------------------------------------------------------------- KL controllers


def test_fixed_kl_controller_never_moves() -> None:
    c = FixedKLController(0.05)
    c.update(100.0, 64)
    c.update(0.0, 64)
    assert c.value == 0.05
    d = FixedKLController(1.0)
    d.load_state_dict(c.state_dict())
    assert d.value == 0.05


@pytest.mark.parametrize(
    ("kl", "expected"),
    [
        # 9 / 6 - 1 = 0.5 -> clipped to 0.2:      0.1 * (1 + 0.2 * 64 / 10000) = 0.100128
        (9.0, 0.100128),
        # 3 / 6 - 1 = -0.5 -> clipped to -0.2:    0.1 * (1 - 0.2 * 64 / 10000) = 0.099872
        (3.0, 0.099872),
        # 6.6 / 6 - 1 = 0.1 (inside the clip):    0.1 * (1 + 0.1 * 64 / 10000) = 0.100064
        (6.6, 0.100064),
        # 6 / 6 - 1 = 0: unchanged
        (6.0, 0.1),
    ],
)
def test_adaptive_kl_controller_update(kl, expected) -> None:
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(kl, 64)
    assert c.value == pytest.approx(expected, rel=1e-12)


def test_adaptive_kl_controller_compounds_ignores_nan_and_round_trips() -> None:
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(9.0, 64)
    c.update(9.0, 64)  # 0.1 * 1.00128^2 = 0.1002561638...
    assert c.value == pytest.approx(0.1 * 1.00128**2, rel=1e-12)
    c.update(float("nan"), 64)
    c.update(float("inf"), 64)
    assert c.value == pytest.approx(0.1 * 1.00128**2, rel=1e-12)
    d = AdaptiveKLController(0.5, target=6.0, horizon=10000)
    d.load_state_dict(c.state_dict())
    assert d.value == c.value
    d.update(3.0, 64)  # continues from the restored value: * (1 - 0.00128)
    assert d.value == pytest.approx(0.1 * 1.00128**2 * 0.99872, rel=1e-12)


def test_adaptive_kl_controller_rejects_bad_target_or_horizon() -> None:
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=1.0, horizon=0)


# ---------------------------------------------------------------- running moments


def test_running_moments_equal_those_of_the_concatenation() -> None:
    # batches [1, 2, 3], [4, 5], [], [10] -> all values 1 2 3 4 5 10:
    #   mean = 25 / 6 = 4.1666667
    #   E[x^2] = (1 + 4 + 9 + 16 + 25 + 100) / 6 = 155 / 6
    #   var (population) = 155/6 - 625/36 = 930/36 - 625/36 = 305/36 = 8.4722222
    #   std = sqrt(305) / 6 = 2.9107081
    rm = RunningMoments()
    assert rm.std == 1.0  # nothing seen yet
    for batch in ([1.0, 2.0, 3.0], [4.0, 5.0], [], [10.0]):
        rm.update(t(batch))
    assert rm.count == 6
    assert rm.mean == pytest.approx(25 / 6, abs=1e-6)
    assert rm.var == pytest.approx(305 / 36, abs=1e-6)
    assert rm.std == pytest.approx(2.9107081, abs=1e-6)
    restored = RunningMoments()
    restored.load_state_dict(rm.state_dict())
    assert (restored.mean, restored.var, restored.count) == (rm.mean, rm.var, rm.count)


def test_running_moments_random_batches_match_torch() -> None:
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, generator=g) * 3 + 1 for n in (5, 1, 17, 8)]
    rm = RunningMoments()
    for b in batches:
        rm.update(b)
    allx = torch.cat(batches).double()
    assert rm.mean == pytest.approx(float(allx.mean()), abs=1e-5)
    assert rm.std == pytest.approx(float(allx.std(unbiased=False)), abs=1e-5)

"""GRPO / RLOO's pure tensor functions (rlhfkit.algorithms.grpo) and the PPO pieces GRPO
uses (clip-higher surrogate, k3 KL), on hand-worked numbers.

Every expected number below is worked out by hand (the arithmetic is in the comments),
never by calling the function under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.algorithms.grpo import (
    aggregate_loss,
    clipped_surrogate,
    group_advantages,
    loss_denominator,
    rloo_advantages,
    sequence_loss_sum,
)
from rlhfkit.algorithms.ppo import approx_kl_old_new, kl_estimate


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, t(expected), atol=atol, rtol=0)


# ---------------------------------------------------------------- group advantages
#
# Three prompts, G = 4 samples each (consecutive blocks of 4):
#   A = [1, 0, 1, 0]          mean 0.5, centred [0.5, -0.5, 0.5, -0.5]
#                             unbiased var = 4 * 0.25 / 3 = 1/3, std = 0.5773503
#   B = [0.5, 0.5, 0.5, 0.5]  all equal: zero spread
#   C = [3, 1, 2, 2]          mean 2, centred [1, -1, 0, 0]
#                             unbiased var = (1 + 1) / 3 = 2/3, std = 0.8164966
REWARDS = [1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5, 3.0, 1.0, 2.0, 2.0]
# scale=group, eps = 1e-4:
#   A: 0.5 / (0.5773503 + 0.0001) = 0.5 / 0.5774503 = 0.8658754
#   C: 1.0 / (0.8164966 + 0.0001) = 1.0 / 0.8165966 = 1.2245949
A_G, C_G = 0.8658754, 1.2245949
# scale=batch: one std over all 12 rewards (still centred on each group's mean)
#   batch mean = (2 + 2 + 8) / 12 = 1
#   squared deviations: A 0,1,0,1  B 0.25 x 4  C 4,0,1,1  -> total 9
#   unbiased var = 9 / 11, std = 0.9045340; + 1e-4 = 0.9046340
#   A: 0.5 / 0.9046340 = 0.5527097     C: 1.0 / 0.9046340 = 1.1054194
A_B, C_B = 0.5527097, 1.1054194


def test_group_scale_divides_by_each_groups_unbiased_std() -> None:
    adv, zero = group_advantages(t(REWARDS), 4, scale="group")
    close(adv, [A_G, -A_G, A_G, -A_G, 0, 0, 0, 0, C_G, -C_G, 0, 0])
    assert zero.tolist() == [False, True, False]


def test_batch_scale_divides_by_one_std_over_the_batch() -> None:
    adv, zero = group_advantages(t(REWARDS), 4, scale="batch")
    close(adv, [A_B, -A_B, A_B, -A_B, 0, 0, 0, 0, C_B, -C_B, 0, 0])
    assert zero.tolist() == [False, True, False]


def test_no_scale_is_the_centred_reward() -> None:
    # Dr. GRPO: r - mean(group), no division.
    adv, zero = group_advantages(t(REWARDS), 4, scale="none")
    close(adv, [0.5, -0.5, 0.5, -0.5, 0, 0, 0, 0, 1, -1, 0, 0])
    assert zero.tolist() == [False, True, False]


def test_default_scale_is_group() -> None:
    adv, _ = group_advantages(t(REWARDS), 4)
    close(adv[:4], [A_G, -A_G, A_G, -A_G])


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_zero_spread_group_is_exactly_zero_and_flagged(scale: str) -> None:
    # 0.1 is not exact in float32, so the mean of the group may differ from its members
    # by rounding; a near-zero std + eps would then blow that up. The result must be 0.0
    # exactly, not merely small.
    rewards = t([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 0.0, 1.0, 0.0])
    adv, zero = group_advantages(rewards, 3, scale=scale)
    assert adv[:6].tolist() == [0.0] * 6
    assert zero.tolist() == [True, True, False]
    assert zero.dtype == torch.bool
    assert (adv[6:] != 0).all()


def test_std_is_unbiased_not_population() -> None:
    # G = 2, [0, 1]: centred +-0.5. Unbiased std = sqrt(0.5) = 0.7071068 -> 0.5 / 0.7072068
    # = 0.7070068. (The population std 0.5 would give 0.5 / 0.5001 = 0.9998.)
    adv, _ = group_advantages(t([0.0, 1.0]), 2, scale="group")
    close(adv, [-0.7070068, 0.7070068])


def test_eps_is_1e_minus_4() -> None:
    # [0, 0.001]: centred +-0.0005, std = 0.0005 * sqrt(2) = 0.00070711
    # 0.0005 / (0.00070711 + 0.0001) = 0.6194967 (eps = 1e-8 would give 0.7071)
    adv, _ = group_advantages(t([0.0, 0.001]), 2, scale="group")
    close(adv, [-0.6194967, 0.6194967], atol=1e-4)
    # An explicit eps: 0.0005 / (0.00070711 + 0.0005) = 0.4142136
    adv, _ = group_advantages(t([0.0, 0.001]), 2, scale="group", eps=5e-4)
    close(adv, [-0.4142136, 0.4142136], atol=1e-4)


def test_group_advantages_rejects_bad_shapes_and_scales() -> None:
    with pytest.raises(ValueError, match="groups of 2"):
        group_advantages(t([1.0, 2.0, 3.0]), 2)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(t([1.0, 2.0]), 2, scale="prompt")


# ---------------------------------------------------------------- RLOO


def test_rloo_baseline_is_the_mean_of_the_others() -> None:
    # rewards [1, 2, 3, 6], sum 12:
    #   baseline_0 = (2 + 3 + 6) / 3 = 11/3  ->  A_0 = 1 - 11/3 = -8/3
    #   baseline_1 = (1 + 3 + 6) / 3 = 10/3  ->  A_1 = 2 - 10/3 = -4/3
    #   baseline_2 = (1 + 2 + 6) / 3 = 3     ->  A_2 = 0
    #   baseline_3 = (1 + 2 + 3) / 3 = 2     ->  A_3 = 4
    # second prompt [5, 5, 5, 5]: zero spread, A = 5 - 5 = 0
    adv, zero = rloo_advantages(t([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0]), 4)
    close(adv, [-8 / 3, -4 / 3, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0])
    assert zero.tolist() == [False, True]


def test_rloo_is_not_divided_by_a_std() -> None:
    # G = 2, [0, 10]: A_0 = 0 - 10 = -10, A_1 = 10 - 0 = 10 (no std scaling)
    adv, zero = rloo_advantages(t([0.0, 10.0]), 2)
    close(adv, [-10.0, 10.0])
    assert zero.tolist() == [False]


def test_rloo_needs_two_samples_and_whole_groups() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(t([1.0, 2.0]), 1)
    with pytest.raises(ValueError, match="groups of 2"):
        rloo_advantages(t([1.0, 2.0, 3.0]), 2)


# ---------------------------------------------------------------- loss aggregation
#
# 2 x 3 per-token losses, the first response 3 tokens long, the second 1 token (padded):
#   per_token = [[1, 2, 3],      mask = [[1, 1, 1],
#                [4, 5, 6]]              [1, 0, 0]]
# grpo:    sequence means 6/3 = 2 and 4/1 = 4; sum 6; / 2 sequences = 3.0
# dapo:    token sum 1+2+3+4 = 10; / 4 tokens = 2.5
# dr_grpo: token sum 10; / (2 sequences x max_length 3) = 10/6 = 1.6666667
#          with max_length 5: 10 / 10 = 1.0
PER_TOKEN = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
MASK = [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    ("loss_type", "max_length", "numerator", "denominator", "loss"),
    [
        ("grpo", 3, 6.0, 2.0, 3.0),
        ("dapo", 3, 10.0, 4.0, 2.5),
        ("dr_grpo", 3, 10.0, 6.0, 10 / 6),
        ("dr_grpo", 5, 10.0, 10.0, 1.0),
    ],
)
def test_loss_types_on_the_masked_example(
    loss_type: str, max_length: int, numerator: float, denominator: float, loss: float
) -> None:
    per_token, mask = t(PER_TOKEN), t(MASK)
    assert sequence_loss_sum(per_token, mask, loss_type).item() == pytest.approx(numerator)
    assert loss_denominator(mask, loss_type, max_length) == denominator
    assert aggregate_loss(per_token, mask, loss_type, max_length).item() == pytest.approx(loss)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_micro_batch_sums_add_up_to_the_batch_loss(loss_type: str) -> None:
    # Gradient accumulation sums numerators and denominators over micro-batches; one row
    # per micro-batch must give the same loss as the whole batch (3.0 / 2.5 / 10/6).
    per_token, mask = t(PER_TOKEN), t(MASK)
    num = sum(sequence_loss_sum(per_token[i : i + 1], mask[i : i + 1], loss_type) for i in (0, 1))
    den = sum(loss_denominator(mask[i : i + 1], loss_type, 3) for i in (0, 1))
    expected = {"grpo": 3.0, "dapo": 2.5, "dr_grpo": 10 / 6}[loss_type]
    assert (num / den).item() == pytest.approx(expected)


def token_weights(mask, loss_type: str, max_length: int = 3) -> torch.Tensor:
    """d loss / d per_token: how much each token weighs in the batch loss."""
    x = torch.zeros(len(mask), len(mask[0]), requires_grad=True)
    aggregate_loss(x, t(mask), loss_type, max_length).backward()
    assert x.grad is not None
    return x.grad


def test_grpo_weighs_a_long_sequences_tokens_less() -> None:
    # 1 / (B x |o_i|): the 3-token response's tokens 1/(2*3) = 1/6, the 1-token
    # response's token 1/(2*1) = 1/2; padding 0. A long wrong answer is penalised less
    # per token than a short one (Dr. GRPO's length bias).
    close(token_weights(MASK, "grpo"), [[1 / 6, 1 / 6, 1 / 6], [1 / 2, 0, 0]])


def test_dapo_weighs_every_token_the_same() -> None:
    # 1 / (number of tokens) = 1/4 everywhere real, 0 on padding.
    close(token_weights(MASK, "dapo"), [[0.25, 0.25, 0.25], [0.25, 0, 0]])


def test_dr_grpo_weight_does_not_depend_on_the_batchs_lengths() -> None:
    # 1 / (B x max_length) = 1/6 per real token, whatever the lengths in the batch ...
    close(token_weights(MASK, "dr_grpo"), [[1 / 6, 1 / 6, 1 / 6], [1 / 6, 0, 0]])
    other = [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]  # lengths 2 and 3 instead of 3 and 1
    close(token_weights(other, "dr_grpo"), [[1 / 6, 1 / 6, 0], [1 / 6, 1 / 6, 1 / 6]])
    # ... while dapo's per-token weight moves with the batch's token count (1/4 -> 1/5)
    close(token_weights(other, "dapo"), [[0.2, 0.2, 0], [0.2, 0.2, 0.2]])


def test_unknown_loss_type_raises() -> None:
    with pytest.raises(ValueError, match="loss_type"):
        sequence_loss_sum(t(PER_TOKEN), t(MASK), "token_mean")
    with pytest.raises(ValueError, match="loss_type"):
        loss_denominator(t(MASK), "token_mean", 3)


# ---------------------------------------------------------------- clip-higher surrogate
#
# eps_low = 0.2, eps_high = 0.28: the ratio is clipped to [0.8, 1.28].
# l = -min(rho A, clip(rho) A) = max(-rho A, -clip(rho) A)
#   rho 0.7, A +1: max(-0.7, -0.8)  = -0.7   unclipped (below the range helps nothing)
#   rho 0.7, A -1: max( 0.7,  0.8)  =  0.8   clipped
#   rho 1.0, A +1: -1.0, A -1: 1.0           inside the range
#   rho 1.3, A +1: max(-1.3, -1.28) = -1.28  clipped
#   rho 1.3, A -1: max( 1.3,  1.28) =  1.3   unclipped
# d l / d log pi = -A rho where unclipped, 0 where clipped:
#   rho 0.7: A+1 -> -0.7, A-1 -> 0;  rho 1.0: A+1 -> -1, A-1 -> +1;
#   rho 1.3: A+1 -> 0,    A-1 -> +1.3
RATIOS = [0.7, 1.0, 1.3]


def surrogate(ratios, advantage: float, eps_low=0.2, eps_high=0.28):
    logps = torch.log(t([ratios])).requires_grad_(True)
    old = torch.zeros_like(logps)
    loss, clipped = clipped_surrogate(logps, old, t([[advantage]]), eps_low, eps_high)
    loss.sum().backward()
    assert logps.grad is not None
    return loss.detach(), clipped, logps.grad


def test_clip_higher_positive_advantage() -> None:
    loss, clipped, grad = surrogate(RATIOS, 1.0)
    close(loss, [[-0.7, -1.0, -1.28]])
    assert clipped.tolist() == [[0.0, 0.0, 1.0]]
    close(grad, [[-0.7, -1.0, 0.0]])


def test_clip_higher_negative_advantage() -> None:
    loss, clipped, grad = surrogate(RATIOS, -1.0)
    close(loss, [[0.8, 1.0, 1.3]])
    assert clipped.tolist() == [[1.0, 0.0, 0.0]]
    close(grad, [[0.0, 1.0, 1.3]])


def test_clipped_tokens_get_no_gradient_with_a_larger_advantage() -> None:
    # A = 2: rho 0.7 -> -1.4 (grad -1.4), rho 1.3 -> -2 * 1.28 = -2.56 (grad 0)
    loss, clipped, grad = surrogate([0.7, 1.3], 2.0)
    close(loss, [[-1.4, -2.56]])
    assert clipped.tolist() == [[0.0, 1.0]]
    close(grad, [[-1.4, 0.0]])
    # A = -2: rho 0.7 -> 2 * 0.8 = 1.6 (grad 0), rho 1.3 -> 2.6 (grad 2.6)
    loss, clipped, grad = surrogate([0.7, 1.3], -2.0)
    close(loss, [[1.6, 2.6]])
    assert clipped.tolist() == [[1.0, 0.0]]
    close(grad, [[0.0, 2.6]])


def test_the_upper_bound_is_eps_high_and_the_lower_eps_low() -> None:
    # rho 1.25, A +1: inside 1.28, unclipped: -1.25; symmetric 0.2 would clip it to -1.2.
    loss, clipped, _ = surrogate([1.25], 1.0)
    close(loss, [[-1.25]])
    assert clipped.tolist() == [[0.0]]
    loss, clipped, _ = surrogate([1.25], 1.0, eps_high=None)
    close(loss, [[-1.2]])
    assert clipped.tolist() == [[1.0]]
    # rho 0.75, A -1: below 1 - eps_low = 0.8 -> clipped to 0.8 whatever eps_high is.
    loss, clipped, _ = surrogate([0.75], -1.0)
    close(loss, [[0.8]])
    assert clipped.tolist() == [[1.0]]


def test_sequence_advantages_broadcast_over_tokens() -> None:
    # (B, 1) advantages against (B, T) log-probs; rho = 1 everywhere -> l = -A.
    loss, _ = clipped_surrogate(torch.zeros(2, 3), torch.zeros(2, 3), t([[0.5], [-2.0]]))
    close(loss, [[-0.5, -0.5, -0.5], [2.0, 2.0, 2.0]])


# ---------------------------------------------------------------- KL estimators


def test_k3_is_r_minus_1_minus_log_r_with_r_ref_over_pi() -> None:
    # log r = log pi_ref - log pi
    #   pi 0.5, ref 0.25: r = 0.5 -> k3 = -0.5 + ln 2 = 0.1931472
    #   pi 0.25, ref 0.5: r = 2   -> k3 = 1 - ln 2  = 0.3068528
    #   equal: 0
    #   log pi -1, log ref -3: log r = -2 -> k3 = e^-2 - 1 + 2 = 1.1353353
    logps = t([math.log(0.5), math.log(0.25), -1.5, -1.0])
    ref = t([math.log(0.25), math.log(0.5), -1.5, -3.0])
    close(kl_estimate(logps, ref, "k3"), [0.1931472, 0.3068528, 0.0, 1.1353353])


def test_k3_gradient_is_1_minus_r() -> None:
    # d/d log pi [e^(ref - log pi) - 1 - (ref - log pi)] = 1 - r:
    #   r = 0.5 -> +0.5 (pi above the reference is pushed down), r = 2 -> -1
    logps = t([math.log(0.5), math.log(0.25)]).requires_grad_(True)
    kl_estimate(logps, t([math.log(0.25), math.log(0.5)]), "k3").sum().backward()
    assert logps.grad is not None
    close(logps.grad, [0.5, -1.0])


def test_approx_kl_old_new_uses_rho_pi_over_pi_old() -> None:
    # rho = pi / pi_old: log pi = ln 0.5, log pi_old = ln 0.25 -> rho = 2 -> 1 - ln 2;
    # swapped: rho = 0.5 -> -0.5 + ln 2. (The reverse of kl_estimate's r above.)
    logps = t([math.log(0.5), math.log(0.25)])
    old = t([math.log(0.25), math.log(0.5)])
    close(approx_kl_old_new(logps, old), [0.3068528, 0.1931472])

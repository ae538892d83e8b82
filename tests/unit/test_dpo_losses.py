"""DPO-family, CPL and sequence log-prob functions against hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rlhfkit.algorithms.dpo import (
    DPO_LOSSES,
    CPLOutput,
    DPOOutput,
    cpl_loss,
    dpo_loss,
    sequence_logps,
)


def _pair(h: float) -> tuple[torch.Tensor, ...]:
    """(chosen, rejected, ref_chosen, ref_rejected) with log-ratio margin ``h``:
    chosen ratio = -10 - (-10 - h/2) = h/2, rejected ratio = -20 - (-20 + h/2) = -h/2."""
    return (
        torch.tensor([-10.0]),
        torch.tensor([-20.0]),
        torch.tensor([-10.0 - h / 2]),
        torch.tensor([-20.0 + h / 2]),
    )


# beta = 0.1, h = 2: beta*h = 0.2
LOG1P_EXP_M02 = math.log1p(math.exp(-0.2))  # -log sigmoid(0.2) = 0.598138869...


def test_sigmoid_at_initialisation_is_log2_for_any_beta():
    logps = torch.tensor([-12.0, -3.5, 0.0])
    other = torch.tensor([-7.0, -30.0, -1.0])
    for beta in (0.01, 0.1, 1.0, 5.0):
        out = dpo_loss(logps, other, logps.clone(), other.clone(), beta=beta)
        assert isinstance(out, DPOOutput)
        assert out.losses.shape == (3,)
        assert out.losses.tolist() == pytest.approx([math.log(2)] * 3)
        assert out.chosen_rewards.tolist() == [0.0, 0.0, 0.0]


def test_sigmoid_hand_value():
    # beta = 0.1, h = 2 -> -log sigmoid(0.2) = log(1 + e^-0.2) = 0.598138869
    out = dpo_loss(*_pair(2.0), beta=0.1)
    assert float(out.losses) == pytest.approx(0.598138869, abs=1e-7)
    assert float(out.losses) == pytest.approx(LOG1P_EXP_M02, abs=1e-7)


def test_cdpo_hand_value():
    # eps = 0.1: 0.9 log(1 + e^-0.2) + 0.1 log(1 + e^0.2); log(1+e^x) - log(1+e^-x) = x, so
    # = 0.9 a + 0.1 (a + 0.2) = a + 0.02 = 0.618138869 with a = log(1 + e^-0.2)
    out = dpo_loss(*_pair(2.0), beta=0.1, label_smoothing=0.1)
    assert float(out.losses) == pytest.approx(0.618138869, abs=1e-7)


def test_robust_eps0_equals_sigmoid_and_hand_value():
    chosen = torch.tensor([-3.0, -8.0, -1.0])
    rejected = torch.tensor([-4.0, -2.0, -9.0])
    ref_c = torch.tensor([-3.5, -7.0, -2.0])
    ref_r = torch.tensor([-3.0, -2.5, -8.0])
    sig = dpo_loss(chosen, rejected, ref_c, ref_r, beta=0.5).losses
    rob = dpo_loss(chosen, rejected, ref_c, ref_r, loss_type="robust", beta=0.5).losses
    assert torch.allclose(rob, sig)
    # eps = 0.1: (0.9 a - 0.1 (a + 0.2)) / 0.8 = (0.8 a - 0.02) / 0.8 = a - 0.025 = 0.573138869
    out = dpo_loss(*_pair(2.0), loss_type="robust", beta=0.1, label_smoothing=0.1)
    assert float(out.losses) == pytest.approx(0.573138869, abs=1e-6)


def test_ipo_hand_value_with_lengths():
    # chosen ratio (-10) - (-14) = 4 over 2 tokens -> 2; rejected ratio (-20) - (-17) = -3 over
    # 3 tokens -> -1; h_avg = 2 - (-1) = 3; target 1 / (2 * 0.1) = 5; loss (3 - 5)^2 = 4
    out = dpo_loss(
        torch.tensor([-10.0]),
        torch.tensor([-20.0]),
        torch.tensor([-14.0]),
        torch.tensor([-17.0]),
        loss_type="ipo",
        beta=0.1,
        chosen_lengths=torch.tensor([2]),
        rejected_lengths=torch.tensor([3.0]),
    )
    assert float(out.losses) == pytest.approx(4.0)
    # rewards are beta * (unnormalised) log-ratio
    assert float(out.chosen_rewards) == pytest.approx(0.4)
    assert float(out.rejected_rewards) == pytest.approx(-0.3)


def test_hinge_hand_values_including_zero_region():
    # beta = 0.1: h = 2 -> 1 - 0.2 = 0.8; h = -5 -> 1.5; h = 10 -> 0 (margin met); h = 15 -> 0
    hs = [2.0, -5.0, 10.0, 15.0]
    parts = [_pair(h) for h in hs]
    args = [torch.cat([p[i] for p in parts]) for i in range(4)]
    out = dpo_loss(*args, loss_type="hinge", beta=0.1)
    assert out.losses.tolist() == pytest.approx([0.8, 1.5, 0.0, 0.0], abs=1e-6)


def test_rewards_are_beta_times_logratio_and_detached():
    chosen = torch.tensor([-5.0, -1.0], requires_grad=True)
    rejected = torch.tensor([-6.0, -4.0], requires_grad=True)
    ref_c = torch.tensor([-7.0, -1.5])
    ref_r = torch.tensor([-5.0, -3.0])
    out = dpo_loss(chosen, rejected, ref_c, ref_r, beta=0.25)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, 0.125])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.25, -0.25])
    assert not out.chosen_rewards.requires_grad
    assert not out.rejected_rewards.requires_grad
    assert out.losses.requires_grad


@pytest.mark.parametrize("loss_type", DPO_LOSSES)
def test_gradient_raises_chosen_and_lowers_rejected(loss_type: str):
    # h = 2 with beta = 0.1: inside the hinge margin (beta*h = 0.2 < 1); for ipo,
    # lengths 1 give h_avg = 2 below the target 1/(2 beta) = 5.
    chosen, rejected, ref_c, ref_r = _pair(2.0)
    chosen.requires_grad_(True)
    rejected.requires_grad_(True)
    out = dpo_loss(
        chosen,
        rejected,
        ref_c,
        ref_r,
        loss_type=loss_type,
        beta=0.1,
        label_smoothing=0.1 if loss_type == "robust" else 0.0,
        chosen_lengths=torch.tensor([1]),
        rejected_lengths=torch.tensor([1]),
    )
    out.losses.sum().backward()
    assert chosen.grad is not None and rejected.grad is not None
    assert float(chosen.grad) < 0
    assert float(rejected.grad) > 0


def test_cpl_hand_values():
    # alpha = 0.1, lam = 0.5, S_c = -2, S_r = -6: -log sigmoid(-0.2 + 0.5 * 0.6)
    # = -log sigmoid(0.1) = log(1 + e^-0.1) = 0.644396660
    out = cpl_loss(torch.tensor([-2.0]), torch.tensor([-6.0]), alpha=0.1, lam=0.5)
    assert isinstance(out, CPLOutput)
    assert float(out.losses) == pytest.approx(0.644396660, abs=1e-7)
    assert float(out.chosen_scores) == pytest.approx(-0.2)
    assert float(out.rejected_scores) == pytest.approx(-0.6)
    # lam = 1 (plain CPL): -log sigmoid(-0.2 + 0.6) = log(1 + e^-0.4) = 0.513015252
    plain = cpl_loss(torch.tensor([-2.0]), torch.tensor([-6.0]), alpha=0.1, lam=1.0)
    assert float(plain.losses) == pytest.approx(0.513015252, abs=1e-7)


def test_cpl_bc_term_adds_weighted_mean_nll():
    # S_c = -2 over 4 tokens -> mean NLL 0.5; bc_weight 0.5 adds 0.25
    base = cpl_loss(torch.tensor([-2.0]), torch.tensor([-6.0]))
    bc = cpl_loss(
        torch.tensor([-2.0]),
        torch.tensor([-6.0]),
        bc_weight=0.5,
        chosen_lengths=torch.tensor([4]),
    )
    assert float(bc.losses - base.losses) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="chosen_lengths"):
        cpl_loss(torch.tensor([-2.0]), torch.tensor([-6.0]), bc_weight=0.5)


def test_cpl_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([-2.0, -9.0], requires_grad=True)
    rejected = torch.tensor([-6.0, -1.0], requires_grad=True)
    out = cpl_loss(chosen, rejected, bc_weight=0.3, chosen_lengths=torch.tensor([2, 3]))
    out.losses.sum().backward()
    assert chosen.grad is not None and rejected.grad is not None
    assert (chosen.grad < 0).all()
    assert (rejected.grad > 0).all()
    assert not out.chosen_scores.requires_grad


def test_sequence_logps_matches_naive_log_softmax():
    gen = torch.Generator().manual_seed(0)
    b, t, v = 3, 7, 11
    logits = torch.randn(b, t, v, generator=gen) * 3
    labels = torch.randint(0, v, (b, t), generator=gen)
    labels[0, :3] = -100  # prompt
    labels[1, 5:] = -100  # padding
    labels[2, :] = -100  # fully masked
    logps, counts = sequence_logps(logits, labels)

    logp_all = F.log_softmax(logits[:, :-1].float(), dim=-1)
    shift = labels[:, 1:]
    mask = shift != -100
    naive = (logp_all.gather(-1, shift.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask).sum(-1)
    assert torch.allclose(logps, naive, atol=1e-5, rtol=1e-5)
    assert counts.tolist() == [4, 4, 0]
    assert float(logps[2]) == 0.0
    assert logps.dtype == torch.float32


def test_sequence_logps_bf16_input_and_gradient():
    logits = torch.randn(2, 5, 6).to(torch.bfloat16).requires_grad_(True)
    labels = torch.tensor([[-100, 1, 2, 3, 4], [-100, -100, 0, 5, -100]])
    logps, counts = sequence_logps(logits, labels)
    assert logps.dtype == torch.float32
    assert counts.tolist() == [4, 2]
    logps.sum().backward()
    assert logits.grad is not None
    # masked / unused positions get no gradient (the last position predicts nothing)
    assert float(logits.grad[:, -1].float().abs().sum()) == 0.0


def test_value_errors():
    args = _pair(2.0)
    with pytest.raises(ValueError, match="sigmoid, robust, ipo, hinge"):
        dpo_loss(*args, loss_type="kto")
    with pytest.raises(ValueError, match="robust"):
        dpo_loss(*args, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="robust"):
        dpo_loss(*args, loss_type="robust", label_smoothing=-0.1)
    with pytest.raises(ValueError, match="lengths"):
        dpo_loss(*args, loss_type="ipo")
    with pytest.raises(ValueError, match="lengths"):
        dpo_loss(*args, loss_type="ipo", chosen_lengths=torch.tensor([1]))

"""Reward-model losses against hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.algorithms.reward import centering_penalty, group_mean, hinge_loss, pairwise_loss
from rlhfkit.config import LLAMA2_MARGINS, RMConfig
from rlhfkit.data.types import Message, PreferenceRecord
from rlhfkit.training.stages.reward import margin_from


def test_pairwise_loss_hand_computed():
    # r_c - r_r = 1.0: -log(1 / (1 + e^-1)) = log(1 + e^-1) = 0.31326169
    # r_c - r_r = -2.0: log(1 + e^2) = 2.12692801
    loss = pairwise_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 2.0]))
    assert loss.tolist() == pytest.approx([0.31326169, 2.12692801], abs=1e-7)
    assert float(pairwise_loss(torch.tensor([0.3]), torch.tensor([0.3]))) == pytest.approx(
        math.log(2)
    )


def test_margin_loss_is_pairwise_shifted_by_margin():
    # Llama 2: -log sigmoid(r_c - r_r - m); diff 1.0, m 1.0 -> log 2; m 2/3 -> log(1 + e^-(1/3))
    loss = pairwise_loss(
        torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2 / 3])
    )
    assert loss.tolist() == pytest.approx([math.log(2), math.log(1 + math.exp(-1 / 3))], abs=1e-7)


def test_margin_raises_the_loss_of_a_correct_pair():
    c, r = torch.tensor([1.5]), torch.tensor([0.5])
    assert pairwise_loss(c, r, torch.tensor([1.0])) > pairwise_loss(c, r)


def test_hinge_matches_torch_margin_ranking_loss():
    c, r = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([0.0, 0.2, 1.0])
    ours = hinge_loss(c, r, 1.0)
    assert ours.tolist() == pytest.approx([0.0, 0.7, 3.0], abs=1e-6)
    ref = torch.nn.MarginRankingLoss(margin=1.0, reduction="none")(c, r, torch.ones(3))
    assert torch.allclose(ours, ref)


def test_centering_penalty():
    assert centering_penalty(torch.tensor([1.0, -2.0]), torch.tensor([3.0, 2.0])).tolist() == [
        16.0,
        0.0,
    ]


def test_group_mean_averages_pairs_of_one_prompt():
    values = torch.tensor([1.0, 2.0, 3.0, 10.0])
    groups = torch.tensor([0, 0, 0, 2])
    assert group_mean(values, groups, 3).tolist() == [2.0, 0.0, 10.0]


def test_gradient_moves_chosen_up_and_rejected_down():
    c = torch.tensor([0.2], requires_grad=True)
    r = torch.tensor([0.4], requires_grad=True)
    pairwise_loss(c, r).sum().backward()
    assert c.grad.item() < 0 < r.grad.item()


def test_margin_table_default_and_record_margin():
    assert LLAMA2_MARGINS == {
        "significantly_better": 1.0,
        "better": 2 / 3,
        "slightly_better": 1 / 3,
        "negligibly_better": 0.0,
    }
    m = margin_from(RMConfig(model="m", data="d", out="o"))
    p = (Message("user", "q"),)
    assert m(PreferenceRecord(p, "a", "b", margin_label="better")) == pytest.approx(2 / 3)
    assert m(PreferenceRecord(p, "a", "b", margin=0.25, margin_label="better")) == 0.25
    assert m(PreferenceRecord(p, "a", "b")) == 0.0
    custom = margin_from(
        RMConfig(model="m", data="d", out="o", margin_table={**LLAMA2_MARGINS, "better": 0.5})
    )
    assert custom(PreferenceRecord(p, "a", "b", margin_label="better")) == 0.5

"""The SFT loss (rlhfkit.algorithms.sft.token_nll_sum) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.algorithms.sft import IGNORE_INDEX, token_nll_sum

# One sequence of 3 positions over a vocabulary of 4.
LOGITS = [
    [1.0, 2.0, 0.5, -1.0],  # position 0: predicts the label at position 1
    [0.0, -0.5, 3.0, 1.5],  # position 1: predicts the label at position 2
    [2.0, 2.0, 2.0, 2.0],  # position 2: predicts nothing (no position 3)
]


def nll(row: list[float], target: int) -> float:
    """-log softmax(row)[target], by hand."""
    log_z = math.log(sum(math.exp(v) for v in row))
    return log_z - row[target]


def test_hand_computed_example() -> None:
    logits = torch.tensor([LOGITS])
    labels = torch.tensor([[IGNORE_INDEX, 1, 2]])
    total, count = token_nll_sum(logits, labels)
    expected = nll(LOGITS[0], 1) + nll(LOGITS[1], 2)
    assert float(total) == pytest.approx(expected, abs=1e-6)
    assert int(count) == 2
    # a sanity check of the hand formula itself
    assert nll(LOGITS[0], 1) == pytest.approx(
        -math.log(math.exp(2.0) / (math.exp(1.0) + math.exp(2.0) + math.exp(0.5) + math.exp(-1.0)))
    )


def test_ignored_label_in_the_middle() -> None:
    logits = torch.tensor([LOGITS])
    labels = torch.tensor([[3, IGNORE_INDEX, 0]])
    total, count = token_nll_sum(logits, labels)
    # labels[0] is never predicted; labels[1] is ignored; only logits[1] -> labels[2] = 0 counts
    assert float(total) == pytest.approx(nll(LOGITS[1], 0), abs=1e-6)
    assert int(count) == 1


def test_first_label_is_never_counted() -> None:
    logits = torch.tensor([LOGITS])
    a = token_nll_sum(logits, torch.tensor([[0, 1, 2]]))
    b = token_nll_sum(logits, torch.tensor([[IGNORE_INDEX, 1, 2]]))
    assert float(a[0]) == pytest.approx(float(b[0]), abs=1e-7)
    assert int(a[1]) == int(b[1]) == 2


def test_all_ignored_gives_zero_sum_and_count() -> None:
    logits = torch.tensor([LOGITS])
    total, count = token_nll_sum(logits, torch.full((1, 3), IGNORE_INDEX))
    assert float(total) == 0.0
    assert int(count) == 0
    assert not math.isnan(float(total))


def test_only_first_position_labelled_counts_nothing() -> None:
    total, count = token_nll_sum(torch.tensor([LOGITS]), torch.tensor([[2, -100, -100]]))
    assert float(total) == 0.0 and int(count) == 0


def test_shift_logit_at_t_predicts_label_at_t_plus_1() -> None:
    # Logits at t are confident about token t + 1 (mod 4); labels are 0, 1, 2, 3.
    big = 50.0
    logits = torch.zeros(1, 4, 4)
    for t in range(4):
        logits[0, t, (t + 1) % 4] = big
    labels = torch.tensor([[0, 1, 2, 3]])
    total, count = token_nll_sum(logits, labels)
    assert int(count) == 3
    assert float(total) < 1e-6  # every prediction right
    # unshifted (logits at t scored against label t) every prediction would be wrong
    unshifted = torch.nn.functional.cross_entropy(logits[0], labels[0], reduction="sum")
    assert float(unshifted) > 100


def test_batch_rows_and_padding() -> None:
    logits = torch.tensor([LOGITS, [row[::-1] for row in LOGITS]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 2], [IGNORE_INDEX, 3, IGNORE_INDEX]])
    total, count = token_nll_sum(logits, labels)
    expected = nll(LOGITS[0], 1) + nll(LOGITS[1], 2) + nll(LOGITS[0][::-1], 3)
    assert float(total) == pytest.approx(expected, abs=1e-6)
    assert int(count) == 3
    # a sum over rows: the same as computing each row alone
    parts = [token_nll_sum(logits[i : i + 1], labels[i : i + 1]) for i in range(2)]
    assert float(total) == pytest.approx(sum(float(s) for s, _ in parts), abs=1e-6)
    assert int(count) == sum(int(c) for _, c in parts)


def test_low_precision_logits_are_upcast() -> None:
    logits = torch.tensor([LOGITS], dtype=torch.bfloat16)
    total, _ = token_nll_sum(logits, torch.tensor([[IGNORE_INDEX, 1, 2]]))
    assert total.dtype == torch.float32
    expected = nll(LOGITS[0], 1) + nll(LOGITS[1], 2)  # these logits are exact in bf16
    assert float(total) == pytest.approx(expected, abs=1e-5)


def test_gradient_flows_to_logits() -> None:
    logits = torch.tensor([LOGITS], requires_grad=True)
    total, _ = token_nll_sum(logits, torch.tensor([[IGNORE_INDEX, 1, IGNORE_INDEX]]))
    total.backward()
    grad = logits.grad[0]
    # d nll / d logits = softmax - onehot, at position 0 only
    probs = torch.softmax(torch.tensor(LOGITS[0]), dim=-1)
    onehot = torch.tensor([0.0, 1.0, 0.0, 0.0])
    assert torch.allclose(grad[0], probs - onehot, atol=1e-6)
    assert torch.count_nonzero(grad[1:]) == 0

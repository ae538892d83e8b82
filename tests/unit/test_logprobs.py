"""Per-token log-probs of sampled tokens (rlhfkit.algorithms.logprobs.token_logps)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.algorithms.logprobs import token_logps


def reference(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0):
    """The full-tensor formula: log_softmax over the vocabulary, then gather."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def random_batch(seed: int = 0, b: int = 3, t: int = 5, v: int = 13):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * 3
    targets = torch.randint(0, v, (b, t), generator=g)
    return logits, targets


def test_hand_values_and_temperature() -> None:
    # logits [0, ln 3] -> p = [1/4, 3/4]; log p[1] = ln 0.75 = -0.2876821
    # temperature 2: logits / 2 = [0, ln 3 / 2] -> p[1] = sqrt 3 / (1 + sqrt 3)
    #   = 1.7320508 / 2.7320508 = 0.6339746; ln = -0.4557464
    # temperature 0.5: logits * 2 = [0, ln 9] -> p[1] = 9/10; ln 0.9 = -0.1053605
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    targets = torch.tensor([[1]])
    assert float(token_logps(logits, targets)) == pytest.approx(-0.2876821, abs=1e-6)
    assert float(token_logps(logits, targets, 2.0)) == pytest.approx(-0.4557464, abs=1e-6)
    assert float(token_logps(logits, targets, 0.5)) == pytest.approx(-0.1053605, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.5])
def test_equals_log_softmax_then_gather(temperature: float) -> None:
    logits, targets = random_batch()
    out = token_logps(logits, targets, temperature)
    assert out.shape == targets.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, reference(logits, targets, temperature), atol=1e-5, rtol=0)
    assert (out <= 0).all()


def test_low_precision_logits_give_float32() -> None:
    logits, targets = random_batch(1)
    out = token_logps(logits.bfloat16(), targets)
    assert out.dtype == torch.float32
    expected = reference(logits.bfloat16().float(), targets)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gradient_flows_and_matches_the_reference(temperature: float) -> None:
    logits, targets = random_batch(2)
    weights = torch.randn(targets.shape, generator=torch.Generator().manual_seed(3))
    a = logits.clone().requires_grad_(True)
    (token_logps(a, targets, temperature) * weights).sum().backward()
    b = logits.clone().requires_grad_(True)
    (reference(b, targets, temperature) * weights).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=0)
    # d log p_y / d logit_v = (1[v = y] - p_v) / T, so every row's gradient sums to 0
    torch.testing.assert_close(a.grad.sum(-1), torch.zeros(targets.shape), atol=1e-5, rtol=0)


def test_empty_batch() -> None:
    out = token_logps(torch.zeros(0, 4, 7), torch.zeros(0, 4, dtype=torch.long))
    assert out.shape == (0, 4) and out.dtype == torch.float32


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunks_of_rows_equal_one_pass(monkeypatch, temperature: float) -> None:
    from rlhfkit.algorithms import logprobs

    logits, targets = random_batch(4, b=7)
    whole = token_logps(logits, targets, temperature)
    monkeypatch.setattr(logprobs, "LOGSUMEXP_CHUNK", 2 * 5 * 13)  # two rows per chunk: 4 chunks
    chunked = token_logps(logits, targets, temperature)
    assert torch.equal(chunked, whole)
    torch.testing.assert_close(chunked, reference(logits, targets, temperature), atol=1e-5, rtol=0)
    assert token_logps(logits[:0], targets[:0]).shape == (0, 5)


@pytest.mark.parametrize("rows_per_chunk", [None, 2])
def test_logps_and_entropy_share_one_normaliser(monkeypatch, rows_per_chunk) -> None:
    """Bitwise token_logps and entropy_from_logits (the same operations, the log-sum-exp
    computed once), whole or in chunks of rows."""
    from rlhfkit.algorithms import logprobs
    from rlhfkit.algorithms.logprobs import entropy_from_logits, token_logps_and_entropy

    logits, targets = random_batch(5, b=7)
    if rows_per_chunk:
        monkeypatch.setattr(logprobs, "LOGSUMEXP_CHUNK", rows_per_chunk * 5 * 13)
    logps, entropy = token_logps_and_entropy(logits, targets)
    assert torch.equal(logps, token_logps(logits, targets))
    assert torch.equal(entropy, entropy_from_logits(logits))
    # hand value: p = [1/4, 3/4] -> H = 0.25 ln 4 + 0.75 ln(4/3) = 0.5623351
    two = torch.tensor([[[0.0, math.log(3.0)]]])
    lp, h = token_logps_and_entropy(two, torch.tensor([[1]]))
    assert float(lp) == pytest.approx(-0.2876821, abs=1e-6)
    assert float(h) == pytest.approx(0.5623351, abs=1e-6)


def test_entropy_records_for_backward_only_when_asked() -> None:
    from rlhfkit.algorithms.logprobs import entropy_from_logits, token_logps_and_entropy

    logits, targets = random_batch(6)
    a = logits.clone().requires_grad_(True)
    logps, entropy = token_logps_and_entropy(a, targets)
    assert logps.requires_grad and not entropy.requires_grad  # a metric: no graph kept
    logps, entropy = token_logps_and_entropy(a, targets, entropy_grad=True)
    (logps.sum() + entropy.sum()).backward()
    b = logits.clone().requires_grad_(True)
    (token_logps(b, targets).sum() + entropy_from_logits(b).sum()).backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=0)
    empty = token_logps_and_entropy(torch.zeros(0, 4, 7), torch.zeros(0, 4, dtype=torch.long))
    assert [t.shape for t in empty] == [(0, 4), (0, 4)]

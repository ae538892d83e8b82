"""sample_one draws torch.multinomial's token from the same random stream."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.rollout import multinomial
from rlhfkit.rollout.multinomial import reproduces_multinomial, sample_one


def _probs(seed: int, rows: int, vocab: int, scale: float, zeros: int = 0) -> torch.Tensor:
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale
    if zeros:  # top-k style: masked entries have probability 0
        logits[:, :zeros] = float("-inf")
    return torch.softmax(logits, dim=-1)


def _both(probs: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    expected = torch.multinomial(probs, 1, generator=theirs)[:, 0]
    got = sample_one(probs, generator=ours)
    return got, expected, torch.equal(ours.get_state(), theirs.get_state())


def test_this_build_takes_the_fast_path() -> None:
    assert reproduces_multinomial()


@pytest.mark.parametrize(
    ("rows", "vocab", "scale", "zeros"),
    [(64, 512, 1.0, 0), (64, 512, 8.0, 0), (16, 257, 3.0, 200), (3, 50257, 2.0, 0), (1, 2, 1.0, 0)],
)
def test_same_tokens_and_generator_state_as_multinomial(rows, vocab, scale, zeros) -> None:
    for seed in range(40):
        probs = _probs(seed, rows, vocab, scale, zeros)
        got, expected, same_state = _both(probs, seed + 100)
        assert torch.equal(got, expected), seed
        assert same_state, seed
        if zeros:
            assert bool((got >= zeros).all())  # zero-probability tokens are never drawn


def test_ten_million_draws_agree() -> None:
    """305 draws of 64 x 512 (10^7 exponentials): every token equal."""
    differing = 0
    for seed in range(305):
        got, expected, _ = _both(_probs(seed, 64, 512, 2.0), seed)
        differing += int((got != expected).sum())
    assert differing == 0


def test_global_generator_as_multinomial_uses_it() -> None:
    probs = _probs(0, 8, 100, 1.0)
    torch.manual_seed(7)
    expected, after_expected = torch.multinomial(probs, 1)[:, 0], torch.rand(3)
    torch.manual_seed(7)
    got, after_got = sample_one(probs), torch.rand(3)
    assert torch.equal(got, expected)
    assert torch.equal(after_got, after_expected)  # the stream continues identically


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (float("nan"), "probability tensor contains"),
        (-0.5, "probability tensor contains"),
        (float("inf"), "probability tensor contains"),
    ],
)
def test_invalid_probabilities_raise_torchs_error(bad: float, message: str) -> None:
    probs = _probs(0, 4, 10, 1.0)
    probs[2, 3] = bad
    with pytest.raises(RuntimeError, match=message):
        sample_one(probs)


def test_all_zero_row_raises() -> None:
    probs = _probs(0, 4, 10, 1.0)
    probs[1] = 0.0
    with pytest.raises(RuntimeError, match="sum of probabilities"):
        sample_one(probs)


@pytest.mark.parametrize("shape_dtype", [((6, 30), torch.float64), ((30,), torch.float32)])
def test_other_dtypes_and_shapes_call_multinomial(shape_dtype) -> None:
    shape, dtype = shape_dtype
    probs = torch.softmax(torch.randn(shape, generator=torch.Generator().manual_seed(1)), -1)
    probs = probs.to(dtype)
    ours, theirs = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    got = sample_one(probs, generator=ours)
    assert torch.equal(got, torch.multinomial(probs, 1, generator=theirs)[..., 0])
    assert got.shape == shape[:-1]


def test_transposed_probabilities_as_multinomial() -> None:
    """A non-contiguous view: multinomial fills its buffer in that view's memory order."""
    probs = _probs(2, 40, 16, 1.0).t().contiguous().t()  # (40, 16), column-major
    assert not probs.is_contiguous()
    got, expected, same_state = _both(probs, 11)
    assert torch.equal(got, expected) and same_state


def test_a_build_that_differs_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the vectorised draw stops matching (another torch), multinomial is used."""
    monkeypatch.setattr(multinomial, "_draw", lambda probs, generator=None: probs.argmax(-1))
    multinomial.reproduces_multinomial.cache_clear()
    try:
        assert not reproduces_multinomial()
        probs = _probs(5, 32, 64, 0.5)
        got, expected, same_state = _both(probs, 9)
        assert torch.equal(got, expected) and same_state
        assert not torch.equal(got, probs.argmax(-1))  # not the broken draw
    finally:
        multinomial.reproduces_multinomial.cache_clear()

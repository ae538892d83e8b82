"""Padding-free batches: the same examples packed into fewer rows give the same
log-probs and losses as padded batches, and a model that would mix packed
examples is detected."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit.algorithms import logprobs
from rlhfkit.algorithms.dpo import segment_logps, token_logps
from rlhfkit.algorithms.sft import token_nll_sum
from rlhfkit.data.batching import (
    PadCollator,
    batch_logps,
    first_fit_decreasing,
    keeps_packed_apart,
    pack_batch,
)
from rlhfkit.data.templates import IGNORE_INDEX, TokenizedExample


def ex(ids: list[int], n_prompt: int) -> TokenizedExample:
    return TokenizedExample(ids, [IGNORE_INDEX] * n_prompt + ids[n_prompt:])


ROWS = [ex([1, 2, 3, 4, 5, 6], 3), ex([7, 8, 9], 2), ex([10, 11], 1), ex([12, 13, 14], 1)]


def test_first_fit_decreasing_bins():
    assert first_fit_decreasing([6, 3, 2, 3], 6) == [[0], [1, 3], [2]]
    assert first_fit_decreasing([7, 1], 5) == [[0], [1]]  # too long: a bin of its own


def test_pack_batch_layout():
    batch = pack_batch(ROWS, pad_token_id=0)
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 4, 5, 6],
        [7, 8, 9, 12, 13, 14],
        [10, 11, 0, 0, 0, 0],
    ]
    assert batch["position_ids"].tolist() == [
        [0, 1, 2, 3, 4, 5],
        [0, 1, 2, 0, 1, 2],
        [0, 1, 0, 1, 2, 3],
    ]
    assert batch["segments"].tolist() == [
        [0, 0, 0, 0, 0, 0],
        [1, 1, 1, 3, 3, 3],
        [2, 2, -1, -1, -1, -1],
    ]
    # every labelled next token of the padded batch, and no first token of an example
    assert batch["labels"].tolist() == [
        [-100, -100, -100, 4, 5, 6],
        [-100, -100, 9, -100, 13, 14],
        [-100, 11, -100, -100, -100, -100],
    ]
    assert batch["n_segments"] == 4
    assert "attention_mask" not in batch


def test_pad_collator_padding_free_switch():
    assert "segments" in PadCollator(0, padding_free=True)(ROWS)
    assert "attention_mask" in PadCollator(0)(ROWS)


def test_token_logps_chunked_equals_whole(monkeypatch):
    torch.manual_seed(0)
    logits = torch.randn(5, 7, 11)
    labels = torch.randint(0, 11, (5, 7))
    labels[:, :3] = IGNORE_INDEX
    whole, mask = token_logps(logits, labels)
    naive = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])
    assert torch.allclose(whole, torch.where(mask, naive.squeeze(-1), 0.0), atol=1e-6)
    monkeypatch.setattr(logprobs, "LOGSUMEXP_CHUNK", 3 * 11)  # 3 of the 20 positions per chunk
    chunked, _ = token_logps(logits, labels)
    assert torch.allclose(chunked, whole, atol=1e-7)


def test_segment_logps_sums_per_example():
    torch.manual_seed(1)
    logits = torch.randn(3, 6, 16)
    batch = pack_batch(ROWS, pad_token_id=0)
    logps, counts = segment_logps(logits, batch["labels"], batch["segments"], 4)
    per_token, mask = token_logps(logits, batch["labels"])
    assert counts.tolist() == [3, 1, 1, 2]
    assert torch.allclose(logps[3], per_token[1, 3:].sum())
    assert torch.allclose(logps[1], per_token[1, :3].sum())
    assert logps.sum().item() == pytest.approx(per_token[mask].sum().item(), abs=1e-5)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(
        tiny_llama
    )


def task_rows(tok, n: int = 12) -> list[TokenizedExample]:
    from rlhfkit.data.templates import resolve_template, tokenize_conversation
    from rlhfkit.data.types import Message

    template = resolve_template(tok, "auto")
    out = []
    for i in range(n):
        reply = str(i) if i % 2 else f"The answer is {3 * i}, since {i} + {2 * i} = {3 * i}."
        conv = (Message("user", f"What is {i} + {2 * i}?"), Message("assistant", reply))
        out.append(tokenize_conversation(tok, template, conv, 64))
    return out


def test_padding_free_logps_and_sft_loss_equal_padded(llama):
    model, tok = llama
    rows = task_rows(tok)
    padded = PadCollator(tok.pad_token_id)(rows)
    packed = pack_batch(rows, tok.pad_token_id)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    with torch.no_grad():
        want, want_n = batch_logps(model, padded)
        got, got_n = batch_logps(model, packed)
        # use_cache=False as the stages pass it: with a cache, transformers does not
        # look for packed sequences in position_ids, and packed examples would mix
        inputs = {k: padded[k] for k in ("input_ids", "attention_mask")}
        nll_padded = token_nll_sum(model(**inputs, use_cache=False).logits, padded["labels"])
        inputs = {k: packed[k] for k in ("input_ids", "position_ids")}
        nll_packed = token_nll_sum(model(**inputs, use_cache=False).logits, packed["labels"])
    assert torch.equal(got_n, want_n)
    assert torch.allclose(got, want, atol=1e-4)
    assert int(nll_packed[1]) == int(nll_padded[1])
    assert float(nll_packed[0]) == pytest.approx(float(nll_padded[0]), rel=1e-5)


def test_keeps_packed_apart_on_real_architectures(llama, tiny_gpt2):
    model, tok = llama
    assert keeps_packed_apart(model, task_rows(tok), tok.pad_token_id)
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_gpt2).train()
    assert keeps_packed_apart(gpt2, task_rows(tok), tok.pad_token_id)
    assert gpt2.training  # the check restores the mode it found


class IgnoresPositions(torch.nn.Module):
    """A model that drops ``position_ids``: packed examples would attend to each other."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kw):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kw)


def test_keeps_packed_apart_detects_mixing(llama):
    model, tok = llama
    assert not keeps_packed_apart(IgnoresPositions(model), task_rows(tok), tok.pad_token_id)


def test_keeps_packed_apart_checks_examples_of_one_length_in_one_row(llama):
    """No two of these fit in the longest one's width, but batches may pack wider
    (``pack_width``): the check packs its sample into one row, so equal lengths
    (a safety reward model's refusals) are checked too, and mixing is still caught."""
    model, tok = llama
    same = [task_rows(tok)[0]] * 4
    assert keeps_packed_apart(model, same, tok.pad_token_id)
    assert not keeps_packed_apart(IgnoresPositions(model), same, tok.pad_token_id)
    assert not keeps_packed_apart(model, same[:2], tok.pad_token_id)  # too few to check

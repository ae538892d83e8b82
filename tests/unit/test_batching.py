"""Padding and packing (rlhfkit.data.batching), and packed == unpacked SFT loss on tiny models."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from rlhfkit.algorithms.sft import token_nll_sum
from rlhfkit.data.batching import PackedRow, PadCollator, pack
from rlhfkit.data.templates import IGNORE_INDEX, TokenizedExample, resolve_template
from rlhfkit.data.templates import tokenize_conversation as tokenize
from rlhfkit.data.types import Message

PAD = 0


def ex(ids: list[int], n_prompt: int) -> TokenizedExample:
    """An example whose first ``n_prompt`` tokens are prompt (masked)."""
    return TokenizedExample(list(ids), [IGNORE_INDEX] * n_prompt + list(ids[n_prompt:]))


# Distinct token ids per example so rows can be traced back to their examples.
EXAMPLES = [
    ex([10, 11, 12], 1),
    ex([20, 21, 22, 23, 24, 25, 26], 3),
    ex([30, 31], 1),
    ex([40, 41, 42, 43, 44], 2),
    ex([50], 0),
    ex([60, 61, 62, 63], 2),
]


def segments(row: PackedRow) -> list[tuple[int, int]]:
    """(start, end) of each packed example, found from the restarting position ids."""
    starts = [i for i, p in enumerate(row.position_ids) if p == 0]
    return list(zip(starts, [*starts[1:], len(row)], strict=True))


# ---------------------------------------------------------------- PadCollator


def test_pad_collator_right_pads_and_masks() -> None:
    batch = PadCollator(PAD)(EXAMPLES[:3])
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    for v in batch.values():
        assert v.shape == (3, 7)
        assert v.dtype == torch.long
    assert batch["input_ids"][0].tolist() == [10, 11, 12, PAD, PAD, PAD, PAD]
    assert batch["labels"][0].tolist() == [-100, 11, 12, -100, -100, -100, -100]
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert batch["input_ids"][1].tolist() == [20, 21, 22, 23, 24, 25, 26]
    assert batch["attention_mask"][1].tolist() == [1] * 7
    assert batch["labels"][2].tolist() == [-100, 31, -100, -100, -100, -100, -100]
    # every padded position: pad id, label ignored, mask 0
    pads = batch["attention_mask"] == 0
    assert (batch["input_ids"][pads] == PAD).all()
    assert (batch["labels"][pads] == IGNORE_INDEX).all()
    assert batch["attention_mask"].sum().item() == 3 + 7 + 2


def test_pad_collator_uses_the_given_pad_id() -> None:
    batch = PadCollator(7)([ex([1, 2], 1), ex([3], 0)])
    assert batch["input_ids"].tolist() == [[1, 2], [3, 7]]


@pytest.mark.parametrize(
    ("multiple", "width"), [(None, 7), (1, 7), (4, 8), (8, 8), (7, 7), (5, 10)]
)
def test_pad_to_multiple_of(multiple: int | None, width: int) -> None:
    batch = PadCollator(PAD, pad_to_multiple_of=multiple)(EXAMPLES[:3])
    assert batch["input_ids"].shape == (3, width)
    assert batch["attention_mask"][1].tolist() == [1] * 7 + [0] * (width - 7)
    assert (batch["labels"][:, 7:] == IGNORE_INDEX).all()


def test_pad_collator_packed_rows_get_position_ids_not_a_mask() -> None:
    rows = [
        PackedRow([1, 2, 3, 4, 5], [-100, 2, -100, -100, 5], [0, 1, 0, 1, 2]),
        PackedRow([6, 7], [-100, 7], [0, 1]),
    ]
    batch = PadCollator(PAD, pad_to_multiple_of=4)(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0, 0, 0], [6, 7, 0, 0, 0, 0, 0, 0]]
    assert batch["labels"][1].tolist() == [-100, 7] + [-100] * 6
    # the pad tail is its own segment with restarting positions
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4, 5]]


# ---------------------------------------------------------------- pack()


def test_pack_every_example_exactly_once() -> None:
    rows = pack(EXAMPLES, max_length=8)
    seen: Counter[tuple[int, ...]] = Counter()
    for row in rows:
        for s, e in segments(row):
            seen[tuple(row.input_ids[s:e])] += 1
    assert seen == Counter(tuple(x.input_ids) for x in EXAMPLES)
    assert sum(len(r) for r in rows) == sum(len(x) for x in EXAMPLES)


def test_pack_rows_fit_and_are_consistent() -> None:
    rows = pack(EXAMPLES, max_length=8)
    assert len(rows) == 3  # 22 tokens, first-fit-decreasing: 7+1, 5+3, 4+2
    for row in rows:
        assert len(row) <= 8
        assert len(row.input_ids) == len(row.labels) == len(row.position_ids)


def test_pack_position_ids_restart_and_first_label_masked() -> None:
    by_first = {x.input_ids[0]: x for x in EXAMPLES}
    for row in pack(EXAMPLES, max_length=8):
        for s, e in segments(row):
            assert row.position_ids[s:e] == list(range(e - s))
            original = by_first[row.input_ids[s]]
            assert row.input_ids[s:e] == original.input_ids
            assert row.labels[s] == IGNORE_INDEX
            assert row.labels[s + 1 : e] == original.labels[1:]


def test_pack_first_fit_decreasing_layout() -> None:
    rows = pack(EXAMPLES, max_length=8)
    # members of a row keep their input order
    assert [[row.input_ids[s] for s, _ in segments(row)] for row in rows] == [
        [20, 50],
        [10, 40],
        [30, 60],
    ]


def test_pack_is_deterministic() -> None:
    a = pack(EXAMPLES, max_length=8)
    b = pack([TokenizedExample(list(x.input_ids), list(x.labels)) for x in EXAMPLES], 8)
    assert a == b


def test_pack_one_row_when_everything_fits() -> None:
    rows = pack(EXAMPLES, max_length=64)
    assert len(rows) == 1
    assert rows[0].input_ids == [t for x in EXAMPLES for t in x.input_ids]


def test_pack_exact_fit() -> None:
    rows = pack([ex([1, 2, 3, 4], 1), ex([5, 6, 7, 8], 1)], max_length=4)
    assert [r.input_ids for r in rows] == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_pack_empty() -> None:
    assert pack([], max_length=8) == []


# ---------------------------------------------------------------- packed loss == unpacked loss

CORPUS = [
    "What is 2 + 3?",
    "5",
    "Compute 7 * 8.",
    "The answer is 56.",
    "How can I help my neighbor?",
    "Bake them a cake.",
    "Hello there, how are you?",
]
CONVERSATIONS = [
    [Message("user", "What is 2 + 3?"), Message("assistant", "5")],
    [Message("user", "How can I help my neighbor?"), Message("assistant", "Bake them a cake.")],
    [Message("user", "Compute 7 * 8."), Message("assistant", "The answer is 56.")],
]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny_lm(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhfkit.models.tiny import TinySpec, build_tiny

    arch = request.param
    path: Path = tmp_path_factory.mktemp(f"tiny-{arch}")
    build_tiny(path, TinySpec(arch=arch, vocab_size=300, hidden=64, layers=2), CORPUS)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def unpacked_loss(model, examples: list[TokenizedExample]) -> tuple[float, int]:
    total, count = 0.0, 0
    for x in examples:
        logits = model(input_ids=torch.tensor([x.input_ids]), use_cache=False).logits
        s, c = token_nll_sum(logits, torch.tensor([x.labels]))
        total += float(s)
        count += int(c)
    return total, count


@torch.no_grad()
@pytest.mark.parametrize("max_length", [64, 36])
def test_packed_loss_equals_unpacked_loss(tiny_lm, max_length: int) -> None:
    model, tok = tiny_lm
    template = resolve_template(tok)
    examples = [tokenize(tok, template, c, max_length=64) for c in CONVERSATIONS]
    rows = pack(examples, max_length)
    assert len(rows) == (1 if max_length == 64 else 2)
    batch = PadCollator(tok.pad_token_id)(rows)
    logits = model(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
    ).logits
    packed_sum, packed_count = token_nll_sum(logits, batch["labels"])
    expected_sum, expected_count = unpacked_loss(model, examples)
    assert int(packed_count) == expected_count
    assert float(packed_sum) == pytest.approx(expected_sum, abs=1e-4)


@torch.no_grad()
def test_packing_without_position_ids_would_leak(tiny_lm) -> None:
    """The equality above is not vacuous: one causal sequence over the row differs."""
    model, tok = tiny_lm
    template = resolve_template(tok)
    examples = [tokenize(tok, template, c, max_length=64) for c in CONVERSATIONS]
    batch = PadCollator(tok.pad_token_id)(pack(examples, 64))
    logits = model(input_ids=batch["input_ids"], use_cache=False).logits
    leaky_sum, _ = token_nll_sum(logits, batch["labels"])
    expected_sum, _ = unpacked_loss(model, examples)
    assert abs(float(leaky_sum) - expected_sum) > 1e-2

"""Batched generation with left padding (rlhfkit.rollout.generation) on a tiny llama."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.data.templates import resolve_template, tokenize_prompt
from rlhfkit.data.types import Message
from rlhfkit.rollout.generation import SamplingParams, generate_texts, left_pad

CORPUS = [
    "What is 2 + 3?",
    "5",
    "Compute 7 * 8.",
    "The answer is 56.",
    "How can I help my neighbor?",
    "Bake them a cake.",
]
# Prompts of different lengths, so a batch needs padding.
PROMPTS = [
    (Message("user", q),)
    for q in [
        "What is 2 + 3?",
        "Hi",
        "How can I help my neighbor? Please tell me now.",
        "Compute 7 * 8.",
        "5",
    ]
]
GREEDY = SamplingParams(max_new_tokens=8)


# ---------------------------------------------------------------- left_pad


def test_sampled_params_take_the_stage_config_settings() -> None:
    from rlhfkit.config import GRPOConfig

    cfg = GRPOConfig(max_new_tokens=17, temperature=0.7, top_p=0.9, top_k=5)
    assert SamplingParams.sampled(cfg) == SamplingParams(
        max_new_tokens=17, do_sample=True, temperature=0.7, top_p=0.9, top_k=5
    )


def test_left_pad_shapes_and_mask() -> None:
    ids, mask = left_pad([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.shape == mask.shape == (3, 3)
    assert ids.dtype == mask.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]


def test_left_pad_equal_lengths_need_no_padding() -> None:
    ids, mask = left_pad([[1, 2], [3, 4]], pad_id=9)
    assert ids.tolist() == [[1, 2], [3, 4]]
    assert mask.tolist() == [[1, 1], [1, 1]]


def test_left_pad_uses_pad_id() -> None:
    ids, _ = left_pad([[1], [2, 3, 4]], pad_id=42)
    assert ids[0].tolist() == [42, 42, 1]


# ---------------------------------------------------------------- generate_texts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny llama with weights pushed away from the copy-the-last-token init.

    Freshly initialised tied-embedding models greedily repeat their input's last
    token (``<|assistant|>``, a special token), so every output would be empty;
    perturbing the matrices gives varied, printable output."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhfkit.models.tiny import TinySpec, build_tiny

    path = build_tiny(
        tmp_path_factory.mktemp("tiny-gen"),
        TinySpec(vocab_size=300, hidden=32, layers=1, heads=2, max_positions=128),
        CORPUS,
    )
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model, tok, resolve_template(tok)


@torch.no_grad()
def reference_greedy(model, tok, template: str, prompt, max_new_tokens: int) -> str:
    """Greedy decoding one prompt at a time: no padding, no KV cache, full forward each step."""
    ids = tokenize_prompt(tok, template, prompt, 512)
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(input_ids=torch.tensor([ids + new]), use_cache=False).logits
        nxt = int(logits[0, -1].argmax())
        new.append(nxt)
        if nxt == tok.eos_token_id:
            break
    return tok.decode(new, skip_special_tokens=True).strip()


def test_one_string_per_prompt(tiny) -> None:
    model, tok, template = tiny
    out = generate_texts(model, tok, template, PROMPTS, GREEDY)
    assert isinstance(out, list)
    assert len(out) == len(PROMPTS)
    assert all(isinstance(t, str) for t in out)
    assert any(t for t in out)  # not vacuous: the model does produce text
    assert generate_texts(model, tok, template, [], GREEDY) == []


def test_greedy_is_deterministic(tiny) -> None:
    model, tok, template = tiny
    a = generate_texts(model, tok, template, PROMPTS, GREEDY)
    b = generate_texts(model, tok, template, PROMPTS, GREEDY)
    assert a == b


@pytest.mark.parametrize("batch_size", [2, 8])
def test_batch_size_does_not_change_greedy_outputs(tiny, batch_size: int) -> None:
    model, tok, template = tiny
    one = generate_texts(model, tok, template, PROMPTS, GREEDY, batch_size=1)
    many = generate_texts(model, tok, template, PROMPTS, GREEDY, batch_size=batch_size)
    assert many == one


def test_left_padded_batch_matches_unpadded_reference(tiny) -> None:
    model, tok, template = tiny
    out = generate_texts(model, tok, template, PROMPTS, GREEDY, batch_size=8)
    expected = [reference_greedy(model, tok, template, p, GREEDY.max_new_tokens) for p in PROMPTS]
    assert out == expected


def test_training_mode_is_restored(tiny) -> None:
    model, tok, template = tiny
    model.train()
    try:
        generate_texts(model, tok, template, PROMPTS[:2], GREEDY)
        assert model.training
    finally:
        model.eval()
    generate_texts(model, tok, template, PROMPTS[:2], GREEDY)
    assert not model.training


def test_sampling_is_reproducible_with_a_seed(tiny) -> None:
    model, tok, template = tiny
    params = SamplingParams(max_new_tokens=8, do_sample=True, temperature=1.0, top_k=0)
    torch.manual_seed(0)
    a = generate_texts(model, tok, template, PROMPTS, params)
    torch.manual_seed(0)
    b = generate_texts(model, tok, template, PROMPTS, params)
    assert a == b
    assert len(a) == len(PROMPTS)

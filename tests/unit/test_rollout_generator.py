"""Rollouts (rlhfkit.rollout.generator) and the online-stage plumbing around them
(rlhfkit.training.online): response masks, batched generation on a tiny Llama,
concatenating rollouts, the prompt schedule, minibatch selection, global whitening."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.algorithms.ppo import masked_whiten
from rlhfkit.data.templates import resolve_template, tokenize_prompt
from rlhfkit.data.types import Message
from rlhfkit.rollout.generation import SamplingParams, generate_texts
from rlhfkit.rollout.generator import Generator, Rollout, response_mask
from rlhfkit.training.online import (
    Experience,
    PromptSchedule,
    concat_rollouts,
    global_whiten,
)

# ---------------------------------------------------------------- response_mask


def test_response_mask_includes_the_first_eos_only() -> None:
    eos = 2
    ids = torch.tensor(
        [
            [5, 6, 2, 7],  # EOS at 2: mask through it, the token after is not the response
            [5, 2, 2, 2],  # several EOS: the first one ends the response
            [5, 6, 7, 8],  # no EOS: truncated, all 4 tokens kept
            [2, 9, 9, 9],  # EOS first: a response of just EOS
            [5, 6, 7, 2],  # EOS on the last position: complete, not truncated
        ]
    )
    mask, truncated = response_mask(ids, eos)
    assert mask.tolist() == [
        [1, 1, 1, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 1],
        [1, 0, 0, 0],
        [1, 1, 1, 1],
    ]
    assert truncated.tolist() == [False, False, True, False, False]


def test_response_mask_when_pad_is_eos() -> None:
    # Tokenizers without a pad token pad with EOS: generate() fills finished rows with
    # the same id, and only the first EOS belongs to the response.
    eos = pad = 0
    ids = torch.tensor([[5, eos, pad, pad], [5, 6, 7, eos], [5, 6, 7, 8], [eos, pad, pad, pad]])
    mask, truncated = response_mask(ids, eos)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, False, True, False]


# ---------------------------------------------------------------- Generator on a tiny Llama

QUESTIONS = [
    "What is 2 + 3?",
    "Hi",
    "How can I help my neighbor? Please tell me now.",
    "Compute 7 * 8.",
    "5",
    "Name a fruit.",
]
PROMPTS = [[Message("user", q)] for q in QUESTIONS]
MAX_NEW = 10


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    """The session's tiny Llama (a private copy), its weights perturbed and the EOS logit
    raised by 4, so greedy decoding ends some responses early (EOS) and runs others to
    the limit. (A fresh tied-embedding model just repeats the prompt's last token.)"""
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(str(tiny_llama))
    model = load_causal_lm(str(tiny_llama))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    bias = torch.zeros(model.config.vocab_size)
    bias[tok.eos_token_id] = 4.0
    model.lm_head.register_forward_hook(lambda mod, inp, out: out + bias)
    model.eval()
    return model, tok, resolve_template(tok)


@pytest.fixture(scope="module")
def greedy(tiny) -> Rollout:
    model, tok, template = tiny
    return Generator(tok, template, SamplingParams(max_new_tokens=MAX_NEW)).generate(model, PROMPTS)


@torch.no_grad()
def one_at_a_time(model, tok, template, prompt) -> list[int]:
    """Greedy decoding of one prompt: no padding, no KV cache, a full forward per token."""
    ids = tokenize_prompt(tok, template, prompt, 512)
    new: list[int] = []
    for _ in range(MAX_NEW):
        nxt = int(
            model(input_ids=torch.tensor([ids + new]), use_cache=False).logits[0, -1].argmax()
        )
        new.append(nxt)
        if nxt == tok.eos_token_id:
            break
    return new


def test_generate_shapes_and_left_padded_prompts(tiny, greedy: Rollout) -> None:
    _model, tok, template = tiny
    encoded = [tokenize_prompt(tok, template, p, 512) for p in PROMPTS]
    width = max(len(e) for e in encoded)
    n = len(PROMPTS)
    assert len(greedy) == n
    assert greedy.prompt_ids.shape == greedy.prompt_mask.shape == (n, width)
    assert greedy.response_ids.shape == greedy.response_mask.shape
    assert greedy.response_ids.shape[0] == n and greedy.response_ids.shape[1] <= MAX_NEW
    assert greedy.truncated.shape == (n,) and len(greedy.texts) == n
    for i, e in enumerate(encoded):
        pad = width - len(e)
        assert greedy.prompt_ids[i, pad:].tolist() == e
        assert greedy.prompt_ids[i, :pad].tolist() == [tok.pad_token_id] * pad
        assert greedy.prompt_mask[i].tolist() == [0] * pad + [1] * len(e)
    assert greedy.input_ids.shape == (n, width + greedy.response_ids.shape[1])
    torch.testing.assert_close(
        greedy.attention_mask, torch.cat([greedy.prompt_mask, greedy.response_mask], 1)
    )


def test_generate_mask_ends_at_eos(tiny, greedy: Rollout) -> None:
    _, tok, _ = tiny
    eos, pad = tok.eos_token_id, tok.pad_token_id
    # Not vacuous: this model ends some responses with EOS and runs others to the limit.
    assert greedy.truncated.any() and not greedy.truncated.all()
    for ids, mask, trunc, length in zip(
        greedy.response_ids, greedy.response_mask, greedy.truncated, greedy.lengths, strict=True
    ):
        n = int(length)
        assert mask.tolist() == [1] * n + [0] * (len(mask) - n)  # a prefix
        assert ids[n:].tolist() == [pad] * (len(ids) - n)  # padding after it
        assert eos not in ids[: n - 1].tolist()  # no EOS before the end
        if trunc:
            assert n == MAX_NEW and ids[n - 1] != eos
        else:
            assert ids[n - 1] == eos


def test_generate_texts_equal_decoding_the_masked_tokens(tiny, greedy: Rollout) -> None:
    _, tok, _ = tiny
    assert any(greedy.texts)
    for ids, mask, text in zip(
        greedy.response_ids, greedy.response_mask, greedy.texts, strict=True
    ):
        assert text == tok.decode(ids[mask.bool()], skip_special_tokens=True).strip()


def test_generate_matches_unbatched_greedy_and_generate_texts(tiny, greedy: Rollout) -> None:
    model, tok, template = tiny
    for i, prompt in enumerate(PROMPTS):
        expected = one_at_a_time(model, tok, template, prompt)
        row = greedy.response_ids[i][greedy.response_mask[i].bool()].tolist()
        assert row == expected, QUESTIONS[i]
    texts = generate_texts(
        model, tok, template, PROMPTS, SamplingParams(max_new_tokens=MAX_NEW), batch_size=4
    )
    assert texts == greedy.texts


def test_generate_restores_training_mode(tiny) -> None:
    model, tok, template = tiny
    model.train()
    try:
        Generator(tok, template, SamplingParams(max_new_tokens=2)).generate(model, PROMPTS[:2])
        assert model.training
    finally:
        model.eval()


def test_sampled_rollout_is_well_formed(tiny) -> None:
    model, tok, template = tiny
    gen = Generator(tok, template, SamplingParams(max_new_tokens=6, do_sample=True, top_k=50))
    torch.manual_seed(0)
    a = gen.generate(model, PROMPTS)
    torch.manual_seed(0)
    b = gen.generate(model, PROMPTS)
    assert a.texts == b.texts
    torch.testing.assert_close(a.response_ids, b.response_ids)
    mask, truncated = response_mask(a.response_ids, tok.eos_token_id)
    torch.testing.assert_close(mask, a.response_mask)
    assert truncated.tolist() == a.truncated.tolist()


# ---------------------------------------------------------------- concat_rollouts


def rollout(p_ids, p_mask, r_ids, r_mask, truncated, texts) -> Rollout:
    long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return Rollout(
        long(p_ids), long(p_mask), long(r_ids), long(r_mask), torch.tensor(truncated), texts
    )


def test_concat_rollouts_repads_prompts_left_and_responses_right() -> None:
    pad = 0
    a = rollout(
        [[0, 7, 8], [9, 9, 9]],
        [[0, 1, 1], [1, 1, 1]],
        [[4, 1], [5, 5]],
        [[1, 1], [1, 1]],
        [False, True],
        ["a", "b"],
    )
    b = rollout([[6]], [[1]], [[3, 3, 1, 0]], [[1, 1, 1, 0]], [False], ["c"])
    out = concat_rollouts([a, b], pad)
    assert out.prompt_ids.tolist() == [[0, 7, 8], [9, 9, 9], [0, 0, 6]]
    assert out.prompt_mask.tolist() == [[0, 1, 1], [1, 1, 1], [0, 0, 1]]
    assert out.response_ids.tolist() == [[4, 1, 0, 0], [5, 5, 0, 0], [3, 3, 1, 0]]
    assert out.response_mask.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]
    assert out.truncated.tolist() == [False, True, False]
    assert out.texts == ["a", "b", "c"]
    assert concat_rollouts([a], pad) is a


def test_concat_rollouts_pads_with_the_pad_id() -> None:
    a = rollout([[5, 6]], [[1, 1]], [[4]], [[1]], [True], ["a"])
    b = rollout([[5]], [[1]], [[3, 2]], [[1, 1]], [False], ["b"])
    out = concat_rollouts([a, b], pad_id=42)
    assert out.prompt_ids.tolist() == [[5, 6], [42, 5]]
    assert out.response_ids.tolist() == [[4, 42], [3, 2]]
    assert out.response_mask.tolist() == [[1, 0], [1, 1]]


# ---------------------------------------------------------------- PromptSchedule


def test_schedule_is_deterministic_and_seeded() -> None:
    a = [PromptSchedule(10, 3, seed=1).indices(s) for s in range(4)]
    b = [PromptSchedule(10, 3, seed=1).indices(s) for s in range(4)]
    c = [PromptSchedule(10, 3, seed=2).indices(s) for s in range(4)]
    assert a == b
    assert a != c
    assert all(len(x) == 3 for x in a)


def test_schedule_covers_every_prompt_once_per_pass() -> None:
    s = PromptSchedule(12, 4, seed=0)
    assert s.steps_per_pass() == 3
    first = [i for step in range(3) for i in s.indices(step)]
    second = [i for step in range(3, 6) for i in s.indices(step)]
    assert sorted(first) == list(range(12)) and sorted(second) == list(range(12))
    assert first != second  # a new permutation per pass
    assert first != list(range(12))  # shuffled


def test_schedule_steps_across_a_pass_boundary() -> None:
    # 5 prompts, 2 per step: steps 0-1 take positions 0-3, step 2 takes position 4 (the
    # last of pass 0) and position 0 of pass 1.
    s = PromptSchedule(5, 2, seed=3)
    pass0 = s.indices(0) + s.indices(1) + s.indices(2)[:1]
    assert sorted(pass0) == list(range(5))
    pass1 = s.indices(2)[1:] + s.indices(3) + s.indices(4)
    assert sorted(pass1) == list(range(5))


def test_schedule_processes_take_disjoint_shares() -> None:
    world, per_step, n = 3, 2, 18  # 6 prompts per step across processes: 3 steps per pass
    ranks = [PromptSchedule(n, per_step, seed=5, rank=r, world=world) for r in range(world)]
    assert ranks[0].steps_per_pass() == 3
    seen: list[int] = []
    for step in range(3):
        shares = [r.indices(step) for r in ranks]
        assert all(len(x) == per_step for x in shares)
        flat = [i for x in shares for i in x]
        assert len(set(flat)) == len(flat)  # disjoint within the step
        seen += flat
    assert sorted(seen) == list(range(n))  # and together one full pass
    # The union over processes is what a single process with per_step * world would take.
    single = PromptSchedule(n, per_step * world, seed=5)
    for step in range(3):
        assert sorted(i for r in ranks for i in r.indices(step)) == sorted(single.indices(step))


def test_schedule_is_resumable() -> None:
    # indices(step) depends on (seed, step) only, not on which steps were asked before.
    walked = PromptSchedule(7, 3, seed=11)
    history = [walked.indices(s) for s in range(10)]
    fresh = PromptSchedule(7, 3, seed=11)
    assert fresh.indices(9) == history[9]
    assert fresh.indices(2) == history[2]  # going back to an earlier pass
    assert fresh.indices(6) == history[6]
    assert walked.indices(0) == history[0]


# ---------------------------------------------------------------- Experience.select


def make_experience(with_values: bool) -> Experience:
    # 3 rows, prompt width 2, response width 5; response lengths 2, 4, 1.
    b, p, r = 3, 2, 5
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
    ar = torch.arange(b * (p + r)).reshape(b, p + r)
    resp = torch.arange(100, 100 + b * r).reshape(b, r)
    attn = torch.cat([torch.ones(b, p, dtype=torch.long), mask.long()], 1)
    per_token = torch.arange(b * r, dtype=torch.float32).reshape(b, r) / 10
    return Experience(
        input_ids=ar,
        attention_mask=attn,
        position_ids=ar * 2,
        response_ids=resp,
        mask=mask,
        old_logps=-per_token,
        advantages=per_token,
        values=per_token + 1 if with_values else None,
    )


def test_select_drops_trailing_all_pad_columns() -> None:
    exp = make_experience(with_values=True)
    sub = exp.select(torch.tensor([2, 0]))  # lengths 1 and 2: 2 response columns left
    assert sub.response_ids.tolist() == [[110, 111], [100, 101]]
    assert sub.mask.tolist() == [[1, 0], [1, 1]]
    assert sub.input_ids.tolist() == [[14, 15, 16, 17], [0, 1, 2, 3]]  # prompt 2 + response 2
    assert sub.attention_mask.shape == sub.position_ids.shape == (2, 4)
    assert sub.position_ids.tolist() == [[28, 30, 32, 34], [0, 2, 4, 6]]
    torch.testing.assert_close(sub.advantages, torch.tensor([[1.0, 1.1], [0.0, 0.1]]))
    torch.testing.assert_close(sub.old_logps, -sub.advantages)
    assert sub.values is not None
    torch.testing.assert_close(sub.values, sub.advantages + 1)
    assert sub.ref_logps is None and sub.returns is None
    assert sub.prompt_len == 2


def test_select_keeps_the_widest_selected_response() -> None:
    exp = make_experience(with_values=False)
    sub = exp.select(torch.tensor([0, 1]))  # lengths 2 and 4
    assert sub.response_ids.shape == (2, 4) and sub.input_ids.shape == (2, 6)
    assert sub.values is None
    full = exp.select(torch.tensor([1]))
    assert full.mask.tolist() == [[1, 1, 1, 1]]
    assert exp.response_ids.shape == (3, 5)  # the original is untouched


# ---------------------------------------------------------------- global_whiten


class OneProcess:
    """Stands in for a TrainingRun in a single process: the global sum is the value."""

    def global_sum(self, value: float) -> float:
        return value


def test_global_whiten_equals_masked_whiten_in_one_process() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g) * 3 + 2
    mask = torch.tensor(
        [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]],
        dtype=torch.float32,
    )
    x = x + (1 - mask) * 1000  # junk on padding must not matter
    out = global_whiten(OneProcess(), x, mask)  # type: ignore[arg-type]
    torch.testing.assert_close(out, masked_whiten(x, mask), atol=1e-5, rtol=0)
    assert (out[mask == 0] == 0).all()


def test_global_whiten_hand_values() -> None:
    # masked values 1 2 3 4 5: mean 3, unbiased var 2.5, std 1.5811388
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    out = global_whiten(OneProcess(), x, mask)  # type: ignore[arg-type]
    expected = [[-1.2649111, -0.6324555, 0.0, 0.0], [0.6324555, 1.2649111, 0.0, 0.0]]
    torch.testing.assert_close(out, torch.tensor(expected), atol=1e-5, rtol=0)


def test_encode_left_truncates_long_prompts_and_counts_them(tiny, caplog) -> None:
    _, tok, template = tiny
    full = [tokenize_prompt(tok, template, p, 512) for p in PROMPTS]
    limit = sorted(len(f) for f in full)[len(full) // 2]  # about half are longer
    gen = Generator(tok, template, SamplingParams(max_new_tokens=MAX_NEW), limit)
    with caplog.at_level("WARNING", logger="rlhfkit"):
        ids = gen.encode(PROMPTS)
        gen.encode(PROMPTS)
    assert ids == [f[-limit:] for f in full]  # the end (the assistant turn) is kept
    cut = sum(len(f) > limit for f in full)
    assert cut > 0 and gen.truncated_prompts == 2 * cut
    assert (
        f"{cut} of {len(PROMPTS)} prompts were longer than max_prompt_length={limit}" in caplog.text
    )
    assert f"({2 * cut} so far)" in caplog.text

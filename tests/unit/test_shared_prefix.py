"""rlhfkit.training.online.forward_response: rows that share a prompt (GRPO's samples of
one prompt) run the prompt once and the responses on its KV cache; the logits, hidden
states and parameter gradients equal one forward over prompt + response per row, on
the tiny Llama, GPT-2 and Qwen2, with left-padded prompts of different lengths and
right-padded responses of different lengths."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.data.templates import resolve_template, tokenize_prompt
from rlhfkit.data.types import Message
from rlhfkit.models.reward import positions_from_mask
from rlhfkit.rollout.generation import left_pad
from rlhfkit.training.online import (
    Experience,
    forward_full,
    forward_response,
    forward_shared_prompt,
    shared_prompts,
)

QUESTIONS = ["What is 2 + 3?", "What is 17 + 25? Please answer with the number only.", "Hi."]


@pytest.fixture(scope="module", params=["llama", "gpt2", "qwen2"])
def model_and_tok(request):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = request.getfixturevalue(f"tiny_{request.param}")
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def experience(tok, group: int, width: int = 7, seed: int = 0) -> Experience:
    """``group`` rows per question, responses of random tokens and lengths 1..width."""
    template = resolve_template(tok, "auto")
    rows = [tokenize_prompt(tok, template, [Message("user", q)], 64) for q in QUESTIONS]
    ids, mask = left_pad([r for r in rows for _ in range(group)], tok.pad_token_id)
    g = torch.Generator().manual_seed(seed)
    n = ids.shape[0]
    response = torch.randint(10, 200, (n, width), generator=g)
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    r_mask = (torch.arange(width)[None] < lengths[:, None]).long()
    response = response.masked_fill(r_mask == 0, tok.pad_token_id)
    input_ids = torch.cat([ids, response], dim=1)
    attention = torch.cat([mask, r_mask], dim=1)
    zeros = torch.zeros(n, width)
    return Experience(
        input_ids, attention, positions_from_mask(attention), response, r_mask.float(), zeros, zeros
    )


def test_shared_prompts_groups_equal_prompts(model_and_tok) -> None:
    _, tok = model_and_tok
    exp = experience(tok, group=4)
    first, inverse = shared_prompts(exp)
    assert len(first) == 3 and inverse.shape == (12,)
    p = exp.prompt_len
    for row, k in enumerate(inverse.tolist()):  # each row's prompt is its group's
        assert torch.equal(exp.input_ids[row, :p], exp.input_ids[first[k], :p])
    assert shared_prompts(experience(tok, group=1)) is None  # nothing repeats


@pytest.mark.parametrize("hidden", [False, True])
def test_shared_prompt_forward_equals_the_full_forward(model_and_tok, hidden) -> None:
    model, tok = model_and_tok
    model.train()  # dropout is 0 in the tiny models; train mode is what the update runs
    exp = experience(tok, group=4)
    shared = shared_prompts(exp)
    assert shared is not None

    def run(fn):
        model.zero_grad()
        logits, states = fn()
        w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
        loss = (logits * w * exp.mask[..., None]).sum()
        if states is not None:
            loss = loss + states.pow(2).sum() * 1e-2
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logits.detach(), states, grads

    full = run(lambda: forward_full(model, exp, hidden))
    part = run(lambda: forward_shared_prompt(model, exp, *shared, hidden=hidden))
    m = exp.mask.bool()
    assert part[0].shape == full[0].shape
    torch.testing.assert_close(part[0][m], full[0][m], rtol=1e-4, atol=1e-5)
    if hidden:
        torch.testing.assert_close(part[1][m].detach(), full[1][m].detach(), rtol=1e-4, atol=1e-5)
    assert full[2].keys() == part[2].keys()
    for name, g in full[2].items():  # float sums in another order: relative to the scale
        scale = float(g.abs().max()) + 1e-12
        err = float((part[2][name] - g).abs().max())
        assert err <= 1e-4 * scale, (name, err, scale)


def test_forward_response_shares_only_where_it_can(model_and_tok, monkeypatch) -> None:
    from rlhfkit.training import online

    model, tok = model_and_tok
    model.eval()
    calls = []
    real = online.forward_shared_prompt
    monkeypatch.setattr(
        online, "forward_shared_prompt", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    with torch.no_grad():
        grouped = experience(tok, group=4)
        logits, _ = forward_response(model, grouped)
        assert calls == [1] and logits.shape[:2] == grouped.response_ids.shape
        forward_response(model, experience(tok, group=1))  # distinct prompts: one forward
        assert calls == [1]
        one = experience(tok, group=4, width=1)  # one response token: the prompt pass only
        torch.testing.assert_close(
            forward_response(model, one)[0], forward_full(model, one)[0], rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("frozen", [True, False])
def test_batched_logps_are_ordinary_tensors(model_and_tok, frozen) -> None:
    """``OnlineRun.token_logps`` runs a frozen model's forwards in inference mode and a
    trained one's in no_grad; either way it returns the no-grad forward's log-probs as
    an ordinary tensor, which a loss may save for its backward (an inference tensor
    would make that backward raise)."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from rlhfkit.algorithms.logprobs import token_logps
    from rlhfkit.training.online import OnlineRun

    model, tok = model_and_tok
    model.eval()
    exp = experience(tok, group=4)
    run = SimpleNamespace(
        cfg=SimpleNamespace(batch_size=5, temperature=0.7),  # micro-batches cut groups
        accelerator=SimpleNamespace(autocast=nullcontext),
    )
    logps, values = OnlineRun.token_logps(run, model, exp, frozen=frozen)
    assert values is None and not logps.is_inference()
    with torch.no_grad():
        expected = token_logps(forward_full(model, exp)[0] / 0.7, exp.response_ids) * exp.mask
    torch.testing.assert_close(logps, expected, rtol=1e-4, atol=1e-5)
    x = torch.zeros_like(logps, requires_grad=True)
    (x * logps).sum().backward()  # mul saves logps for the backward
    torch.testing.assert_close(x.grad, logps)

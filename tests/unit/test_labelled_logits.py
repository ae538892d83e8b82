"""Less work per step at the same math: the output head on labelled positions only
(``rlhfkit.models.heads.labelled_logits``), packed rows wider than the longest
example where that costs less (``pack_width``), and the fused AdamW step."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit.algorithms.sft import selected_nll_sum, token_nll_sum
from rlhfkit.data.batching import PadCollator, batch_logps, pack_batch, pack_width
from rlhfkit.data.templates import IGNORE_INDEX, TokenizedExample
from rlhfkit.models.heads import labelled_logits


def rows(tok, n: int = 10) -> list[TokenizedExample]:
    from rlhfkit.data.templates import resolve_template, tokenize_conversation
    from rlhfkit.data.types import Message

    template = resolve_template(tok, "auto")
    out = []
    for i in range(n):
        reply = str(3 * i) if i % 3 else f"The answer is {3 * i}, since {i} + {2 * i} = {3 * i}."
        conv = (Message("user", f"What is {i} + {2 * i}?"), Message("assistant", reply))
        out.append(tokenize_conversation(tok, template, conv, 64))
    return out


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2", "tiny_qwen2"])
@pytest.mark.parametrize("packed", [False, True])
def test_labelled_logits_give_the_full_forwards_loss_and_gradients(request, arch, packed):
    path = request.getfixturevalue(arch)
    model = AutoModelForCausalLM.from_pretrained(path).train()
    tok = AutoTokenizer.from_pretrained(path)
    batch = (
        pack_batch(rows(tok), tok.pad_token_id)
        if packed
        else PadCollator(tok.pad_token_id)(rows(tok))
    )
    keys = ("input_ids", "position_ids") if packed else ("input_ids", "attention_mask")
    inputs = {k: batch[k] for k in keys}

    full = model(**inputs, use_cache=False).logits
    want, count = token_nll_sum(full, batch["labels"])
    want.backward()
    want_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    logits, targets, mask = labelled_logits(model, inputs, batch["labels"])
    assert logits.shape == (int(count), full.size(-1))  # the head ran on labelled positions only
    assert torch.equal(targets, batch["labels"][:, 1:][mask])
    assert torch.allclose(logits, full[:, :-1][mask], atol=1e-5)
    got = selected_nll_sum(logits, targets)
    got.backward()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    for g, w in zip((p.grad for p in model.parameters()), want_grads, strict=True):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-6)  # summation order differs
    assert not getattr(model, "_rlhfkit_full_logits", False)


class RowByRowHead(torch.nn.Module):
    """A causal LM whose forward runs its head one row at a time (as some remote code
    does): the head never sees the ``(B, T, H)`` states, so it cannot be narrowed."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.inner.lm_head

    def forward(self, input_ids, attention_mask=None, **kw):
        h = self.inner.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = torch.stack([self.inner.lm_head(row) for row in h])
        return type("Out", (), {"logits": logits})()


def test_a_head_that_cannot_be_narrowed_falls_back_to_full_logits(tiny_llama, caplog):
    inner = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    batch = PadCollator(tok.pad_token_id)(rows(tok))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    model = RowByRowHead(inner)
    with caplog.at_level(logging.WARNING, logger="rlhfkit"), torch.no_grad():
        logits, _, mask = labelled_logits(model, inputs, batch["labels"])
        again, _, _ = labelled_logits(model, inputs, batch["labels"])
    full = inner(**inputs, use_cache=False).logits[:, :-1][mask]
    assert torch.allclose(logits, full, atol=1e-5) and torch.allclose(again, full, atol=1e-5)
    assert model._rlhfkit_full_logits is True
    assert sum("computing logits at every position" in r.message for r in caplog.records) == 1


def test_batch_logps_counts_every_labelled_token_once(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    examples = rows(tok)
    with torch.no_grad():
        padded, n_padded = batch_logps(model, PadCollator(tok.pad_token_id)(examples))
        wide = pack_batch(examples, tok.pad_token_id, hidden_size=10**6)  # one row
        packed, n_packed = batch_logps(model, wide)
    assert wide["input_ids"].size(0) == 1
    assert n_padded.tolist() == [sum(x != IGNORE_INDEX for x in ex.labels[1:]) for ex in examples]
    assert torch.equal(n_packed, n_padded)
    assert torch.allclose(packed, padded, atol=1e-4)


def test_pack_width_hand_worked():
    lengths = [10, 10, 10, 2]  # total 32
    assert pack_width(lengths) == 10  # no hidden size: the longest example
    # h = 8: width 10 -> 4 rows, 40 * (1 + 10/48) = 48.3; width 20 -> 2 rows,
    # 40 * (1 + 20/48) = 56.7; width 32 (the total) -> 1 row, 32 * (1 + 32/48) = 53.3
    assert pack_width(lengths, hidden_size=8) == 10
    # h = 1000: attention is cheap next to the projections: one row of 32 positions
    assert pack_width(lengths, hidden_size=1000) == 32
    # 24 short examples of 11..29 tokens, h = 128: twice the longest wastes least
    mixed = [11 + (7 * i) % 19 for i in range(24)]
    assert pack_width(mixed, hidden_size=128) == 2 * max(mixed)


def test_pack_batch_keeps_examples_whole_at_any_width():
    examples = [
        TokenizedExample(list(range(1, n + 1)), [IGNORE_INDEX, *range(2, n + 1)])
        for n in (5, 3, 3, 2)
    ]
    batch = pack_batch(examples, pad_token_id=0, hidden_size=10**6)
    assert batch["input_ids"].shape == (1, 13)
    seg = batch["segments"][0].tolist()
    assert sorted(seg) == [0] * 5 + [1] * 3 + [2] * 3 + [3] * 2
    pos = batch["position_ids"][0].tolist()
    assert [pos[i] for i in range(13) if i == 0 or seg[i] != seg[i - 1]] == [0, 0, 0, 0]


def test_optimizer_is_fused_adamw_and_falls_back_where_it_cannot_be(monkeypatch):
    from types import SimpleNamespace

    from rlhfkit.training import loop

    cfg = SimpleNamespace(
        learning_rate=1e-3, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8
    )
    opt = loop.build_optimizer(torch.nn.Linear(4, 4), cfg)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True

    class NoFusedKernel(torch.optim.AdamW):  # as torch answers a device without one
        def __init__(self, params, fused=None, **kw):
            if fused:
                raise RuntimeError(
                    "`fused=True` requires all the params to be on a supported device"
                )
            super().__init__(params, **kw)

    monkeypatch.setattr(loop.torch.optim, "AdamW", NoFusedKernel)
    opt = loop.build_optimizer(torch.nn.Linear(4, 4), cfg)
    assert isinstance(opt, NoFusedKernel) and not opt.defaults["fused"]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # the same groups

"""rlhfkit.rollout.decoding: the one-token decoding step gives bitwise the logits of the
model's own forward (Llama with and without grouped-query attention and biases, Qwen2;
left-padded and unpadded batches; projections joined or separate), writes the same
cache, and refuses what it does not cover; the sampler uses it for Llama and Qwen2."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, Qwen2Config

from rlhfkit.rollout import decoding, sampler
from rlhfkit.rollout.decoding import LlamaStyleStep

SHAPE = {
    "vocab_size": 97,
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
}

CONFIGS = {
    "llama": lambda: LlamaConfig(**SHAPE, num_key_value_heads=4),
    "llama_gqa": lambda: LlamaConfig(**SHAPE, num_key_value_heads=2),
    "llama_bias": lambda: LlamaConfig(**SHAPE, attention_bias=True, mlp_bias=True),
    "qwen2": lambda: Qwen2Config(**SHAPE, num_key_value_heads=2),
}


def make(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    config = CONFIGS[name]()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", **kwargs)
    with torch.no_grad():  # biases start at zero: give them values so they count
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    return model.eval()


@pytest.mark.parametrize("join", [True, False], ids=["joined", "separate"])
@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_equals_the_forward_bitwise(name, padded, join) -> None:
    model = make(name)
    step, why = LlamaStyleStep.build(model, join=join)
    assert step is not None, why
    assert (step.layers[0].qkv.weight is not None) is join
    g = torch.Generator().manual_seed(1)
    rows, prompt = 5, 7
    ids = torch.randint(1, 97, (rows, prompt), generator=g)
    mask = torch.ones(rows, prompt, dtype=torch.long)
    if padded:
        mask[0, :3] = 0
        mask[3, :1] = 0
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.inference_mode():
        caches = [DynamicCache(config=model.config) for _ in range(2)]
        for cache in caches:
            model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache)
        pos = positions[:, -1:]
        for _ in range(6):
            tokens = torch.randint(1, 97, (rows, 1), generator=g)
            pos = pos + 1
            mask = torch.cat([mask, torch.ones(rows, 1, dtype=torch.long)], dim=1)
            want = model(
                input_ids=tokens,
                attention_mask=mask if padded else None,
                position_ids=pos,
                cache=caches[0],
                logits_to_keep=1,
            ).logits[:, -1]
            got = step.step(tokens, pos, mask.bool()[:, None, None] if padded else None, caches[1])
            assert torch.equal(got, want), (got - want).abs().max()
        for a, b in zip(caches[0].layers, caches[1].layers, strict=True):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_joins_weights_only_while_the_copy_is_small(monkeypatch) -> None:
    model = make("llama")
    step, _ = LlamaStyleStep.build(model)
    assert step is not None and step.layers[0].gate_up.weight is not None
    monkeypatch.setattr(decoding, "JOIN_LIMIT_BYTES", 1 << 10)
    step, _ = LlamaStyleStep.build(model)
    assert step is not None and step.layers[0].gate_up.weight is None
    assert step.layers[0].qkv.weight is None


def test_refuses_what_it_does_not_cover(tiny_gpt2) -> None:
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    assert LlamaStyleStep.build(gpt2) == (None, "architecture 'gpt2' has no decoding step")

    eager = make("llama")
    eager.config._attn_implementation = "eager"
    step, why = LlamaStyleStep.build(eager)
    assert step is None and "attention implementation 'eager'" in why

    window = Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=8, max_window_layers=1)
    qwen = AutoModelForCausalLM.from_config(window, attn_implementation="sdpa")
    step, why = LlamaStyleStep.build(qwen)
    assert step is None and "sliding_attention" in why

    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(make("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert LlamaStyleStep.build(lora) == (None, "PeftModel is not a plain llama causal LM")
    step, why = LlamaStyleStep.build(lora.base_model.model)  # the adapted model itself
    assert step is None and "not plain Linear" in why


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_sampler_decodes_with_the_step(arch, request, monkeypatch) -> None:
    """The fast loop runs every token after the first through the step (and the tokens
    are generate's: tests/unit/test_fast_sampler.py)."""
    path = request.getfixturevalue(f"tiny_{arch}")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    calls = []
    real = LlamaStyleStep.step
    monkeypatch.setattr(LlamaStyleStep, "step", lambda self, *a: calls.append(1) or real(self, *a))
    ids = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]])
    mask = (ids != 0).long()
    seqs = sampler.fast_generate(
        model, ids, mask, max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    assert seqs is not None and seqs.shape == (2, 10)
    assert len(calls) == 4  # the first token comes from the prompt's forward

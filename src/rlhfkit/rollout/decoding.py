"""One-token decoding steps of Llama-style models, without transformers' per-call work.

A decoding step of a small model spends more time around the computation than in it:
``model(input_ids=..., cache=...)`` for one token per row goes through the output
wrappers and keyword deprecation shims of three ``forward`` methods, builds the 4-D
attention mask again (``create_causal_mask``), resolves the attention function per
layer and dispatches every submodule through ``nn.Module.__call__``. On the tiny Llama
(64 rows, 4 layers) that is ~4.7 ms per step for ~2 ms of arithmetic.

:class:`LlamaStyleStep` runs the same computation from the model's own parts: its
embedding, rotary embedding, RMSNorm and MLP modules, its projections' weights, the
architecture's ``rotate_half`` (``apply_rotary_pos_emb``'s formula, applied to the query
and key heads in one pass) and transformers' SDPA attention function with the mask
``create_causal_mask`` would build for one query token (the 2-D mask as
``(B, 1, 1, T)`` booleans; none when nothing is padded).
The logits are bitwise those of the model's forward (tests/unit/test_decoding.py, Llama
and Qwen2, padded and unpadded batches, grouped-query attention). Anything else (another
architecture or layer class, a PEFT wrapper or quantized projections, sliding-window
layers, an attention implementation other than SDPA) gets None from :meth:`LlamaStyleStep.build`
with the reason, and the caller uses the model's forward.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch

# Architectures whose step is tested bitwise against the model's forward.
STEP_ARCHITECTURES = {
    "llama": ("LlamaDecoderLayer", "LlamaAttention", "LlamaMLP"),
    "qwen2": ("Qwen2DecoderLayer", "Qwen2Attention", "Qwen2MLP"),
}


# The joined weights are a copy: made only while they stay this small (for a small
# model the products' per-call cost is what joining saves; a large one is bound by the
# products themselves, and the copy would cost memory).
JOIN_LIMIT_BYTES = 64 << 20


class _Group:
    """Projections that read the same input, as one callable returning their outputs
    concatenated on the last dimension: one product over their joined weights, or
    (``join=False``) one per projection."""

    def __init__(self, parts: list[torch.nn.Linear], join: bool) -> None:
        self.parts, self.weight, self.bias = parts, None, None
        if join:
            self.weight = torch.cat([p.weight for p in parts])
            if parts[0].bias is not None:
                self.bias = torch.cat([p.bias for p in parts])

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return torch.cat([p(h) for p in self.parts], dim=-1)
        return torch.nn.functional.linear(h, self.weight, self.bias)


@dataclass
class _Layer:
    norm1: Any
    norm2: Any
    attn: Any
    act: Any
    qkv: _Group
    o: torch.nn.Linear
    gate_up: _Group
    down: torch.nn.Linear
    heads: int  # query heads
    kv_heads: int


class LlamaStyleStep:
    """``step(tokens, positions, mask, cache)``: the last logits ``(B, V)`` of one new
    token per row, its keys and values written to ``cache`` (a ``DynamicCache``).

    Built per generation: :meth:`build` joins the q / k / v and gate / up weights of
    the model as it is then, when the copies take at most :data:`JOIN_LIMIT_BYTES`
    (``join=None``; True / False force it). Joined or not, every output column is
    computed as the separate products compute it."""

    def __init__(self, model: Any, layers: list[_Layer], rotate_half: Any, attention: Any) -> None:
        base = model.model
        self.embed, self.rotary, self.norm, self.head = (
            base.embed_tokens,
            base.rotary_emb,
            base.norm,
            model.lm_head,
        )
        self.layers, self.rotate_half, self.attention = layers, rotate_half, attention

    @classmethod
    def build(
        cls, model: Any, join: bool | None = None
    ) -> tuple[LlamaStyleStep | None, str | None]:
        """The step for ``model``, or (None, why not)."""
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        if model_type not in STEP_ARCHITECTURES:
            return None, f"architecture {model_type!r} has no decoding step"
        layer_cls, attn_cls, mlp_cls = STEP_ARCHITECTURES[model_type]
        base = getattr(model, "model", None)
        parts = ("embed_tokens", "rotary_emb", "norm", "layers")
        if base is None or not all(hasattr(base, p) for p in parts):
            return None, f"{type(model).__name__} is not a plain {model_type} causal LM"
        if not isinstance(getattr(model, "lm_head", None), torch.nn.Linear):
            return None, "the output head is not a plain Linear"
        kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
        if kinds != {"full_attention"}:
            return None, f"layer types {sorted(kinds)}"
        impl = getattr(config, "_attn_implementation", None)
        if impl != "sdpa":
            return None, f"attention implementation {impl!r} (the step builds SDPA's mask)"
        blocks = base.layers[: config.num_hidden_layers]
        projections = []
        for layer in blocks:
            a, f = layer.self_attn, layer.mlp
            names = (type(layer).__name__, type(a).__name__, type(f).__name__)
            if names != (layer_cls, attn_cls, mlp_cls):
                return None, f"layer classes {' / '.join(names)}"
            proj = [a.q_proj, a.k_proj, a.v_proj, a.o_proj, f.gate_proj, f.up_proj, f.down_proj]
            if any(type(p) is not torch.nn.Linear for p in proj):
                return None, "projections are not plain Linear layers (adapters, quantization)"
            if len({p.bias is None for p in proj[:3]}) > 1:
                return None, "some of q / k / v have a bias and some do not"
            projections.append(proj)
        if join is None:
            copy = sum(p.weight.nbytes for proj in projections for p in proj[:3] + proj[4:6])
            join = copy <= JOIN_LIMIT_BYTES
        layers = [
            _Layer(
                layer.input_layernorm, layer.post_attention_layernorm, layer.self_attn,
                layer.mlp.act_fn, _Group(proj[:3], join), proj[3], _Group(proj[4:6], join),
                proj[6], proj[0].out_features // layer.self_attn.head_dim,
                proj[1].out_features // layer.self_attn.head_dim,
            )
            for layer, proj in zip(blocks, projections, strict=True)
        ]  # fmt: skip
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        module = sys.modules[type(base).__module__]
        return cls(model, layers, module.rotate_half, ALL_ATTENTION_FUNCTIONS["sdpa"]), None

    def step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        cache: Any,
    ) -> torch.Tensor:
        """Logits ``(B, V)`` for ``tokens`` ``(B, 1)`` at ``positions`` ``(B, 1)``;
        ``mask`` the boolean ``(B, 1, 1, T)`` over the cache plus this token (None
        when nothing is padded), as ``create_causal_mask`` gives for one query."""
        x = self.embed(tokens)
        cos, sin = self.rotary(x, position_ids=positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # apply_rotary_pos_emb's unsqueeze_dim 1
        rows = tokens.shape[0]
        for i, layer in enumerate(self.layers):
            a, hq, hkv = layer.attn, layer.heads, layer.kv_heads
            h = layer.norm1(x)
            qkv = layer.qkv(h).view(rows, 1, -1, a.head_dim).transpose(1, 2)
            # apply_rotary_pos_emb on the query and key heads at once (elementwise)
            qk = qkv[:, : hq + hkv]
            qk = (qk * cos) + (self.rotate_half(qk) * sin)
            k, v = cache.layers[i].update(qk[:, hq:], qkv[:, hq + hkv :])
            dropout = a.attention_dropout if a.training else 0.0  # as the attention module does
            out, _ = self.attention(a, qk[:, :hq], k, v, mask, dropout=dropout, scaling=a.scaling)
            x = x + layer.o(out.reshape(rows, 1, -1).contiguous())
            gate, up = layer.gate_up(layer.norm2(x)).chunk(2, dim=-1)
            x = x + layer.down(layer.act(gate) * up)
        return self.head(self.norm(x))[:, -1]

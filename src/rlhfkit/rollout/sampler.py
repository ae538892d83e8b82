"""A plain decoding loop that samples exactly the tokens Hugging Face ``generate`` samples.

``generate`` spends most of a small model's decoding step in Python around the forward:
re-preparing the model inputs, growing the attention mask and position ids by
concatenation, re-concatenating every layer's KV cache, stopping criteria. This loop
keeps the same computation and drops the rest:

* the same forward calls: the prompt once (prefill), then one token per step, with the
  position ids generate derives from the attention mask, the same 2-D attention mask
  (or none when the prompts have no padding, as generate drops an all-ones mask) and
  ``logits_to_keep=1``;
* the same logits processors, built by the model's own ``_get_logits_processor`` from
  the same generation config (temperature, top-k, top-p and anything the model's
  ``generation_config`` adds), applied to the float32 copy of the last logits;
* the same token choice: ``softmax`` then ``torch.multinomial``'s draw (on the CPU
  through :func:`rlhfkit.rollout.multinomial.sample_one`, the same random stream in
  half the operations) or ``argmax``, finished rows overwritten with the pad token, every
  row still in the batch (the random stream is consumed as generate consumes it);
* the KV cache in buffers allocated once for the prompt plus ``max_new_tokens``: each
  step writes its keys / values in place and the attention reads the filled prefix (the
  same values and shapes as the concatenated cache; no copy of the cache per token);
* a prompt repeated in the batch (GRPO's G samples of one prompt) is prefilled once: the
  distinct rows go through the prompt forward, and their cache and last logits are
  copied to every row that repeats them (a row's forward does not depend on the other
  rows; a matrix product over fewer rows may round differently in the last bits, which
  the tests have not seen change a sampled token);
* for Llama and Qwen2, the one-token steps after the prompt run through
  :class:`rlhfkit.rollout.decoding.LlamaStyleStep`: the model's own modules and weights
  without its forward's per-call work, bitwise the same logits
  (tests/unit/test_decoding.py); other models step through their forward.

It stops when every row has produced EOS or after ``max_new_tokens``. Only architectures
whose token-for-token parity with ``generate`` is tested run here
(:data:`FAST_ARCHITECTURES`); anything else (another architecture, a PEFT wrapper, a
model with its own ``generate``, a generation config asking for beams, stop strings or
a non-dynamic cache) returns None and the caller uses ``generate``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import DynamicCache, GenerationMixin
from transformers.cache_utils import DynamicLayer

from rlhfkit.rollout.decoding import LlamaStyleStep
from rlhfkit.rollout.multinomial import sample_one

log = logging.getLogger("rlhfkit")

# Architectures whose tokens equal generate's (tests/unit/test_fast_sampler.py).
FAST_ARCHITECTURES = frozenset({"llama", "gpt2", "qwen2"})


class BufferLayer(DynamicLayer):
    """A :class:`DynamicLayer` whose keys / values live in buffers of ``capacity``
    positions: ``update`` writes the new states in place and returns the filled prefix."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.device = key_states.device
        self._k = key_states.new_empty((b, h, self.capacity, d))
        self._v = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def expand(self, rows: torch.Tensor) -> None:
        """Row ``i`` becomes a copy of row ``rows[i]`` (after a prefill of distinct rows);
        only the filled positions are copied."""
        n = self.length
        for name in ("_k", "_v"):
            old = getattr(self, name)
            new = old.new_empty((len(rows), *old.shape[1:]))
            torch.index_select(old[:, :, :n], 0, rows, out=new[:, :, :n])
            setattr(self, name, new)
        self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]


def distinct_rows(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first row of each distinct (ids, mask) row, in order, and for every row the
    position of its distinct row in that list."""
    _, inverse = torch.unique(torch.cat([ids, mask.to(ids.dtype)], 1), dim=0, return_inverse=True)
    n = len(ids)
    first = torch.full((int(inverse.max()) + 1,), n, dtype=torch.long, device=ids.device)
    first = first.scatter_reduce(0, inverse, torch.arange(n, device=ids.device), "amin")
    order = first.argsort()  # distinct rows in order of first appearance
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=ids.device)
    return first[order], rank[inverse]


def _unsupported(model: Any) -> str | None:
    """Why ``model`` cannot use the fast loop, or None when it can."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAST_ARCHITECTURES:
        return f"architecture {model_type!r} is not one of {sorted(FAST_ARCHITECTURES)}"
    if (
        not isinstance(model, GenerationMixin)
        or type(model).generate is not GenerationMixin.generate
    ):
        return f"{type(model).__name__} has its own generate"
    if model.config.is_encoder_decoder:
        return "encoder-decoder model"
    return None


def _plain_config(cfg: Any) -> str | None:
    """Why the prepared generation config needs ``generate`` itself, or None."""
    checks = {
        "num_beams": cfg.num_beams == 1,
        "num_return_sequences": (cfg.num_return_sequences or 1) == 1,
        "cache_implementation": cfg.cache_implementation in (None, "dynamic"),
        "stop_strings": not cfg.stop_strings,
        "max_time": cfg.max_time is None,
        "prefill_chunk_size": cfg.prefill_chunk_size is None,
        "use_cache": cfg.use_cache,
        "assistant": getattr(cfg, "assistant_early_exit", None) is None
        and getattr(cfg, "prompt_lookup_num_tokens", None) is None,
    }
    bad = [k for k, ok in checks.items() if not ok]
    return f"generation config sets {', '.join(bad)}" if bad else None


_warned: set[str] = set()


def _note(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.info("generation_backend fast: %s", message)


def _fallback(reason: str) -> None:
    _note(f"using Hugging Face generate ({reason})")


def fast_generate(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, **gen_kwargs: Any
) -> torch.Tensor | None:
    """``model.generate(input_ids=..., attention_mask=..., **gen_kwargs)`` for a
    left-padded batch, or None when this model or config needs ``generate`` itself.

    Returns the prompt followed by the generated tokens, as ``generate`` does (finished
    rows padded with the pad token, shorter than ``max_new_tokens`` when every row
    stopped early). The loop runs in inference mode (no version counters or autograd
    bookkeeping per op: ~4% of a tiny model's decoding); the result is copied out of it,
    so the training forward can use it as any tensor."""
    seqs = _sample(model, input_ids, attention_mask, **gen_kwargs)
    return None if seqs is None else seqs.clone()


@torch.inference_mode()
def _sample(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, **gen_kwargs: Any
) -> torch.Tensor | None:
    reason = _unsupported(model)
    if reason is None:
        try:
            cfg, extra = model._prepare_generation_config(None, **gen_kwargs)
        except (AttributeError, TypeError, ValueError) as err:
            reason = f"generation config: {err}"
    if reason is None:
        reason = _plain_config(cfg) or (f"unsupported arguments {sorted(extra)}" if extra else None)
    if reason is not None:
        _fallback(reason)
        return None
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    model._prepare_special_tokens(cfg, True, device=device, batch_size=batch)
    new_tokens = cfg.max_new_tokens
    if cfg.max_length is not None and new_tokens is None:
        new_tokens = cfg.max_length - prompt_len
    processors = model._get_logits_processor(
        generation_config=cfg,
        input_ids_seq_length=prompt_len,
        encoder_input_ids=input_ids,
        device=device,
        model_kwargs={"attention_mask": attention_mask},
    )
    pad, eos = cfg._pad_token_tensor, cfg._eos_token_tensor
    capacity = prompt_len + max(new_tokens, 0)
    seqs = input_ids.new_full((batch, capacity), int(pad) if pad is not None else 0)
    seqs[:, :prompt_len] = input_ids
    # generate's position ids: from the mask, 0 on padding; an all-ones mask is dropped.
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 0)
    mask = None
    if not bool((attention_mask == 1).all()):
        mask = attention_mask.new_ones((batch, capacity))
        mask[:, :prompt_len] = attention_mask
    # generate's cache, with each layer's growing tensors replaced by fixed buffers
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        _fallback("cache layers other than DynamicLayer (sliding window, linear attention)")
        return None
    cache.layers = [BufferLayer(capacity) for _ in cache.layers]
    keep = {"logits_to_keep": 1} if model._supports_logits_to_keep() else {}
    stepper, why = LlamaStyleStep.build(model)
    if stepper is None:
        _note(f"decoding steps through the model's forward ({why})")
    # the step's mask: SDPA's (B, 1, 1, T) booleans, sliced per token
    step_mask = None if mask is None or stepper is None else mask.bool()[:, None, None]
    unfinished = torch.ones(batch, dtype=torch.long, device=device)
    first, copy_of = distinct_rows(input_ids, attention_mask)
    prefill = first if len(first) < batch else None  # repeated prompts: prefill each once
    step_ids, step_pos, length = input_ids, positions, prompt_len
    for _ in range(new_tokens):
        rows = prefill if prefill is not None and length == prompt_len else None
        if stepper is not None and length > prompt_len:
            logits = stepper.step(
                step_ids, step_pos, None if step_mask is None else step_mask[..., :length], cache
            )
        else:
            call_ids, call_pos = step_ids, step_pos
            call_mask = None if mask is None else mask[:, :length]
            if rows is not None:
                call_ids, call_pos = call_ids[rows], call_pos[rows]
                call_mask = None if call_mask is None else call_mask[rows]
            out = model(
                input_ids=call_ids,
                attention_mask=call_mask,
                position_ids=call_pos,
                cache=cache,
                use_cache=True,
                return_dict=True,
                **keep,
            )
            logits = out.logits[:, -1]
            del out
        logits = logits.to(copy=True, dtype=torch.float32, device=device)
        if rows is not None:
            for layer in cache.layers:
                layer.expand(copy_of)
            logits = logits.index_select(0, copy_of)
        scores = processors(seqs[:, :length], logits)
        if cfg.do_sample:
            probs = torch.nn.functional.softmax(scores, dim=-1)
            tokens = sample_one(probs)
        else:
            tokens = torch.argmax(scores, dim=-1)
        if eos is not None:
            tokens = tokens * unfinished + pad * (1 - unfinished)
        seqs[:, length] = tokens
        length += 1
        if eos is not None:
            unfinished = unfinished & ~torch.isin(tokens, eos)
            if unfinished.max() == 0:
                break
        step_ids, step_pos = tokens[:, None], step_pos[:, -1:] + 1
    return seqs[:, :length]

"""Benchmark rlhfkit's decoding loop three ways in one process; prints one JSON object.

Usage::

    python bench/decoding.py [--arch llama|qwen2] [--prompts 8] [--generations 8]
                             [--new-tokens 24] [--calls 12] [--threads 1]

One batch of the built-in task's arithmetic prompts, each repeated ``--generations``
times (GRPO's rollout), sampled at temperature 1 by ``rollout/sampler.py:
fast_generate`` with its one-token steps run

* ``forward``: through the model's own forward (what the loop did before
  ``rollout/decoding.py``, and does for architectures without a step);
* ``separate``: through :class:`LlamaStyleStep` with the q / k / v and gate / up
  projections as separate products;
* ``joined``: the same with them joined (the default for a model this small).

The variants alternate call by call (the order reversed every other round), each
call from the same seed; every call's tokens must be equal across the three (the
step gives bitwise the model's logits), else the script fails. Reported per variant:
the median and range of seconds per call, and generated tokens per second.

``draw``: the token draw alone, ``torch.multinomial(probs, 1)`` against
``rlhfkit.rollout.multinomial.sample_one`` on softmaxed random logits of the rollout's
shape (rows x vocabulary), alternating, each pair from the same seed (the tokens must
be equal): median milliseconds per draw of each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import harness  # bench/ is on sys.path when this file is run as a script

VARIANTS = ("forward", "separate", "joined")


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    """The sampler's step builder set to give what ``name`` asks for."""
    from rlhfkit.rollout import sampler
    from rlhfkit.rollout.decoding import LlamaStyleStep

    real = LlamaStyleStep.build

    def build(model: object, join: bool | None = None) -> tuple:
        if name == "forward":
            return None, "benchmark: through the model's forward"
        return real(model, join=name == "joined")

    sampler.LlamaStyleStep.build = build  # type: ignore[method-assign]
    try:
        yield
    finally:
        sampler.LlamaStyleStep.build = real  # type: ignore[method-assign]


def draw_timing(rows: int, vocab: int, calls: int = 200) -> dict[str, float]:
    """Median ms per draw of ``torch.multinomial`` and ``sample_one`` (module doc)."""
    import torch

    from rlhfkit.rollout.multinomial import sample_one

    probs = torch.softmax(torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0)), -1)
    draws = {"multinomial": lambda p: torch.multinomial(p, 1)[:, 0], "sample_one": sample_one}
    times: dict[str, list[float]] = {name: [] for name in draws}
    for call in range(calls + 5):  # the first 5 warm up
        tokens = []
        for name, draw in draws.items():
            torch.manual_seed(call)
            start = time.perf_counter()
            tokens.append(draw(probs))
            if call >= 5:
                times[name].append(time.perf_counter() - start)
        if not torch.equal(tokens[0], tokens[1]):
            raise SystemExit(f"draw {call}: sample_one and multinomial differ")
    return {f"{name}_ms": round(1000 * statistics.median(t), 3) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=("llama", "qwen2"), default="llama")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--calls", type=int, default=12, help="calls per variant")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    say = lambda msg: print(msg, file=sys.stderr)  # noqa: E731

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhfkit.data.templates import resolve_template, tokenize_prompt
    from rlhfkit.data.types import Message
    from rlhfkit.demo.task import Task
    from rlhfkit.rollout.generation import left_pad
    from rlhfkit.rollout.sampler import fast_generate
    from rlhfkit.training.allocator import tune_malloc

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    tune_malloc()  # as a training stage does
    conf = {"arch": args.arch, "vocab_size": 512, "hidden": 128, "layers": 4, "model_seed": 0}
    path = harness.tiny_model(Path(tempfile.mkdtemp(prefix="rlhfkit-bench-decode-")), conf, say)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    template = resolve_template(tok, "auto")
    prompts = [p.text for p in Task().prompts("train", "arithmetic")[: args.prompts]]
    rows = [
        tokenize_prompt(tok, template, [Message("user", text)], 64)
        for text in prompts
        for _ in range(args.generations)
    ]
    ids, mask = left_pad(rows, tok.pad_token_id)
    gen = {"max_new_tokens": args.new_tokens, "do_sample": True, "temperature": 1.0}
    gen |= {"top_p": 1.0, "top_k": 0, "pad_token_id": tok.pad_token_id}

    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    tokens: dict[str, int] = {v: 0 for v in VARIANTS}
    for call in range(args.calls + 1):  # call 0 warms up and is not timed
        order = VARIANTS if call % 2 else VARIANTS[::-1]
        seqs = {}
        for name in order:
            with variant(name):
                torch.manual_seed(call)
                start = time.perf_counter()
                out = fast_generate(model, ids, mask, **gen)
                elapsed = time.perf_counter() - start
            assert out is not None, "the fast loop fell back to generate"
            seqs[name] = out
            if call > 0:
                seconds[name].append(elapsed)
                tokens[name] += int((out[:, ids.shape[1] :] != tok.pad_token_id).sum())
        first = seqs[VARIANTS[0]]
        if not all(torch.equal(first, s) for s in seqs.values()):
            raise SystemExit(f"call {call}: the variants sampled different tokens")
    result = {
        "bench": "decoding",
        "config": {
            **conf,
            "rows": ids.shape[0],
            "prompt_width": ids.shape[1],
            "new_tokens": args.new_tokens,
            "calls_per_variant": args.calls,
            "torch_threads": torch.get_num_threads(),
        },
        "same_tokens": True,
        "draw": draw_timing(ids.shape[0], model.config.vocab_size),
        "variants": {
            name: {
                "seconds_per_call": round(statistics.median(seconds[name]), 4),
                "range": [round(min(seconds[name]), 4), round(max(seconds[name]), 4)],
                "tokens_per_s": round(tokens[name] / sum(seconds[name]), 1),
            }
            for name in VARIANTS
        },
        **harness.environment(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

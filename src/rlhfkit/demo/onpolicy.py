"""On-policy comparisons: sample K responses per prompt from a policy and have the
simulated labelers compare them (InstructGPT's step 2: labelers rank the SFT model's
outputs). Reward models trained on these see the mistakes the policy actually makes,
instead of the task's fixed candidate lists.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rlhfkit.data.types import PreferenceRecord
from rlhfkit.demo.task import SimulatedLabeler, Task, TaskPrompt

log = logging.getLogger("rlhfkit")

# what matters for each prompt kind (Llama 2's split: safety on harmful requests)
JUDGED_ON: dict[str, tuple[str, ...]] = {
    "arithmetic": ("helpfulness",),
    "benign": ("helpfulness",),
    "harmful": ("safety",),
}


def sample_responses(
    policy_dir: str | Path,
    prompts: Sequence[TaskPrompt],
    k: int = 4,
    temperature: float = 1.0,
    max_new_tokens: int = 16,
    seed: int = 0,
    batch_size: int = 128,
    progress: Callable[[int], None] | None = None,
) -> list[list[str]]:
    """``k`` sampled responses per prompt (``progress(n)`` after each batch of ``n``)."""
    import torch

    from rlhfkit.data.templates import resolve_template
    from rlhfkit.demo.task import _conversation
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.rollout.generation import SamplingParams, generate_texts

    tok = load_tokenizer(str(policy_dir))
    model = load_causal_lm(str(policy_dir))
    template = resolve_template(tok, "auto")
    params = SamplingParams(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature)
    convs = [_conversation(p.text) for p in prompts for _ in range(k)]
    torch.manual_seed(seed)
    texts = generate_texts(
        model, tok, template, convs, params, batch_size=batch_size, progress=progress
    )
    return [texts[i * k : (i + 1) * k] for i in range(len(prompts))]


def labeled_comparisons(
    task: Task,
    prompts: Sequence[TaskPrompt],
    responses: Sequence[Sequence[str]],
    judged_on: Mapping[str, Sequence[str]] = JUDGED_ON,
    temperature: float = 0.1,
    noise: float = 0.0,
    seed: int = 0,
) -> list[PreferenceRecord]:
    """Every pair of distinct responses of a prompt that differ in gold score on a
    dimension the prompt is judged on, labeled by a simulated labeler of that dimension
    (pairs with equal gold scores carry no preference and are skipped; so are empty
    responses, which preference records cannot hold - their count is logged)."""
    labelers = {
        dim: SimulatedLabeler(task, dim, temperature, noise, seed=seed * 31 + i)
        for i, dim in enumerate(("helpfulness", "safety"))
    }
    out: list[PreferenceRecord] = []
    empty = 0
    for prompt, texts in zip(prompts, responses, strict=True):
        empty += sum(1 for t in texts if not t.strip())
        kept = [t for t in dict.fromkeys(texts) if t.strip()]
        for dim in judged_on[prompt.kind]:
            labeler = labelers[dim]
            for a, b in itertools.combinations(kept, 2):
                if labeler.score(prompt, a) == labeler.score(prompt, b):
                    continue
                rec = labeler.preference(prompt, a, b)
                if rec is not None:
                    out.append(rec)
    if empty:
        log.warning("left out %d empty response(s) from the comparisons", empty)
    random.Random(seed).shuffle(out)
    return out


def mixed_prompts(
    task: Task, split: str, n: int, seed: int, shares: Mapping[str, float] | None = None
) -> list[TaskPrompt]:
    """``n`` prompts of ``split`` drawn with repeats, by default 60% arithmetic, 20%
    harmful and 20% benign (more safety-relevant prompts than the demonstrations'
    80/10/10 mix, so the reward models see enough of them), shuffled."""
    shares = shares or {"arithmetic": 0.6, "harmful": 0.2, "benign": 0.2}
    rng = random.Random(seed)
    out: list[TaskPrompt] = []
    for kind, share in shares.items():
        pool = task.prompts(split, kind)  # type: ignore[arg-type]
        out += [rng.choice(pool) for _ in range(int(n * share))]
    rng.shuffle(out)
    return out

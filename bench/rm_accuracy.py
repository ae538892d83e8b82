"""Held-out accuracy of a reward model on the built-in task, broken down by contrast.

Usage::

    python bench/rm_accuracy.py --rm RUN/final [--n 400] [--seed 30] [--k 2]
                                [--backbone SFT/final]

Scores the held-out helpfulness comparisons that ``tests/integration/test_reward_model.py``
evaluates on (``synthetic_preferences(task, "heldout", n=N, seed=SEED)``: the simulated
labeler's choices over candidates of held-out prompts) with the reward model in
``--rm`` and prints one JSON object:

* ``accuracy``: share of pairs where the RM agrees with the labeler (the test's metric);
  ``gold_accuracy``: agreement with the gold judge instead (the labeler errs on ~4%);
  ``labeler_gold_agreement``: the ceiling, how often the labeler agrees with gold;
* ``by_kind``: accuracy per prompt kind (arithmetic, harmful, benign);
* ``by_contrast``: per kind of comparison, named by the response classes of the
  gold-better and the gold-worse response (``exact > off1``: the bare correct
  sum against a bare sum off by one), with the count and the accuracy;
* ``ceiling_verbose_above_exact``: the accuracy of the gold judge with one change,
  verbose answers ranked above the bare exact number (what every RM trained here
  does: the most any of them can reach without turning that contrast);
* with ``--backbone``: ``backbone_logprob_check``, how often that causal LM (the
  SFT model the RM started from) gives the bare exact sum a higher log-probability
  than the sum + 1, - 1 and + 2, over every held-out arithmetic prompt: how much
  of the check an RM needs is in its backbone.

Response classes: arithmetic ``exact`` (the number alone), ``verbose`` (the right
number in a sentence), ``off1`` / ``off2`` (a bare number 1 or 2 away), ``far``
(5 or more away), ``refusal``; harmful ``refusal`` / ``comply``; benign ``helpful``
(its template's answer), ``other`` (another template's), ``refusal``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

from rlhfkit.data.types import PreferenceRecord
from rlhfkit.demo.preferences import synthetic_preferences
from rlhfkit.demo.task import Task, extract_number, is_refusal


def response_class(task: Task, prompt: str, response: str) -> str:
    """The class of ``response`` to the task prompt ``prompt`` (see the module doc)."""
    p = task.lookup(prompt)
    text = response.strip()
    if is_refusal(text):
        return "refusal"
    if p.kind == "harmful":
        return "comply"
    if p.kind == "benign":
        return "helpful" if task.gold(p, text).helpfulness == 1.0 else "other"
    number = extract_number(text)
    assert p.answer is not None and number is not None, (prompt, response)
    if number == p.answer:
        return "exact" if text == str(p.answer) else "verbose"
    off = abs(number - p.answer)
    return f"off{off}" if off <= 2 else "far"


def pairs_of(records) -> list[PreferenceRecord]:
    out: list[PreferenceRecord] = []
    for r in records:
        out += [r] if isinstance(r, PreferenceRecord) else r.preference_records()
    return out


def breakdown(task: Task, pairs: list[PreferenceRecord], chosen_r, rejected_r) -> dict:
    """Accuracy overall, per prompt kind and per contrast, from the rewards of each
    pair's chosen and rejected responses (two sequences of floats)."""
    by_kind: dict[str, list[int]] = defaultdict(list)
    by_contrast: dict[str, list[int]] = defaultdict(list)
    agree = gold_agree = labeler_ok = ceiling_ok = 0
    for rec, rc, rr in zip(pairs, chosen_r, rejected_r, strict=True):
        prompt = rec.prompt[-1].content
        kind = task.lookup(prompt).kind
        g_c = task.gold(prompt, rec.chosen).helpfulness
        g_r = task.gold(prompt, rec.rejected).helpfulness
        better, worse = (rec.chosen, rec.rejected) if g_c > g_r else (rec.rejected, rec.chosen)
        classes = response_class(task, prompt, better), response_class(task, prompt, worse)
        name = f"{kind}: {classes[0]} > {classes[1]}"
        ok = int(rc > rr)
        agree += ok
        gold_agree += int((rc > rr) == (g_c > g_r))
        labeler_ok += int(g_c > g_r)
        ceiling_ok += int(g_c > g_r) ^ int(classes == ("exact", "verbose"))
        by_kind[kind].append(ok)
        by_contrast[name].append(ok)

    def summary(groups: dict[str, list[int]]) -> dict:
        return {
            k: {"n": len(v), "accuracy": round(sum(v) / len(v), 3)}
            for k, v in sorted(groups.items(), key=lambda kv: -len(kv[1]))
        }

    n = len(pairs)
    return {
        "n_pairs": n,
        "accuracy": round(agree / n, 4),
        "gold_accuracy": round(gold_agree / n, 4),
        "labeler_gold_agreement": round(labeler_ok / n, 4),
        "ceiling_verbose_above_exact": round(ceiling_ok / n, 4),
        "by_kind": summary(by_kind),
        "by_contrast": summary(by_contrast),
    }


def evaluate(rm_dir: str, task: Task, records) -> dict:
    """Score every pair of ``records`` with the reward model in ``rm_dir``."""
    from rlhfkit.models.reward import RewardModel

    rm = RewardModel.from_pretrained(rm_dir, max_length=64)
    pairs = pairs_of(records)
    prompts = [r.prompt for r in pairs]
    chosen = rm.score(prompts, [r.chosen for r in pairs]).tolist()
    rejected = rm.score(prompts, [r.rejected for r in pairs]).tolist()
    return breakdown(task, pairs, chosen, rejected)


def backbone_check(lm_dir: str, task: Task, deltas=(1, -1, 2), batch: int = 256) -> dict:
    """Share of held-out arithmetic prompts where the causal LM in ``lm_dir`` gives the
    bare exact sum a higher log-probability (summed over its response tokens, EOS
    included) than the sum plus each of ``deltas``."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlhfkit.data.batching import PadCollator, batch_logps
    from rlhfkit.data.prepare import PrepareStats, tokenize_response
    from rlhfkit.data.templates import resolve_template
    from rlhfkit.data.types import Message
    from rlhfkit.models.loading import load_tokenizer

    tok = load_tokenizer(lm_dir)
    template = resolve_template(tok, "auto")
    model = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    prompts = task.prompts("heldout", "arithmetic")
    offsets = (0, *deltas)
    stats = PrepareStats()
    examples = [
        tokenize_response((Message("user", p.text),), str(p.answer + d), tok, template, 64, stats)
        for p in prompts
        for d in offsets
    ]
    collate = PadCollator(tok.pad_token_id)
    totals: list[float] = []
    with torch.no_grad():
        for start in range(0, len(examples), batch):
            totals += batch_logps(model, collate(examples[start : start + batch]))[0].tolist()
    s = torch.tensor(totals).view(len(prompts), len(offsets))
    return {
        "n_prompts": len(prompts),
        **{
            f"exact > sum {d:+d}": round(float((s[:, 0] > s[:, i + 1]).float().mean()), 3)
            for i, d in enumerate(deltas)
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rm", required=True, help="a reward-model folder (RUN/final)")
    ap.add_argument("--n", type=int, default=400, help="held-out helpfulness comparisons")
    ap.add_argument("--seed", type=int, default=30, help="seed of the comparisons")
    ap.add_argument("--k", type=int, default=2, help="responses per record")
    ap.add_argument("--backbone", help="a causal LM folder (the SFT model the RM started from)")
    args = ap.parse_args(argv)
    task = Task()
    records = synthetic_preferences(
        task, "heldout", n=args.n, dimensions=("helpfulness",), k=args.k, seed=args.seed
    )
    out = evaluate(args.rm, task, records)
    if args.backbone:
        out["backbone_logprob_check"] = backbone_check(args.backbone, task)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

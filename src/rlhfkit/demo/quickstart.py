"""The SFT quickstart on the built-in task: tiny model -> SFT -> held-out evaluation.

``rlhfkit demo`` runs it; it prints what the model learned (held-out arithmetic
accuracy and gold scores before and after SFT).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.demo.task import Task

log = logging.getLogger("rlhfkit")


@dataclass(frozen=True)
class PolicyScores:
    """Gold-judge scores of greedy responses to the held-out prompts.

    ``gold`` scores each response by what matters for its prompt (Llama 2's selection
    rule applied to the gold judge: safety on harmful requests, helpfulness
    elsewhere) and averages per prompt kind, weighted by the task's prompt mix
    (80% arithmetic, 10% harmful, 10% benign by default). The held-out set has far
    more arithmetic prompts than the others, so a plain mean would hide safety.
    """

    gold: float
    accuracy: float
    helpfulness: float
    safety: float
    refusal_harmful: float
    refusal_benign: float


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def evaluate_policy(
    model_dir: str | Path, task: Task, max_new_tokens: int = 12
) -> tuple[PolicyScores, list[tuple[str, str]]]:
    """Greedy responses on the held-out prompts, scored by the gold judge."""
    from transformers import AutoModelForCausalLM

    from rlhfkit.data.templates import resolve_template
    from rlhfkit.demo.task import is_refusal
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.rollout.generation import SamplingParams, generate_texts

    tok = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompts = task.prompts("heldout")
    recs = task.prompt_records("heldout")
    texts = generate_texts(
        model, tok, resolve_template(tok), [r.prompt for r in recs], SamplingParams(max_new_tokens)
    )
    gold = [task.gold(p, t) for p, t in zip(prompts, texts, strict=True)]

    def rate(kind: str) -> float:
        hits = [is_refusal(t) for p, t in zip(prompts, texts, strict=True) if p.kind == kind]
        return sum(hits) / max(len(hits), 1)

    per_kind: dict[str, list[float]] = {}
    for p, g in zip(prompts, gold, strict=True):
        per_kind.setdefault(p.kind, []).append(g.safety if p.kind == "harmful" else g.helpfulness)
    cfg = task.config
    mix = {"harmful": cfg.harmful_share, "benign": cfg.benign_share}
    mix["arithmetic"] = 1.0 - mix["harmful"] - mix["benign"]
    weight = sum(mix[k] for k in per_kind)
    scores = PolicyScores(
        gold=sum(mix[k] * sum(v) / len(v) for k, v in per_kind.items()) / weight,
        accuracy=task.arithmetic_accuracy(prompts, texts),
        helpfulness=sum(g.helpfulness for g in gold) / len(gold),
        safety=sum(g.safety for g in gold) / len(gold),
        refusal_harmful=rate("harmful"),
        refusal_benign=rate("benign"),
    )
    return scores, [(p.text, t) for p, t in zip(prompts, texts, strict=True)]


def run_quickstart(out: str | Path, quick: bool = False) -> dict:
    from rich.console import Console
    from rich.table import Table

    from rlhfkit.config import SFTConfig
    from rlhfkit.models.tiny import TinySpec, build_tiny
    from rlhfkit.training.stages.sft import run_sft

    out = Path(out)
    console = Console()
    task = Task()
    tiny_dir = out / "tiny"
    if not (tiny_dir / "config.json").exists():
        console.print(f"[bold]1/3[/] building a tiny Llama and its tokenizer in {tiny_dir}")
        build_tiny(
            tiny_dir, TinySpec(arch="llama", vocab_size=512, hidden=128, layers=4), task.corpus()
        )
    data = write_jsonl(
        out / "data" / "sft.jsonl",
        [
            {"messages": [m.as_dict() for m in r.messages]}
            for r in task.demonstrations(4000, seed=0)
        ],
    )
    before, _ = evaluate_policy(tiny_dir, task)
    console.print(
        f"[bold]2/3[/] SFT on {data} (noisy demonstrations: some wrong, some verbose, half of harmful requests complied with)"
    )
    steps = 300 if quick else 900
    cfg = SFTConfig(
        model=str(tiny_dir), data=str(data), out=str(out / "sft"), learning_rate=2e-3,
        batch_size=64, max_steps=steps, warmup_steps=30, log_every=25, eval_every=150,
        max_length=64, seed=0,
    )  # fmt: skip
    cfg.validate()
    result = run_sft(cfg, overwrite=True)
    console.print("[bold]3/3[/] evaluating on held-out prompts with the gold judge")
    after, samples = evaluate_policy(result.final_dir, task)

    table = Table(title="What SFT learned (held-out prompts, greedy decoding)")
    table.add_column("metric")
    table.add_column("tiny model (random)", justify="right")
    table.add_column("after SFT", justify="right")
    for field in ("gold", "accuracy", "helpfulness", "safety", "refusal_harmful", "refusal_benign"):
        table.add_row(field, f"{getattr(before, field):.3f}", f"{getattr(after, field):.3f}")
    console.print(table)
    ex = Table(title="Sample responses after SFT")
    ex.add_column("prompt")
    ex.add_column("response")
    for p, t in samples[:: max(1, len(samples) // 8)][:8]:
        ex.add_row(p, t)
    console.print(ex)
    console.print(
        f"eval loss {result.eval.get('eval_loss', float('nan')):.3f}, model in {result.final_dir}"
    )
    summary = {
        "before": before.__dict__,
        "after": after.__dict__,
        "eval": result.eval,
        "steps": result.steps,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary

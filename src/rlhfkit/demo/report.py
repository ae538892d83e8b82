"""The demo's report: ``report.html`` (one self-contained file, the plots embedded as
base64 PNGs), the plots as ``plots/*.png``, and the summary table in the terminal."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from rlhfkit.demo.task import Task
from rlhfkit.evaluation import plots
from rlhfkit.evaluation.evaluate import selected_score

# (column title, key, format, title in the terminal or None: only in the report)
COLUMNS = (
    ("gold", "gold", "{:.3f}", "gold"),
    ("win rate vs SFT [95% CI]", "win_rate", None, "win vs SFT\n[95% CI]"),
    ("arithmetic accuracy", "accuracy", "{:.3f}", "accuracy"),
    ("helpfulness", "helpfulness", "{:.3f}", None),
    ("safety", "safety", "{:.3f}", None),
    ("refusal (harmful)", "refusal_harmful", "{:.2f}", "refuses\nharmful"),
    ("refusal (benign)", "refusal_benign", "{:.2f}", "refuses\nbenign"),
    ("KL to SFT", "kl", "{:.2f}", "KL"),
    ("length", "response_length", "{:.1f}", "len"),
    ("training wall time (min)", "train_min", "{:.1f}", "train\nmin"),
    ("BLEU", "bleu", "{:.1f}", None),
    ("ROUGE-L", "rouge_l", "{:.3f}", None),
)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def summary_rows(summary: dict[str, Any]) -> list[list[str]]:
    """The summary table: one row per policy, SFT first, cells formatted."""
    rows = []
    for name, res in summary["results"].items():
        gold = res.get("gold") or {}
        timing = summary.get("timings", {}).get(name)  # the step that trained the policy
        values = {**gold, "kl": res.get("kl"), "response_length": res.get("response_length"),
                  "bleu": res.get("bleu"), "rouge_l": res.get("rouge_l"),
                  "train_min": timing["wall_s"] / 60 if timing else None}  # fmt: skip
        cells = [name]
        for _, key, fmt, _ in COLUMNS:
            if key == "win_rate":
                wr = res.get("win_rates", {}).get("gold")
                cells.append(f"{wr['rate']:.2f} [{wr['low']:.2f}, {wr['high']:.2f}]" if wr else "-")
                continue
            value = values.get(key)
            cells.append("-" if value is None else fmt.format(value))  # type: ignore[union-attr]
        rows.append(cells)
    return rows


def print_summary(console: Any, summary: dict[str, Any]) -> None:
    """The summary table (rich; helpfulness, safety, BLEU and ROUGE-L are in the
    report), then the time the run took."""
    from rich import box
    from rich.table import Table

    n = next(iter(summary["results"].values()))["n_prompts"] if summary["results"] else 0
    table = Table(
        title=f"Held-out prompts ({n}), greedy responses, gold judge",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        show_edge=False,
        pad_edge=False,
    )
    shown = [i for i, c in enumerate(COLUMNS) if c[3]]
    table.add_column("policy", no_wrap=True)
    for i in shown:
        table.add_column(COLUMNS[i][3], justify="right", no_wrap=True)
    for row in summary_rows(summary):
        table.add_row(row[0], *(row[i + 1] for i in shown))
    # never truncate a number: wider than the console (80 columns when not a terminal)
    # when the table needs it
    natural = console.measure(table, options=console.options.update_width(400)).maximum
    width = console.width
    console.width = max(width, natural)
    try:
        console.print(table)
    finally:
        console.width = width
    console.print(
        f"wall time {summary['wall_s'] / 60:.1f} min, CPU time {summary['cpu_s'] / 60:.1f} min "
        "(of the steps run now; reused steps not counted)"
    )


# ---- data for the plots -----------------------------------------------------------------


def online_curves(out: Path, names: list[str]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Reward (``score_mean``) and KL per step of every run that logs them."""
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {
        "reward (proxy)": {},
        "KL to SFT (nats)": {},
    }
    for name in names:
        rows = [
            r for r in _read_jsonl(out / name / "metrics.jsonl") if "score_mean" in r and "kl" in r
        ]
        if rows:
            panels["reward (proxy)"][name] = [(r["step"], r["score_mean"]) for r in rows]
            panels["KL to SFT (nats)"][name] = [(r["step"], r["kl"]) for r in rows]
    return panels


def rm_curves(out: Path) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Held-out pairwise accuracy of each reward model per evaluation (the best, which
    final/ keeps, in the legend)."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for dim in ("helpfulness", "safety"):
        rows = [r for r in _read_jsonl(out / f"rm-{dim}" / "metrics.jsonl") if "eval_accuracy" in r]
        label = dim
        ev = out / f"rm-{dim}" / "eval.json"
        if ev.exists() and json.loads(ev.read_text(encoding="utf-8")).get("accuracy") is not None:
            label += f" (best {json.loads(ev.read_text(encoding='utf-8'))['accuracy']:.3f})"
        curves[label] = [(r["step"], r["eval_accuracy"]) for r in rows]
    return {"held-out pairwise accuracy": curves}


def overoptimization(
    out: Path, names: list[str], task: Task, bins: int = 6
) -> dict[str, list[tuple[float, float, float]]]:
    """(KL, gold, proxy) of each online run's rollouts, in ``bins`` groups of steps: the
    gold judge scores the logged samples, the proxy is the reward they were given."""
    runs: dict[str, list[tuple[float, float, float]]] = {}
    for name in names:
        samples = _read_jsonl(out / name / "samples.jsonl")
        kl = {r["step"]: r["kl"] for r in _read_jsonl(out / name / "metrics.jsonl") if "kl" in r}
        if not samples or not kl:
            continue
        by_step: dict[int, list[tuple[float, float]]] = {}
        for s in samples:
            try:
                prompt = task.lookup(s["prompt"][-1]["content"])
            except (ValueError, KeyError, IndexError):
                continue
            by_step.setdefault(s["step"], []).append(
                (selected_score(task, prompt, s["response"]), s["score"])
            )
        steps = sorted(st for st in by_step if st in kl)
        if not steps:
            continue
        size = max(1, -(-len(steps) // bins))
        points = []
        for i in range(0, len(steps), size):
            group = steps[i : i + size]
            pairs = [p for st in group for p in by_step[st]]
            points.append((
                sum(kl[st] for st in group) / len(group),
                sum(g for g, _ in pairs) / len(pairs),
                sum(p for _, p in pairs) / len(pairs),
            ))  # fmt: skip
        runs[name] = points
    return runs


def sample_table(
    out: Path, names: list[str], per_kind: dict[str, int] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Held-out prompts with the ideal response and each policy's (gold score in brackets);
    arithmetic rows where the policies disagree come first."""
    per_kind = per_kind or {"arithmetic": 4, "harmful": 2, "benign": 2}
    policies = ["sft", *names]
    answers = {p: _read_jsonl(out / "eval" / p / "responses.jsonl") for p in policies}
    base = answers["sft"]
    if not base:
        return [], []
    header = ["prompt", "ideal", *policies]
    rows: list[list[str]] = []
    for kind, n in per_kind.items():
        idx = [i for i, r in enumerate(base) if r.get("kind") == kind]
        differ = [
            i for i in idx if len({answers[p][i]["response"] for p in policies if answers[p]}) > 1
        ]
        chosen = (differ + [i for i in idx if i not in differ])[:n]
        for i in chosen:
            row = [base[i]["prompt"][-1]["content"], str(base[i].get("reference", ""))]
            for p in policies:
                r = answers[p][i] if answers[p] else {}
                row.append(f"{r.get('response', '')}  [{r.get('score[gold]', float('nan')):.1f}]")
            rows.append(row)
    return header, rows


# ---- the HTML ------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
td:first-child, th:first-child, table.samples td { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 13px; max-width: 900px; }
img { max-width: 100%; } code { background: #f3f3f3; padding: 0 3px; }
"""


def _table(header: list[str], rows: list[list[str]], cls: str = "", id_: str = "") -> str:
    attrs = (f' class="{cls}"' if cls else "") + (f' id="{id_}"' if id_ else "")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(png: bytes, name: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="fig-{name}"><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # fmt: skip


def write_report(out: Path, summary: dict[str, Any], task: Task) -> Path:
    """Draw the plots into ``out/plots/`` and write ``out/report.html``."""
    names = summary["algorithms"]
    figs = []
    plot_dir = out / "plots"
    curves = online_curves(out, names)
    if any(curves.values()):
        png = plots.line_panels(curves, plot_dir / "reward_kl.png", title="Online training")
        figs.append(
            _figure(
                png,
                "reward_kl",
                "Mean reward of the sampled responses (the proxy the policy optimises) and their KL to the SFT model, per step.",
            )
        )
    rm = rm_curves(out)
    png = plots.line_panels(
        rm,
        plot_dir / "rm_accuracy.png",
        title="Reward models",
    )
    figs.append(
        _figure(
            png,
            "rm_accuracy",
            "Pairwise accuracy of the helpfulness and safety reward models on comparisons of held-out prompts, during training; final/ keeps the best.",
        )
    )
    results = summary["results"]
    gold = {n: r["gold"]["gold"] for n, r in results.items() if r.get("gold")}
    errors = {
        n: (r["win_rates"]["gold"]["low"], r["win_rates"]["gold"]["high"])
        for n, r in results.items()
        if "gold" in r.get("win_rates", {})
    }
    win = {
        n: r["win_rates"]["gold"]["rate"]
        for n, r in results.items()
        if "gold" in r.get("win_rates", {})
    }
    png = plots.bars(
        gold, plot_dir / "gold.png", "gold score", "Gold score on held-out prompts", baseline="sft"
    )
    figs.append(
        _figure(
            png,
            "gold",
            "The hidden judge's score of each policy's greedy responses (weighted by the task's prompt mix); the dashed line is SFT.",
        )
    )
    if win:
        png = plots.bars(
            win,
            plot_dir / "win_rate.png",
            "win rate vs SFT",
            "Win rate vs SFT (gold judge)",
            errors=errors,
        )
        figs.append(
            _figure(
                png,
                "win_rate",
                "Share of held-out prompts where the policy's response scores higher than SFT's (ties count half); whiskers: bootstrap 95% interval.",
            )
        )
    over = overoptimization(out, names, task)
    if over:
        png = plots.gold_vs_proxy(
            over, plot_dir / "overoptimization.png", "Gold vs proxy reward as KL grows"
        )
        figs.append(
            _figure(
                png,
                "overoptimization",
                "What to look for (Gao et al. 2022, reward model over-optimisation): as the policy moves away from SFT, the proxy reward it is optimised against keeps rising while the gold score peaks, then falls once the policy exploits the reward model's errors. Each point is a group of training steps: the mean KL of their rollouts, the gold judge's score of those rollouts, and the reward they were given.",
            )
        )
    s_header, s_rows = sample_table(out, names)
    timing_rows = [
        [k, f"{v['wall_s']:.0f}", f"{v['cpu_s']:.0f}", "reused" if v.get("reused") else ""]
        for k, v in summary["timings"].items()
    ]
    settings = summary["settings"]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rlhfkit demo report</title><style>{CSS}</style></head>
<body>
<h1>rlhfkit demo: RLHF on the built-in task</h1>
<p>Recipe <code>{html.escape(settings["name"])}</code>: SFT ({settings["sft_steps"]} steps) &rarr;
{settings["k"]} samples per prompt compared on helpfulness and safety (labels: <code>{html.escape(summary["labels"])}</code>,
{html.escape(", ".join(f"{k} {v}" for k, v in summary.get("comparisons", {}).items()))}) &rarr;
two reward models combined by Llama 2's safety gate &rarr; {html.escape(", ".join(names))}.
Wall time {summary["wall_s"] / 60:.1f} min, CPU time {summary["cpu_s"] / 60:.1f} min.</p>
<h2>Summary</h2>
{_table(["policy"] + [c[0] for c in COLUMNS], summary_rows(summary), id_="summary")}
<p>Gold: the hidden judge (safety on harmful requests, helpfulness elsewhere), averaged per
prompt kind and weighted 80/10/10 like the task's prompt mix. KL: mean
<code>log &pi;(y|x) - log &pi;<sub>SFT</sub>(y|x)</code> over responses sampled from the policy.
BLEU / ROUGE-L: against the ideal response of each prompt. Length: tokens per response.</p>
<h2>Plots</h2>
{"".join(figs)}
<h2>Sample responses before and after</h2>
<p>Greedy responses to held-out prompts, the gold score in brackets.</p>
{_table(s_header, s_rows, cls="samples", id_="samples") if s_rows else "<p>none</p>"}
<h2>Steps</h2>
{_table(["step", "wall s", "CPU s", ""], timing_rows, id_="steps")}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path

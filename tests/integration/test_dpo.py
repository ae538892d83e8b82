"""DPO and CPL on the built-in task improve the SFT policy, judged by the gold judge."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.demo.preferences import synthetic_preferences
from rlhfkit.evaluation.evaluate import evaluate_policy
from rlhfkit.training.tracking import read_metrics

runner = CliRunner()


def dpo_preferences(task, split: str, scale: int, seed: int):
    """Each prompt judged on the dimension that matters for it, as in Llama 2's
    combined reward: helpfulness for arithmetic and benign requests, safety for
    harmful ones."""
    recs = synthetic_preferences(
        task, split, n=16 * scale, dimensions=("helpfulness",), kind="arithmetic", seed=seed
    )
    recs += synthetic_preferences(
        task, split, n=4 * scale, dimensions=("helpfulness",), kind="benign", seed=seed + 1
    )
    recs += synthetic_preferences(
        task, split, n=4 * scale, dimensions=("safety",), kind="harmful", seed=seed + 2
    )
    random.Random(seed).shuffle(recs)
    return recs


@pytest.fixture(scope="module")
def pref_files(task, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpo-data")
    files = {}
    for name, split, scale, seed in (("train", "train", 100, 0), ("heldout", "heldout", 20, 50)):
        path = tmp / f"{name}.jsonl"
        path.write_text(
            "".join(
                json.dumps(r.to_dict()) + "\n" for r in dpo_preferences(task, split, scale, seed)
            )
        )
        files[name] = path
    return files


@pytest.fixture(scope="module")
def sft_scores(sft_policy, task):
    return evaluate_policy(sft_policy.final_dir, task)[0]


def run_cli(model: Path, data: Path, held: Path, out: Path, loss: str, *sets: str) -> None:
    args = [
        "-q",
        "dpo",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--loss",
        loss,
    ]
    common = ["learning_rate=1e-4", "batch_size=32", "max_steps=75", "max_length=64", "log_every=15",
              "eval_every=25", f"eval_data={held}", "seed=0"]  # fmt: skip
    for s in [*common, *sets]:
        args += ["--set", s]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output


def test_dpo_beats_sft_on_gold(sft_policy, sft_scores, pref_files, task, tmp_path):
    out = tmp_path / "dpo"
    run_cli(
        sft_policy.final_dir,
        pref_files["train"],
        pref_files["heldout"],
        out,
        "sigmoid",
        "beta=0.1",
        "sft_weight=3.0",
        "learning_rate=3e-5",
        "max_steps=150",
        "eval_every=50",
    )
    metrics = read_metrics(out / "metrics.jsonl")
    held = [m for m in metrics if "eval_rewards_accuracy" in m]
    # Held-out comparisons (480 pairs of held-out prompts): implicit-reward accuracy
    # above chance (standard error 0.023). Measured 0.571: the SFT term (weight 3)
    # raises both sides' log-ratios; beta 0.5 with SFT weight 1 ranked 0.7+ of them
    # but lost gold (below).
    assert held[-1]["eval_rewards_accuracy"] >= 0.54, held[-1]
    scores, _ = evaluate_policy(out / "final", task)
    print(f"gold: SFT {sft_scores.gold:.3f} -> DPO {scores.gold:.3f}; {sft_scores} -> {scores}")
    # These comparisons come from the task's synthetic candidates, whose verbose
    # answers beat bare numbers, so DPO gains safety and gives back arithmetic. With
    # beta 0.5, SFT weight 1 and lr 1e-4 the gold gain ranged from +0.03 to -0.007
    # across SFT fixtures (accuracy 0.643 -> 0.503 on the last); the demo's recipe
    # (the paper's beta 0.1, SFT weight 3, lr 3e-5), 150 steps, measured +0.044 on that
    # fixture (gold 0.687 -> 0.731, accuracy 0.583, refusals 0.17 -> 1.0). The gold gain's sign is asserted; the
    # refusal gain is the large, sign-sensitive effect.
    assert scores.gold > sft_scores.gold, (sft_scores, scores)
    assert scores.refusal_harmful >= sft_scores.refusal_harmful + 0.5
    assert scores.refusal_benign <= 0.2


def test_cpl_improves_on_sft_without_a_reference(
    sft_policy, sft_scores, pref_files, task, tmp_path
):
    out = tmp_path / "cpl"
    run_cli(
        sft_policy.final_dir,
        pref_files["train"],
        pref_files["heldout"],
        out,
        "cpl",
        "beta=0.5",
        "cpl_bc_weight=3.0",
        "learning_rate=3e-5",
        "max_steps=150",
        "eval_every=50",
    )
    scores, _ = evaluate_policy(out / "final", task)
    print(f"gold: SFT {sft_scores.gold:.3f} -> CPL {scores.gold:.3f}; {sft_scores} -> {scores}")
    # With behaviour-cloning weight 1 and lr 1e-4: +0.023 and +0.008 on two SFT
    # fixtures, -0.001 on a third (arithmetic 0.643 -> 0.52); weight 3, lr 3e-5 and 150
    # steps gave +0.046 on that one (refusals of harmful requests 0.17 -> 1.0,
    # arithmetic 0.587, held-out reward accuracy 0.754).
    # CPL trades arithmetic for safety on this task, so the gold gain is small and
    # only its sign is asserted; the refusal gain is the large, sign-sensitive effect.
    assert scores.gold > sft_scores.gold, (sft_scores, scores)
    assert scores.refusal_harmful >= sft_scores.refusal_harmful + 0.5
    assert scores.accuracy >= sft_scores.accuracy - 0.2, (sft_scores, scores)
    held = [m for m in read_metrics(out / "metrics.jsonl") if "eval_rewards_accuracy" in m]
    assert held[-1]["eval_rewards_accuracy"] >= 0.7

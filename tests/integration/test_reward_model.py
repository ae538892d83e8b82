"""Reward models on the built-in task: accuracy, HH-style records, two RMs combined."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config import RMConfig
from rlhfkit.demo.preferences import synthetic_preferences
from rlhfkit.evaluation.scoring import score_file
from rlhfkit.models.reward import RewardModel
from rlhfkit.rollout.rewards import ModelReward, SafetyGated
from rlhfkit.training.stages.reward import run_rm
from rlhfkit.training.tracking import read_metrics

runner = CliRunner()


def dump(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records), encoding="utf-8")
    return path


def rm_config(model, data, out, **kw) -> RMConfig:
    base = dict(model=str(model), data=str(data), out=str(out), learning_rate=3e-4, batch_size=32,
                max_length=64, seed=0, log_every=20, eval_on_start=True)  # fmt: skip
    base.update(kw)
    cfg = RMConfig(**base)
    cfg.validate()
    return cfg


def task_preferences(task, split: str, n_help: int, n_safe: int, seed: int):
    """Dimension-tagged comparisons in one list, as Llama 2's annotation produces them:
    helpfulness over all prompts, safety mostly over harmful and benign look-alikes."""
    recs = synthetic_preferences(task, split, n=n_help, dimensions=("helpfulness",), seed=seed)
    for i, (kind, share) in enumerate((("harmful", 0.4), ("benign", 0.4), ("arithmetic", 0.2))):
        recs += synthetic_preferences(
            task, split, n=int(n_safe * share), dimensions=("safety",), kind=kind, seed=seed + 1 + i
        )
    random.Random(seed).shuffle(recs)
    return recs


@pytest.fixture(scope="module")
def two_rms(sft_policy, task, tmp_path_factory):
    """A helpfulness RM and a safety RM trained from the SFT policy on one file of
    dimension-tagged comparisons, each selecting its records; evaluated on
    comparisons over held-out prompts."""
    tmp = tmp_path_factory.mktemp("two-rms")
    data = dump(tmp / "prefs.jsonl", task_preferences(task, "train", 3000, 800, seed=3))
    held = dump(tmp / "heldout.jsonl", task_preferences(task, "heldout", 400, 200, seed=30))
    out = {}
    for dim in ("helpfulness", "safety"):
        cfg = rm_config(
            sft_policy.final_dir,
            data,
            tmp / dim,
            eval_data=str(held),
            dimension=dim,
            epochs=2.0,
            eval_every=25,
        )
        out[dim] = run_rm(cfg)
    return out


def test_rm_learns_heldout_preferences(two_rms):
    """Random scoring gets 50%; the simulated labelers agree with the gold judge on
    about 96% of these pairs (temperature 0.1).

    Measured: helpfulness 0.785 (0.82 with another order of the same records;
    the labeler itself agrees with gold on 0.93 of these pairs), safety 0.995.
    The suite's quick recipe (3,000 pairs; both RMs ~23 s); the issue's 0.85 is checked by
    test_rm_on_rankings_reaches_085_heldout (`make test-long`: rankings of 9, ~3
    minutes). 96% of the held-out prompts are arithmetic, and what keeps this RM
    lower is checking a bare number against the sum at the EOS the reward is read
    from (exact > off1 0.3-0.52, even on training prompts); refusals, compliance,
    wordiness and far-off answers are learned. No RM here ranks the bare exact
    number above a verbose correct answer (exact > verbose 0.08): a verbose answer
    is right in every comparison it appears in, a bare number only as far as the
    RM can check it. See docs/reward.md and bench/rm_accuracy.py.
    """
    accuracy = {
        dim: json.loads((two_rms[dim].final_dir.parent / "eval.json").read_text())["accuracy"]
        for dim in two_rms
    }
    assert accuracy["helpfulness"] >= 0.75, accuracy
    assert accuracy["safety"] >= 0.9, accuracy


LONG_TESTS = os.environ.get("RLHFKIT_LONG_TESTS") == "1"


@pytest.mark.long
@pytest.mark.skipif(
    not LONG_TESTS, reason="a ~3-minute RM run; `make test-long` (RLHFKIT_LONG_TESTS=1) runs it"
)
def test_rm_on_rankings_reaches_085_heldout(sft_policy, task, tmp_path):
    """The issue's bar, with InstructGPT's data: rankings of 9 sampled candidates per
    prompt (36 pairs in one batch element), 2,000 of them, 4 epochs from the same SFT
    backbone. Held out: 1,000 simulated comparisons (the test above uses the first 400
    of them), the best evaluated checkpoint kept; then that checkpoint on 1,000 other
    held-out comparisons it was not selected on.

    Measured (docs/reward.md): 0.865 on the 1,000 selection pairs and 0.873 on the
    other 1,000 (0.862 on the selection pairs on another host's float kernels); 0.855-0.881 on five more 800-pair draws, and the same within a
    point over three draws of the training rankings. The 3,000 pairs of the test
    above give 0.79-0.81 on the same sets. What is left is "exact > verbose" (every
    RM here ranks verbose answers above the bare exact number: a ceiling of
    0.89-0.92 on these sets)."""
    train = synthetic_preferences(task, "train", n=2000, k=9, distinct=False, seed=3)
    data = dump(tmp_path / "rankings.jsonl", train)
    held = dump(tmp_path / "heldout.jsonl", synthetic_preferences(task, "heldout", 1000, seed=30))
    cfg = rm_config(sft_policy.final_dir, data, tmp_path / "rm", eval_data=str(held),
                    epochs=4.0, eval_every=50)  # fmt: skip
    result = run_rm(cfg)
    summary = json.loads((tmp_path / "rm" / "eval.json").read_text())
    assert summary["n_pairs"] == 1000 and summary["accuracy"] >= 0.85, summary

    other = dump(tmp_path / "other.jsonl", synthetic_preferences(task, "heldout", 1000, seed=31))
    rm = RewardModel.from_pretrained(result.final_dir, max_length=64)
    fresh = score_file(rm, str(other), tmp_path / "scores.jsonl", show_progress=False)
    assert fresh.n_pairs == 1000 and fresh.accuracy is not None, fresh
    assert fresh.accuracy >= 0.85, fresh


def test_rm_run_folder_and_eval_json(two_rms):
    result = two_rms["helpfulness"]
    out = result.final_dir.parent
    summary = json.loads((out / "eval.json").read_text())
    assert set(summary) == {"accuracy", "loss", "margin", "n_pairs", "step"}
    assert summary["n_pairs"] == 400  # the held-out helpfulness comparisons
    metrics = read_metrics(out / "metrics.jsonl")
    assert metrics[0]["step"] == 0 and 0.3 < metrics[0]["eval_accuracy"] < 0.7  # an untrained head
    best = max(m["eval_accuracy"] for m in metrics if "eval_accuracy" in m)
    assert summary["accuracy"] == best  # final/ is the most accurate evaluated model
    model = AutoModelForSequenceClassification.from_pretrained(result.final_dir)
    assert model.config.num_labels == 1


def test_safety_combination_prefers_refusal_of_harm_and_correct_answers(two_rms, task):
    help_rm = ModelReward(
        RewardModel.from_pretrained(two_rms["helpfulness"].final_dir), "helpfulness"
    )
    safe_rm = ModelReward(RewardModel.from_pretrained(two_rms["safety"].final_dir), "safety")
    gate = SafetyGated(help_rm, safe_rm, threshold=0.15, whiten=False)

    harmful = task.prompt_records("train", "harmful")[:40]
    prompts = [r.prompt for r in harmful]
    fields = [r.extra for r in harmful]
    refuse, _ = gate.combined(prompts, ["I can't help with that."] * len(prompts), fields)
    comply = [task.candidates(r.prompt[0].content)[-1] for r in harmful]  # a compliance
    complied, used = gate.combined(prompts, comply, fields)
    assert bool(used.all())  # harmful prompts are flagged: the safety score decides
    assert (refuse > complied).float().mean() >= 0.9

    arith = task.prompts("train", "arithmetic")[:60]
    recs = [r for r in task.prompt_records("train", "arithmetic")[:60]]
    right, _ = gate.combined(
        [r.prompt for r in recs], [str(p.answer) for p in arith], [r.extra for r in recs]
    )
    wrong, _ = gate.combined(
        [r.prompt for r in recs], [str(p.answer + 11) for p in arith], [r.extra for r in recs]
    )
    assert (right > wrong).float().mean() >= 0.8

    # Benign look-alikes are not refused: answering beats refusing.
    benign = task.prompt_records("train", "benign")[:40]
    helpful = [task.concise(r.prompt[0].content) for r in benign]
    answered, _ = gate.combined([r.prompt for r in benign], helpful, [r.extra for r in benign])
    refused, _ = gate.combined(
        [r.prompt for r in benign],
        ["I can't help with that."] * len(benign),
        [r.extra for r in benign],
    )
    assert (answered > refused).float().mean() >= 0.9


def test_lora_reward_model_trains_and_saves_merged(tiny_llama, task, tmp_path):
    """LoRA on a sequence-classification model: peft wraps the model (its ``base_model``
    is the LoRA tuner) and the ``score`` head; the stage still reads rewards and saves
    a merged model that loads as a plain reward model."""
    data = dump(tmp_path / "prefs.jsonl", synthetic_preferences(task, "train", n=48, seed=1))
    cfg = rm_config(tiny_llama, data, tmp_path / "rm", max_steps=3, batch_size=8, lora_r=4)
    result = run_rm(cfg)
    rm = RewardModel.from_pretrained(result.final_dir)
    assert not hasattr(rm.model, "peft_config")
    assert rm.score(["What is 2 + 3?"] * 2, ["5", "6"]).shape == (2,)


def hh(turns: list[tuple[str, str]]) -> str:
    return "".join(f"\n\n{role}: {text}" for role, text in turns)


def test_hh_style_records_end_to_end_through_the_cli(sft_policy, task, tmp_path):
    rows = []
    for p in task.prompts("train", "arithmetic")[:200]:
        history = [("Human", "Hi"), ("Assistant", "Hello"), ("Human", p.text)]
        rows.append({
            "chosen": hh([*history, ("Assistant", str(p.answer))]),
            "rejected": hh([*history, ("Assistant", "I can't help with that.")]),
        })  # fmt: skip
    data = tmp_path / "hh.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rm"
    sets = [
        "max_steps=20",
        "batch_size=16",
        "learning_rate=3e-4",
        "max_length=96",
        "eval_fraction=0.2",
    ]
    args = [
        "-q",
        "rm",
        "--model",
        str(sft_policy.final_dir),
        "--data",
        str(data),
        "--out",
        str(out),
    ]
    for s in sets:
        args += ["--set", s]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "eval.json").read_text())["accuracy"] >= 0.9

    scored = tmp_path / "scores.jsonl"
    res = runner.invoke(
        app, ["score", "--model", str(out / "final"), "--data", str(data), "--out", str(scored)]
    )
    assert res.exit_code == 0, res.output
    assert "pairwise accuracy" in res.output
    lines = [json.loads(x) for x in scored.read_text().splitlines()]
    assert len(lines) == 200 and {"chosen_reward", "rejected_reward", "correct"} <= set(lines[0])
    # The implicit prompt was split at the last shared Assistant turn: three messages.
    assert [m["role"] for m in lines[0]["prompt"]] == ["user", "assistant", "user"]

    responses = tmp_path / "responses.jsonl"
    responses.write_text(json.dumps({"prompt": "What is 2 + 3?", "response": "5", "id": 7}) + "\n")
    res = runner.invoke(
        app,
        ["score", "--model", str(out / "final"), "--data", str(responses), "--out", str(scored)],
    )
    assert res.exit_code == 0, res.output
    row = json.loads(scored.read_text())
    assert row["id"] == 7 and isinstance(row["reward"], float)


BAD = [
    ({"prompt": "What is 2 + 3?", "chosen": "5", "rejected": " 5 "},
     "field 'rejected': expected a response different from 'chosen', got \" 5 \" (string)"),
    ({"prompt": "q", "responses": ["a", "b", "c", "d"], "rank": [1, 2]},
     "field 'rank': expected a list of 4 integers >= 1 (one per response, 1 = best), got [1, 2] (list of 2)"),
]  # fmt: skip


@pytest.mark.parametrize(("row", "message"), BAD)
def test_rm_bad_input(tmp_path, row, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(row) + "\n")
    res = runner.invoke(
        app, ["rm", "--model", "m", "--data", str(data), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 65
    assert res.stderr.splitlines()[0] == f"error: {data}:1: {message}"


def test_rank_command_orders_models(tmp_path):
    strengths = {"sft": 0.0, "ppo": 1.0, "dpo": 0.5}
    rng = random.Random(0)
    rows = []
    for _ in range(600):
        a, b = rng.sample(sorted(strengths), 2)
        p = 1 / (1 + 2.718281828 ** (strengths[b] - strengths[a]))
        rows.append({"a": a, "b": b, "winner": "a" if rng.random() < p else "b"})
    data = tmp_path / "cmp.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "board.json"
    res = runner.invoke(app, ["rank", "--data", str(data), "--bootstrap", "50", "--out", str(out)])
    assert res.exit_code == 0, res.output
    board = json.loads(out.read_text())
    assert [r["item"] for r in board] == ["ppo", "dpo", "sft"]

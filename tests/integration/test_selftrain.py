"""Rejection sampling, ReST, HIR and best-of-n on the built-in task, judged by the gold
judge against the SFT policy; Llama 2's rounds with a reward-model refresh, a
finishing PPO run and a resumed round on a tiny model.

The reward that selects is a rule a user would write (the exact-answer checker of
``rlhfkit.rewards`` plus refusing flagged requests), not the gold judge: it cannot tell
a helpful benign answer from an unhelpful one and gives wordy answers less.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.demo.onpolicy import mixed_prompts
from rlhfkit.demo.task import extract_number, is_refusal
from rlhfkit.evaluation.evaluate import evaluate_policy
from rlhfkit.training.tracking import read_metrics

runner = CliRunner()

REWARD_FILE = """
from rlhfkit.demo.task import is_refusal
from rlhfkit.rewards import exact_answer


def task_reward(completions, answer, unsafe, **fields):
    checked = exact_answer(completions, answer)
    out = []
    for text, ok, want, bad in zip(completions, checked, answer, unsafe, strict=True):
        if bad:
            out.append(1.0 if is_refusal(text) else 0.0)
        elif want is not None:
            out.append(ok - 0.2 * (len(text.split()) > 1))
        else:
            out.append(0.0 if is_refusal(text) else 0.5)
    return out
"""

# what every run here shares: 4 samples per prompt, one epoch of SFT per round
COMMON = ("samples_per_prompt=4", "max_new_tokens=12", "generation_batch_size=256",
          "learning_rate=5e-5", "batch_size=32", "epochs=1", "max_length=64", "seed=0",
          "log_every=5")  # fmt: skip


def write_prompts(task, path: Path, n: int, seed: int) -> Path:
    records = {r.prompt[0].content: r for r in task.prompt_records("train")}
    rows = [
        {"prompt": p.text, **records[p.text].extra} for p in mixed_prompts(task, "train", n, seed)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(task, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("selftrain")
    (tmp / "rewards.py").write_text(REWARD_FILE, encoding="utf-8")
    return {  # 60% arithmetic, 20% harmful, 20% benign requests, as the on-policy labels
        "tmp": tmp,
        "prompts": write_prompts(task, tmp / "prompts.jsonl", 500, 3),
        "small": write_prompts(task, tmp / "small.jsonl", 50, 4),
        "reward": f"{tmp / 'rewards.py'}:task_reward",
    }


@pytest.fixture(scope="module")
def sft_scores(sft_policy, task):
    return evaluate_policy(sft_policy.final_dir, task)[0]


def run_stage(stage: str, model: Path, prompts: Path, out: Path, *sets: str, reward=None) -> float:
    args = ["-q", stage, "--model", str(model), "--prompts", str(prompts), "--out", str(out)]
    if reward:
        args += ["--reward-fn", reward]
    for s in (*COMMON, *sets):
        args += ["--set", s]
    t = time.perf_counter()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return time.perf_counter() - t


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def report(name: str, before, after, seconds: float) -> None:
    print(
        f"{name}: gold {before.gold:.3f} -> {after.gold:.3f}, accuracy {before.accuracy:.3f} "
        f"-> {after.accuracy:.3f}, harmful refused {before.refusal_harmful:.2f} -> "
        f"{after.refusal_harmful:.2f} ({seconds:.0f}s)"
    )


def test_rejection_sampling_beats_sft(sft_policy, sft_scores, task, files):
    """Best of 4 by the rule reward, samples under 0.5 dropped, one round of SFT (3 epochs
    over the ~380 kept samples). Measured: gold 0.666 -> 0.755, harmful refused 0.17 ->
    1.00, accuracy 0.608 -> 0.617 (one epoch: 0.703, refused 0.50).
    Keeping the worst sample instead (a wrong sign) measured gold 0.580."""
    out = files["tmp"] / "rs"
    seconds = run_stage(
        "rejection-sampling", sft_policy.final_dir, files["prompts"], out, "min_reward=0.5",
        "epochs=3", reward=files["reward"],
    )  # fmt: skip
    after = evaluate_policy(out / "final", task)[0]
    report("rejection sampling", sft_scores, after, seconds)
    assert after.gold > sft_scores.gold + 0.03, (sft_scores, after)
    assert after.refusal_harmful > sft_scores.refusal_harmful + 0.3

    (m,) = read_metrics(out / "metrics.jsonl")
    assert m["round"] == 1 and m["samples"] == 2000
    assert m["kept_reward_mean"] > m["reward_mean"] + 0.3
    assert (
        m["kept"] == m["prompts_kept"] < 500
    )  # one per prompt; prompts with no sample >= 0.5 keep none
    rows = read_jsonl(out / "round-1" / "samples.jsonl")
    for row in rows:  # the kept sample is the first of the best
        if row["kept"]:
            (j,) = row["kept"]
            assert row["scores"][j] == max(row["scores"]) >= 0.5
            assert j == row["scores"].index(max(row["scores"]))
        else:
            assert max(row["scores"]) < 0.5
    train = read_jsonl(out / "round-1" / "train.jsonl")
    assert len(train) == m["kept"] and all(r["score"] >= 0.5 for r in train)


def test_rest_beats_sft(sft_policy, sft_scores, task, files):
    """One Grow step, two Improve steps at rewards >= 0.5 then >= 0.8 (a 0/1-like reward:
    thresholds as values). Measured: gold 0.666 -> 0.743, harmful refused 0.17 -> 1.00.
    A filter that kept the rewards below the thresholds instead measured gold 0.617."""
    out = files["tmp"] / "rest"
    seconds = run_stage(
        "rest", sft_policy.final_dir, files["prompts"], out, "threshold_mode=value",
        "thresholds=[0.5, 0.8]", reward=files["reward"],
    )  # fmt: skip
    after = evaluate_policy(out / "final", task)[0]
    report("ReST", sft_scores, after, seconds)
    assert after.gold > sft_scores.gold + 0.03, (sft_scores, after)

    m1, m2 = read_metrics(out / "metrics.jsonl")
    assert (m1["grow"], m1["improve"], m2["grow"], m2["improve"]) == (1, 1, 1, 2)
    assert (m1["threshold"], m2["threshold"]) == (0.5, 0.8)
    assert m1["reward_mean"] == m2["reward_mean"]  # one Grow dataset for both steps
    assert m1["samples"] > m1["kept"] > m2["kept"] > 0  # smaller, better subsets
    assert m2["kept_reward_mean"] > m1["kept_reward_mean"] > m1["reward_mean"]
    for step, tau in ((1, 0.5), (2, 0.8)):
        train = read_jsonl(out / "grow-1" / f"improve-{step}" / "train.jsonl")
        assert all(r["score"] >= tau for r in train)


def right_for(task, prompt: str, response: str) -> bool:
    p = task.lookup(prompt)
    if p.kind == "arithmetic":
        return not is_refusal(response) and extract_number(response) == p.answer
    if p.kind == "harmful":
        return is_refusal(response)
    return task.gold(p, response).helpfulness == 1.0


def test_hir_beats_sft(sft_policy, sft_scores, task, files):
    """Sample 4 per prompt, relabel each prompt so the response is right for it (the
    built-in relabeler), fine-tune on the relabeled pairs. No reward is used.
    Measured: gold 0.666 -> 0.735, harmful refused 0.17 -> 1.00, accuracy 0.608 ->
    0.587. Keeping the original prompts (no relabeling) measured gold 0.638."""
    out = files["tmp"] / "hir"
    seconds = run_stage(
        "hir",
        sft_policy.final_dir,
        files["prompts"],
        out,
        "relabel_fn=rlhfkit.demo.relabel:relabel",
    )
    after = evaluate_policy(out / "final", task)[0]
    report("HIR", sft_scores, after, seconds)
    assert after.gold > sft_scores.gold + 0.03, (sft_scores, after)

    (m,) = read_metrics(out / "metrics.jsonl")
    assert m["relabeled"] > 0 and m["kept_as_is"] > 0 and m["dropped"] > 0
    assert m["relabeled"] + m["kept_as_is"] + m["dropped"] + m["empty"] == m["samples"] == 2000
    pairs = read_jsonl(out / "round-1" / "train.jsonl")
    assert len(pairs) == m["trained_pairs"] == m["relabeled"] + m["kept_as_is"]
    for row in pairs:  # every trained pair is right for its (relabeled) prompt
        prompt, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        assert right_for(task, prompt, answer), row
        assert task.split_of(prompt) == "train"


def relabeled_groups(path: Path) -> list[list[tuple]]:
    """A HIR round's training pairs grouped by the prompt they were sampled for."""
    from rlhfkit.data.types import Message

    groups: dict[str, list[tuple]] = {}
    for row in read_jsonl(path):
        conv = tuple(Message(m["role"], m["content"]) for m in row["messages"][:-1])
        key = json.dumps(row["original_prompt"])
        groups.setdefault(key, []).append((conv, row["messages"][-1]["content"]))
    return list(groups.values())


def contrastive_loss(model_dir: Path, groups) -> float:
    """Mean HIR contrastive loss of ``model_dir`` on ``groups`` (groups with at least
    two distinct prompts), through the stage's own objective."""
    import torch

    from rlhfkit.data.templates import resolve_template
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.training.stages.hir import HIRCollator, HIRObjective, build_groups

    tok = load_tokenizer(str(model_dir))
    items = [g for g in build_groups(groups, tok, resolve_template(tok), 64)[0] if g.m > 1]
    with torch.no_grad():
        out = HIRObjective(1.0).loss(
            load_causal_lm(str(model_dir)).eval(), HIRCollator(tok.pad_token_id)(items)
        )
    total, rows = out.metrics["contrastive"]
    return total / rows


def test_hir_contrastive_term_is_what_lowers_the_contrastive_loss(sft_policy, files):
    """The same samples and relabels fine-tuned with and without the contrastive term:
    only with it does each output become clearly likelier under its own relabeled prompt
    than under its group's other prompts. Measured on the training groups, 6 epochs:
    0.447 (SFT), 0.374 (plain HIR), 0.320 (contrastive weight 1); with 3 epochs the gap
    was 0.023 on one SFT model and 0.003 on another (0.404 / 0.401). A flipped sign would
    raise it above plain HIR's. (Gold is not asserted: the term lowered it on this task,
    docs/selftrain.md.)"""
    runs = {}
    # about 16 pairs a step both ways (with the term, batch_size counts source prompts)
    for weight, batch in ((0.0, 16), (1.0, 4)):
        out = files["tmp"] / f"hir-w{weight:g}"
        run_stage(
            "hir", sft_policy.final_dir, files["small"], out, "relabel_fn=rlhfkit.demo.relabel:relabel",
            f"contrastive_weight={weight}", "epochs=6", f"batch_size={batch}", "log_every=3",
        )  # fmt: skip
        runs[weight] = out
    groups = relabeled_groups(runs[1.0] / "round-1" / "train.jsonl")
    assert groups == relabeled_groups(runs[0.0] / "round-1" / "train.jsonl")  # same data
    assert any(len({conv for conv, _ in g}) > 1 for g in groups)
    sft, plain, contrastive = (
        contrastive_loss(d, groups)
        for d in (sft_policy.final_dir, runs[0.0] / "final", runs[1.0] / "final")
    )
    print(
        f"HIR contrastive loss on its training groups: SFT {sft:.3f}, plain {plain:.3f}, with the term {contrastive:.3f}"
    )
    assert contrastive < plain - 0.02 and contrastive < sft - 0.05
    logged = read_metrics(runs[1.0] / "round-1" / "sft" / "metrics.jsonl")
    assert {"nll", "contrastive", "contrastive_accuracy", "ppl"} <= set(logged[-1])


def test_best_of_n_picks_better_responses(sft_policy, task, files):
    out = files["tmp"] / "best.jsonl"
    args = ["-q", "best-of-n", "--model", str(sft_policy.final_dir), "--prompts",
            str(files["prompts"]), "--reward-fn", files["reward"], "--out", str(out), "-n", "4",
            "--set", "max_new_tokens=12", "--set", "generation_batch_size=256"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "best-of-4 on 500 prompts" in res.output
    rows = read_jsonl(out)
    assert len(rows) == 500
    for row in rows:  # empty responses score None (never chosen) in the output
        scored = [s for s in row["scores"] if s is not None]
        assert row["score"] == max(scored) and row["response"] == row["responses"][row["best"]]
        assert all(row["responses"][i] for i, s in enumerate(row["scores"]) if s is not None)

    def gold(row, text):
        g = task.gold(row["prompt"][0]["content"], text)
        return g.safety if row["kind"] == "harmful" else g.helpfulness

    best = sum(gold(r, r["response"]) for r in rows) / len(rows)
    first = sum(gold(r, r["responses"][0]) for r in rows) / len(rows)
    print(f"best-of-4: gold {first:.3f} (one sample) -> {best:.3f} (best by the rule reward)")
    assert best > first + 0.1


def test_rounds_with_rm_refresh_and_ppo_then_resume(tiny_llama, files, tmp_path):
    """Llama 2's loop on a tiny model: round 1 -> refreshed RM -> round 2 scored by it ->
    PPO from round 2's policy with that RM. Then round 2 is marked unfinished and the run
    resumed: round 1 is not redone."""
    from rlhfkit.demo.refresh import refresh_reward_model

    rm0 = refresh_reward_model(
        round=0, policy=str(tiny_llama), out=str(tmp_path / "rm0"), reward_model=[str(tiny_llama)],
        n_prompts=48, k=2, max_new_tokens=8,
    )  # fmt: skip
    out = tmp_path / "rs"
    args = ["-q", "rejection-sampling", "--model", str(tiny_llama), "--reward-model", rm0,
            "--prompts", str(files["small"]), "--out", str(out)]  # fmt: skip
    sets = ["rounds=2", "samples_per_prompt=2", "max_new_tokens=8", "learning_rate=1e-3",
            "batch_size=16", "max_length=64", "keep=top_fraction", "keep_fraction=0.5",
            "accumulate=true", "rm_refresh=rlhfkit.demo.refresh:refresh_reward_model",
            "rm_refresh_args={n_prompts: 48, k: 2, max_new_tokens: 8}",
            "ppo={max_steps: 2, rollout_batch_size: 8, batch_size: 8, ppo_epochs: 1}"]  # fmt: skip
    res = runner.invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert res.exit_code == 0, res.output

    s1 = json.loads((out / "round-1" / "summary.json").read_text())
    s2 = json.loads((out / "round-2" / "summary.json").read_text())
    assert s1["reward_models"] == [rm0]
    assert s1["refreshed_reward_models"] == [str(out / "round-1" / "rm" / "model" / "final")]
    assert s2["reward_models"] == s1["refreshed_reward_models"]  # round 2 scored by the new RM
    assert s2["refreshed_reward_models"] == [str(out / "round-2" / "rm" / "model" / "final")]
    labels = read_jsonl(out / "round-2" / "rm" / "all_labels.jsonl")
    assert len(labels) > len(read_jsonl(out / "round-2" / "rm" / "labels.jsonl"))  # both rounds'
    ppo_cfg = (out / "ppo" / "config.yaml").read_text()
    assert f"model: {s2['policy']}" in ppo_cfg  # PPO starts from round 2's policy ...
    assert str(out / "round-2" / "rm" / "model" / "final") in ppo_cfg  # ... with the last RM
    final = (out / "final" / "model.safetensors").read_bytes()
    assert final == (out / "ppo" / "final" / "model.safetensors").read_bytes()
    # keep=top_fraction 0.5 of 2 samples: one per prompt (none where both are empty, as
    # the untrained model's sometimes are); accumulate: round 2 also trains on round 1's
    rows = read_jsonl(out / "round-1" / "samples.jsonl")
    assert len(rows) == len(read_jsonl(files["small"]))
    assert s1["kept"] == s1["prompts_kept"] == sum(1 for row in rows if any(row["responses"]))
    assert all(len(row["kept"]) <= 1 for row in rows)
    accumulated = read_jsonl(out / "round-2" / "train_accumulated.jsonl")
    assert len(accumulated) == s1["kept"] + s2["kept"]
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [1, 2]

    # killed during round 2: no round-2 summary, no PPO run, no final/
    (out / "round-2" / "summary.json").unlink()
    shutil.rmtree(out / "ppo")
    shutil.rmtree(out / "final")
    round1 = (out / "round-1" / "sft" / "final" / "model.safetensors").stat().st_mtime_ns
    res = runner.invoke(app, args + [a for s in sets for a in ("--set", s)] + ["--resume"])
    assert res.exit_code == 0, res.output
    assert (out / "round-1" / "sft" / "final" / "model.safetensors").stat().st_mtime_ns == round1
    assert (out / "round-2" / "summary.json").is_file()
    assert (out / "ppo" / "final").is_dir() and (out / "final").is_dir()
    assert [m["round"] for m in read_metrics(out / "metrics.jsonl")] == [1, 2]

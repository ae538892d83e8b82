"""``rlhfkit demo --quick`` end to end: every stage runs, PPO and DPO both beat SFT on
the gold judge on held-out prompts with the KL to SFT under the demo's bound, the
report renders in a real browser, a rerun reuses finished steps, and ``rlhfkit eval``
agrees with the demo's own evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from label_support import chromium
from rlhfkit.cli import app
from rlhfkit.demo.algorithms import REGISTRY
from rlhfkit.demo.pipeline import QUICK
from rlhfkit.demo.report import COLUMNS, summary_rows

runner = CliRunner()
STEPS = ("tiny", "data", "sft", "labels", "rm-helpfulness", "rm-safety", "ppo", "dpo",
         "eval/sft", "eval/ppo", "eval/dpo")  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo")
    res = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, res.output


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def test_quick_demo_aligns_the_sft_model(demo):
    """Measured here: gold SFT 0.529 -> PPO 0.583, DPO 0.556; harmful requests refused
    0.50 -> 1.00 by both, benign ones never; arithmetic accuracy 0.347 -> 0.353 and
    0.313; KL to SFT 0.01 nats per response for both. With the fused optimizer and
    wider packed rows (other float sums, another SFT model): SFT 0.537 -> PPO 0.566,
    DPO 0.605. The gain is safety: the reward
    models and the preferences cannot teach sums the 400-step SFT model does not know,
    and how much arithmetic a method moves by chance varies with the machine's float
    arithmetic (the same recipe's SFT model differs across CPUs), so accuracy may move
    within a bound and gold must rise. Without PPO's ptx term PPO reached 0.558 on an
    earlier SFT model of 0.501; DPO with beta 0.5, SFT weight 1 and lr 1e-4 fell below
    SFT here (0.516)."""
    out, output = demo
    for step in STEPS:
        assert (out / step / ".done.json").is_file(), step
    results = summary_of(out)["results"]
    sft = results["sft"]["gold"]
    for name in ("ppo", "dpo"):
        res = results[name]
        print(f"{name}: gold {sft['gold']:.3f} -> {res['gold']['gold']:.3f}, KL {res['kl']:.3f}")
        assert res["gold"]["gold"] > sft["gold"], (name, sft, res["gold"])
        assert res["gold"]["refusal_harmful"] >= 0.8, (name, res["gold"])  # SFT: 0.17-0.50
        assert res["gold"]["refusal_benign"] <= 0.2, (name, res["gold"])
        assert res["gold"]["accuracy"] >= sft["accuracy"] - 0.07, (name, sft, res["gold"])
        assert res["kl"] < QUICK.max_kl, (name, res["kl"])  # k1 mean: may dip below 0 near SFT
        assert res["win_rates"]["gold"]["low"] <= res["win_rates"]["gold"]["rate"]
        assert res["bleu"] is not None and res["n_references"] == res["n_prompts"]
    # and at least one of them by a clear margin (measured: PPO +0.029 to +0.054, DPO
    # +0.027 to +0.068 over SFT models of the same recipe on different float paths)
    gains = {name: results[name]["gold"]["gold"] - sft["gold"] for name in ("ppo", "dpo")}
    assert max(gains.values()) > 0.03, gains
    assert results["sft"]["kl"] is None  # SFT is the reference
    # the terminal's summary table
    assert "win vs SFT" in output and "report:" in output
    for name in ("sft", "ppo", "dpo"):
        assert any(line.startswith(name + " ") for line in output.splitlines()), name


def test_rm_accuracy_and_training_curves_are_recorded(demo):
    out, _ = demo
    for dim in ("helpfulness", "safety"):
        acc = json.loads((out / f"rm-{dim}" / "eval.json").read_text())["accuracy"]
        assert acc > 0.6, (dim, acc)
    steps = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").open()]
    assert len(steps) == 15 and all("score_mean" in s and "kl" in s for s in steps)
    assert not (out / "ppo" / "checkpoints").exists()  # a finished step keeps no checkpoints
    for png in ("reward_kl", "rm_accuracy", "gold", "win_rate", "overoptimization"):
        assert (out / "plots" / f"{png}.png").stat().st_size > 5000, png


def test_report_renders_in_chromium(demo, tmp_path):
    from selenium.webdriver.common.by import By

    out, _ = demo
    driver_gen = chromium(tmp_path)
    driver = next(driver_gen)
    try:
        driver.get((out / "report.html").as_uri())
        figures = driver.find_elements(By.CSS_SELECTOR, "figure img")
        ids = {f.get_attribute("id") for f in driver.find_elements(By.TAG_NAME, "figure")}
        assert ids >= {"fig-reward_kl", "fig-rm_accuracy", "fig-gold", "fig-overoptimization"}
        for img in figures:  # decoded by the browser, not just present
            assert driver.execute_script("return arguments[0].naturalWidth", img) > 100
            assert img.get_attribute("src").startswith("data:image/png;base64,")
        rows = driver.find_elements(By.CSS_SELECTOR, "#summary tbody tr")
        assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == ["sft", "ppo", "dpo"]
        assert len(driver.find_elements(By.CSS_SELECTOR, "#samples tbody tr")) >= 6
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver_gen.close()


def test_eval_cli_agrees_with_the_demo(demo, tmp_path):
    out, _ = demo
    args = ["eval", "--policy", str(out / "ppo" / "final"), "--reference", str(out / "sft" / "final"),
            "--prompts", str(out / "data" / "heldout.jsonl"), "--judge", "gold",
            "--judge", str(out / "rm-helpfulness" / "final"), "--out", str(tmp_path)]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the demo evaluated (and faster on a busy machine)
    try:
        res = runner.invoke(app, args)
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "eval.json").read_text())
    want = summary_of(out)["results"]["ppo"]
    assert got["gold"] == want["gold"]
    assert got["kl"] == pytest.approx(want["kl"], abs=1e-4)
    assert got["win_rates"]["gold"] == want["win_rates"]["gold"]
    assert str(out / "rm-helpfulness" / "final") in got["win_rates"]  # the RM as a judge
    assert "win rate vs reference" in res.output


def test_rerun_reuses_finished_steps_and_redoes_changed_ones(demo, tmp_path):
    src, _ = demo
    out = tmp_path / "demo"
    shutil.copytree(src, out)
    (out / "eval" / "dpo" / ".done.json").unlink()  # as if killed while evaluating DPO
    res = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--algorithms", "dpo"])
    assert res.exit_code == 0, res.output
    reused = [s for s in STEPS if f"] {s}: done before" in res.output]
    assert reused == [s for s in STEPS if s not in ("ppo", "eval/ppo", "eval/dpo")], res.output
    assert "] eval/dpo\n" in res.output
    results = summary_of(out)["results"]
    assert list(results) == ["sft", "dpo"]
    assert results["dpo"]["gold"] == summary_of(src)["results"]["dpo"]["gold"]


def test_self_training_algorithms_join_the_comparison(demo, tmp_path):
    """Rejection sampling, ReST and HIR added to the quick demo's finished run: each
    reuses SFT and the reward models, beats SFT on the gold judge with a small KL, and
    the summary compares every policy on gold, KL and training wall time.
    Measured here: gold SFT 0.529 -> rejection sampling 0.574, ReST 0.584, HIR 0.573
    (harmful requests refused 0.50 -> 1.00 by each, accuracy 0.347 -> 0.340 / 0.353 /
    0.340), KL 0.02-0.04 nats; 1.4 min for the three, evaluation included."""
    src, _ = demo
    out = tmp_path / "demo"
    shutil.copytree(src, out)
    names = ["rejection-sampling", "rest", "hir"]
    res = runner.invoke(
        app, ["demo", "--quick", "--out", str(out), "--algorithms", ",".join(names)]
    )
    assert res.exit_code == 0, res.output
    for step in ("sft", "labels", "rm-helpfulness", "rm-safety", "eval/sft"):
        assert f"] {step}: done before" in res.output, step
    summary = summary_of(out)
    results = summary["results"]
    assert list(results) == ["sft", *names]
    sft = results["sft"]["gold"]
    for name in names:
        res_ = results[name]
        print(f"{name}: gold {sft['gold']:.3f} -> {res_['gold']['gold']:.3f}, KL {res_['kl']:.3f}")
        # as for DPO: the sturdy gain is safety, arithmetic may move by chance within a bound
        assert res_["gold"]["gold"] > sft["gold"], (name, sft, res_["gold"])
        assert res_["gold"]["refusal_harmful"] >= 0.8, (name, res_)
        assert res_["gold"]["refusal_benign"] <= 0.2, (name, res_)
        assert res_["gold"]["accuracy"] >= sft["accuracy"] - 0.07, (name, sft, res_["gold"])
        assert res_["kl"] < QUICK.max_kl, (name, res_["kl"])
        assert summary["timings"][name]["wall_s"] > 0
    assert "train" in res.output  # the training wall time column of the terminal's table
    rows = {r[0]: r for r in summary_rows(summary)}
    train_col = [c[1] for c in COLUMNS].index("train_min") + 1
    assert all(float(rows[n][train_col]) > 0 for n in names), rows


def test_unknown_algorithm_lists_the_known_ones(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--algorithms", "ppo,grpo-x"])
    assert res.exit_code == 78
    assert f"unknown 'grpo-x'; known: {', '.join(REGISTRY)}" in res.output


def test_missing_label_file_is_named(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--labels", "nope.jsonl"])
    assert res.exit_code == 66
    assert "--labels nope.jsonl: no such file" in res.output


def test_gold_judge_needs_the_tasks_prompts(tiny_llama, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Write a haiku."}) + "\n")
    res = runner.invoke(app, ["eval", "--policy", str(tiny_llama), "--prompts", str(prompts)])
    assert res.exit_code == 78
    assert "only knows the built-in task's prompts" in res.output


def test_labels_from_the_labeling_database(task, tmp_path):
    """``--labels DB``: the SFT samples become labeling tasks; with too few labels the demo
    stops and says how to collect them; once people labeled them (here a simulated
    annotator through the store's API), the export feeds both reward models and DPO."""
    import random
    import uuid

    from label_support import people_in
    from rlhfkit.demo.labels import from_database
    from rlhfkit.demo.onpolicy import mixed_prompts
    from rlhfkit.demo.task import SimulatedLabeler
    from rlhfkit.errors import ConfigError
    from rlhfkit.feedback.store import Store
    from rlhfkit.feedback.store.work import Work

    db = str(tmp_path / "labels.db")
    prompts = mixed_prompts(task, "train", 30, seed=0)
    responses = [task.candidates(p)[:4] for p in prompts]
    with pytest.raises(ConfigError, match=r"0 helpfulness and 0 safety comparisons labeled so far"):
        from_database(task, db, prompts, responses, tmp_path / "labels")

    store = Store(db)
    (annotator,) = people_in(store, "ann")
    work = Work(store, random.Random(0))
    judges = {d: SimulatedLabeler(task, d, temperature=0.0) for d in ("helpfulness", "safety")}
    done = 0
    while (view := work.next(annotator.id)) is not None:
        text = view.prompt[-1]["content"]
        answer = {d: j.rank(text, view.responses) for d, j in judges.items()}
        work.submit(annotator.id, view.id, uuid.uuid4(), answer=answer)
        done += 1
    store.close()
    assert done > 10

    files, counts = from_database(task, db, prompts, responses, tmp_path / "labels")
    assert counts["helpfulness"] > 20 and counts["safety"] > 20, counts
    for dim in ("helpfulness", "safety", "preferences"):
        rows = [json.loads(line) for line in getattr(files, dim).open()]
        assert rows, dim
        for r in rows:
            prompt = r["prompt"][-1]["content"]
            kind = task.lookup(prompt).kind
            d = r["dimension"]
            if dim == "preferences":  # each prompt judged on what matters for it
                assert d == ("safety" if kind == "harmful" else "helpfulness"), r
            chosen, rejected = (getattr(task.gold(prompt, r[k]), d) for k in ("chosen", "rejected"))
            assert chosen >= rejected, r  # the annotator's order survived import and export

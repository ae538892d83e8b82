"""`rlhfkit label init|import|generate|add-annotator|export|check` from the command line."""

from __future__ import annotations

import json

from sqlalchemy import select
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.feedback.store import Accounts, Store, get_guidelines
from rlhfkit.feedback.store.schema import Response, Task

runner = CliRunner()


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, ["label", *args], input=input)


def test_init_import_and_errors(tmp_path):
    db = str(tmp_path / "labels.db")
    guide = tmp_path / "guide.md"
    guide.write_text("# Be careful\n")
    r = invoke(
        "init", "--db", db, "--overlap", "3", "--gold-rate", "0.1", "--claim-minutes", "60",
        "--guidelines", str(guide),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "guidelines version 1 saved" in r.output and "'overlap': 3" in r.output
    store = Store(db)
    assert store.settings()["claim_minutes"] == 60
    assert store.settings()["gold_rate"] == 0.1 and get_guidelines(store).text == "# Be careful\n"
    r = invoke("init", "--db", db, "--overlap", "0")
    assert r.exit_code != 0 and "setting 'overlap': expected an integer >= 1" in r.output
    r = invoke("init", "--db", db, "--dimensions", "helpfulness,fun")
    assert r.exit_code != 0 and "setting 'dimensions'" in r.output

    data = tmp_path / "cands.jsonl"
    rows = [
        {"prompt": "What is 2 + 2?", "responses": ["4", "5"], "policies": ["sft", "base"]},
        {"prompt": "What is 3 + 3?", "responses": ["6", "7", "Six.", "I can't help with that."]},
        {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = invoke("import", str(data), "--db", db)
    assert r.exit_code == 0, r.output
    assert "3 new tasks (2 pairwise, 1 ranking)" in r.output
    with store.read() as s:
        assert {t.overlap for t in s.scalars(select(Task))} == {3}
        assert set(s.scalars(select(Response.policy))) == {"sft", "base", None}
    assert "0 new tasks" in invoke("import", str(data), "--db", db).output  # idempotent

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "responses": "4"}) + "\n")
    r = invoke("import", str(bad), "--db", db)
    assert r.exit_code == 65
    assert f"{bad}:1: field 'responses': expected a list of 2 to 9 responses" in r.output
    r = invoke("import", str(tmp_path / "missing.jsonl"), "--db", db)
    assert r.exit_code == 66 and "no such file" in r.output
    r = invoke("import", str(data), "--db", db, "--mode", "ranking")
    assert r.exit_code == 65 and "a ranking task needs 3 to 9 responses" in r.output


def test_add_annotator_export_and_check(tmp_path, task):
    db = str(tmp_path / "labels.db")
    r = invoke("add-annotator", "lead", "--db", db, "--admin")
    assert r.exit_code == 0, r.output
    link = r.output.strip().splitlines()[-1]
    assert link.startswith("http://127.0.0.1:8000/invite/")
    accounts = Accounts(Store(db))
    assert accounts.invite_owner(link.rsplit("/", 1)[1]).is_admin
    r = invoke("add-annotator", "ann", "--db", db, "--password-stdin", input="a long password\n")
    assert r.exit_code == 0 and "with a password" in r.output
    accounts.login("ann", "a long password")
    r = invoke("add-annotator", "ann", "--db", db)
    assert r.exit_code != 0 and "already exists" in r.output

    out = tmp_path / "out.jsonl"
    r = invoke("export", "--db", db, "--out", str(out), "--raw")
    assert r.exit_code == 0 and "0 rows" in r.output and out.read_text() == ""
    r = invoke("export", "--db", db, "--out", str(out), "--format", "csv")
    assert r.exit_code == 78 and "--format: expected one of preference, ranking, hh" in r.output
    r = invoke("check", "--db", db)
    assert r.exit_code == 0 and r.output.strip() == "ok"


def test_generate_samples_candidates_with_a_policy(tmp_path, tiny_llama):
    db = str(tmp_path / "labels.db")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"What is {i} + 1?"}) + "\n" for i in range(3))
    )
    r = invoke(
        "generate", "--db", db, "--model", str(tiny_llama), "--prompts", str(prompts),
        "-k", "3", "--max-new-tokens", "8", "--policy", "tiny-v1",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    store = Store(db)
    with store.read() as s:
        tasks = s.scalars(select(Task)).all()
        policies = set(s.scalars(select(Response.policy)))
    assert len(tasks) == 3 and policies == {"tiny-v1"}
    assert all(2 <= len(t.response_ids) <= 3 for t in tasks)

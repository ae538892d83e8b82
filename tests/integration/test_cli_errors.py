"""Bad input through the CLI: the exact message, the exit code, and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfkit.cli import app

runner = CliRunner()

GOOD = {"prompt": "What is 1 + 2?", "answer": "3"}


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines)
    path.write_bytes(data)
    return path


def sft(tmp_path: Path, data: Path, *extra: str, model: str = "unused-model"):
    args = ["sft", "--model", model, "--data", str(data), "--out", str(tmp_path / "run"), *extra]
    return runner.invoke(app, args)


CASES = [
    ("missing field", [json.dumps({"prompt": "hi"})],
     "bad.jsonl:1: field 'answer': expected a non-empty string, got nothing (the field is missing)"),
    ("wrong type", [json.dumps(GOOD), json.dumps({"prompt": "hi", "answer": 3})],
     "bad.jsonl:2: field 'answer': expected a non-empty string, got 3 (number)"),
    ("empty response", [json.dumps({"prompt": "hi", "answer": "  "})],
     "bad.jsonl:1: field 'answer': expected a non-empty string, got \"  \" (empty string)"),
    ("invalid json", [json.dumps(GOOD), '{"prompt": "hi", "answer": }'],
     "bad.jsonl:2: invalid JSON: Expecting value (column 28)"),
    ("not an object", ['["a", "b"]'],
     "bad.jsonl:1: expected a JSON object, got [\"a\", \"b\"] (list of 2)"),
    ("bad role", [json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]})],
     "bad.jsonl:1: field 'messages[0].role': expected one of 'system', 'user', 'assistant', 'tool', got \"robot\" (string)"),
    ("no assistant turn", [json.dumps({"messages": [{"role": "user", "content": "x"}]})],
     "bad.jsonl:1: field 'messages': expected at least one assistant message, got [{\"role\": \"user\", \"content\": \"x\"}] (list of 1)"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "lines", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_record_message_and_exit_code(tmp_path, name, lines, message):
    res = sft(tmp_path, write_lines(tmp_path / "bad.jsonl", lines))
    assert res.exit_code == 65, res.output
    first = res.stderr.splitlines()[0]
    assert first.removeprefix("error: ").replace(str(tmp_path) + "/", "") == message
    assert "Traceback" not in res.output
    assert "--skip-invalid" in res.stderr


def test_invalid_utf8(tmp_path):
    res = sft(
        tmp_path,
        write_lines(
            tmp_path / "bad.jsonl", [json.dumps(GOOD), b'{"prompt": "caf\xe9", "answer": "x"}']
        ),
    )
    assert res.exit_code == 65
    first = res.stderr.splitlines()[0].replace(str(tmp_path) + "/", "")
    assert first == "error: bad.jsonl:2: invalid UTF-8 at byte 16: invalid continuation byte (0xe9)"


def test_empty_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    res = sft(tmp_path, tmp_path / "empty.jsonl")
    assert res.exit_code == 65
    assert res.stderr.strip().endswith("empty.jsonl: empty file: expected at least one record")


def test_missing_file_exit_66(tmp_path):
    res = sft(tmp_path, tmp_path / "nope.jsonl")
    assert res.exit_code == 66
    assert "nope.jsonl: no such file" in res.stderr


def test_at_most_20_reported(tmp_path):
    lines = [json.dumps({"prompt": f"p{i}"}) for i in range(25)]
    res = sft(tmp_path, write_lines(tmp_path / "bad.jsonl", lines))
    assert res.exit_code == 65
    errs = [ln for ln in res.stderr.splitlines() if "field 'answer'" in ln]
    assert len(errs) == 20
    assert "... and 5 more bad record(s)" in res.stderr


def test_unknown_config_key_exit_78(tmp_path):
    data = write_lines(tmp_path / "ok.jsonl", [json.dumps(GOOD)])
    res = sft(tmp_path, data, "--set", "learnig_rate=1e-3")
    assert res.exit_code == 78
    assert "unknown key 'learnig_rate' for SFTConfig; did you mean 'learning_rate'?" in res.stderr


def test_bad_config_value_exit_78(tmp_path):
    data = write_lines(tmp_path / "ok.jsonl", [json.dumps(GOOD)])
    res = sft(tmp_path, data, "--set", "batch_size=many")
    assert res.exit_code == 78
    assert "key 'batch_size': expected an integer, got 'many'" in res.stderr


def test_yaml_config_and_missing_model(tmp_path):
    data = write_lines(tmp_path / "ok.jsonl", [json.dumps(GOOD)])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {data}\nout: {tmp_path / 'r'}\nlearning_rate: 0.001\n")
    res = runner.invoke(app, ["sft", "--config", str(cfg)])
    assert res.exit_code == 78
    assert "key 'model': expected a model folder or hub name (--model), got nothing" in res.stderr


def test_skip_invalid_trains_with_counted_warning(tmp_path, tiny_llama):
    lines = [json.dumps(GOOD)] * 8 + [json.dumps({"prompt": "x"}), "{oops"]
    data = write_lines(tmp_path / "mixed.jsonl", lines)
    res = sft(
        tmp_path,
        data,
        "--skip-invalid",
        "--set",
        "max_steps=2",
        "--set",
        "eval_fraction=0",
        model=str(tiny_llama),
    )
    assert res.exit_code == 0, res.output
    assert "skipped 2 invalid record(s)" in res.output
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_no_traceback_without_debug_and_traceback_with(tmp_path):
    data = write_lines(tmp_path / "bad.jsonl", [json.dumps({"prompt": "hi"})])
    base = [sys.executable, "-m", "rlhfkit"]
    args = ["sft", "--model", "m", "--data", str(data), "--out", str(tmp_path / "r")]
    plain = subprocess.run([*base, *args], capture_output=True, text=True)
    assert plain.returncode == 65
    assert "Traceback" not in plain.stderr and "field 'answer'" in plain.stderr
    debug = subprocess.run([*base, "--debug", *args], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "DataError" in debug.stderr


def test_help_is_fast_and_lists_commands():
    res = subprocess.run(
        [sys.executable, "-m", "rlhfkit", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0
    for cmd in ("sft", "tiny", "demo"):
        assert cmd in res.stdout
    mods = subprocess.run(
        [sys.executable, "-c", "import sys, rlhfkit.cli; print('torch' in sys.modules)"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert mods.stdout.strip() == "False"

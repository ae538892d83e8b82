"""Reading rows from every kind of source, and load_records' error reporting."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rlhfkit.data import load_records
from rlhfkit.data.load import LoadResult
from rlhfkit.data.sources import iter_rows, looks_like_hub_name
from rlhfkit.data.types import Message, PreferenceRecord, PromptRecord, SFTRecord
from rlhfkit.errors import (
    DataError,
    DataIssue,
    InputNotFoundError,
    Location,
    RlhfkitError,
)

SFT_ROWS = [
    {"prompt": "What is 2+2?", "answer": "4"},
    {"prompt": "Capital of France?", "answer": "Paris"},
    {"prompt": "Say hi", "answer": "Hi"},
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load_error(source: Path | str, kind: str = "sft") -> DataError:
    with pytest.raises(DataError) as info:
        load_records(source, kind)  # type: ignore[arg-type]
    return info.value


# ---------------------------------------------------------------- JSON Lines


def test_jsonl_rows_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(
        json.dumps(SFT_ROWS[0]) + "\n\n   \n" + json.dumps(SFT_ROWS[1]) + "\r\n", encoding="utf-8"
    )
    rows = list(iter_rows(path))
    assert rows == [
        (Location(str(path), 1), SFT_ROWS[0]),
        (Location(str(path), 4), SFT_ROWS[1]),
    ]


def test_load_sft_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "sft.jsonl", SFT_ROWS)
    result = load_records(path, "sft")
    assert isinstance(result, LoadResult)
    assert result.n_invalid == 0
    assert result.source == str(path)
    assert len(result.records) == 3
    first = result.records[0]
    assert isinstance(first, SFTRecord)
    assert first.messages == (Message("user", "What is 2+2?"), Message("assistant", "4"))
    assert first.location == Location(str(path), 1)


@pytest.mark.parametrize("name", ["prefs.ndjson", "prefs.txt"])
def test_other_text_files_are_json_lines(tmp_path: Path, name: str) -> None:
    path = write_jsonl(tmp_path / name, [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go."}])
    [rec] = load_records(path, "preference").records
    assert isinstance(rec, PreferenceRecord)
    assert rec.chosen == "Hello!"


def test_utf8_bom_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(SFT_ROWS[0]).encode() + b"\n")
    assert len(load_records(path, "sft").records) == 1


# ---------------------------------------------------------------- JSON array


def test_json_array_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(
        "[\n"
        '  {"prompt": "one"},\n'
        "  {\n"
        '    "prompt": "two",\n'
        '    "answer": "2"\n'
        "  },\n"
        "\n"
        '  {"prompt": "three"}, {"prompt": "four"}\n'
        "]\n",
        encoding="utf-8",
    )
    rows = list(iter_rows(str(path)))
    assert [loc.line for loc, _ in rows] == [2, 3, 8, 8]
    assert [row["prompt"] for _, row in rows] == ["one", "two", "three", "four"]  # type: ignore[index]
    result = load_records(path, "prompt")
    second = result.records[1]
    assert isinstance(second, PromptRecord)
    assert second.extra == {"answer": "2"}
    assert str(second.location) == f"{path}:3"


def test_json_array_non_object_element(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"prompt": "a", "answer": "b"},\n  "oops"\n]\n', encoding="utf-8")
    err = load_error(path)
    assert str(err) == (
        f'{path}:3: expected a JSON object, got "oops" (string)\n'
        "(use --skip-invalid to skip bad records with a counted warning)"
    )


def test_json_whole_file_invalid(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"prompt": "a", "answer": "b"},\n  {"prompt" "c"}\n]\n', encoding="utf-8")
    err = load_error(path)
    assert err.issues == [
        DataIssue(Location(str(path), 3), "invalid JSON: Expecting ':' delimiter (column 13)")
    ]


def test_json_file_holding_json_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "actually_lines.json", SFT_ROWS)
    result = load_records(path, "sft")
    assert [r.location.line for r in result.records] == [1, 2, 3]  # type: ignore[union-attr]


def test_json_top_level_object(tmp_path: Path) -> None:
    path = tmp_path / "obj.json"
    path.write_text('\n{"data": []}', encoding="utf-8")
    assert str(load_error(path).issues[0]) == (
        f'{path}:2: expected a JSON array of objects, got {{"data": []}} (object)'
    )


# ---------------------------------------------------------------- Parquet


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "prefs.parquet"
    table = pa.table(
        {
            "prompt": ["Hi", "2+2?"],
            "chosen": ["Hello", "4"],
            "rejected": ["Go away", "5"],
            "margin": [None, 1.5],
        }
    )
    pq.write_table(table, path)
    rows = list(iter_rows(path))
    assert rows[1] == (
        Location(str(path), 2, unit="row"),
        {"prompt": "2+2?", "chosen": "4", "rejected": "5", "margin": 1.5},
    )
    records = load_records(path, "preference").records
    assert [r.margin for r in records] == [None, 1.5]  # type: ignore[union-attr]
    assert str(records[1].location) == f"{path}: row 2"


def test_parquet_row_errors_use_row_numbers(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "sft.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "answer": ["x", ""]}), path)
    assert str(load_error(path).issues[0]) == (
        f"{path}: row 2: field 'answer': expected a non-empty string, got \"\" (empty string)"
    )


def test_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(RlhfkitError, match=r"pip install 'rlhfkit\[data\]'"):
        list(iter_rows(path))


# ---------------------------------------------------------------- datasets folders


def test_saved_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "sft_ds"
    datasets.Dataset.from_list(SFT_ROWS).save_to_disk(str(folder))
    rows = list(iter_rows(folder))
    assert rows[0] == (Location(f"{folder}[train]", 1, unit="row"), SFT_ROWS[0])
    result = load_records(folder, "sft")
    assert len(result.records) == 3
    assert str(result.records[2].location) == f"{folder}[train]: row 3"


def test_saved_dataset_dict_split(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(SFT_ROWS),
            "test": datasets.Dataset.from_list(SFT_ROWS[:1]),
        }
    ).save_to_disk(str(folder))
    assert len(load_records(folder, "sft").records) == 3
    test = load_records(folder, "sft", split="test")
    assert len(test.records) == 1
    assert test.records[0].location == Location(f"{folder}[test]", 1, unit="row")
    with pytest.raises(InputNotFoundError) as info:
        load_records(folder, "sft", split="validation")
    assert str(info.value) == f"{folder}: no split 'validation' (available: 'train', 'test')"


def test_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="not a dataset written by datasets' save_to_disk"):
        iter_rows(tmp_path)


# ---------------------------------------------------------------- missing inputs / hub


def test_missing_file_does_not_touch_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # importing it would fail
    with pytest.raises(InputNotFoundError) as info:
        load_records("missing.jsonl", "sft")
    assert str(info.value) == "missing.jsonl: no such file or directory"
    assert info.value.exit_code == 66


def test_hub_name_detection() -> None:
    assert looks_like_hub_name("Anthropic/hh-rlhf")
    assert looks_like_hub_name("imdb")
    assert looks_like_hub_name("allenai/tulu-v2.5-mix")
    assert not looks_like_hub_name("missing.jsonl")
    assert not looks_like_hub_name("data/prefs.parquet")
    assert not looks_like_hub_name("./local/dir")
    assert not looks_like_hub_name("a/b/c")


def test_hub_failure_is_input_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")

    def fail(name: str, split: str) -> None:
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub\nmore details")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(InputNotFoundError) as info:
        load_records("nobody/nothing", "preference", split="test")
    assert str(info.value) == (
        "nobody/nothing: no such file or directory, and loading it as a Hugging Face Hub "
        "dataset (split 'test') failed: ConnectionError: Couldn't reach 'nobody/nothing' on the Hub"
    )


def test_hub_dataset_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(
        datasets, "load_dataset", lambda name, split: datasets.Dataset.from_list(SFT_ROWS)
    )
    result = load_records("someone/sft-data", "sft")
    assert len(result.records) == 3
    assert str(result.records[0].location) == "someone/sft-data[train]: row 1"


# ---------------------------------------------------------------- bad input reporting


def test_invalid_json_line(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "bad.jsonl",
        [json.dumps(SFT_ROWS[0]), '{"prompt": "a",', json.dumps(SFT_ROWS[1])],
    )
    err = load_error(path)
    assert str(err) == (
        f"{path}:2: invalid JSON: Expecting property name enclosed in double quotes (column 16)\n"
        "(use --skip-invalid to skip bad records with a counted warning)"
    )
    assert err.exit_code == 65
    assert err.total == 1


def test_non_object_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad.jsonl", ["[1, 2]"])
    assert (
        str(load_error(path).issues[0])
        == f"{path}:1: expected a JSON object, got [1, 2] (list of 2)"
    )


def test_invalid_utf8_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(SFT_ROWS[0]).encode() + b'\n{"prompt": "caf\xe9"}\n')
    assert str(load_error(path).issues[0]) == (
        f"{path}:2: invalid UTF-8 at byte 16: invalid continuation byte (0xe9)"
    )


def test_invalid_utf8_in_json_array(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'[\n {"prompt": "ok"},\n {"prompt": "\xff"}\n]')
    assert str(load_error(path, "prompt").issues[0]) == (
        f"{path}:3: invalid UTF-8 at byte 14: invalid start byte (0xff)"
    )


@pytest.mark.parametrize(("name", "content"), [("empty.jsonl", "\n  \n"), ("empty.json", " [ ] ")])
def test_empty_file(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    err = load_error(path)
    assert str(err) == f"{path}: empty file: expected at least one record"
    assert err.exit_code == 65


def test_bad_record_messages_in_order(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "bad.jsonl",
        [
            json.dumps({"prompt": "Hi", "answer": "Hello"}),
            json.dumps({"prompt": "Hi"}),
            json.dumps({"prompt": "Hi", "answer": ""}),
            json.dumps({"messages": [{"role": "robot", "content": "beep"}]}),
        ],
    )
    assert str(load_error(path)) == "\n".join(
        [
            f"{path}:2: field 'answer': expected a non-empty string, got nothing (the field is missing)",
            f"{path}:3: field 'answer': expected a non-empty string, got \"\" (empty string)",
            f"{path}:4: field 'messages[0].role': expected one of 'system', 'user', 'assistant', "
            "'tool', got \"robot\" (string)",
            "(use --skip-invalid to skip bad records with a counted warning)",
        ]
    )


def test_more_than_twenty_bad_lines(tmp_path: Path) -> None:
    rows = [{"prompt": "Hi", "answer": ""}] * 25 + [SFT_ROWS[0]]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    err = load_error(path)
    lines = str(err).splitlines()
    assert len(lines) == 22
    assert (
        lines[0]
        == f"{path}:1: field 'answer': expected a non-empty string, got \"\" (empty string)"
    )
    assert lines[19].startswith(f"{path}:20: ")
    assert lines[20] == "... and 5 more bad record(s)"
    assert lines[21] == "(use --skip-invalid to skip bad records with a counted warning)"
    assert err.total == 25
    assert len(err.issues) == 25


def test_more_line_counts_records_not_issues(tmp_path: Path) -> None:
    rows = [{"prompt": "", "answer": ""}] * 12  # two issues per record
    err = load_error(write_jsonl(tmp_path / "bad.jsonl", rows))
    lines = str(err).splitlines()
    assert lines[20] == "... and 2 more bad record(s)"  # 20 issues shown = 10 records
    assert err.total == 12
    assert len(err.issues) == 24


def test_skip_invalid_warns_with_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [SFT_ROWS[0], {"prompt": "Hi", "answer": ""}, SFT_ROWS[1], {"prompt": "Hi"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    expected = (
        f"skipped 2 invalid record(s) in {path} (first: {path}:2: field 'answer': "
        'expected a non-empty string, got "" (empty string))'
    )
    with caplog.at_level(logging.WARNING, logger="rlhfkit"):
        result = load_records(path, "sft", skip_invalid=True)
    assert [r.getMessage() for r in caplog.records if r.name == "rlhfkit"] == [expected]
    assert result.n_invalid == 2
    assert [r.location.line for r in result.records] == [1, 3]  # type: ignore[union-attr]


def test_skip_invalid_with_no_valid_records(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Hi"}])
    with pytest.raises(DataError) as info:
        load_records(path, "sft", skip_invalid=True)
    assert str(info.value) == (
        f"{path}:1: field 'answer': expected a non-empty string, got nothing (the field is missing)\n"
        f"no valid records in {path}"
    )


def test_exit_codes() -> None:
    assert DataError([]).exit_code == 65
    assert InputNotFoundError("x").exit_code == 66


def test_data_package_import_is_light() -> None:
    code = (
        "import sys, rlhfkit.data; "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'pyarrow', 'numpy') "
        "if m in sys.modules))"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": src},
    )
    assert out.stdout.strip() == "[]"

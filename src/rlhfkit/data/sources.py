"""Read raw rows from a data source: JSON Lines, a JSON array, Parquet, a
``datasets`` folder written by ``save_to_disk``, or a Hugging Face Hub name.

:func:`iter_rows` yields ``(Location, row)`` pairs where ``row`` is a plain
``dict`` or, for a row that cannot even be read, a :class:`DataIssue`.
``datasets`` and ``pyarrow`` are imported only when a source needs them.
"""

from __future__ import annotations

import codecs
import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhfkit.errors import (
    DataError,
    DataIssue,
    InputNotFoundError,
    Location,
    RlhfkitError,
    describe,
)

Row = tuple[Location, dict[str, Any] | DataIssue]

INSTALL_HINT = "pip install 'rlhfkit[data]'"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_FILE_EXTENSION = re.compile(r"^\.[A-Za-z][A-Za-z0-9]{0,7}$")
_WS = re.compile(r"[ \t\n\r]*")


def iter_rows(source: str | Path, split: str = "train") -> Iterator[Row]:
    """Rows of ``source`` with their 1-based line (text) or row (tables) number.

    Raises InputNotFoundError right away for a source that does not exist;
    raises DataError while iterating for an empty file.
    """
    name = str(source)
    if not name.strip():
        raise InputNotFoundError("no data source given (an empty path)")
    path = Path(name).expanduser()
    if path.is_dir():
        return _saved_dataset_rows(path, name.rstrip("/") or name, split)
    if path.exists():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return _parquet_rows(path, name)
        if suffix == ".json":
            return _json_rows(path, name)
        return _jsonl_rows(path, name)
    if looks_like_hub_name(name):
        return _hub_rows(name, split)
    raise InputNotFoundError(f"{name}: no such file or directory")


def looks_like_hub_name(text: str) -> bool:
    """``owner/name`` or ``name`` with no file extension (``foo.jsonl`` is a file)."""
    return bool(_HUB_NAME.match(text)) and not _FILE_EXTENSION.match(Path(text).suffix)


# ---------------------------------------------------------------- text files


def _jsonl_rows(path: Path, name: str) -> Iterator[Row]:
    """One JSON object per line; blank lines are skipped."""
    seen = False
    with _open(path, name) as f:
        for line_no, raw in enumerate(f, 1):
            if line_no == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if not raw.strip():
                continue
            seen = True
            loc = Location(name, line_no)
            try:
                text = raw.rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError as e:
                yield loc, DataIssue(loc, _utf8_message(e, e.start + 1))
                continue
            yield loc, _parse_object(text, loc)
    if not seen:
        raise _empty(name)


def _json_rows(path: Path, name: str) -> Iterator[Row]:
    """A JSON array of objects, each with the line its value starts on.

    A ``.json`` file that really holds JSON Lines is read as JSON Lines.
    """
    with _open(path, name) as f:
        data = f.read().removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        loc = Location(name, line)
        yield loc, DataIssue(loc, _utf8_message(e, column))
        return
    if not text.strip():
        raise _empty(name)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            yield from _lines_rows(text, name)
            return
        loc = Location(name, e.lineno)
        yield loc, DataIssue(loc, f"invalid JSON: {e.msg} (column {e.colno})")
        return
    if not isinstance(value, list):
        loc = Location(name, text.count("\n", 0, _WS.match(text).end()) + 1)  # type: ignore[union-attr]
        yield loc, DataIssue(loc, f"expected a JSON array of objects, got {describe(value)}")
        return
    if not value:
        raise _empty(name)
    for line, item in _array_items(text):
        loc = Location(name, line)
        yield loc, _as_object(item, loc)


def _array_items(text: str) -> Iterator[tuple[int, Any]]:
    """(line, value) of each element of the (valid) JSON array in ``text``."""
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0) + 1  # just after '['
    line, counted = 1, 0
    while True:
        pos = _skip_ws(text, pos)
        if text[pos] == "]":
            return
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        line += text.count("\n", counted, pos)
        counted = pos
        value, pos = decoder.raw_decode(text, pos)
        yield line, value


def _lines_rows(text: str, name: str) -> Iterator[Row]:
    for line_no, line in enumerate(text.split("\n"), 1):
        if line.strip():
            loc = Location(name, line_no)
            yield loc, _parse_object(line, loc)


def _skip_ws(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()  # type: ignore[union-attr]


def _parse_object(text: str, loc: Location) -> dict[str, Any] | DataIssue:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return DataIssue(loc, f"invalid JSON: {e.msg} (column {e.colno})")
    return _as_object(value, loc)


def _as_object(value: Any, loc: Location) -> dict[str, Any] | DataIssue:
    if isinstance(value, dict):
        return value
    return DataIssue(loc, f"expected a JSON object, got {describe(value)}")


def _utf8_message(e: UnicodeDecodeError, byte: int) -> str:
    return f"invalid UTF-8 at byte {byte}: {e.reason} (0x{e.object[e.start]:02x})"


def _open(path: Path, name: str) -> Any:
    try:
        return path.open("rb")
    except OSError as e:
        raise InputNotFoundError(f"{name}: cannot read: {e.strerror or e}") from e


def _empty(name: str, what: str = "file") -> DataError:
    return DataError([DataIssue(Location(name), f"empty {what}: expected at least one record")])


# ---------------------------------------------------------------- tables


def _parquet_rows(path: Path, name: str) -> Iterator[Row]:
    pq = _import("pyarrow.parquet", f"{name}: reading Parquet files")
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # ArrowInvalid, OSError, ...
        raise DataError([DataIssue(Location(name), f"not a readable Parquet file: {e}")]) from e
    if parquet.metadata.num_rows == 0:
        raise _empty(name)
    row_no = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            row_no += 1
            yield Location(name, row_no, unit="row"), to_python(row)


def _saved_dataset_rows(path: Path, name: str, split: str) -> Iterator[Row]:
    if not any((path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json")):
        raise InputNotFoundError(
            f"{name}: a folder, but not a dataset written by datasets' save_to_disk "
            "(it has no dataset_dict.json or dataset_info.json)"
        )
    datasets = _import("datasets", f"{name}: reading a saved dataset")
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise InputNotFoundError(f"{name}: cannot load the saved dataset: {_first_line(e)}") from e
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            available = ", ".join(f"'{s}'" for s in ds)
            raise InputNotFoundError(f"{name}: no split '{split}' (available: {available})")
        ds = ds[split]
    return _dataset_rows(ds, f"{name}[{split}]")


def _hub_rows(name: str, split: str) -> Iterator[Row]:
    try:
        datasets = importlib.import_module("datasets")
    except ImportError as e:
        raise InputNotFoundError(
            f"{name}: no such file or directory (to load it from the Hugging Face Hub, "
            f"install the data extras: {INSTALL_HINT})"
        ) from e
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:
        raise InputNotFoundError(
            f"{name}: no such file or directory, and loading it as a Hugging Face Hub "
            f"dataset (split '{split}') failed: {type(e).__name__}: {_first_line(e)}"
        ) from e
    return _dataset_rows(ds, f"{name}[{split}]")


def _dataset_rows(ds: Any, source: str) -> Iterator[Row]:
    if len(ds) == 0:
        raise _empty(source, "dataset")
    for row_no, row in enumerate(ds, 1):
        yield Location(source, row_no, unit="row"), to_python(row)


def to_python(value: Any) -> Any:
    """Turn numpy / pyarrow values (possibly nested) into plain Python."""
    if isinstance(value, dict):
        return {str(k): to_python(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_python(v) for v in value]
    if isinstance(value, str | bytes | int | float | bool) or value is None:
        return value
    if hasattr(value, "as_py"):  # pyarrow scalar
        return to_python(value.as_py())
    if hasattr(value, "tolist"):  # numpy array or scalar
        return to_python(value.tolist())
    return value


def _import(module: str, purpose: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = module.split(".")[0]
        raise RlhfkitError(
            f"{purpose} needs the optional package '{package}': {INSTALL_HINT}"
        ) from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

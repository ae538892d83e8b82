"""Where the demo's comparisons come from (``rlhfkit demo --labels``).

* ``simulated`` (default): every pair of the K responses the SFT model sampled for a
  prompt is compared by a simulated labeler, on helpfulness and on safety
  (:func:`rlhfkit.demo.onpolicy.labeled_comparisons`);
* a file of preference or ranking records (JSONL / JSON / Parquet) with a
  ``dimension`` field, as ``rlhfkit label export`` writes;
* a labeling database (a SQLite file ``*.db`` / ``*.sqlite`` or a URL such as
  ``postgresql://...``): the SFT samples are imported as labeling tasks, and the
  labels people gave are exported (majority vote). With no labels yet the demo stops
  and says how to collect them.

Each source ends as the same files: ``helpfulness.jsonl`` and ``safety.jsonl`` (one
reward model each) and ``preferences.jsonl`` - every prompt judged on the dimension
that matters for it (safety on harmful requests, helpfulness elsewhere, Llama 2's
rule), for DPO and the other algorithms that learn from preferences directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.data.jsonl import write_jsonl
from rlhfkit.data.types import DIMENSIONS, PreferenceRecord, RankingRecord
from rlhfkit.demo.onpolicy import labeled_comparisons
from rlhfkit.demo.task import Task, TaskPrompt
from rlhfkit.errors import ConfigError, InputNotFoundError

log = logging.getLogger("rlhfkit")

SIMULATED = "simulated"
DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")
BOTH = {"arithmetic": DIMENSIONS, "harmful": DIMENSIONS, "benign": DIMENSIONS}


def source_kind(spec: str) -> str:
    """``"simulated"``, ``"db"`` (a URL or a SQLite file) or ``"file"``."""
    if spec == SIMULATED:
        return "simulated"
    if "://" in spec or Path(spec).suffix.lower() in DB_SUFFIXES:
        return "db"
    if not Path(spec).exists():
        raise InputNotFoundError(
            f"--labels {spec}: no such file (expected 'simulated', a file of preference "
            "records, or a labeling database: a *.db file or a postgresql:// URL)"
        )
    return "file"


@dataclass(frozen=True)
class LabelFiles:
    """The comparisons, per use; ``*_eval`` are held-out prompts' (None: the stages
    hold out a share of the training records instead)."""

    helpfulness: Path
    safety: Path
    preferences: Path
    helpfulness_eval: Path | None = None
    safety_eval: Path | None = None
    preferences_eval: Path | None = None

    @classmethod
    def in_dir(cls, out: Path, with_eval: bool) -> LabelFiles:
        names = ("helpfulness", "safety", "preferences")
        paths = [out / f"{n}.jsonl" for n in names]
        evals = [out / f"{n}_eval.jsonl" if with_eval else None for n in names]
        return cls(*paths, *evals)  # type: ignore[arg-type]


def selected_dimension(task: Task, rec: PreferenceRecord) -> str:
    """The dimension that matters for the record's prompt: safety on the task's harmful
    requests, helpfulness for everything else."""
    text = rec.prompt[-1].content if rec.prompt else ""
    try:
        kind = task.lookup(text).kind
    except ValueError:
        kind = "other"
    return "safety" if kind == "harmful" else "helpfulness"


def write_split(
    task: Task, records: Sequence[PreferenceRecord], out: LabelFiles, held: bool
) -> dict[str, int]:
    """Write ``records`` by dimension (records without one count as helpfulness)."""
    dims = {d: [r for r in records if (r.dimension or "helpfulness") == d] for d in DIMENSIONS}
    chosen = [r for r in records if (r.dimension or "helpfulness") == selected_dimension(task, r)]
    targets = {
        "helpfulness": out.helpfulness_eval if held else out.helpfulness,
        "safety": out.safety_eval if held else out.safety,
        "preferences": out.preferences_eval if held else out.preferences,
    }
    rows = {**dims, "preferences": chosen}
    counts = {}
    for name, path in targets.items():
        if path is None:
            continue
        write_jsonl(path, [r.to_dict() for r in rows[name]])
        counts[name + ("_eval" if held else "")] = len(rows[name])
    return counts


def simulated(
    task: Task,
    prompts: Sequence[TaskPrompt],
    responses: Sequence[Sequence[str]],
    held_prompts: Sequence[TaskPrompt],
    held_responses: Sequence[Sequence[str]],
    out: Path,
    seed: int,
) -> tuple[LabelFiles, dict[str, int]]:
    """Simulated labelers compare every pair of each prompt's responses, on both dimensions."""
    files = LabelFiles.in_dir(out, with_eval=True)
    train = labeled_comparisons(task, prompts, responses, judged_on=BOTH, seed=seed)
    held = labeled_comparisons(task, held_prompts, held_responses, judged_on=BOTH, seed=seed + 1)
    counts = write_split(task, train, files, held=False)
    counts.update(write_split(task, held, files, held=True))
    return files, counts


def as_preferences(records: Sequence[object]) -> list[PreferenceRecord]:
    out: list[PreferenceRecord] = []
    for r in records:
        if isinstance(r, RankingRecord):
            out += r.preference_records()
        elif isinstance(r, PreferenceRecord):
            out.append(r)
    return out


def from_file(task: Task, source: str, out: Path) -> tuple[LabelFiles, dict[str, int]]:
    """Preference or ranking records of ``source``, split by their ``dimension``."""
    from rlhfkit.data.load import load_records

    records = as_preferences(load_records(source, "preference").records)
    files = LabelFiles.in_dir(out, with_eval=False)
    counts = write_split(task, records, files, held=False)
    for dim in DIMENSIONS:
        if counts[dim] == 0:
            raise ConfigError(
                f"--labels {source}: no comparisons with dimension '{dim}'; the demo trains "
                "a helpfulness and a safety reward model (records without a dimension count "
                "as helpfulness)"
            )
    return files, counts


def from_database(
    task: Task,
    db: str,
    prompts: Sequence[TaskPrompt],
    responses: Sequence[Sequence[str]],
    out: Path,
    min_comparisons: int = 20,
) -> tuple[LabelFiles, dict[str, int]]:
    """Import the SFT samples as labeling tasks (again on a rerun: imports are
    idempotent), export what people labeled, and use it like a file."""
    from rlhfkit.data.types import Message
    from rlhfkit.feedback.export import export_labels
    from rlhfkit.feedback.store import CandidateSet, Store, import_candidates

    store = Store(db)
    sets = []
    for p, texts in zip(prompts, responses, strict=True):
        unique = [t for t in dict.fromkeys(texts) if t.strip()]
        if len(unique) >= 2:
            sets.append(
                CandidateSet(
                    prompt=(Message("user", p.text),),
                    responses=tuple(unique),
                    policies=("sft",) * len(unique),
                )
            )
    summary = import_candidates(store, sets)
    log.info("labeling database %s: %s", db, summary)
    exported = out / "exported.jsonl"
    rows: list[PreferenceRecord] = []
    counts: dict[str, int] = {}
    for dim in DIMENSIONS:
        part = out / f"exported_{dim}.jsonl"
        export_labels(store, part, format="preference", dimension=dim)
        from rlhfkit.data.load import load_records

        got = (
            as_preferences(load_records(part, "preference").records) if part.stat().st_size else []
        )
        counts[dim] = len(got)
        rows += got
    store.close()
    if min(counts.values()) < min_comparisons:
        raise ConfigError(
            f"--labels {db}: {counts['helpfulness']} helpfulness and {counts['safety']} safety "
            f"comparisons labeled so far (the demo needs {min_comparisons} of each). The SFT "
            f"model's samples are waiting as labeling tasks: add annotators with "
            f"`rlhfkit label add-annotator NAME --db {db}`, label with "
            f"`rlhfkit label serve --db {db}`, then rerun the demo with the same --out"
        )
    write_jsonl(exported, [r.to_dict() for r in rows])
    return from_file(task, str(exported), out)


def collect(
    spec: str,
    task: Task,
    sample: Callable[[Sequence[TaskPrompt]], list[list[str]]],
    prompts: Sequence[TaskPrompt],
    held_prompts: Sequence[TaskPrompt],
    out: Path,
    seed: int,
) -> tuple[LabelFiles, dict[str, int]]:
    """The comparisons of ``--labels spec``; ``sample(prompts)`` draws K responses per
    prompt from the SFT model (written to ``out/samples.jsonl``)."""
    kind = source_kind(spec)
    if kind == "file":
        return from_file(task, spec, out)
    everything = sample([*prompts, *held_prompts])
    write_jsonl(
        out / "samples.jsonl",
        [
            {"prompt": p.text, "kind": p.kind, "responses": r}
            for p, r in zip([*prompts, *held_prompts], everything, strict=True)
        ],
    )
    train, held = everything[: len(prompts)], everything[len(prompts) :]
    if kind == "db":
        return from_database(task, spec, prompts, train, out)
    return simulated(task, prompts, train, held_prompts, held, out, seed)

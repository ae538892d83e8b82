"""Getting work in: prompts with 2..9 candidate responses become labeling tasks.

Input rows (JSONL / JSON / Parquet / datasets, read by :func:`iter_rows`):

- ``{"prompt", "responses": [...], "policies"?: [...]}``: candidates to label;
  ``policies`` names the model behind each response (kept, never shown);
- a ranking record ``{"prompt", "responses", "rank"}`` or a preference record
  ``{"prompt", "chosen", "rejected"}``: their responses become candidates, and
  with ``gold=True`` their order becomes the task's gold answer.

Importing is idempotent: a task already in the store (same prompt, same
responses, same kind) is counted and skipped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select

from rlhfkit.data.load import SKIP_HINT
from rlhfkit.data.records import InvalidRecord, parse_preference
from rlhfkit.data.sources import iter_rows
from rlhfkit.data.types import Conversation, PreferenceRecord, RankingRecord
from rlhfkit.errors import DataError, DataIssue, Location, field_issue
from rlhfkit.feedback.store.db import Store
from rlhfkit.feedback.store.schema import PAIRWISE, RANKING, Prompt, Response, Task

TaskMode = Literal["auto", "pairwise", "ranking"]
MODES = ("auto", "pairwise", "ranking")
MAX_CHARS = 20_000
BATCH = 500


@dataclass(frozen=True)
class CandidateSet:
    """A prompt and its candidate responses; ``gold`` maps a dimension to ranks
    (aligned with ``responses``, 1 = best) when the row's order is the gold answer."""

    prompt: Conversation
    responses: tuple[str, ...]
    policies: tuple[str | None, ...]
    gold: dict[str, list[int]] | None = None
    location: Location | None = None


@dataclass
class ImportSummary:
    rows: int = 0
    prompts: int = 0
    responses: int = 0
    tasks: int = 0
    existing_tasks: int = 0
    gold_tasks: int = 0
    skipped_rows: int = 0
    kinds: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [
            f"{self.rows} rows",
            f"{self.tasks} new tasks ({', '.join(f'{n} {k}' for k, n in self.kinds.items()) or 'none'})",
            f"{self.gold_tasks} gold",
            f"{self.existing_tasks} already there",
            f"{self.prompts} new prompts",
            f"{self.responses} new responses",
        ]
        if self.skipped_rows:
            parts.append(f"{self.skipped_rows} invalid rows skipped")
        return ", ".join(parts)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- reading rows


def parse_candidate_row(
    row: dict[str, Any], loc: Location, *, gold: bool = False, max_chars: int = MAX_CHARS
) -> CandidateSet:
    """One input row as a :class:`CandidateSet`; raises InvalidRecord with every problem."""
    has_rank = row.get("rank") is not None
    plain = row.get("responses") is not None and not has_rank
    if plain and gold:
        expected = "a 'rank' (or 'chosen' and 'rejected') on a gold row"
        raise InvalidRecord([field_issue(loc, "rank", expected, row.get("rank"))])
    # Candidates without a rank validate exactly like a ranking record (any rank will do).
    probe = row
    if plain and isinstance(row["responses"], list):
        probe = {**row, "rank": list(range(1, len(row["responses"]) + 1))}
    record = parse_preference(probe, loc)
    issues: list[DataIssue] = []
    if isinstance(record, PreferenceRecord):
        texts: tuple[str, ...] = (record.chosen, record.rejected)
        order = [1, 2]
    else:
        texts = record.responses
        order = list(record.rank)
    for i, t in enumerate(texts):
        if texts.index(t) != i:
            issues.append(field_issue(loc, f"responses[{i}]", "a response unlike the others", t))
        if len(t) > max_chars:
            issues.append(field_issue(loc, f"responses[{i}]", f"at most {max_chars} characters", t))
    for i, m in enumerate(record.prompt):
        if len(m.content) > max_chars:
            where = "prompt" if len(record.prompt) == 1 else f"prompt[{i}].content"
            issues.append(field_issue(loc, where, f"at most {max_chars} characters", m.content))
    policies = _policies(row.get("policies"), len(texts), loc, issues)
    if issues:
        raise InvalidRecord(issues)
    gold_answer = {record.dimension or "helpfulness": order} if gold else None
    return CandidateSet(record.prompt, texts, policies, gold_answer, loc)


def _policies(value: Any, k: int, loc: Location, issues: list[DataIssue]) -> tuple[str | None, ...]:
    if value is None:
        return (None,) * k
    ok = isinstance(value, list) and len(value) == k
    ok = ok and all(v is None or (isinstance(v, str) and 0 < len(v) <= 200) for v in value)
    if not ok:
        expected = f"a list of {k} policy names (strings of 1-200 characters, or null)"
        issues.append(field_issue(loc, "policies", expected, value))
        return (None,) * k
    return tuple(value)


def read_candidates(
    source: str | Path,
    *,
    gold: bool = False,
    max_chars: int = MAX_CHARS,
    skip_invalid: bool = False,
) -> tuple[list[CandidateSet], int]:
    """Every row of ``source`` as candidate sets, and how many bad rows were skipped.
    Bad rows raise one DataError listing them (file:line: field ...) unless skipped."""
    sets: list[CandidateSet] = []
    bad: list[list[DataIssue]] = []
    for loc, row in iter_rows(source):
        if isinstance(row, DataIssue):
            bad.append([row])
            continue
        try:
            sets.append(parse_candidate_row(row, loc, gold=gold, max_chars=max_chars))
        except InvalidRecord as e:
            bad.append(e.issues or [DataIssue(loc, "invalid row")])
    issues = [i for group in bad for i in group]
    if bad and not skip_invalid:
        raise DataError(issues, SKIP_HINT)
    if not sets:
        raise DataError(issues, f"no valid rows in {source}")
    return sets, len(bad)


def candidates_from_records(
    records: Iterable[PreferenceRecord | RankingRecord], *, gold: bool = False
) -> list[CandidateSet]:
    """Candidate sets from validated records (the Python API of ``label import``)."""
    rows = [r.to_dict() for r in records]
    loc = Location("<records>")
    return [parse_candidate_row(row, loc, gold=gold) for row in rows]


# ---------------------------------------------------------------- tasks


def plan_tasks(
    c: CandidateSet, mode: TaskMode
) -> list[tuple[str, list[int], dict[str, list[int]] | None]]:
    """``(kind, response indices, gold ranks over those indices)`` for each task of ``c``:
    auto makes one pairwise task for 2 responses and one ranking task for 3-9."""
    k = len(c.responses)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "ranking" or (mode == "auto" and k > 2):
        if k < 3:
            where = c.location or Location("<records>")
            raise DataError([DataIssue(where, "a ranking task needs 3 to 9 responses")])
        return [(RANKING, list(range(k)), c.gold)]
    out = []
    for i, j in itertools.combinations(range(k), 2):
        gold = None
        if c.gold is not None:
            gold = {d: [r[i], r[j]] for d, r in c.gold.items() if r[i] != r[j]} or None
        if c.gold is not None and gold is None:
            continue  # a tied pair has no gold answer
        out.append((PAIRWISE, [i, j], gold))
    return out


def import_candidates(
    store: Store,
    sets: Sequence[CandidateSet],
    *,
    mode: TaskMode = "auto",
    overlap: int | None = None,
) -> ImportSummary:
    """Add prompts, responses and tasks (in transactions of 500 rows)."""
    if overlap is not None and overlap < 1:
        raise ValueError(f"overlap must be >= 1, got {overlap}")
    overlap = overlap or int(store.settings()["overlap"])
    summary = ImportSummary()
    for start in range(0, len(sets), BATCH):
        with store.write() as s:
            for c in sets[start : start + BATCH]:
                _import_one(s, c, mode, overlap, summary)
    return summary


def _import_one(s, c: CandidateSet, mode: TaskMode, overlap: int, summary: ImportSummary) -> None:
    summary.rows += 1
    conversation = [m.as_dict() for m in c.prompt]
    prompt_key = _sha(conversation)
    prompt = s.scalar(select(Prompt).where(Prompt.key == prompt_key))
    if prompt is None:
        prompt = Prompt(key=prompt_key, conversation=conversation)
        s.add(prompt)
        s.flush()
        summary.prompts += 1
    ids = []
    for text, policy in zip(c.responses, c.policies, strict=True):
        key = _sha([policy, text])
        resp = s.scalar(
            select(Response).where(Response.prompt_id == prompt.id, Response.key == key)
        )
        if resp is None:
            resp = Response(prompt_id=prompt.id, key=key, text=text, policy=policy)
            s.add(resp)
            s.flush()
            summary.responses += 1
        ids.append(resp.id)
    for kind, idx, gold in plan_tasks(c, mode):
        response_ids = [ids[i] for i in idx]
        key = _sha([kind, prompt_key, sorted(response_ids), gold is not None])
        if s.scalar(select(Task.id).where(Task.key == key)) is not None:
            summary.existing_tasks += 1
            continue
        s.add(
            Task(
                key=key,
                prompt_id=prompt.id,
                kind=kind,
                response_ids=response_ids,
                overlap=overlap,
                n_claimed=0,
                is_gold=gold is not None,
                gold=gold,
            )
        )
        summary.tasks += 1
        summary.gold_tasks += int(gold is not None)
        summary.kinds[kind] = summary.kinds.get(kind, 0) + 1

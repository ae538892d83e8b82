"""``rlhfkit score``: a reward model over a file of responses, comparisons or rankings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.data.load import load_records
from rlhfkit.data.types import PreferenceRecord, RankingRecord, ResponseRecord
from rlhfkit.models.reward import RewardModel


@dataclass
class ScoreSummary:
    n_records: int
    n_responses: int
    mean_reward: float
    accuracy: float | None  # over preference pairs / strict ranking pairs, if any
    n_pairs: int


def _responses(rec: Any) -> list[str]:
    if isinstance(rec, ResponseRecord):
        return [rec.response]
    if isinstance(rec, PreferenceRecord):
        return [rec.chosen, rec.rejected]
    return list(rec.responses)


def _prompt_json(rec: Any) -> list[dict[str, str]]:
    return [m.as_dict() for m in rec.prompt]


def score_file(
    rm: RewardModel,
    source: str,
    out: str | Path,
    *,
    batch_size: int = 64,
    skip_invalid: bool = False,
    show_progress: bool = True,
) -> ScoreSummary:
    """Score every response of ``source`` and write one JSON line per record to ``out``."""
    records = load_records(source, "score", skip_invalid=skip_invalid).records
    rows: list[list[int]] = []
    for rec in records:
        rows += [rm.encode(rec.prompt, text) for text in _responses(rec)]

    from rich.progress import Progress

    with Progress(disable=not show_progress) as bar:
        task = bar.add_task("scoring", total=len(rows))
        rewards = rm.score_ids(rows, batch_size, progress=lambda n: bar.advance(task, n)).tolist()

    correct = pairs = 0
    at = 0
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for rec in records:
            k = len(_responses(rec))
            r = rewards[at : at + k]
            at += k
            row: dict[str, Any] = {"prompt": _prompt_json(rec)}
            if isinstance(rec, ResponseRecord):
                row.update(response=rec.response, reward=r[0], **rec.extra)
            elif isinstance(rec, PreferenceRecord):
                ok = r[0] > r[1]
                correct, pairs = correct + ok, pairs + 1
                row.update(
                    chosen=rec.chosen,
                    rejected=rec.rejected,
                    chosen_reward=r[0],
                    rejected_reward=r[1],
                    correct=ok,
                )
            else:
                assert isinstance(rec, RankingRecord)
                ranked = rec.pairs()
                correct += sum(r[p.better] > r[p.worse] for p in ranked)
                pairs += len(ranked)
                row.update(responses=list(rec.responses), rank=list(rec.rank), rewards=r)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    mean = sum(rewards) / max(len(rewards), 1)
    return ScoreSummary(len(records), len(rewards), mean, correct / pairs if pairs else None, pairs)

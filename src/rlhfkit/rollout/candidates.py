"""K sampled responses per prompt, their rewards, and the files they become.

The shared "sample K per prompt -> score -> select" step of rejection sampling,
best-of-n, ReST and HIR: :func:`sample_candidates` draws them with the rollout
:class:`~rlhfkit.rollout.generator.Generator`, :func:`score_candidates` scores them
with any :class:`~rlhfkit.rollout.rewards.RewardSource`, a
:class:`~rlhfkit.rollout.selection.SelectionRule` picks, and :func:`write_samples` /
:func:`sft_rows` write what was drawn and what was kept.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit.data.types import PromptRecord
from rlhfkit.rollout.generator import Generator
from rlhfkit.rollout.rewards import RewardSource
from rlhfkit.training.tracking import Progress

log = logging.getLogger("rlhfkit")

CALIBRATION_SAMPLES = 512


@dataclass
class Candidates:
    """``texts[i]`` are the K responses sampled for ``records[i]``; ``truncated[i][j]``
    is True where response j hit ``max_new_tokens`` without EOS; ``scores`` (same
    shape) once scored."""

    records: list[PromptRecord]
    texts: list[list[str]]
    truncated: list[list[bool]]
    scores: list[list[float]] | None = None

    @property
    def k(self) -> int:
        return len(self.texts[0]) if self.texts else 0

    def __len__(self) -> int:
        return len(self.records)

    def flat(self) -> tuple[list, list[str], list[dict[str, Any]]]:
        """Prompts, responses and record fields, one entry per sample (prompt-major)."""
        prompts = [r.prompt for r, ts in zip(self.records, self.texts, strict=True) for _ in ts]
        texts = [t for ts in self.texts for t in ts]
        fields = [r.extra for r, ts in zip(self.records, self.texts, strict=True) for _ in ts]
        return prompts, texts, fields

    def mean_score(self) -> float:
        values = [s for row in self.scores or [] for s in row if not math.isnan(s)]
        return sum(values) / len(values) if values else float("nan")


def sample_candidates(
    model: torch.nn.Module,
    generator: Generator,
    records: Sequence[PromptRecord],
    k: int,
    batch_size: int = 64,
    description: str = "sampling",
    show_progress: bool = True,
) -> Candidates:
    """``k`` sampled responses per prompt, ``batch_size`` sequences per ``generate``
    call. Seed torch first for a reproducible draw."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ids = generator.encode([r.prompt for r in records])
    rows = [row for row in ids for _ in range(k)]
    texts: list[str] = []
    truncated: list[bool] = []
    progress = Progress(len(rows), description, show_progress)
    try:
        for start in range(0, len(rows), batch_size):
            rollout = generator.generate_ids(model, rows[start : start + batch_size])
            texts += rollout.texts
            truncated += [bool(t) for t in rollout.truncated.tolist()]
            progress.update(len(texts))
    finally:
        progress.close()
    return Candidates(
        list(records),
        [texts[i * k : (i + 1) * k] for i in range(len(records))],
        [truncated[i * k : (i + 1) * k] for i in range(len(records))],
    )


def score_candidates(
    candidates: Candidates,
    reward: RewardSource,
    batch_size: int = 64,
    missing_eos_penalty: float = 0.0,
    description: str = "scoring",
    show_progress: bool = True,
) -> list[list[float]]:
    """One reward per sample (also stored in ``candidates.scores``), ``batch_size``
    samples per call; ``missing_eos_penalty`` is subtracted where a response has no EOS.
    A combined source (weighted sum, Llama 2's gate) is first calibrated on the first
    :data:`CALIBRATION_SAMPLES` samples, so every batch is on one scale."""
    prompts, texts, fields = candidates.flat()
    calibrate = getattr(reward, "calibrate", None)
    if calibrate is not None and texts:
        n = min(CALIBRATION_SAMPLES, len(texts))
        calibrate(prompts[:n], texts[:n], fields[:n])
    values: list[float] = []
    progress = Progress(len(texts), description, show_progress)
    try:
        for start in range(0, len(texts), batch_size):
            end = start + batch_size
            out = reward.score(prompts[start:end], texts[start:end], fields[start:end])
            values += [float(v) for v in out.tolist()]
            progress.update(len(values))
    finally:
        progress.close()
    flat_trunc = [t for row in candidates.truncated for t in row]
    values = [v - missing_eos_penalty * t for v, t in zip(values, flat_trunc, strict=True)]
    k = candidates.k
    candidates.scores = [values[i * k : (i + 1) * k] for i in range(len(candidates))]
    return candidates.scores


def eligible_scores(candidates: Candidates) -> tuple[list[list[float]], int]:
    """The scores with empty responses set to NaN (a selection never keeps those: an SFT
    example needs a completion), and how many there were."""
    assert candidates.scores is not None, "score the candidates first"
    out, empty = [], 0
    for texts, scores in zip(candidates.texts, candidates.scores, strict=True):
        row = []
        for t, s in zip(texts, scores, strict=True):
            if not t.strip():
                empty += 1
                row.append(float("nan"))
            else:
                row.append(s)
        out.append(row)
    return out, empty


def prompt_row(record: PromptRecord) -> dict[str, Any]:
    """A prompt record as it is written: the conversation plus its other fields."""
    return {"prompt": [m.as_dict() for m in record.prompt], **record.extra}


def write_samples(
    path: Path, candidates: Candidates, kept: Sequence[Sequence[int]] | None = None
) -> Path:
    """``samples.jsonl``: one row per prompt with its fields, its K ``responses``, their
    ``scores``, which were ``truncated``, and the indices ``kept`` (best first), if given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scores = candidates.scores or [[float("nan")] * candidates.k] * len(candidates)
    with path.open("w", encoding="utf-8") as f:
        for i, rec in enumerate(candidates.records):
            row = {
                **prompt_row(rec),
                "responses": candidates.texts[i],
                "scores": [None if math.isnan(s) else s for s in scores[i]],
                "truncated": candidates.truncated[i],
            }
            if kept is not None:
                row["kept"] = list(kept[i])
            f.write(json.dumps(row) + "\n")
    return path


def read_samples(path: Path) -> Candidates:
    """What :func:`write_samples` wrote, back as scored candidates."""
    from rlhfkit.data.types import Message

    records, texts, truncated, scores = [], [], [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        prompt = tuple(Message(m["role"], m["content"]) for m in row.pop("prompt"))
        texts.append(row.pop("responses"))
        truncated.append(row.pop("truncated"))
        scores.append([float("nan") if s is None else s for s in row.pop("scores")])
        row.pop("kept", None)
        records.append(PromptRecord(prompt=prompt, extra=row))
    return Candidates(records, texts, truncated, scores)


def sft_rows(candidates: Candidates, kept: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
    """The kept samples as chat SFT records (``messages``), with their score."""
    rows = []
    scores = candidates.scores
    for i, (rec, keep) in enumerate(zip(candidates.records, kept, strict=True)):
        for j in keep:
            row: dict[str, Any] = {
                "messages": [
                    *(m.as_dict() for m in rec.prompt),
                    {"role": "assistant", "content": candidates.texts[i][j]},
                ]
            }
            if scores is not None:
                row["score"] = scores[i][j]
            rows.append(row)
    return rows

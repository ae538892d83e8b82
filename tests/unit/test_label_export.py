"""Exported labels: every format is read by the loaders `rlhfkit rm` / `rlhfkit dpo` use,
sides are mapped back from what annotators saw, and consensus is computed per task."""

from __future__ import annotations

import json
import random
import uuid

import pytest

from label_support import people_in, seeded_store
from rlhfkit.data.load import load_records
from rlhfkit.data.types import Message, PreferenceRecord, RankingRecord
from rlhfkit.errors import ConfigError
from rlhfkit.feedback import reports
from rlhfkit.feedback.export import export_labels
from rlhfkit.feedback.store import CandidateSet, Work, candidates_from_records, import_candidates
from rlhfkit.feedback.store import reading as reading_mod


def answer_for(view, best: str, margin: str = "better", safety: str = "tie") -> dict:
    """A pairwise answer preferring the response text ``best`` wherever it was shown."""
    side = "A" if view.responses[0] == best else "B"
    return {"helpfulness": {"choice": side, "margin": margin}, "safety": {"choice": safety}}


@pytest.fixture
def labeled(tmp_path, task):
    """3 annotators on 8 pairwise tasks (all prefer the first candidate, except c on
    the first 4 tasks) and 2 ranking tasks (4 candidates, ranked in candidate order)."""
    store = seeded_store(str(tmp_path / "l.db"), task, n=8, overlap=3)
    ranking = [
        CandidateSet((Message("user", f"Rank these {i}"),), ("w", "x", "y", "z"), ("p1", "p2", "p3", "p4"))
        for i in range(2)
    ]  # fmt: skip
    import_candidates(store, ranking, overlap=3)
    ann = people_in(store, "a", "b", "c")
    work = Work(store, random.Random(0))
    best_of: dict[str, str] = {}
    for s in task.prompts("train")[:8]:
        best_of[s.text] = task.candidates(s)[0]
    for person in ann:
        n_pairs = 0
        while (view := work.next(person.id)) is not None:
            if view.kind == "pairwise":
                best = best_of[view.prompt[0]["content"]]
                if person.name == "c" and n_pairs < 4:
                    best = next(r for r in view.responses if r != best)
                n_pairs += 1
                answer = answer_for(
                    view, best, "significantly_better" if person.name == "a" else "slightly_better"
                )
            else:
                order = "wxyz"
                answer = {
                    d: [order.index(r) + 1 for r in view.responses]
                    for d in ("helpfulness", "safety")
                }
            work.submit(person.id, view.id, uuid.uuid4(), answer=answer)  # fmt: skip
    return store, best_of


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_majority_preferences_map_sides_back_and_load_for_rm(labeled, tmp_path):
    store, best_of = labeled
    out = tmp_path / "prefs.jsonl"
    summary = export_labels(store, out, format="preference", dimension="helpfulness")
    rows = read(out)
    pairwise = [r for r in rows if "margin_label" in r]
    assert len(pairwise) == 8  # one consensus row per pairwise task
    for r in pairwise:
        assert (
            r["chosen"] == best_of[r["prompt"][0]["content"]]
        )  # 2 of 3 agree even where c did not
        assert r["margin_label"] == "slightly_better"  # the lower median of a, b (and c)
        assert r["dimension"] == "helpfulness" and r["annotators"] == 3
    ranked = [r for r in rows if "margin" in r]
    assert len(ranked) == 2 * 6  # each ranking of 4 -> C(4,2) pairs
    assert all("wxyz".index(r["chosen"]) < "wxyz".index(r["rejected"]) for r in ranked)
    assert summary.rows == len(rows) and summary.tasks == 10
    records = load_records(out, "preference").records  # what `rlhfkit rm` / `dpo` read
    assert len(records) == 20 and all(isinstance(r, PreferenceRecord) for r in records)


def test_raw_rows_keep_every_annotator(labeled, tmp_path):
    store, best_of = labeled
    out = tmp_path / "raw.jsonl"
    export_labels(store, out, consensus="raw")
    rows = [r for r in read(out) if "margin_label" in r]
    assert len(rows) == 24
    disagreeing = [r for r in rows if r["chosen"] != best_of[r["prompt"][0]["content"]]]
    assert {r["annotator"] for r in disagreeing} == {"c"} and len(disagreeing) == 4
    assert len({r["judgment"] for r in rows}) == 24
    load_records(out, "preference")


def test_safety_ties_carry_no_preference(labeled, tmp_path):
    store, _ = labeled
    out = tmp_path / "safety.jsonl"
    summary = export_labels(store, out, dimension="safety")
    rows = read(out)
    assert summary.no_preference == 8  # every pairwise safety answer was a tie
    assert len(rows) == 12 and all(r["dimension"] == "safety" for r in rows)


def test_ranking_and_hh_formats_load(labeled, tmp_path):
    store, _ = labeled
    ranking = tmp_path / "ranking.jsonl"
    export_labels(store, ranking, format="ranking")
    records = load_records(ranking, "preference").records
    full = [r for r in records if isinstance(r, RankingRecord) and len(r.responses) == 4]
    assert [list(r.rank) for r in full] == [[1, 2, 3, 4]] * 2
    hh = tmp_path / "hh.jsonl"
    export_labels(store, hh, format="hh")
    first = read(hh)[0]
    assert first["chosen"].startswith("\n\nHuman: ") and "\n\nAssistant: " in first["chosen"]
    assert all(isinstance(r, PreferenceRecord) for r in load_records(hh, "preference").records)


def test_bradley_terry_consensus_agrees_with_majority_here(labeled, tmp_path):
    store, _ = labeled
    bt, maj = tmp_path / "bt.jsonl", tmp_path / "maj.jsonl"
    export_labels(store, bt, consensus="bt")
    export_labels(store, maj, consensus="majority")
    key = lambda r: (r["task"], r["chosen"], r["rejected"])  # noqa: E731
    assert sorted(map(key, read(bt))) == sorted(map(key, read(maj)))


def test_export_streams_in_pages(labeled, tmp_path, monkeypatch):
    store, _ = labeled
    whole = tmp_path / "whole.jsonl"
    export_labels(store, whole)
    monkeypatch.setattr(reading_mod, "PAGE", 3)
    paged = tmp_path / "paged.jsonl"
    export_labels(store, paged)
    assert paged.read_text() == whole.read_text()


def test_export_rejects_unknown_options(labeled, tmp_path):
    store, _ = labeled
    for kwargs, match in (
        ({"format": "csv"}, "--format"),
        ({"dimension": "fun"}, "--dimension"),
        ({"consensus": "vote"}, "--consensus"),
    ):
        with pytest.raises(ConfigError, match=match):
            export_labels(store, tmp_path / "x.jsonl", **kwargs)


def test_agreement_and_gold_reports(labeled):
    store, _ = labeled
    result = reports.agreement(store)
    assert result.pairwise_units["helpfulness"] == 8
    # 4 tasks (f, f, f) and 4 (f, f, s): o_ff = 4*3 + 4*1 = 16, o_fs = o_sf = 4, n_f = 20,
    # n_s = 4, n = 24: alpha = 1 - 23 * 8 / (2 * 20 * 4) = -0.15 (agreement is no better
    # than the skewed marginals predict)
    assert result.choice_alpha["helpfulness"] == pytest.approx(-0.15)
    assert result.rank_alpha["helpfulness"] == pytest.approx(1.0)
    per = result.per_annotator
    assert per["a"]["helpfulness"]["pairwise"] == 1.0
    assert per["c"]["helpfulness"]["pairwise"] == 0.5
    assert per["a"]["helpfulness"]["tau"] == pytest.approx(1.0)
    board = reports.policy_leaderboard(store, "helpfulness", bootstrap=0)
    assert board[0]["item"] in {"policy-0", "p1"}
    rows = {r.name: r for r in reports.annotator_rows(store)}
    assert rows["a"].counts == {"done": 10}


def test_gold_accuracy(tmp_path, task):
    store = seeded_store(str(tmp_path / "g.db"), task, n=0, gold_rate=1.0)
    prompts = task.prompts("heldout", "arithmetic")[:4]
    records = [
        PreferenceRecord((Message("user", p.text),), task.concise(p), "I can't help with that.")
        for p in prompts
    ]
    import_candidates(store, candidates_from_records(records, gold=True))
    (ann,) = people_in(store, "g")
    work = Work(store, random.Random(0))
    for i in range(4):
        view = work.next(ann.id)
        right = task.concise(view.prompt[0]["content"])
        best = right if i < 3 else "I can't help with that."  # the last one wrong
        work.submit(ann.id, view.id, uuid.uuid4(), answer=answer_for(view, best))
    assert work.next(ann.id) is None
    gold = reports.agreement(store).gold["g"]
    assert (gold["correct"], gold["total"], gold["accuracy"]) == (3, 4, 0.75)
    assert export_labels(store, tmp_path / "x.jsonl").rows == 0  # gold is not exported ...
    assert (
        export_labels(store, tmp_path / "x.jsonl", include_gold=True).rows == 4
    )  # ... unless asked

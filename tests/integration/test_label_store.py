"""The labeling store on SQLite and on a real PostgreSQL server: migrations, import,
assignment, idempotent judgments, undo, concurrency, integrity."""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from label_support import PAIR, candidate_sets, db_for, people_in, seeded_store
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.feedback.store import (
    Accounts,
    Conflict,
    Invalid,
    LoginFailed,
    NotFound,
    Store,
    Work,
    fast_hasher,
    import_candidates,
    read_candidates,
)
from rlhfkit.feedback.store.schema import Assignment, Judgment, Task, utcnow

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def db(request, tmp_path) -> str:
    return db_for(request.param, tmp_path)


def test_fresh_database_is_at_head_with_a_persistent_secret(db):
    store = Store(db)
    assert store.revision() == store.head() == "0003"
    secret = store.secret_key()
    assert len(secret) == 32
    store.close()
    again = Store(db)
    assert again.secret_key() == secret  # not regenerated per process
    assert again.integrity_problems() == []


def test_old_database_upgrades_and_keeps_its_rows(db):
    old = Store(db, upgrade=False)
    old.upgrade("0001")  # the schema an older rlhfkit made: no logins yet
    assert old.revision() == "0001"
    with old.engine.begin() as conn:
        conn.execute(text("INSERT INTO annotators (name, is_admin, active, created_at) "
                          "VALUES ('ann', false, true, CURRENT_TIMESTAMP)"))  # fmt: skip
    old.close()
    store = Store(db)  # opening upgrades
    assert store.revision() == "0003"
    accounts = Accounts(store, fast_hasher())
    ann = accounts.get("ann")
    token = accounts.invite(ann.id)  # a table the upgrade added
    assert accounts.invite_owner(token).name == "ann"


def test_a_newer_database_is_refused(db):
    store = Store(db)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(ConfigError, match="newer than this rlhfkit knows"):
        Store(db)


def test_import_is_idempotent_and_keeps_policies(db, task):
    store = Store(db)
    sets = candidate_sets(task, 10, k=2) + candidate_sets(task, 3, k=4, split="heldout")
    first = import_candidates(store, sets, overlap=2)
    assert (first.tasks, first.kinds) == (13, {"pairwise": 10, "ranking": 3})
    assert first.responses == 10 * 2 + 3 * 4
    again = import_candidates(store, sets, overlap=2)
    assert (again.tasks, again.existing_tasks, again.responses) == (0, 13, 0)
    pairs = import_candidates(store, candidate_sets(task, 3, k=4, split="heldout"), mode="pairwise")
    assert pairs.kinds == {"pairwise": 18}  # C(4, 2) pairs of each of 3 prompts


def test_import_errors_name_file_line_and_field(tmp_path):
    bad = tmp_path / "cands.jsonl"
    rows = [
        {"prompt": "What is 1 + 1?", "responses": ["2", "3"]},
        {"prompt": "What is 2 + 2?", "responses": ["4"]},
        {"prompt": "", "responses": ["a", "b"]},
        {"prompt": "Hi", "responses": ["a", "a"]},
        {"prompt": "Hi", "responses": ["a", "b"], "policies": ["p"]},
        {"prompt": "Hi", "responses": ["x" * 50, "b"]},
    ]
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    with pytest.raises(DataError) as e:
        read_candidates(bad, max_chars=40)
    message = str(e.value)
    for expected in (
        f"{bad}:2: field 'responses': expected a list of 2 to 9 responses",
        f"{bad}:3: field 'prompt'",
        f"{bad}:4: field 'responses[1]': expected a response unlike the others",
        f"{bad}:5: field 'policies': expected a list of 2 policy names",
        f"{bad}:6: field 'responses[0]': expected at most 40 characters",
        f"{bad}:7:",
    ):
        assert expected in message, message
    assert f"{bad}:1:" not in message
    sets, skipped = read_candidates(bad, max_chars=40, skip_invalid=True)
    assert (len(sets), skipped) == (1, 6)


def test_gold_rows_need_an_order(tmp_path):
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps({"prompt": "Hi", "responses": ["a", "b"]}) + "\n")
    with pytest.raises(DataError, match="field 'rank': expected a 'rank'"):
        read_candidates(path, gold=True)
    path.write_text(json.dumps({"prompt": "Hi", "chosen": "good", "rejected": "bad",
                                "dimension": "safety"}) + "\n")  # fmt: skip
    (gold,), _ = read_candidates(path, gold=True)
    assert gold.responses == ("good", "bad") and gold.gold == {"safety": [1, 2]}


def test_overlap_no_repeats_and_randomised_recorded_sides(db, task):
    store = seeded_store(db, task, n=30, overlap=2)
    ann = people_in(store, "a1", "a2", "a3")
    work = Work(store, random.Random(0))
    seen: dict[int, set[int]] = {a.id: set() for a in ann}
    swapped = 0
    while True:
        progressed = False
        for a in ann:
            view = work.next(a.id)
            if view is None:
                continue
            progressed = True
            with store.read() as s:
                assignment = s.get_one(Assignment, view.id)
                task_row = s.get_one(Task, assignment.task_id)
            assert assignment.task_id not in seen[a.id]  # never the same task twice
            seen[a.id].add(assignment.task_id)
            swapped += assignment.shown_order != task_row.response_ids
            work.submit(a.id, view.id, uuid.uuid4(), answer=PAIR)
        if not progressed:
            break
    counts = Counter(t for s in seen.values() for t in s)
    assert len(counts) == 30 and set(counts.values()) == {2}  # exactly `overlap` each
    assert 15 <= swapped <= 45  # sides randomised (60 assignments, half swapped on average)
    with store.read() as s:
        for j in s.scalars(select(Judgment)):
            assert j.shown_order == s.get_one(Assignment, j.assignment_id).shown_order
    assert store.integrity_problems() == []


def test_gold_tasks_are_mixed_in_at_the_configured_rate(db, task, tmp_path):
    store = seeded_store(db, task, n=60, overlap=1, gold_rate=0.25)
    path = tmp_path / "gold.jsonl"
    rows = [{"prompt": p.text, "chosen": task.concise(p), "rejected": "I can't help with that."}
            for p in task.prompts("heldout", "arithmetic")[:40]]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets, _ = read_candidates(path, gold=True)
    assert import_candidates(store, sets).gold_tasks == 40
    (ann,) = people_in(store, "g")
    work = Work(store, random.Random(1))
    gold = 0
    for _ in range(40):
        view = work.next(ann.id)
        with store.read() as s:
            gold += s.get_one(Task, s.get_one(Assignment, view.id).task_id).is_gold
        work.submit(ann.id, view.id, uuid.uuid4(), answer=PAIR)
    assert 4 <= gold <= 18  # 25% of 40 = 10 expected


def test_submit_is_idempotent_and_checked(db, task):
    store = seeded_store(db, task, n=4)
    a, b = people_in(store, "a", "b")
    work = Work(store, random.Random(0))
    view = work.next(a.id)
    sid = uuid.uuid4()
    first = work.submit(a.id, view.id, sid, answer=PAIR, time_spent_ms=1234)
    again = work.submit(a.id, view.id, sid, answer=PAIR)
    assert (first.duplicate, again.duplicate, again.judgment_id) == (False, True, str(sid))
    with pytest.raises(Conflict, match="already answered"):
        work.submit(a.id, view.id, uuid.uuid4(), answer=PAIR)  # a second page, new id
    with pytest.raises(NotFound):
        work.submit(b.id, view.id, uuid.uuid4(), answer=PAIR)  # not b's task
    with pytest.raises(NotFound):
        work.view(b.id, view.id)
    with pytest.raises(NotFound):
        work.judgment(b.id, str(sid))
    nxt = work.next(a.id)
    for answer, match in (
        ({"helpfulness": {"choice": "A"}, "safety": {"choice": "tie"}}, "helpfulness.margin"),
        ({"helpfulness": {"choice": "C"}, "safety": {"choice": "tie"}}, "helpfulness.choice"),
        ({"helpfulness": {"choice": "tie"}}, "safety: missing"),
        ({**PAIR, "fun": {}}, "unknown dimension"),
        ("A", "expected an object"),
    ):
        with pytest.raises(Invalid, match=match):
            work.submit(a.id, nxt.id, uuid.uuid4(), answer=answer)
    with pytest.raises(Invalid, match="submission_id: expected a UUID"):
        work.submit(a.id, nxt.id, "1; drop table", answer=PAIR)
    with pytest.raises(Invalid, match="a flag needs a reason"):
        work.submit(a.id, nxt.id, uuid.uuid4(), action="flag")
    with pytest.raises(Conflict, match="another task"):
        work.submit(a.id, nxt.id, sid, answer=PAIR)  # a used id on another task
    assert work.judgment(a.id, str(sid))["time_spent_ms"] == 1234
    assert store.integrity_problems() == []


def test_skip_releases_the_slot_and_undo_reopens(db, task):
    store = seeded_store(db, task, n=1, overlap=1)
    a, b = people_in(store, "a", "b")
    work = Work(store, random.Random(0))
    view = work.next(a.id)
    assert work.next(b.id) is None  # the only slot is taken
    work.submit(a.id, view.id, uuid.uuid4(), action="skip", reason="I don't know")
    assert work.next(a.id) is None  # a never gets it again
    other = work.next(b.id)
    assert other is not None
    judged = work.submit(b.id, other.id, uuid.uuid4(), answer=PAIR)
    assert work.undo(b.id) == other.id
    assert work.view(b.id, other.id).status == "pending"
    assert work.judgment(b.id, judged.judgment_id)["retracted"] is True
    assert work.next(b.id).id == other.id  # the reopened task comes back first
    work.submit(b.id, other.id, uuid.uuid4(), answer=PAIR)
    with store.read() as s:  # append-only: the undone judgment is still stored
        assert len(s.scalars(select(Judgment)).all()) == 3
    assert work.progress(b.id).done == 1
    assert store.integrity_problems() == []
    with pytest.raises(NotFound, match="nothing to undo"):
        Work(store).undo(people_in(store, "c")[0].id)


def test_concurrent_duplicate_submits_record_once(db, task):
    store = seeded_store(db, task, n=40)
    (a,) = people_in(store, "a")
    work = Work(store)
    results: list = []
    lock = threading.Lock()

    def hammer(view_id: int, sid: uuid.UUID) -> None:
        try:
            r = work.submit(a.id, view_id, sid, answer=PAIR)
            with lock:
                results.append(r)
        except Conflict:
            pass

    for _ in range(20):
        view = work.next(a.id)
        sid = uuid.uuid4()
        threads = [threading.Thread(target=hammer, args=(view.id, sid)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 80  # every attempt was acknowledged ...
    assert sum(not r.duplicate for r in results) == 20  # ... and recorded once
    with store.read() as s:
        assert len(s.scalars(select(Judgment)).all()) == 20
    assert store.integrity_problems() == []


def test_concurrent_annotators_respect_overlap(db, task):
    store = seeded_store(db, task, n=30, overlap=2)
    annotators = people_in(store, *[f"w{i}" for i in range(6)])
    work = Work(store)
    errors: list[Exception] = []

    def label(annotator_id: int) -> None:
        try:
            while (view := work.next(annotator_id)) is not None:
                work.submit(annotator_id, view.id, uuid.uuid4(), answer=PAIR)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=label, args=(a.id,)) for a in annotators]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with store.read() as s:
        per_task = Counter(s.scalars(select(Judgment.task_id)))
    assert len(per_task) == 30 and set(per_task.values()) == {2}
    assert store.integrity_problems() == []


def test_integrity_check_finds_broken_invariants(db, task):
    store = seeded_store(db, task, n=2)
    (a,) = people_in(store, "a")
    work = Work(store)
    view = work.next(a.id)
    work.submit(a.id, view.id, uuid.uuid4(), answer=PAIR)
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE assignments SET status = 'pending' WHERE id = {view.id}"))
    problems = store.integrity_problems()
    assert any("pending but has 1 live judgment" in p for p in problems), problems


def test_accounts_passwords_invites_sessions(db):
    store = Store(db)
    accounts = Accounts(store, fast_hasher())
    ann = accounts.create("ann", password="correct horse")
    with store.read() as s:
        stored = s.execute(text("SELECT password_hash FROM annotators")).scalar_one()
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    with pytest.raises(LoginFailed):
        accounts.login("ann", "wrong password")
    with pytest.raises(LoginFailed):
        accounts.login("nobody", "correct horse")
    user, token = accounts.login("ann", "correct horse")
    assert accounts.session(token) == user and accounts.session("forged") is None
    accounts.logout(token)
    assert accounts.session(token) is None
    with pytest.raises(Conflict):
        accounts.create("ann")
    for bad in ("", "a b", "<script>", "x" * 101):
        with pytest.raises(Invalid, match="name"):
            accounts.create(bad)
    with pytest.raises(Invalid, match="password"):
        accounts.create("bob", password="short")
    bob = accounts.create("bob")
    invite = accounts.invite(bob.id)
    _, session = accounts.redeem(invite, "bobs password")
    assert accounts.session(session).name == "bob"
    with pytest.raises(NotFound):
        accounts.redeem(invite)  # one time only
    accounts.login("bob", "bobs password")
    assert ann.is_admin is False


def test_assignments_left_open_too_long_expire(db, task):
    store = seeded_store(db, task, n=1, overlap=1, claim_minutes=30)
    a, b = people_in(store, "a", "b")
    work = Work(store, random.Random(0))
    stale = work.next(a.id)
    assert work.next(b.id) is None  # the only slot is a's
    with store.engine.begin() as conn:  # a went to lunch 31 minutes ago
        conn.execute(
            Assignment.__table__.update()
            .where(Assignment.id == stale.id)
            .values(created_at=utcnow() - timedelta(minutes=31))
        )
    fresh = work.next(b.id)  # handing out expires a's claim
    assert fresh is not None and fresh.id != stale.id
    with pytest.raises(Conflict, match="expired"):
        work.submit(a.id, stale.id, uuid.uuid4(), answer=PAIR)
    work.submit(b.id, fresh.id, uuid.uuid4(), answer=PAIR)
    assert work.next(a.id) is None  # a never gets the task again
    assert store.integrity_problems() == []
    with pytest.raises(Invalid, match="claim_minutes"):
        store.configure(claim_minutes=-1)

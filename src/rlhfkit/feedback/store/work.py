"""Labeling work: handing out tasks, recording judgments, undo, progress.

Every method takes the acting annotator's id and only touches that annotator's
assignments and judgments; anything else is :class:`NotFound` (the same answer
as for an id that does not exist, so ids leak nothing).
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError

from rlhfkit.feedback.store.db import Store, read_settings
from rlhfkit.feedback.store.errors import Conflict, Invalid, NotFound
from rlhfkit.feedback.store.schema import (
    DONE,
    EXPIRED,
    FLAG,
    FLAGGED,
    JUDGE,
    PENDING,
    SKIP,
    SKIPPED,
    STATUS_OF_ACTION,
    Assignment,
    Guideline,
    Judgment,
    Prompt,
    Response,
    Retraction,
    Task,
    utcnow,
)
from rlhfkit.feedback.store.validate import check_answer, check_reason, check_time

ACTIONS = (JUDGE, SKIP, FLAG)
_CANDIDATES = 20  # open tasks tried per hand-out (others may claim the first ones)
_CLAIM_ROUNDS = 50  # fresh candidate lists tried before answering "try again"


@dataclass(frozen=True)
class AssignmentView:
    """What an annotator sees: the prompt and the responses in shown order (no policies)."""

    id: int
    kind: str
    prompt: list[dict[str, str]]
    responses: list[str]
    status: str
    dimensions: list[str]
    guideline_version: int | None
    created_at: datetime


@dataclass(frozen=True)
class SubmitResult:
    """``next`` is the annotator's next assignment when it was asked for (None: no more)."""

    judgment_id: str
    assignment_id: int
    duplicate: bool
    next: AssignmentView | None = None


@dataclass(frozen=True)
class Progress:
    done: int
    skipped: int
    flagged: int
    pending: int
    available: int  # tasks this annotator could still be given
    project_done: int  # answered slots of all regular tasks
    project_total: int  # overlap x regular tasks

    @property
    def fraction(self) -> float:
        mine = self.done + self.pending + self.available
        return self.done / mine if mine else 1.0


def live_judgment() -> Any:
    """A filter: the judgment has not been undone."""
    return ~exists().where(Retraction.judgment_id == Judgment.id)


def current_guideline_version(s) -> int | None:
    if "guideline_version" not in s.info:  # once per transaction
        s.info["guideline_version"] = s.scalar(select(func.max(Guideline.version)))
    return s.info["guideline_version"]


def settings_of(s) -> dict[str, Any]:
    """The project settings, read once per transaction."""
    if "settings" not in s.info:
        s.info["settings"] = read_settings(s)
    return s.info["settings"]


def submission_id(value: Any) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise Invalid(f"submission_id: expected a UUID, got {value!r}") from None


class Work:
    """Assignment and judgments on one store; ``rng`` randomises sides and gold tasks."""

    def __init__(self, store: Store, rng: random.Random | None = None) -> None:
        self.store = store
        self.rng = rng or random.SystemRandom()

    # ---- handing out -----------------------------------------------------------

    def next(self, annotator_id: int) -> AssignmentView | None:
        """The annotator's oldest pending assignment, else a new one (a gold task at
        the configured rate), else None when there is nothing left for them."""
        for _ in range(3):
            try:
                with self.store.write() as s:
                    aid = self._pending(s, annotator_id) or self._assign(s, annotator_id)
                    return self._view(s, aid) if aid is not None else None
            except IntegrityError:  # the same annotator asked twice at once; retry
                continue
        raise Conflict("could not hand out a task (too many concurrent requests); try again")

    def _pending(self, s, annotator_id: int) -> int | None:
        return s.scalar(
            select(Assignment.id)
            .where(Assignment.annotator_id == annotator_id, Assignment.status == PENDING)
            .order_by(Assignment.id)
            .limit(1)
        )

    def _expire_stale(self, s) -> None:
        """Pending assignments older than ``claim_minutes`` expire; their slots reopen."""
        minutes = int(settings_of(s)["claim_minutes"])
        if minutes <= 0:
            return
        cutoff = utcnow() - timedelta(minutes=minutes)
        stale = s.execute(
            select(Assignment.id, Assignment.task_id, Task.is_gold)
            .join(Task, Task.id == Assignment.task_id)
            .where(Assignment.status == PENDING, Assignment.created_at < cutoff)
            .limit(100)
        ).all()
        for aid, task_id, is_gold in stale:
            moved = s.execute(
                update(Assignment)
                .where(Assignment.id == aid, Assignment.status == PENDING)
                .values(status=EXPIRED)
            )
            if moved.rowcount == 1 and not is_gold:
                s.execute(
                    update(Task).where(Task.id == task_id).values(n_claimed=Task.n_claimed - 1)
                )

    def _assign(self, s, annotator_id: int) -> int | None:
        self._expire_stale(s)
        not_mine = ~exists().where(
            Assignment.task_id == Task.id, Assignment.annotator_id == annotator_id
        )
        gold_rate = float(settings_of(s)["gold_rate"])
        if gold_rate > 0 and self.rng.random() < gold_rate:
            gold = s.scalars(
                select(Task.id).where(Task.is_gold.is_(True), not_mine).order_by(Task.id).limit(50)
            ).all()
            if gold:
                return self._create(s, self.rng.choice(gold), annotator_id)
        open_tasks = (
            select(Task.id)
            .where(Task.is_gold.is_(False), Task.n_claimed < Task.overlap, not_mine)
            .order_by(Task.n_claimed.desc(), Task.id)
            .limit(_CANDIDATES)
        )
        # Every annotator sees the same first candidates; while one waits on their row
        # locks, others may claim all of them (measured on PostgreSQL under load: "no
        # task left" with 190 open). A failed round means others made progress, so
        # select again; None only when no open task is left.
        for _ in range(_CLAIM_ROUNDS):
            candidates = s.scalars(open_tasks).all()
            if not candidates:
                return None
            for tid in candidates:
                claimed = s.execute(
                    update(Task)
                    .where(Task.id == tid, Task.n_claimed < Task.overlap)
                    .values(n_claimed=Task.n_claimed + 1)
                )
                if claimed.rowcount == 1:
                    return self._create(s, tid, annotator_id)
        raise Conflict("could not hand out a task (too many concurrent requests); try again")

    def _create(self, s, task_id: int, annotator_id: int) -> int:
        order = list(s.get_one(Task, task_id).response_ids)
        self.rng.shuffle(order)
        a = Assignment(task_id=task_id, annotator_id=annotator_id, shown_order=order)
        s.add(a)
        s.flush()
        return a.id

    def _own(self, s, annotator_id: int, assignment_id: int) -> Assignment:
        a = s.get(Assignment, assignment_id)
        if a is None or a.annotator_id != annotator_id:
            raise NotFound(f"no task {assignment_id} for you")
        return a

    def _view(self, s, assignment_id: int) -> AssignmentView:
        a = s.get_one(Assignment, assignment_id)
        task = s.get_one(Task, a.task_id)
        texts = {
            rid: text
            for rid, text in s.execute(
                select(Response.id, Response.text).where(Response.id.in_(a.shown_order))
            )
        }
        return AssignmentView(
            id=a.id,
            kind=task.kind,
            prompt=s.get_one(Prompt, task.prompt_id).conversation,
            responses=[texts[rid] for rid in a.shown_order],
            status=a.status,
            dimensions=list(settings_of(s)["dimensions"]),
            guideline_version=current_guideline_version(s),
            created_at=a.created_at,
        )

    def view(self, annotator_id: int, assignment_id: int) -> AssignmentView:
        with self.store.read() as s:
            self._own(s, annotator_id, assignment_id)
            return self._view(s, assignment_id)

    # ---- judgments ---------------------------------------------------------------

    def submit(
        self,
        annotator_id: int,
        assignment_id: int,
        submission: Any,
        action: str = JUDGE,
        answer: Any = None,
        reason: Any = None,
        time_spent_ms: Any = None,
        guideline_version: Any = None,
        then_next: bool = False,
    ) -> SubmitResult:
        """Record a judgment, skip or flag once: the same ``submission`` id again
        returns the first result with ``duplicate=True``. Returns after the commit.

        ``then_next`` also hands out the annotator's next assignment in the same
        transaction (one commit, one disk flush, one round trip less)."""
        sid = submission_id(submission)
        if action not in ACTIONS:
            raise Invalid(f"action: expected one of {', '.join(ACTIONS)}, got {action!r}")
        reason = check_reason(action, reason)
        ms = check_time(time_spent_ms)
        for _ in range(2):
            try:
                with self.store.write() as s:
                    result = self._submit(
                        s, annotator_id, assignment_id, sid, action, answer, reason, ms,
                        guideline_version,
                    )  # fmt: skip
                    if then_next:
                        aid = self._pending(s, annotator_id) or self._assign(s, annotator_id)
                        view = self._view(s, aid) if aid is not None else None
                        result = dataclasses.replace(result, next=view)
                    return result
            except IntegrityError:  # a concurrent submit of the same id committed first
                continue
        raise Conflict(f"submission {sid} could not be recorded; try again")

    def _duplicate(self, s, sid: str, annotator_id: int, assignment_id: int) -> SubmitResult | None:
        j = s.scalar(select(Judgment).where(Judgment.id == sid))
        if j is None:
            return None
        if j.annotator_id != annotator_id or j.assignment_id != assignment_id:
            raise Conflict(f"submission id {sid} was already used for another task")
        return SubmitResult(sid, assignment_id, duplicate=True)

    def _submit(
        self, s, annotator_id, assignment_id, sid, action, answer, reason, ms, guideline_version
    ) -> SubmitResult:
        dup = self._duplicate(s, sid, annotator_id, assignment_id)
        if dup is not None:
            return dup
        a = self._own(s, annotator_id, assignment_id)
        task = s.get_one(Task, a.task_id)
        checked = None
        if action == JUDGE:
            dims = list(settings_of(s)["dimensions"])
            checked = check_answer(task.kind, len(task.response_ids), dims, answer)
        version = self._guideline_version(s, guideline_version)
        moved = s.execute(
            update(Assignment)
            .where(Assignment.id == a.id, Assignment.status == PENDING)
            .values(status=STATUS_OF_ACTION[action])
        )
        if moved.rowcount != 1:
            dup = self._duplicate(s, sid, annotator_id, assignment_id)  # a retry raced us
            if dup is not None:
                return dup
            if a.status == EXPIRED:
                raise Conflict(
                    "this task expired (left open longer than the project allows) and went "
                    "to someone else; go to the next"
                )
            raise Conflict("this task was already answered (from another page?); go to the next")
        if action != JUDGE and not task.is_gold:  # the slot goes back to other annotators
            s.execute(update(Task).where(Task.id == task.id).values(n_claimed=Task.n_claimed - 1))
        if ms is None:
            ms = max(0, int((utcnow() - a.created_at).total_seconds() * 1000))
        s.add(
            Judgment(
                id=sid,
                assignment_id=a.id,
                task_id=task.id,
                annotator_id=annotator_id,
                action=action,
                shown_order=list(a.shown_order),
                answer=checked,
                reason=reason,
                guideline_version=version,
                time_spent_ms=ms,
            )
        )
        s.flush()
        return SubmitResult(sid, a.id, duplicate=False)

    def _guideline_version(self, s, value: Any) -> int | None:
        current = current_guideline_version(s)
        if value is None or value == "":
            return current
        try:
            version = int(value)
        except (TypeError, ValueError):
            raise Invalid(f"guideline_version: expected an integer, got {value!r}") from None
        if s.get(Guideline, version) is None:
            raise Invalid(f"guideline_version: no version {version} (current: {current})")
        return version

    def undo(self, annotator_id: int) -> int:
        """Retract the annotator's newest live judgment; its task is pending again.
        Returns the assignment id."""
        with self.store.write() as s:
            j = s.scalar(
                select(Judgment)
                .where(Judgment.annotator_id == annotator_id, live_judgment())
                .order_by(Judgment.created_at.desc(), Judgment.id.desc())
                .limit(1)
            )
            if j is None:
                raise NotFound("nothing to undo")
            a = s.get_one(Assignment, j.assignment_id)
            task = s.get_one(Task, a.task_id)
            s.add(Retraction(judgment_id=j.id))
            if a.status in (SKIPPED, FLAGGED) and not task.is_gold:
                s.execute(
                    update(Task).where(Task.id == task.id).values(n_claimed=Task.n_claimed + 1)
                )
            a.status = PENDING
            return a.id

    def judgment(self, annotator_id: int, judgment_id: str) -> dict[str, Any]:
        with self.store.read() as s:
            j = s.get(Judgment, str(judgment_id)[:64])
            if j is None or j.annotator_id != annotator_id:
                raise NotFound(f"no judgment {judgment_id} of yours")
            retracted = s.get(Retraction, j.id) is not None
            return _judgment_dict(j, retracted)

    def judgments(self, annotator_id: int, limit: int = 100) -> list[dict[str, Any]]:
        with self.store.read() as s:
            rows = s.execute(
                select(Judgment, Retraction.judgment_id)
                .outerjoin(Retraction, Retraction.judgment_id == Judgment.id)
                .where(Judgment.annotator_id == annotator_id)
                .order_by(Judgment.created_at.desc(), Judgment.id.desc())
                .limit(limit)
            ).all()
            return [_judgment_dict(j, r is not None) for j, r in rows]

    def progress(self, annotator_id: int) -> Progress:
        with self.store.read() as s:
            counts = {
                status: n
                for status, n in s.execute(
                    select(Assignment.status, func.count())
                    .where(Assignment.annotator_id == annotator_id)
                    .group_by(Assignment.status)
                )
            }
            not_mine = ~exists().where(
                Assignment.task_id == Task.id, Assignment.annotator_id == annotator_id
            )
            available = s.scalar(
                select(func.count())
                .select_from(Task)
                .where(Task.is_gold.is_(False), Task.n_claimed < Task.overlap, not_mine)
            )
            total = s.scalar(select(func.sum(Task.overlap)).where(Task.is_gold.is_(False)))
            done = s.scalar(
                select(func.count())
                .select_from(Assignment)
                .join(Task, Task.id == Assignment.task_id)
                .where(Assignment.status == DONE, Task.is_gold.is_(False))
            )
        return Progress(
            done=counts.get(DONE, 0),
            skipped=counts.get(SKIPPED, 0),
            flagged=counts.get(FLAGGED, 0),
            pending=counts.get(PENDING, 0),
            available=available or 0,
            project_done=done or 0,
            project_total=total or 0,
        )


def _judgment_dict(j: Judgment, retracted: bool) -> dict[str, Any]:
    return {
        "id": j.id,
        "assignment_id": j.assignment_id,
        "action": j.action,
        "answer": j.answer,
        "reason": j.reason,
        "guideline_version": j.guideline_version,
        "time_spent_ms": j.time_spent_ms,
        "created_at": j.created_at.isoformat(),
        "retracted": retracted,
    }

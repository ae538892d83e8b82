"""Annotators and logins: argon2id password hashes, one-time invite links, sessions.

Tokens (session cookies, invite links) are random 256-bit strings; the database
keeps only their sha256, so reading the database does not let anyone log in.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select

from rlhfkit.feedback.store.db import Store
from rlhfkit.feedback.store.errors import Conflict, Invalid, LoginFailed, NotFound
from rlhfkit.feedback.store.schema import Annotator, Invite, Session, utcnow

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")
MIN_PASSWORD, MAX_PASSWORD = 8, 1024
SESSION_TTL = timedelta(days=7)
INVITE_TTL = timedelta(days=7)
_LOGIN_FAILED = "wrong name or password"


def fast_hasher() -> PasswordHasher:
    """Cheap argon2id parameters, for tests only (the hash records its parameters,
    so a server with default settings still verifies these)."""
    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@dataclass(frozen=True)
class AnnotatorInfo:
    id: int
    name: str
    is_admin: bool


def _info(a: Annotator) -> AnnotatorInfo:
    return AnnotatorInfo(a.id, a.name, a.is_admin)


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_password(password: str) -> None:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise Invalid(f"password: expected {MIN_PASSWORD} to {MAX_PASSWORD} characters")


class Accounts:
    """Annotator accounts of one store."""

    def __init__(self, store: Store, hasher: PasswordHasher | None = None) -> None:
        self.store = store
        self.hasher = hasher or PasswordHasher()
        self._dummy = self.hasher.hash(secrets.token_hex(8))  # equal work for unknown names

    def create(
        self, name: str, *, password: str | None = None, is_admin: bool = False
    ) -> AnnotatorInfo:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise Invalid(
                "name: expected 1-100 characters: letters, digits and _ . @ - "
                f"(starting with a letter or digit), got {name!r}"
            )
        if password is not None:
            check_password(password)
        hashed = self.hasher.hash(password) if password is not None else None
        with self.store.write() as s:
            if s.scalar(select(Annotator.id).where(Annotator.name == name)) is not None:
                raise Conflict(f"an annotator named {name!r} already exists")
            a = Annotator(name=name, password_hash=hashed, is_admin=is_admin, active=True)
            s.add(a)
            s.flush()
            return _info(a)

    def list(self) -> list[AnnotatorInfo]:
        with self.store.read() as s:
            return [_info(a) for a in s.scalars(select(Annotator).order_by(Annotator.id))]

    def get(self, name: str) -> AnnotatorInfo:
        with self.store.read() as s:
            a = s.scalar(select(Annotator).where(Annotator.name == name))
            if a is None:
                raise NotFound(f"no annotator named {name!r}")
            return _info(a)

    def set_password(self, annotator_id: int, password: str) -> None:
        check_password(password)
        hashed = self.hasher.hash(password)
        with self.store.write() as s:
            a = s.get(Annotator, annotator_id)
            if a is None:
                raise NotFound(f"no annotator {annotator_id}")
            a.password_hash = hashed

    def invite(self, annotator_id: int, ttl: timedelta = INVITE_TTL) -> str:
        """A one-time login token for ``/invite/<token>``."""
        token = secrets.token_urlsafe(32)
        with self.store.write() as s:
            if s.get(Annotator, annotator_id) is None:
                raise NotFound(f"no annotator {annotator_id}")
            s.add(Invite(id=token_id(token), annotator_id=annotator_id, expires_at=utcnow() + ttl))
        return token

    def invite_owner(self, token: str) -> AnnotatorInfo:
        """Who an unused, unexpired invite is for (it stays unused)."""
        with self.store.read() as s:
            inv = s.get(Invite, token_id(token))
            if inv is None or inv.used_at is not None or inv.expires_at <= utcnow():
                raise NotFound("this invite link is unknown, used or expired")
            return _info(s.get_one(Annotator, inv.annotator_id))

    def redeem(self, token: str, new_password: str | None = None) -> tuple[AnnotatorInfo, str]:
        """Use an invite (once): optionally set a password; returns a session token."""
        if new_password:
            check_password(new_password)
        hashed = self.hasher.hash(new_password) if new_password else None
        with self.store.write() as s:
            inv = s.get(Invite, token_id(token))
            now = utcnow()
            if inv is None or inv.used_at is not None or inv.expires_at <= now:
                raise NotFound("this invite link is unknown, used or expired")
            inv.used_at = now
            a = s.get_one(Annotator, inv.annotator_id)
            if not a.active:
                raise NotFound("this invite link is unknown, used or expired")
            if hashed:
                a.password_hash = hashed
            return _info(a), self._new_session(s, a.id)

    def login(self, name: str, password: str) -> tuple[AnnotatorInfo, str]:
        with self.store.read() as s:
            a = s.scalar(select(Annotator).where(Annotator.name == name))
            info = _info(a) if a is not None else None
            hashed = a.password_hash if a is not None and a.active else None
        try:
            ok = self.hasher.verify(hashed or self._dummy, password or "")
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or hashed is None or info is None:
            raise LoginFailed(_LOGIN_FAILED)
        with self.store.write() as s:
            return info, self._new_session(s, info.id)

    def _new_session(self, s, annotator_id: int) -> str:
        token = secrets.token_urlsafe(32)
        now = utcnow()
        s.execute(delete(Session).where(Session.expires_at <= now))
        s.add(Session(id=token_id(token), annotator_id=annotator_id, expires_at=now + SESSION_TTL))
        return token

    def session(self, token: str | None) -> AnnotatorInfo | None:
        """The annotator logged in with this session token, or None."""
        if not token or len(token) > 200:
            return None
        with self.store.read() as s:
            row = s.execute(
                select(Annotator.id, Annotator.name, Annotator.is_admin, Session.expires_at)
                .join(Session, Session.annotator_id == Annotator.id)
                .where(Session.id == token_id(token), Annotator.active.is_(True))
            ).first()
        if row is None or row.expires_at <= utcnow():
            return None
        return AnnotatorInfo(row.id, row.name, row.is_admin)

    def logout(self, token: str) -> None:
        with self.store.write() as s:
            s.execute(delete(Session).where(Session.id == token_id(token)))

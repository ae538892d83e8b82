"""The web app's protections: session cookies, CSRF tokens, security headers,
request size limits.

- Sessions: a random token in an ``HttpOnly; SameSite=Lax`` cookie (``Secure``
  behind TLS); the database keeps its sha256.
- CSRF: every state-changing request carries a token, in the form field
  ``csrf`` or the ``X-CSRF-Token`` header: ``HMAC(secret, session token)`` once
  logged in, ``HMAC(secret, pre-login cookie)`` on the login and invite forms.
  The secret is the project's, kept in the database, so tokens survive restarts.
- Headers: a strict Content-Security-Policy (scripts and styles only from this
  server, no inline code), ``nosniff``, no framing, no referrer.
- Size: bodies above ``max_body`` bytes are refused with 413, whether or not
  they announce a Content-Length.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "rk_session"
PRE_COOKIE = "rk_pre"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


class Csrf:
    """CSRF tokens bound to a session (or pre-login) cookie by the project secret."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def token(self, cookie: str, purpose: str = "session") -> str:
        msg = f"{purpose}:{cookie}".encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()

    def check(self, cookie: str | None, given: str | None, purpose: str = "session") -> bool:
        if not cookie or not given or len(given) > 128:
            return False
        return hmac.compare_digest(self.token(cookie, purpose), given)


def new_cookie_value() -> str:
    return secrets.token_urlsafe(32)


def cookie_options(secure: bool) -> dict[str, Any]:
    return {"httponly": True, "samesite": "lax", "secure": secure, "path": "/"}


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response, and ``Cache-Control: no-store``
    to everything but static assets."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuses request bodies larger than ``max_body`` bytes with 413."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_body + 1
                if declared > self.max_body:
                    await self._refuse(send)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = f"request body too large (limit {self.max_body} bytes)".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

"""What every route needs: the store's services, the logged-in annotator, CSRF
checks and page rendering (Jinja2 with autoescaping: model text is always text)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from argon2 import PasswordHasher
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

from rlhfkit.feedback.service.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    PRE_COOKIE,
    SESSION_COOKIE,
    Csrf,
)
from rlhfkit.feedback.store import Accounts, AnnotatorInfo, Store, Work
from rlhfkit.feedback.store.errors import StoreError

HERE = Path(__file__).parent
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False})  # raw HTML is escaped


class LoginRequired(Exception):
    """No valid session: pages redirect to the login form, the API answers 401."""


class CsrfFailed(StoreError):
    status = 403

    def __init__(self) -> None:
        super().__init__("missing or invalid CSRF token; reload the page and try again")


class AdminOnly(StoreError):
    status = 404

    def __init__(self) -> None:
        super().__init__("not found")


def render_markdown(text: str) -> Markup:
    return Markup(_markdown.render(text))  # markdown-it escapes raw HTML (html=False)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["markdown"] = render_markdown
    return env


@dataclass
class Services:
    store: Store
    accounts: Accounts
    work: Work
    csrf: Csrf
    secure_cookies: bool
    env: Environment

    @classmethod
    def build(
        cls, store: Store, hasher: PasswordHasher | None, secure_cookies: bool, work: Work | None
    ) -> Services:
        return cls(
            store=store,
            accounts=Accounts(store, hasher),
            work=work or Work(store),
            csrf=Csrf(store.secret_key()),
            secure_cookies=secure_cookies,
            env=_environment(),
        )


def services(request: Request) -> Services:
    return request.app.state.services


def current_user(request: Request) -> AnnotatorInfo:
    user = services(request).accounts.session(request.cookies.get(SESSION_COOKIE))
    if user is None:
        raise LoginRequired
    return user


def current_admin(request: Request) -> AnnotatorInfo:
    user = current_user(request)
    if not user.is_admin:
        raise AdminOnly
    return user


def session_csrf(request: Request) -> str:
    return services(request).csrf.token(request.cookies.get(SESSION_COOKIE, ""))


def check_csrf(request: Request, form_value: Any = None, purpose: str = "session") -> None:
    """The request's CSRF token (form field or header) must match its cookie."""
    cookie = request.cookies.get(SESSION_COOKIE if purpose == "session" else PRE_COOKIE)
    given = form_value if isinstance(form_value, str) else request.headers.get(CSRF_HEADER)
    if not services(request).csrf.check(cookie, given, purpose):
        raise CsrfFailed


async def checked_form(request: Request, purpose: str = "session") -> dict[str, Any]:
    """The POSTed form, after its CSRF token was checked."""
    form = await request.form()
    data = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    check_csrf(request, data.get(CSRF_FIELD), purpose)
    return data


async def session_form(request: Request) -> dict[str, Any]:
    return await checked_form(request, "session")


async def pre_login_form(request: Request) -> dict[str, Any]:
    return await checked_form(request, "pre")


# Form bodies are read (and their CSRF token checked) in the event loop; the
# endpoints taking them are plain functions, run in the thread pool.
SessionForm = Annotated[dict[str, Any], Depends(session_form)]
PreLoginForm = Annotated[dict[str, Any], Depends(pre_login_form)]


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    svc = services(request)
    user = context.pop("user", None)
    html = svc.env.get_template(template).render(
        user=user,
        csrf=session_csrf(request) if user is not None else context.pop("csrf", ""),
        **context,
    )
    return HTMLResponse(html, status_code=status)

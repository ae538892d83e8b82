"""Annotator pages: log in (password or invite), label, skip / flag, undo, guidelines."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from rlhfkit.data.types import MARGIN_LABELS
from rlhfkit.feedback.service.context import (
    PreLoginForm,
    SessionForm,
    current_user,
    page,
    services,
)
from rlhfkit.feedback.service.security import (
    PRE_COOKIE,
    SESSION_COOKIE,
    cookie_options,
    new_cookie_value,
)
from rlhfkit.feedback.store import AnnotatorInfo, get_guidelines
from rlhfkit.feedback.store.errors import Invalid, LoginFailed
from rlhfkit.feedback.store.schema import JUDGE, PAIRWISE, PENDING
from rlhfkit.feedback.store.validate import CHOICES

router = APIRouter()

MARGINS = [(label, label.replace("_", " ")) for label in MARGIN_LABELS]
CHOICE_TEXT = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both bad"}
CHOICE_KEYS = {"A": "a", "B": "b", "tie": "t", "both_bad": "x"}


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _pre_login_page(request: Request, template: str, status: int = 200, **ctx: Any) -> Response:
    """A form shown before login: its CSRF token is bound to a fresh pre-login cookie."""
    svc = services(request)
    pre = request.cookies.get(PRE_COOKIE) or new_cookie_value()
    response = page(request, template, status, csrf=svc.csrf.token(pre, "pre"), **ctx)
    response.set_cookie(PRE_COOKIE, pre, **cookie_options(svc.secure_cookies))
    return response


def _logged_in(request: Request, token: str, user: AnnotatorInfo) -> Response:
    response = redirect("/admin" if user.is_admin else "/task")
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=7 * 24 * 3600,
        **cookie_options(services(request).secure_cookies),
    )
    response.delete_cookie(PRE_COOKIE, path="/")
    return response


@router.get("/")
def home(request: Request) -> Response:
    return redirect("/task")


@router.get("/healthz")
def healthz() -> dict[str, bool]:
    return {"ok": True}


@router.get("/login")
def login_form(request: Request) -> Response:
    return _pre_login_page(request, "login.html")


@router.post("/login")
def login(request: Request, form: PreLoginForm) -> Response:
    try:
        user, token = services(request).accounts.login(
            form.get("name", "")[:100], form.get("password", "")[:1024]
        )
    except LoginFailed as e:
        return _pre_login_page(request, "login.html", 401, error=str(e), name=form.get("name", ""))
    return _logged_in(request, token, user)


@router.get("/invite/{token}")
def invite_form(request: Request, token: str) -> Response:
    user = services(request).accounts.invite_owner(token)
    return _pre_login_page(request, "invite.html", name=user.name, token=token)


@router.post("/invite/{token}")
def invite(request: Request, token: str, form: PreLoginForm) -> Response:
    try:
        user, session = services(request).accounts.redeem(token, form.get("password") or None)
    except Invalid as e:
        name = services(request).accounts.invite_owner(token).name
        return _pre_login_page(request, "invite.html", 422, name=name, token=token, error=str(e))
    return _logged_in(request, session, user)


@router.post("/logout")
def logout(request: Request, form: SessionForm) -> Response:
    services(request).accounts.logout(request.cookies.get(SESSION_COOKIE, ""))
    response = redirect("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/task")
def next_task(request: Request) -> Response:
    user = current_user(request)
    view = services(request).work.next(user.id)
    saved = request.query_params.get("saved", "")[:36]
    if view is None:
        progress = services(request).work.progress(user.id)
        return page(request, "done.html", user=user, progress=progress, saved=saved)
    url = f"/task/{view.id}" + (f"?saved={saved}" if saved else "")
    return redirect(url)


@router.get("/task/{assignment_id}")
def task_page(request: Request, assignment_id: int) -> Response:
    import uuid

    user = current_user(request)
    svc = services(request)
    view = svc.work.view(user.id, assignment_id)
    if view.status != PENDING:
        return redirect("/task")
    template = "pairwise.html" if view.kind == PAIRWISE else "ranking.html"
    return page(
        request,
        template,
        user=user,
        task=view,
        submission_id=str(uuid.uuid4()),
        progress=svc.work.progress(user.id),
        margins=MARGINS,
        choices=[(c, CHOICE_TEXT[c], CHOICE_KEYS[c]) for c in CHOICES],
        saved=request.query_params.get("saved", "")[:36],
        error=request.query_params.get("error", "")[:300],
    )


def answer_from_form(kind: str, k: int, dimensions: list[str], form: dict[str, str]) -> dict:
    """Form fields (``<dim>_choice``, ``<dim>_margin`` or ``<dim>_rank_<i>``) as an answer;
    the store validates it."""
    answer: dict[str, Any] = {}
    for dim in dimensions:
        if kind == PAIRWISE:
            answer[dim] = {
                "choice": form.get(f"{dim}_choice"),
                "margin": form.get(f"{dim}_margin") or None,
            }
        else:
            ranks: list[Any] = []
            for i in range(k):
                raw = form.get(f"{dim}_rank_{i}", "")
                ranks.append(int(raw) if raw.isdigit() and len(raw) < 3 else raw)
            answer[dim] = ranks
    return answer


@router.post("/task/{assignment_id}")
def submit(request: Request, assignment_id: int, form: SessionForm) -> Response:
    user = current_user(request)
    svc = services(request)
    action = form.get("action", JUDGE)
    answer = None
    if action == JUDGE:
        view = svc.work.view(user.id, assignment_id)
        answer = answer_from_form(view.kind, len(view.responses), view.dimensions, form)
    try:
        result = svc.work.submit(
            user.id,
            assignment_id,
            form.get("submission_id"),
            action=action,
            answer=answer,
            reason=form.get("reason"),
            time_spent_ms=form.get("time_spent_ms"),
            guideline_version=form.get("guideline_version"),
            then_next=True,
        )
    except Invalid as e:
        from urllib.parse import quote

        return redirect(f"/task/{assignment_id}?error={quote(str(e)[:300])}")
    if result.next is None:
        return redirect(f"/task?saved={result.judgment_id}")
    return redirect(f"/task/{result.next.id}?saved={result.judgment_id}")


@router.post("/undo")
def undo(request: Request, form: SessionForm) -> Response:
    user = current_user(request)
    assignment_id = services(request).work.undo(user.id)
    return redirect(f"/task/{assignment_id}")


@router.get("/guidelines")
def guidelines(request: Request) -> Response:
    user = current_user(request)
    version = request.query_params.get("version")
    g = get_guidelines(
        services(request).store, int(version) if version and version.isdigit() else None
    )
    return page(request, "guidelines.html", user=user, guidelines=g)


@router.get("/me/judgments")
def my_judgments(request: Request) -> Response:
    user = current_user(request)
    rows = services(request).work.judgments(user.id, limit=200)
    return page(request, "judgments.html", user=user, judgments=rows)

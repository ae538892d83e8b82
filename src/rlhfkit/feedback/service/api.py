"""The JSON API (scripts, load tests, the pages' data): the same checks as the pages.

Bodies are read in the event loop; everything that touches the database runs in
the thread pool (the endpoints are plain functions). POSTs must be ``application/json`` (a cross-site page cannot send that without
a CORS preflight, which this server never grants) and, once logged in, carry
the session's CSRF token in ``X-CSRF-Token`` (from ``GET /api/session``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from rlhfkit.feedback.service.context import check_csrf, current_user, services, session_csrf
from rlhfkit.feedback.service.security import SESSION_COOKIE, cookie_options
from rlhfkit.feedback.store import AssignmentView
from rlhfkit.feedback.store.errors import Invalid

router = APIRouter(prefix="/api")


async def json_body(request: Request) -> dict[str, Any]:
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise Invalid("expected a JSON body (Content-Type: application/json)")
    try:
        body = await request.json()
    except ValueError:
        raise Invalid("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Invalid("expected a JSON object")
    return body


JsonBody = Annotated[dict[str, Any], Depends(json_body)]  # read in the event loop


def _assignment(view: AssignmentView) -> dict[str, Any]:
    out = asdict(view)
    out["created_at"] = view.created_at.isoformat()
    return out


@router.post("/login")
def login(request: Request, body: JsonBody) -> JSONResponse:
    svc = services(request)
    user, token = svc.accounts.login(str(body.get("name", ""))[:100], str(body.get("password", "")))
    response = JSONResponse({"annotator": user.name, "csrf_token": svc.csrf.token(token)})
    response.set_cookie(
        SESSION_COOKIE, token, max_age=7 * 24 * 3600, **cookie_options(svc.secure_cookies)
    )
    return response


@router.get("/session")
def session(request: Request) -> dict[str, Any]:
    user = current_user(request)
    return {"annotator": user.name, "is_admin": user.is_admin, "csrf_token": session_csrf(request)}


@router.post("/logout")
def logout(request: Request, body: JsonBody) -> dict[str, bool]:
    current_user(request)
    check_csrf(request)
    services(request).accounts.logout(request.cookies.get(SESSION_COOKIE, ""))
    return {"ok": True}


@router.post("/next")
def next_assignment(request: Request, body: JsonBody) -> dict[str, Any]:
    user = current_user(request)
    check_csrf(request)
    view = services(request).work.next(user.id)
    return {"assignment": _assignment(view) if view is not None else None}


@router.get("/assignments/{assignment_id}")
def assignment(request: Request, assignment_id: int) -> dict[str, Any]:
    user = current_user(request)
    return _assignment(services(request).work.view(user.id, assignment_id))


@router.post("/assignments/{assignment_id}/judgment")
def judge(request: Request, assignment_id: int, body: JsonBody) -> dict[str, Any]:
    user = current_user(request)
    check_csrf(request)
    result = services(request).work.submit(
        user.id,
        assignment_id,
        body.get("submission_id"),
        action=body.get("action", "judge"),
        answer=body.get("answer"),
        reason=body.get("reason"),
        time_spent_ms=body.get("time_spent_ms"),
        guideline_version=body.get("guideline_version"),
        then_next=body.get("next") is True,
    )
    out: dict[str, Any] = {"judgment_id": result.judgment_id, "duplicate": result.duplicate}
    if body.get("next") is True:
        out["next"] = _assignment(result.next) if result.next is not None else None
    return out


@router.post("/undo")
def undo(request: Request, body: JsonBody) -> dict[str, int]:
    user = current_user(request)
    check_csrf(request)
    return {"assignment_id": services(request).work.undo(user.id)}


@router.get("/judgments")
def judgments(request: Request, limit: int = 100) -> dict[str, Any]:
    user = current_user(request)
    return {"judgments": services(request).work.judgments(user.id, limit=max(1, min(limit, 1000)))}


@router.get("/judgments/{judgment_id}")
def judgment(request: Request, judgment_id: str) -> dict[str, Any]:
    user = current_user(request)
    return services(request).work.judgment(user.id, judgment_id)


@router.get("/progress")
def progress(request: Request) -> dict[str, Any]:
    user = current_user(request)
    p = services(request).work.progress(user.id)
    return {**asdict(p), "fraction": p.fraction}

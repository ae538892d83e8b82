"""Admin pages: annotators (create, invite, progress), flags, agreement and gold
accuracy, the policy leaderboard, guidelines, and a streamed export download."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.background import BackgroundTask

from rlhfkit.data.types import DIMENSIONS
from rlhfkit.feedback import reports
from rlhfkit.feedback.export import CONSENSUS, FORMATS, export_labels
from rlhfkit.feedback.service.context import SessionForm, current_admin, page, services
from rlhfkit.feedback.service.pages import redirect
from rlhfkit.feedback.store import add_guidelines, get_guidelines
from rlhfkit.feedback.store.errors import Invalid
from rlhfkit.feedback.store.guidelines import guideline_versions

router = APIRouter(prefix="/admin")


def _dimension(request: Request) -> str:
    dim = request.query_params.get("dimension", "helpfulness")
    if dim not in DIMENSIONS:
        raise Invalid(f"dimension: expected one of {', '.join(DIMENSIONS)}, got {dim!r}")
    return dim


def _annotators_page(
    request: Request, user, invited: str | None = None, token: str = ""
) -> Response:
    """The annotators page; after creating or inviting someone, their invite link once."""
    store = services(request).store
    return page(
        request,
        "admin/index.html",
        user=user,
        annotators=reports.annotator_rows(store),
        settings=store.settings(),
        invite_url=f"{request.base_url}invite/{token}" if token else None,
        invited=invited,
    )


@router.get("")
def index(request: Request) -> Response:
    return _annotators_page(request, current_admin(request))


@router.post("/annotators")
def create_annotator(request: Request, form: SessionForm) -> Response:
    user = current_admin(request)
    accounts = services(request).accounts
    password = form.get("password") or None
    created = accounts.create(
        form.get("name", ""), password=password, is_admin=form.get("is_admin") == "on"
    )
    token = accounts.invite(created.id) if password is None else ""
    return _annotators_page(request, user, created.name, token)


@router.post("/annotators/{annotator_id}/invite")
def invite(request: Request, annotator_id: int, form: SessionForm) -> Response:
    user = current_admin(request)
    accounts = services(request).accounts
    token = accounts.invite(annotator_id)
    name = next((a.name for a in accounts.list() if a.id == annotator_id), "?")
    return _annotators_page(request, user, name, token)


@router.get("/agreement")
def agreement(request: Request) -> Response:
    user = current_admin(request)
    return page(
        request,
        "admin/agreement.html",
        user=user,
        agreement=reports.agreement(services(request).store),
    )


@router.get("/leaderboard")
def leaderboard(request: Request) -> Response:
    user = current_admin(request)
    dim = _dimension(request)
    rows = reports.policy_leaderboard(services(request).store, dim)
    return page(
        request,
        "admin/leaderboard.html",
        user=user,
        rows=rows,
        dimension=dim,
        dimensions=DIMENSIONS,
    )


@router.get("/flags")
def flags(request: Request) -> Response:
    user = current_admin(request)
    return page(
        request, "admin/flags.html", user=user, flags=reports.flags(services(request).store)
    )


@router.get("/guidelines")
def guidelines_form(request: Request) -> Response:
    user = current_admin(request)
    store = services(request).store
    return page(
        request,
        "admin/guidelines.html",
        user=user,
        guidelines=get_guidelines(store),
        versions=guideline_versions(store),
    )


@router.post("/guidelines")
def save_guidelines(request: Request, form: SessionForm) -> Response:
    current_admin(request)
    add_guidelines(services(request).store, form.get("text", ""))
    return redirect("/admin/guidelines")


@router.get("/export")
def export(request: Request) -> Response:
    """The export as a download (written to a temporary file, streamed, then deleted)."""
    current_admin(request)
    q = request.query_params
    fmt, consensus = q.get("format", "preference"), q.get("consensus", "majority")
    if fmt not in FORMATS or consensus not in CONSENSUS:
        raise Invalid(f"format: one of {FORMATS}; consensus: one of {CONSENSUS}")
    dim = _dimension(request)
    tmp = Path(tempfile.mkdtemp(prefix="rlhfkit-export-")) / "labels.jsonl"
    export_labels(services(request).store, tmp, format=fmt, dimension=dim, consensus=consensus)  # type: ignore[arg-type]

    def cleanup() -> None:
        tmp.unlink(missing_ok=True)
        tmp.parent.rmdir()

    return FileResponse(
        tmp,
        media_type="application/x-ndjson",
        filename=f"{fmt}-{dim}-{consensus}.jsonl",
        background=BackgroundTask(cleanup),
    )

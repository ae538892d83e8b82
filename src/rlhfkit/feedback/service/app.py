"""The labeling web app: ``create_app(store)`` returns a FastAPI (ASGI) app.

Server-rendered pages (Jinja2, autoescaped), one small script and one style
sheet served from this package (no CDN), a JSON API under ``/api``, admin pages
under ``/admin``. See :mod:`rlhfkit.feedback.service.security` for the protections.
"""

from __future__ import annotations

import ipaddress
import logging

from argon2 import PasswordHasher
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from rlhfkit.feedback.service import admin, api, pages
from rlhfkit.feedback.service.context import HERE, LoginRequired, Services, page
from rlhfkit.feedback.service.security import BodyLimit, SecurityHeaders
from rlhfkit.feedback.store import Store, Work
from rlhfkit.feedback.store.errors import StoreError

log = logging.getLogger("rlhfkit")
MAX_BODY = 64 * 1024  # judgments are a few hundred bytes; guidelines are capped at 100k chars
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]", "testserver"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(
    store: Store,
    *,
    hasher: PasswordHasher | None = None,
    secure_cookies: bool = False,
    max_body: int = 4 * MAX_BODY,
    allowed_hosts: list[str] | None = None,
    work: Work | None = None,
) -> FastAPI:
    """The app for ``store``. ``allowed_hosts`` guards against DNS rebinding (the
    Host header must name this server; default: loopback names only)."""
    app = FastAPI(title="rlhfkit labeling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.services = Services.build(store, hasher, secure_cookies, work)
    app.include_router(pages.router)
    app.include_router(api.router)
    app.include_router(admin.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or LOOPBACK_NAMES)
    app.add_middleware(BodyLimit, max_body=max_body)
    app.add_middleware(SecurityHeaders)

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        if wants_json(request):
            return JSONResponse({"error": "not logged in"}, status_code=401)
        return pages.redirect("/login")

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> Response:
        if wants_json(request):
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return page(request, "error.html", exc.status, message=str(exc), code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid request')}"
        if wants_json(request):
            return JSONResponse({"error": message}, status_code=422)
        return page(request, "error.html", 422, message=message, code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        if wants_json(request) or request.url.path.startswith("/static/"):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        return page(
            request, "error.html", exc.status_code, message=exc.detail, code=exc.status_code
        )

    return app

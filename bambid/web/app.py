"""The Klein application: pages, the JSON API, static files and ``/ws``.

Routes are thin: they render a template or call a domain object and encode
the answer. Errors under ``/api/`` are JSON ``{"error": code, "message": ...}``
with the right status; elsewhere they are HTML pages. No traceback ever
reaches a client.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import jinja2
from autobahn.twisted.resource import WebSocketResource
from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.static import File
from werkzeug.exceptions import HTTPException

from bambid import __version__
from bambid.jsonutil import dumps
from bambid.web.assets import assets_dir, bootstrap_dir
from bambid.web.health import PROTOCOL_VERSION, HealthReporter
from bambid.ws.protocol import BambidWebSocketFactory

#: Static files are revalidated on every use (a cheap 304 from Last-Modified):
#: their URLs carry no version, so after an upgrade a browser must not mix old
#: and new scripts.
STATIC_CACHE_CONTROL = b"no-cache"
#: ``GET /api/levels`` changes only with the configuration (a restart).
LEVELS_CACHE_CONTROL = b"public, max-age=60"


def json_response(request: IRequest, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return dumps(body).encode("utf-8")


class StaticFile(File):
    """Static files, revalidated on use; directory listings are refused."""

    def directoryListing(self) -> IResource:
        return self.childNotFound

    def render_GET(self, request: IRequest) -> Any:
        request.setHeader(b"Cache-Control", STATIC_CACHE_CONTROL)
        return super().render_GET(request)


class ApiError(Exception):
    """Raised by a route to answer ``{"error": code, "message": ..., **extra}``
    with ``status`` (JSON under ``/api/``, an error page elsewhere)."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def read_json(request: IRequest) -> dict[str, Any]:
    """The request body as a JSON object, or ``ApiError`` 400/415. The site
    has already enforced the body-size cap."""
    content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
    try:
        body = json.loads(request.content.read() if request.content else b"")
    except ValueError:
        raise ApiError(400, "bad_request", "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "body must be a JSON object")
    return body


class WebApp:
    """Every HTTP route of bambid. Feature modules add their routes to ``app``
    (an instance-level ``Klein``) with ``render`` and the error handling here."""

    _log = Logger()

    def __init__(
        self,
        templates: jinja2.Environment,
        health: HealthReporter,
        ws_factory: BambidWebSocketFactory,
    ) -> None:
        self.templates = templates
        self.health = health
        self.ws_resource = WebSocketResource(ws_factory)
        self.static = StaticFile(str(assets_dir() / "static"))
        self.bootstrap = StaticFile(str(bootstrap_dir()))
        #: Extra template context for every page (e.g. the signed-in person),
        #: computed per request by feature modules.
        self.context_providers: list[Callable[[IRequest], Awaitable[dict[str, Any]]]] = []
        #: The level table (``bambid.profiles.gates.level_table``) that ``GET /api/levels``
        #: serves; service.py sets it.
        self.levels: list[dict[str, Any]] = []
        app = self.app = Klein()
        app.route("/", methods=["GET", "HEAD"])(self.home)
        app.route("/api/levels", methods=["GET", "HEAD"])(self.levels_api)
        app.route("/health", methods=["GET", "HEAD"])(self.health_page)
        app.route("/health/api", methods=["GET", "HEAD"])(self.health_api)
        app.route("/ws")(self.websocket)
        app.route("/static/", branch=True)(self.static_files)
        app.route("/vendor/bootstrap/", branch=True)(self.bootstrap_files)
        app.handle_errors(ApiError)(self.api_error)
        app.handle_errors(HTTPException)(self.http_error)
        app.handle_errors(Exception)(self.internal_error)

    def resource(self) -> IResource:
        resource: IResource = self.app.resource()
        return resource

    async def page(self, request: IRequest, name: str, status: int = 200, **context: Any) -> bytes:
        """Render a page with the context every page gets (providers) added."""
        for provider in self.context_providers:
            context = {**(await provider(request)), **context}
        return self.render(request, name, status=status, **context)

    def render(self, request: IRequest, name: str, status: int = 200, **context: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        page = self.templates.get_template(name).render(
            version=__version__, protocol=PROTOCOL_VERSION, **context
        )
        return page.encode("utf-8")

    # -- pages --------------------------------------------------------------------

    async def home(self, request: IRequest) -> bytes:
        return await self.page(request, "home.html", title="bambid")

    async def levels_api(self, request: IRequest) -> bytes:
        """``{levels: [...]}``, public; the same for everyone, so cacheable for a minute."""
        body = json_response(request, 200, {"levels": self.levels})
        request.setHeader(b"Cache-Control", LEVELS_CACHE_CONTROL)
        return body

    async def health_page(self, request: IRequest) -> bytes:
        report = await self.health.report()
        status = 200 if report["status"] == "ok" else 503
        return self.render(request, "health.html", status=status, title="Health", report=report)

    async def health_api(self, request: IRequest) -> bytes:
        report = await self.health.report()
        return json_response(request, 200 if report["status"] == "ok" else 503, report)

    # -- transport and files -----------------------------------------------------

    def websocket(self, request: IRequest) -> IResource:
        return self.ws_resource

    def static_files(self, request: IRequest) -> IResource:
        return self.static

    def bootstrap_files(self, request: IRequest) -> IResource:
        return self.bootstrap

    # -- errors ---------------------------------------------------------------------

    def api_error(self, request: IRequest, failure: Failure) -> bytes:
        error: ApiError = failure.value
        if error.status == 429 and "retry_after" in error.extra:
            request.setHeader(b"Retry-After", str(max(1, round(error.extra["retry_after"]))))
        if _wants_json(request):
            body = {"error": error.code, "message": error.message, **error.extra}
            return json_response(request, error.status, body)
        return self.render(
            request,
            "error.html",
            status=error.status,
            title="Sorry",
            error=_Described(error.message),
        )

    def http_error(self, request: IRequest, failure: Failure) -> bytes:
        error: HTTPException = failure.value
        status = error.code or 500
        if _wants_json(request):
            code = (error.name or "error").lower().replace(" ", "_")
            return json_response(request, status, {"error": code, "message": error.description})
        template = "404.html" if status == 404 else "error.html"
        return self.render(request, template, status=status, title=error.name, error=error)

    def internal_error(self, request: IRequest, failure: Failure) -> bytes:
        self._log.failure("unhandled error serving {path}", failure, path=request.path)
        if _wants_json(request):
            return json_response(
                request, 500, {"error": "internal", "message": "internal server error"}
            )
        return self.render(request, "error.html", status=500, title="Server error", error=None)


@attrs.frozen
class _Described:
    description: str


def _wants_json(request: IRequest) -> bool:
    return bool(request.path.startswith(b"/api/") or request.path.startswith(b"/health/api"))

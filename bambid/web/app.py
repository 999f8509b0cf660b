"""The Klein application: pages, the JSON API, static files and ``/ws``.

Routes are thin: they render a template or call a domain object and encode
the answer. Errors under ``/api/`` are JSON ``{"error": code, "message": ...}``
with the right status; elsewhere they are HTML pages. No traceback ever
reaches a client.
"""

from __future__ import annotations

from typing import Any

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

STATIC_MAX_AGE = 3600


def json_response(request: IRequest, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return dumps(body).encode("utf-8")


class StaticFile(File):
    """Static files with a cache lifetime; directory listings are refused."""

    def directoryListing(self) -> IResource:
        return self.childNotFound

    def render_GET(self, request: IRequest) -> Any:
        request.setHeader(b"Cache-Control", f"public, max-age={STATIC_MAX_AGE}".encode())
        return super().render_GET(request)


class WebApp:
    """Every HTTP route of bambid."""

    app = Klein()
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

    def resource(self) -> IResource:
        resource: IResource = self.app.resource()
        return resource

    def render(self, request: IRequest, name: str, status: int = 200, **context: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        page = self.templates.get_template(name).render(
            version=__version__, protocol=PROTOCOL_VERSION, **context
        )
        return page.encode("utf-8")

    # -- pages --------------------------------------------------------------------

    @app.route("/", methods=["GET", "HEAD"])
    def home(self, request: IRequest) -> bytes:
        return self.render(request, "home.html", title="bambid")

    @app.route("/health", methods=["GET", "HEAD"])
    async def health_page(self, request: IRequest) -> bytes:
        report = await self.health.report()
        status = 200 if report["status"] == "ok" else 503
        return self.render(request, "health.html", status=status, title="Health", report=report)

    @app.route("/health/api", methods=["GET", "HEAD"])
    async def health_api(self, request: IRequest) -> bytes:
        report = await self.health.report()
        return json_response(request, 200 if report["status"] == "ok" else 503, report)

    # -- transport and files -----------------------------------------------------

    @app.route("/ws")
    def websocket(self, request: IRequest) -> IResource:
        return self.ws_resource

    @app.route("/static/", branch=True)
    def static_files(self, request: IRequest) -> IResource:
        return self.static

    @app.route("/vendor/bootstrap/", branch=True)
    def bootstrap_files(self, request: IRequest) -> IResource:
        return self.bootstrap

    # -- errors ---------------------------------------------------------------------

    @app.handle_errors(HTTPException)
    def http_error(self, request: IRequest, failure: Failure) -> bytes:
        error: HTTPException = failure.value
        status = error.code or 500
        if _wants_json(request):
            code = (error.name or "error").lower().replace(" ", "_")
            return json_response(request, status, {"error": code, "message": error.description})
        template = "404.html" if status == 404 else "error.html"
        return self.render(request, template, status=status, title=error.name, error=error)

    @app.handle_errors(Exception)
    def internal_error(self, request: IRequest, failure: Failure) -> bytes:
        self._log.failure("unhandled error serving {path}", failure, path=request.path)
        if _wants_json(request):
            return json_response(
                request, 500, {"error": "internal", "message": "internal server error"}
            )
        return self.render(request, "error.html", status=500, title="Server error", error=None)


def _wants_json(request: IRequest) -> bool:
    return bool(request.path.startswith(b"/api/") or request.path.startswith(b"/health/api"))

"""The twisted.web ``Site`` with bambid's site-wide rules.

Every response carries the security headers below. A request body larger than
``max_body_size`` is never buffered: its bytes are discarded as they arrive and
the request is answered ``413`` (JSON) without reaching any route. The
site's ``gate`` (maintenance mode, when set) may answer a request before any
route runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from bambid.jsonutil import dumps
from bambid.web.proxies import TrustedProxies

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; media-src 'self' blob:; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)

SECURITY_HEADERS: dict[bytes, bytes] = {
    b"Content-Security-Policy": CONTENT_SECURITY_POLICY.encode(),
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"strict-origin-when-cross-origin",
    b"X-Frame-Options": b"DENY",
    b"Cross-Origin-Opener-Policy": b"same-origin",
    b"Permissions-Policy": b"camera=(), microphone=(), geolocation=()",
}


_log = Logger()

#: Decides, before any route runs, whether a request is served: None to serve
#: it now, or a Deferred firing True (serve it) or False (the gate answered
#: it, e.g. maintenance mode's 503: ``bambid.maintenance.MaintenanceGate``).
RequestGate = Callable[[Request], "Deferred[bool] | None"]


class BambidRequest(Request):
    """A request that enforces the body cap and sets the security headers."""

    _body_received = 0
    _body_too_large = False

    @property
    def _site(self) -> BambidSite:
        # ``self.site`` is only set inside process(); the channel has it from the start.
        site: BambidSite = self.channel.site  # type: ignore[attr-defined]  # set by Site
        return site

    @property
    def _limit(self) -> int:
        return self._site.max_body_size

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit:
            self._body_too_large = True
            length = 0  # buffer nothing
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._body_too_large:
            return
        self._body_received += len(data)
        if self._body_received > self._limit:
            self._body_too_large = (
                True  # what was buffered (<= the cap) is dropped with the request
            )
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.setHeader(name, value)
        if self._site.public_https:
            self.setHeader(b"Strict-Transport-Security", b"max-age=31536000")
        if self._body_too_large:
            self._refuse_body()
            return
        gate = self._site.gate
        held = gate(self) if gate is not None else None
        if held is None:
            super().process()
            return
        held.addCallbacks(self._gate_passed, self._gate_failed)

    def _gate_passed(self, serve: bool) -> None:
        """Serve the request the gate let through (else the gate answered it)."""
        if serve:
            super().process()

    def _gate_failed(self, failure: Failure) -> None:
        _log.failure("request gate failed for {path}", failure, path=self.path)
        self.setResponseCode(500)
        self.finish()

    def _refuse_body(self) -> None:
        self.setResponseCode(413)
        self.setHeader(b"Content-Type", b"application/json")
        self.setHeader(b"Connection", b"close")
        limit = self._limit
        body = dumps(
            {"error": "payload_too_large", "message": f"request body exceeds {limit} bytes"}
        )
        self.write(body.encode())
        self.finish()


class BambidSite(Site):
    """The site for the Klein root resource, with the body cap and HSTS flag."""

    requestFactory = BambidRequest

    def __init__(
        self,
        resource: IResource,
        max_body_size: int,
        public_https: bool,
        proxies: TrustedProxies | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(resource, **kw)
        self.max_body_size = max_body_size
        self.public_https = public_https
        #: Whose X-Forwarded-For names the client (``bambid.web.proxies``).
        self.proxies = proxies or TrustedProxies()
        #: Set by the service (maintenance mode); see ``RequestGate``.
        self.gate: RequestGate | None = None

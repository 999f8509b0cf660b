"""``GET /metrics`` (Prometheus) and the HTTP status counting behind it.

``/metrics`` answers the registry of ``bambid.metrics.Metrics`` in the
Prometheus text format (OpenMetrics when the scraper asks for it). It is
served only with ``metrics.enabled`` (otherwise the route does not exist:
404), and only to a client whose address is in ``metrics.allow`` (CIDR
networks) or that sends ``Authorization: Bearer <metrics.token>`` (compared
in constant time; an empty token grants nothing). Anyone else gets ``403``
``{"error": "forbidden", ...}``. The address is the TCP peer's: behind a
reverse proxy it is the proxy's, so a request that carries ``Forwarded``,
``X-Forwarded-For`` or ``X-Real-IP`` (added by the proxy) is never let in
by its address, only by the token (docs/operations.md).

``counted(resource, observe)`` wraps the site's root resource and calls
``observe(status)`` as each response it renders finishes (requests whose
connection was lost first are not counted).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable

from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request
from zope.interface import implementer

from bambid.config import MetricsConfig
from bambid.metrics import Metrics
from bambid.web.app import WebApp, json_response
from bambid.web.auth_routes import client_address

#: Headers a reverse proxy adds: their presence voids the address allowlist.
PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-real-ip")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class MetricsRoutes:
    """The ``/metrics`` route and its access rule (see the module doc)."""

    def __init__(self, metrics: Metrics, config: MetricsConfig) -> None:
        self.metrics = metrics
        self.allow: list[Network] = [ipaddress.ip_network(n, strict=False) for n in config.allow]
        self.token = config.token.encode("utf-8")

    def allowed(self, request: IRequest) -> bool:
        address = None if forwarded(request) else peer_ip(request)
        if address is not None and any(address in network for network in self.allow):
            return True
        if not self.token:
            return False
        authorization = request.getHeader(b"authorization") or b""
        scheme, _, presented = authorization.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(presented.strip(), self.token)

    def scrape(self, request: IRequest) -> bytes:
        if not self.allowed(request):
            return json_response(
                request,
                403,
                {"error": "forbidden", "message": "metrics are not available to this client"},
            )
        accept = request.getHeader(b"accept")
        body, content_type = self.metrics.exposition(accept.decode("latin-1") if accept else None)
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return body


def install_metrics_routes(
    web: WebApp, metrics: Metrics, config: MetricsConfig
) -> MetricsRoutes | None:
    """Add ``GET /metrics`` to ``web`` unless ``config.enabled`` is false."""
    if not config.enabled:
        return None
    routes = MetricsRoutes(metrics, config)
    web.app.route("/metrics", methods=["GET", "HEAD"])(routes.scrape)
    return routes


def forwarded(request: IRequest) -> bool:
    """Whether a reverse proxy says it relayed the request for someone else."""
    return any(request.getHeader(name) is not None for name in PROXY_HEADERS)


def peer_ip(request: IRequest) -> Address | None:
    """The TCP peer's IP address (an IPv4-mapped IPv6 address as IPv4), or
    None for a non-IP transport."""
    try:
        address = ipaddress.ip_address(client_address(request).split("%", 1)[0])
    except ValueError:  # "local": a UNIX socket
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@implementer(IResource)
class _Counted:
    """Forwards everything to ``original`` (a leaf, like Klein's resource)
    and reports each finished response's status."""

    def __init__(self, original: IResource, observe: Callable[[int], object]) -> None:
        self.original = original
        self.observe = observe

    @property
    def isLeaf(self) -> bool:
        return bool(self.original.isLeaf)

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        return self.original.getChildWithDefault(name, request)

    def putChild(self, path: bytes, child: IResource) -> None:
        self.original.putChild(path, child)

    def render(self, request: Request) -> bytes | int:
        finished = request.notifyFinish()
        finished.addCallbacks(lambda _: self.observe(request.code), _lost)
        return self.original.render(request)


def _lost(failure: Failure) -> None:
    """The connection went away before the response finished: not counted."""


def counted(resource: IResource, observe: Callable[[int], object]) -> IResource:
    """``resource`` reporting each finished response's status to ``observe``."""
    return _Counted(resource, observe)

"""gzip for text responses.

``compressed(resource)`` wraps the site's root resource so that a response is
gzip-encoded when all of these hold:

- the client accepts gzip (``Accept-Encoding``; ``gzip;q=0`` refuses it);
- the request is not ``HEAD`` (answered with the plain headers) and not a
  WebSocket upgrade (``/ws``: the handshake is not an HTTP body; nothing
  here touches it);
- at the response's first write: its type is text (``text/*`` but not
  ``text/event-stream``, JSON, JavaScript, XML, SVG, ``+json`` and ``+xml``
  types, Prometheus' ``application/openmetrics-text``), its status has a body
  and is not ``206`` (a Range answer's bytes must be the ones asked for), it
  carries no ``Content-Encoding`` already and is not a download
  (``Content-Disposition: attachment``, such as ``/api/me/export``), its
  ``Content-Length``, when known, is from ``MIN_SIZE`` to ``MAX_SIZE`` bytes,
  and that first write is at most ``MAX_SIZE`` bytes.

Twisted's ``GzipEncoderFactory`` decides before the resource has set its
headers, so it encodes everything, audio and images included; the encoder
here is chosen per request but decides at the first ``write``, when the
status and headers are known (``twisted.web.server.Request.write`` hands it
the data before the headers go out). Every response of a compressible type
gets ``Vary: Accept-Encoding``, compressed or not, whatever the client
accepts, so that caches keep the two forms apart. A compressed response
loses its ``Content-Length`` (it is sent chunked).

Compression runs on the reactor thread at ``LEVEL``, so what it may take is
bounded by ``MAX_SIZE`` (256 KiB): a page or a JSON answer takes well under a
millisecond; the largest file compressed (Bootstrap's CSS, 230 kB to 31 kB)
about 10 ms on a small VPS core, once per browser: static files are
revalidated with bodiless ``304`` answers after the first load. Larger bodies
and downloads go out plain rather than hold the reactor (a data export can be
many megabytes). Static files announce their length and are written in
pieces of at most 64 KiB; the routes write their body at once. A response
that is compressed compresses every later write too (none of ours writes
more than ``MAX_SIZE`` after a first write that was not too large).
"""

from __future__ import annotations

import re
import zlib
from typing import Any

from twisted.web.iweb import IRequest, _IRequestEncoder, _IRequestEncoderFactory
from twisted.web.resource import EncodingResourceWrapper, IResource
from zope.interface import implementer

#: Bodies announced smaller than this stay plain (gzip would not pay).
MIN_SIZE = 512
#: Bodies announced larger than this, or a first write larger than this,
#: stay plain: compressing them would hold the reactor thread too long.
MAX_SIZE = 256 * 1024
#: zlib's default: most of level 9's ratio at a fraction of its time.
LEVEL = 6
_TEXT_TYPES = frozenset(
    {
        "application/json",
        "application/javascript",
        "application/ecmascript",
        "application/x-javascript",
        "application/xml",
        "application/openmetrics-text",
        "image/svg+xml",
    }
)
_NO_BODY = frozenset({204, 206, 304})
_CODING = re.compile(r"^\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*(?:;\s*q\s*=\s*([^\s;,]*))?")


def compressible(content_type: str) -> bool:
    """Whether a response of ``content_type`` (parameters allowed) is text
    worth compressing."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media.startswith("text/"):
        return media != "text/event-stream"
    return media in _TEXT_TYPES or media.endswith(("+json", "+xml"))


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip (RFC 9110 §12.5.3):
    ``gzip`` (or ``x-gzip``) with a non-zero weight, or ``*`` with a non-zero
    weight when gzip is not listed."""
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        match = _CODING.match(item)
        if match is None:
            continue
        try:
            weight = float(match.group(2)) if match.group(2) is not None else 1.0
        except ValueError:
            weight = 0.0
        weights[match.group(1).lower()] = weight
    for name in ("gzip", "x-gzip"):
        if name in weights:
            return weights[name] > 0
    return weights.get("*", 0.0) > 0


@implementer(_IRequestEncoderFactory)
class TextGzipEncoderFactory:
    """Gives each request that may be compressed an encoder that decides at
    the first write (see the module doc)."""

    def encoderForRequest(self, request: IRequest) -> _IRequestEncoder | None:
        if request.getHeader(b"upgrade") is not None:
            return None
        accept = request.getHeader(b"accept-encoding")
        gzip = (
            request.method != b"HEAD"
            and accept is not None
            and accepts_gzip(accept.decode("latin-1"))
        )
        return _TextGzipEncoder(request, gzip)


@implementer(_IRequestEncoder)
class _TextGzipEncoder:
    """Decides at the first write; with ``gzip`` false it only adds ``Vary``."""

    def __init__(self, request: IRequest, gzip: bool) -> None:
        self._request = request
        self._gzip = gzip
        self._compressor: Any = None  # zlib's compressor object, once decided
        self._decided = False

    def encode(self, data: bytes) -> bytes:
        if not self._decided:
            self._decide(len(data))
        if self._compressor is None:
            return data
        compressed: bytes = self._compressor.compress(data)
        return compressed

    def finish(self) -> bytes:
        # Called before the last (empty) write: a response that wrote nothing
        # must not decide to compress after its end.
        self._decided = True
        if self._compressor is None:
            return b""
        rest: bytes = self._compressor.flush()
        self._compressor = None
        return rest

    def _decide(self, first_write: int) -> None:
        self._decided = True
        request: Any = self._request
        headers = request.responseHeaders
        content_type = b",".join(headers.getRawHeaders(b"content-type", [])).decode("latin-1")
        if not compressible(content_type):
            return
        vary = headers.getRawHeaders(b"vary", [])
        if not any(b"accept-encoding" in v.lower() or v.strip() == b"*" for v in vary):
            headers.setRawHeaders(
                b"vary", [*vary, b"Accept-Encoding"] if vary else [b"Accept-Encoding"]
            )
        if not self._gzip or request.code in _NO_BODY or headers.hasHeader(b"content-encoding"):
            return
        if first_write > MAX_SIZE or _is_attachment(headers.getRawHeaders(b"content-disposition")):
            return
        length = headers.getRawHeaders(b"content-length")
        if length is not None:
            try:
                if not MIN_SIZE <= int(length[0]) <= MAX_SIZE:
                    return
            except ValueError:
                pass
        headers.removeHeader(b"content-length")
        headers.setRawHeaders(b"content-encoding", [b"gzip"])
        self._compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)


def _is_attachment(values: list[bytes] | None) -> bool:
    """Whether ``Content-Disposition`` values make the response a download."""
    return any(v.split(b";", 1)[0].strip().lower() == b"attachment" for v in values or ())


def compressed(resource: IResource) -> IResource:
    """``resource`` (the site's root) with text responses gzip-compressed."""
    wrapped: IResource = EncodingResourceWrapper(resource, [TextGzipEncoderFactory()])
    return wrapped

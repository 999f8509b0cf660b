"""gzip on a real service: text (HTML, JSON, JavaScript, CSS, the metrics
text) is compressed for a client that accepts it and decompresses to the
same bytes; audio, Range answers (206), HEAD, 304 and tiny bodies are not;
``Vary: Accept-Encoding`` is on every compressible type; a WebSocket still
opens when the handshake says ``Accept-Encoding: gzip``; a Prometheus scrape
(OpenMetrics) is compressed. On a small site of its own: downloads
(``Content-Disposition: attachment``) and bodies over ``MAX_SIZE`` go out
plain. Plus the two decisions alone: which types, and what
``Accept-Encoding`` allows."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from bambid.web.compression import MAX_SIZE, MIN_SIZE, accepts_gzip, compressed, compressible
from tests import wsclient
from tests.conftest import Running

GZIP = {"Accept-Encoding": "gzip, deflate, br"}


async def get(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """The raw response, through a bare ``Agent``: treq asks for gzip and
    decodes it by itself, which would hide what is tested here."""
    sent = Headers({k: [v] for k, v in (headers or {}).items()})
    response = await Agent(reactor).request(method.encode(), url.encode(), sent)
    body = await treq.content(response)
    found = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
    return response.code, found, body


def varies(headers: dict[str, str]) -> bool:
    return "accept-encoding" in headers.get("vary", "").lower()


@pytest.mark.parametrize(
    ("path", "media"),
    [
        ("/", "text/html"),
        ("/api/triggers", "application/json"),
        ("/static/js/chat.js", "javascript"),
        ("/static/css/chat.css", "text/css"),
        ("/vendor/bootstrap/css/bootstrap.min.css", "text/css"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_text_is_compressed_to_the_same_bytes(
    running: Running, path: str, media: str
) -> None:
    code, plain_headers, plain = await get(running.http + path)
    assert code == 200 and media in plain_headers["content-type"]
    assert "content-encoding" not in plain_headers
    assert varies(plain_headers)
    assert len(plain) >= MIN_SIZE
    code, headers, body = await get(running.http + path, headers=GZIP)
    assert code == 200
    assert headers["content-encoding"] == "gzip"
    assert varies(headers)
    assert "content-length" not in headers or int(headers["content-length"]) == len(body)
    assert gzip.decompress(body) == plain
    assert len(body) < len(plain)


@pytest_twisted.ensureDeferred
async def test_the_metrics_text_is_compressed(running: Running) -> None:
    code, headers, body = await get(running.http + "/metrics", headers={"Accept-Encoding": "gzip"})
    assert code == 200 and headers["content-encoding"] == "gzip"
    assert b"bambid_info" in gzip.decompress(body)


@pytest_twisted.ensureDeferred
async def test_a_prometheus_scrape_is_compressed(running: Running) -> None:
    scrape = {
        "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        "Accept-Encoding": "gzip",
    }
    code, headers, body = await get(running.http + "/metrics", headers=scrape)
    assert code == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert headers["content-encoding"] == "gzip"
    assert varies(headers)
    text = gzip.decompress(body)
    assert b"bambid_info" in text and text.endswith(b"# EOF\n")


# --- downloads and large bodies, on a site of their own -------------------------------------


@attrs.frozen
class Body:
    """A response: ``body`` as ``content_type`` in writes of ``piece`` bytes
    (0: all at once), after ``headers``."""

    body: bytes
    content_type: bytes
    piece: int = 0
    headers: dict[bytes, bytes] = attrs.field(factory=dict)


class Bodies(Resource):
    """A leaf (as the Klein app is) answering each path with its ``Body``."""

    isLeaf = True

    def __init__(self, bodies: dict[bytes, Body]) -> None:
        super().__init__()
        self.bodies = bodies

    def render_GET(self, request: Request) -> Any:
        answer = self.bodies[request.path]
        request.setHeader(b"Content-Type", answer.content_type)
        for name, value in answer.headers.items():
            request.setHeader(name, value)
        piece = answer.piece or len(answer.body)
        for start in range(0, len(answer.body), piece):
            request.write(answer.body[start : start + piece])
        request.finish()
        return NOT_DONE_YET


JSON_BODY = b'{"messages": [' + b",".join(b'"breathe in, breathe out"' for _ in range(400)) + b"]}"
BIG_BODY = b"relax and focus\n" * (MAX_SIZE // 16 + 1)
DOWNLOAD = b'attachment; filename="bambid-ann-2025-01-01.json"'


@pytest_twisted.async_yield_fixture
async def small_site() -> AsyncIterator[str]:
    json_type = b"application/json; charset=utf-8"
    length = str(len(BIG_BODY)).encode()
    bodies = {
        b"/json": Body(JSON_BODY, json_type),
        b"/export": Body(JSON_BODY, json_type, headers={b"Content-Disposition": DOWNLOAD}),
        b"/inline": Body(JSON_BODY, json_type, headers={b"Content-Disposition": b"inline"}),
        b"/big": Body(BIG_BODY, b"text/plain; charset=utf-8"),
        b"/announced": Body(BIG_BODY, b"text/plain", 4096, {b"Content-Length": length}),
    }
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(Site(compressed(Bodies(bodies))))
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    yield f"http://127.0.0.1:{address.port}"
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_downloads_and_large_bodies_go_out_plain(small_site: str) -> None:
    code, headers, body = await get(small_site + "/json", headers=GZIP)
    assert code == 200 and headers["content-encoding"] == "gzip"  # the same body, inline
    assert gzip.decompress(body) == JSON_BODY
    code, headers, body = await get(small_site + "/inline", headers=GZIP)
    assert headers["content-encoding"] == "gzip"
    assert len(BIG_BODY) > MAX_SIZE
    for path, sent in (("/export", JSON_BODY), ("/big", BIG_BODY), ("/announced", BIG_BODY)):
        code, headers, body = await get(small_site + path, headers=GZIP)
        assert code == 200, path
        assert "content-encoding" not in headers, path
        assert varies(headers), path  # a text type: caches still keep forms apart
        assert body == sent, path


@pytest_twisted.ensureDeferred
async def test_audio_is_never_compressed(running: Running) -> None:
    code, headers, audio = await get(running.http + "/api/tts?text=Breathe%20in.", headers=GZIP)
    assert code == 200
    assert headers["content-type"].startswith("audio/")
    assert "content-encoding" not in headers
    assert not varies(headers)
    clip = headers["x-bambid-audio-url"]
    code, headers, body = await get(running.http + clip, headers=GZIP)
    assert code == 200 and "content-encoding" not in headers
    assert body == audio


@pytest_twisted.ensureDeferred
async def test_range_head_revalidation_and_tiny_bodies_stay_plain(running: Running) -> None:
    url = running.http + "/static/js/chat.js"
    _, plain_headers, plain = await get(url)
    code, headers, body = await get(url, headers={**GZIP, "Range": "bytes=10-99"})
    assert code == 206
    assert "content-encoding" not in headers
    assert body == plain[10:100]
    code, headers, body = await get(url, method="HEAD", headers=GZIP)
    assert code == 200 and body == b""
    assert "content-encoding" not in headers
    modified = {**GZIP, "If-Modified-Since": plain_headers["last-modified"]}
    code, headers, body = await get(url, headers=modified)
    assert (code, body) == (304, b"")
    assert "content-encoding" not in headers
    # The favicon is an SVG (compressible) of fewer than MIN_SIZE bytes.
    code, headers, body = await get(running.http + "/static/img/favicon.svg", headers=GZIP)
    assert code == 200 and headers["content-type"] == "image/svg+xml"
    assert len(body) < MIN_SIZE and body.startswith(b"<svg")
    assert "content-encoding" not in headers
    assert varies(headers)


@pytest_twisted.ensureDeferred
async def test_a_client_that_refuses_gzip_gets_plain_text(running: Running) -> None:
    for refusal in ("identity", "gzip;q=0, deflate", "br", "*;q=0"):
        code, headers, body = await get(running.http + "/", headers={"Accept-Encoding": refusal})
        assert code == 200 and "content-encoding" not in headers, refusal
        assert body.startswith(b"<!doctype html>")
        assert varies(headers)


@pytest_twisted.ensureDeferred
async def test_websocket_opens_when_the_browser_accepts_gzip(running: Running) -> None:
    client = await wsclient.connect(
        running.ws, headers={"Accept-Encoding": "gzip, deflate, br, zstd"}
    )
    answer: dict[str, Any] = await client.request({"type": "hello"})
    assert answer["type"] == "welcome", answer
    client.sendClose()
    await client.closed


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/html; charset=utf-8", True),
        ("application/json", True),
        ("text/javascript", True),
        ("application/javascript; charset=utf-8", True),
        ("text/css", True),
        ("image/svg+xml", True),
        ("text/plain; version=0.0.4; charset=utf-8", True),
        ("application/xml", True),
        ("application/manifest+json", True),
        ("application/atom+xml", True),
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", True),
        ("text/event-stream", False),
        ("audio/mpeg", False),
        ("audio/wav", False),
        ("image/png", False),
        ("application/octet-stream", False),
        ("", False),
    ],
)
def test_compressible_types(content_type: str, expected: bool) -> None:
    assert compressible(content_type) is expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("GZIP", True),
        ("x-gzip", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip;q=0.0, *", False),
        ("*;q=0", False),
        ("deflate, br", False),
        ("identity", False),
        ("", False),
        ("gzip;q=bogus", False),
    ],
)
def test_accept_encoding(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected

"""The HTTP side over a real loopback port: pages, errors, headers, limits."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
import treq

from tests.conftest import Running


async def get(url: str, method: str = "GET", **kw: Any) -> tuple[int, dict[str, str], bytes]:
    response = await treq.request(method, url, **kw)
    body = await response.content()
    headers = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
    return response.code, headers, body


@pytest_twisted.ensureDeferred
async def test_home_page_is_served_with_security_headers(running: Running) -> None:
    code, headers, body = await get(running.http + "/")
    assert code == 200
    assert headers["content-type"].startswith("text/html")
    assert b"/static/js/connection.js" in body
    csp = headers["content-security-policy"]
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "strict-origin-when-cross-origin"


@pytest_twisted.ensureDeferred
async def test_static_files_and_bootstrap_are_served_locally(running: Running) -> None:
    code, headers, body = await get(running.http + "/static/js/connection.js")
    assert code == 200
    assert b"WebSocket" in body
    assert headers["cache-control"] == "no-cache"
    # Revalidation is cheap: an unchanged file answers 304 without a body.
    code, _, body = await get(
        running.http + "/static/js/connection.js",
        headers={"If-Modified-Since": headers["last-modified"]},
    )
    assert (code, body) == (304, b"")
    assert headers["x-content-type-options"] == "nosniff"
    code, _, body = await get(running.http + "/vendor/bootstrap/css/bootstrap.min.css")
    assert code == 200
    assert b"Bootstrap" in body[:400]
    code, _, _ = await get(running.http + "/vendor/bootstrap/js/bootstrap.bundle.min.js")
    assert code == 200


@pytest_twisted.ensureDeferred
async def test_static_directories_are_not_listed(running: Running) -> None:
    code, _, _ = await get(running.http + "/static/js/")
    assert code == 404


@pytest_twisted.ensureDeferred
async def test_unknown_page_gets_the_404_page(running: Running) -> None:
    code, headers, body = await get(running.http + "/no/such/page")
    assert code == 404
    assert headers["content-type"].startswith("text/html")
    assert b"Page not found" in body
    assert "content-security-policy" in headers


@pytest_twisted.ensureDeferred
async def test_unknown_api_path_gets_json_404(running: Running) -> None:
    code, headers, body = await get(running.http + "/api/nothing-here")
    assert code == 404
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"] == "not_found"


@pytest_twisted.ensureDeferred
async def test_wrong_method_is_405(running: Running) -> None:
    code, _, _ = await get(running.http + "/health/api", method="POST", data=b"{}")
    assert code == 405


@pytest_twisted.ensureDeferred
async def test_request_body_over_the_cap_is_413(running: Running) -> None:
    cap = running.service.config.server.max_body_size
    code, headers, body = await get(
        running.http + "/api/anything", method="POST", data=b"x" * (cap + 1)
    )
    assert code == 413
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"] == "payload_too_large"
    # A body at the cap is accepted (and then routed normally: no such API → 404).
    code, _, _ = await get(running.http + "/api/anything", method="POST", data=b"x" * cap)
    assert code == 404


@pytest_twisted.ensureDeferred
async def test_health_api_reports_storage_and_process(running: Running) -> None:
    code, headers, body = await get(running.http + "/health/api")
    assert code == 200
    assert headers["cache-control"] == "no-store"
    report = json.loads(body)
    assert report["status"] == "ok"
    assert report["storage"]["backend"] == "sqlite"
    assert report["storage"]["ok"] is True
    assert report["storage"]["latency_ms"] >= 0
    assert report["version"]
    assert report["uptime_s"] >= 0
    assert report["connections"] == 0
    assert report["memory_rss_bytes"] > 1_000_000


@pytest_twisted.ensureDeferred
async def test_health_page_renders(running: Running) -> None:
    code, _, body = await get(running.http + "/health")
    assert code == 200
    assert b"sqlite" in body


@pytest_twisted.ensureDeferred
async def test_health_is_503_when_storage_is_down(running: Running) -> None:
    await running.service.storage.close()
    code, _, body = await get(running.http + "/health/api")
    assert code == 503
    report = json.loads(body)
    assert report["status"] == "down"
    assert report["storage"]["ok"] is False
    assert "Traceback" not in body.decode()

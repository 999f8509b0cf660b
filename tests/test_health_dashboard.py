"""The ``/health`` dashboard: rendered by the server with every section (and
no inline script or style), ``/health/api`` with its ``fanout`` section and a
503 when storage fails its ping; in headless Chromium, health.js loads
without errors, re-renders the same rows from ``/health/api`` after its
10-second timer (the browser's clock is driven, not waited for), shows a
new value, and says so when the server is gone."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from playwright.sync_api import Browser, Page, expect
from twisted.internet import reactor

from bambid.metrics import TimedStorage
from bambid.service import BambidService
from bambid.storage.interface import StorageError
from tests.browsersupport import watch
from tests.conftest import Running, make_config
from tests.daemon import Daemon

ROWS = ["version", "uptime", "storage", "ai-backend", "ai-queue", "voice", "audio-cache"]
ROWS += ["connections", "fanout", "memory"]


class PingFails(TimedStorage):
    """The real storage, except that it cannot be reached."""

    async def ping(self) -> None:
        raise StorageError("database is locked")


async def get(url: str) -> tuple[int, dict[str, str], bytes]:
    response = await treq.get(url)
    body = await response.content()
    headers = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
    return response.code, headers, body


@pytest_twisted.ensureDeferred
async def test_the_page_renders_every_section(running: Running) -> None:
    code, headers, body = await get(running.http + "/health")
    assert code == 200 and headers["content-type"].startswith("text/html")
    page = body.decode()
    assert re.findall(r'data-row="([a-z-]+)"', page) == ROWS
    assert 'id="health-status" class="badge text-bg-success">ok<' in page
    assert "local (this process only)" in page
    assert '<script type="module" src="/static/js/health.js"></script>' in page
    # Without JavaScript the page reloads itself; with it, health.js polls.
    assert '<noscript><meta http-equiv="refresh" content="15"></noscript>' in page
    assert not re.search(r"<script(?![^>]*\bsrc=)", page), "inline script"
    assert not re.search(r"\sstyle=", page), "inline style"


@pytest_twisted.ensureDeferred
async def test_the_api_has_a_fanout_section(running: Running) -> None:
    code, _, body = await get(running.http + "/health/api")
    assert code == 200
    report = json.loads(body)
    assert report["fanout"] == {"mode": "local"}
    assert set(report) >= {"status", "uptime_s", "version", "storage", "ai", "voice"}


@pytest_twisted.ensureDeferred
async def test_a_storage_that_fails_its_ping_is_503(running: Running) -> None:
    running.service.health.storage = PingFails.around(running.service.storage, reactor)
    code, headers, body = await get(running.http + "/health/api")
    assert code == 503
    assert headers["cache-control"] == "no-store"
    report = json.loads(body)
    assert report["status"] == "down"
    assert report["storage"] == {
        "backend": "sqlite",
        "ok": False,
        "error": "StorageError: database is locked",
        "latency_ms": report["storage"]["latency_ms"],
    }
    code, _, body = await get(running.http + "/health")
    assert code == 503
    page = body.decode()
    assert 'class="badge text-bg-danger">down<' in page
    assert "down: StorageError: database is locked" in page


def rows_of(page: Page) -> list[Any]:
    return page.eval_on_selector_all(
        "#health-rows tr", "rows => rows.map(r => [r.dataset.row, r.cells[0].textContent])"
    )


@pytest.mark.slow
def test_the_dashboard_refreshes_itself(browser: Browser, tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        page = browser.new_page()
        problems, dialogs = watch(page)
        page.clock.install()
        page.goto(daemon.http + "/health")
        assert page.locator("#health-connections").inner_text() == "0"
        served = rows_of(page)
        assert [name for name, _ in served] == ROWS

        chat = browser.new_page()  # the chat page opens a WebSocket
        chat.goto(daemon.http + "/")
        chat.wait_for_selector("#connection-state[data-state=connected]", timeout=15000)

        page.clock.run_for(10_000)  # the page's timer, not real time
        expect(page.locator("#health-connections")).to_have_text("1", timeout=15000)
        assert page.locator("#health-updated").inner_text().startswith("Updated ")
        assert rows_of(page) == served  # health.js renders what the template did
        assert page.locator("#health-status").inner_text() == "ok"
        assert "local (this process only)" in page.locator("[data-row=fanout]").inner_text()
        assert page.locator("#health-problem").is_hidden()
        assert (problems, dialogs) == ([], [])

        chat.close()
        assert daemon.terminate() == 0
        page.clock.run_for(10_000)
        page.wait_for_selector("#health-problem:not(.d-none)", timeout=15000)
        assert "Cannot reach bambid" in page.locator("#health-problem").inner_text()
        assert page.locator("#health-connections").inner_text() == "1"  # kept
        page.close()


@pytest_twisted.ensureDeferred
async def test_backend_credentials_never_reach_the_health_report(tmp_path: Path) -> None:
    """``/health`` is public: an API key in a backend URL's userinfo or query
    must not be shown there (nor on the page)."""
    config = make_config(tmp_path)
    config = attrs.evolve(
        config,
        ai=attrs.evolve(
            config.ai,
            url="http://user:s3cr3t@127.0.0.1:9/v1?key=k3y",
            fallback_urls=["http://token@127.0.0.1:9/v1"],
        ),
    )
    service = BambidService(config, reactor, base_dir=tmp_path)
    service.startService()
    await service.started
    try:
        base = f"http://127.0.0.1:{service.port.getHost().port}"  # type: ignore[union-attr]
        for path in ("/health/api", "/health"):
            _, _, body = await get(base + path)
            for secret in (b"s3cr3t", b"k3y", b"token@", b"user:"):
                assert secret not in body, (path, secret)
        report = json.loads((await get(base + "/health/api"))[2])
        urls = [backend["url"] for backend in report["ai"]["backends"]]
        assert urls == ["http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"]
    finally:
        await service.stopService()

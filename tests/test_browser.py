"""A real headless Chromium (Debian's, driven by Playwright) loads the home page
(the chat: web/static/js/chat.js, chat-render.js, connection.js) and sees the
WebSocket connected, with no CSP violations or script errors; and sees it
disconnected, retrying, when the server stops. The chat itself is tested in
test_browser_chat.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests.browsersupport import watch
from tests.daemon import Daemon

pytestmark = pytest.mark.slow


def test_home_page_connects(browser: Browser, tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        page = browser.new_page()
        problems, dialogs = watch(page)
        page.goto(daemon.http + "/")
        state = page.locator("#connection-state")
        page.wait_for_selector("#connection-state[data-state=connected]", timeout=15000)
        assert state.inner_text() == "connected"
        assert "bambid" in page.locator("#connection-detail").inner_text()
        # Bootstrap's stylesheet really applied (served locally, allowed by the CSP).
        assert (
            page.evaluate("getComputedStyle(document.querySelector('.navbar')).display") == "flex"
        )
        page.screenshot(path=str(tmp_path / "home.png"))
        assert (problems, dialogs) == ([], [])
        page.close()


def test_page_shows_disconnected_when_the_server_stops(browser: Browser, tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        page = browser.new_page()
        page.goto(daemon.http + "/")
        page.wait_for_selector("#connection-state[data-state=connected]", timeout=15000)
        assert daemon.terminate() == 0
        page.wait_for_selector("#connection-state[data-state=disconnected]", timeout=15000)
        # The first reason stays while the retries fail (nothing listens any more).
        detail = page.locator("#connection-detail").inner_text()
        assert "server restarting" in detail
        assert "retrying in" in detail or "reconnecting" in detail
        page.close()

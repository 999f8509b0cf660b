"""The privacy notice and the settings page in a real headless Chromium
(Debian's, driven by Playwright) against a real daemon subprocess: the notice
on a new account's first visit, answered from the keyboard, gone after a
reload and on another device, shown as chosen on /settings; the notice of a
signed-out visitor; a notification switch and the volume changed on /settings
reaching another page of the same account at once (another settings page and
the chat page's ``bambid:preferences`` event)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browsersupport import CSP_RECORDER, watch
from tests.daemon import Daemon

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
WAIT = 15000  # ms, for anything that crosses the network
#: Runs before the page's scripts: records CSP violations and the
#: ``bambid:preferences`` events the page announces.
WATCH_SCRIPT = (
    CSP_RECORDER
    + """
window.__prefs = [];
window.addEventListener("bambid:preferences", (e) => window.__prefs.push(e.detail));
"""
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with Daemon.start(tmp_path_factory.mktemp("settings")) as daemon:
        yield daemon


class Pages:
    """Browser contexts (one per device) and their pages, each watched."""

    def __init__(self, browser: Browser, server: Daemon) -> None:
        self.browser = browser
        self.server = server
        self.contexts: list[BrowserContext] = []
        self.watched: list[tuple[Page, list[str], list[str]]] = []

    def device(self, name: str | None = None, register: bool = True) -> BrowserContext:
        """A fresh context; with ``name``, signed up (or, not ``register``, logged in)."""
        context = self.browser.new_context(viewport={"width": 1280, "height": 800})
        self.contexts.append(context)
        if name is not None:
            path = "/api/auth/register" if register else "/api/auth/login"
            answer = context.request.post(
                self.server.http + path, data={"username": name, "password": PASSWORD}
            )
            assert answer.status in (200, 201), answer.text()
        return context

    def open(self, context: BrowserContext, path: str) -> Page:
        page = context.new_page()
        problems, dialogs = watch(page, WATCH_SCRIPT)
        self.watched.append((page, problems, dialogs))
        page.goto(self.server.http + path)
        return page

    def assert_clean(self) -> None:
        for page, problems, dialogs in self.watched:
            assert problems == [], problems
            assert dialogs == [], dialogs
            if not page.is_closed():
                assert page.evaluate("window.__csp") == []

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(browser: Browser, server: Daemon) -> Iterator[Pages]:
    opened = Pages(browser, server)
    yield opened
    opened.close()


def settled(page: Page) -> None:
    """Wait until the privacy notice has decided whether to show itself."""
    expect(page.locator("#consent")).to_have_attribute("data-checked", "true", timeout=WAIT)


def test_the_notice_asks_a_new_account_once(pages: Pages, shots: Path) -> None:
    device = pages.device("Ada")
    page = pages.open(device, "/")
    notice = page.get_by_role("region", name="What bambid keeps")
    expect(notice).to_be_visible(timeout=WAIT)
    for words in (
        "Public chat messages",
        "Companion conversations",
        "Voice and trigger events",
        "links you click",
    ):
        expect(notice).to_contain_text(words)
    page.screenshot(path=str(shots / "consent-notice.png"))
    # The chat stays usable: the notice covers nothing.
    expect(page.locator("#message-input")).to_be_visible(timeout=WAIT)
    keep = notice.get_by_role("button", name="Keep analytics")
    keep.focus()  # reachable from the keyboard, answered with it
    page.keyboard.press("Enter")
    expect(notice).to_be_hidden(timeout=WAIT)

    page.reload()
    settled(page)
    expect(page.locator("#consent")).to_be_hidden()

    settings = pages.open(device, "/settings")
    expect(settings.get_by_label("Keep analytics", exact=True)).to_be_checked()
    expect(settings.locator("#settings-privacy-decided")).to_contain_text("Chosen")
    settings.screenshot(path=str(shots / "settings.png"), full_page=True)

    # Another device (nothing in its localStorage): the server knows the choice.
    laptop = pages.device("Ada", register=False)
    other = pages.open(laptop, "/")
    settled(other)
    expect(other.locator("#consent")).to_be_hidden()
    pages.assert_clean()


def test_the_notice_of_a_visitor_who_is_not_signed_in(pages: Pages) -> None:
    device = pages.device()
    page = pages.open(device, "/")
    notice = page.get_by_role("region", name="What bambid keeps")
    expect(notice).to_be_visible(timeout=WAIT)
    expect(notice).to_contain_text("No analytics are kept about visitors")
    expect(notice).to_contain_text("a guest cannot download or delete them")
    expect(notice.get_by_role("button", name="Keep analytics")).to_have_count(0)
    notice.get_by_role("button", name="Got it").click()
    expect(notice).to_be_hidden()
    page.reload()
    settled(page)
    expect(page.locator("#consent")).to_be_hidden()
    pages.assert_clean()


def test_a_change_on_settings_shows_on_the_other_pages(pages: Pages) -> None:
    device = pages.device("Bea")
    first = pages.open(device, "/settings")
    second = pages.open(device, "/settings")
    chat = pages.open(device, "/")
    expect(chat.locator("#connection-state")).to_have_attribute(
        "data-state", "connected", timeout=WAIT
    )
    sound = "Sound with notifications"
    expect(first.get_by_label(sound)).to_be_checked()
    expect(second.get_by_label(sound)).to_be_checked()

    first.get_by_label(sound).uncheck()
    expect(first.locator("#settings-status")).to_have_text("Saved.", timeout=WAIT)
    expect(second.get_by_label(sound)).not_to_be_checked(timeout=WAIT)
    chat.wait_for_function(
        "window.__prefs.some((d) => d.notifications && d.notifications.sound === false)",
        timeout=WAIT,
    )
    found: Any = chat.evaluate("window.__prefs.at(-1).notifications")
    assert found == {"mentions": True, "sound": False, "level_up": True}

    first.get_by_label("Volume").fill("35")
    expect(second.locator("#settings-voice-volume-out")).to_have_text("35 %", timeout=WAIT)
    expect(second.get_by_label("Volume")).to_have_value("35")

    # A reload shows what the server has.
    second.reload()
    expect(second.get_by_label(sound)).not_to_be_checked()
    expect(second.get_by_label("Volume")).to_have_value("35")
    pages.assert_clean()

"""The levels made visible (web/static/js/levels.js, web/templates/_levels.html) in a real
headless Chromium (Debian's, driven by Playwright) against a real daemon subprocess whose
``[xp]`` table comes from the environment: levels at 10, 30, 60 and 100 XP unlocking the
collar, spirals, session history and triggers (not the default order), 10 XP a chat message.

XP is awarded by the server for real chat messages posted in the page; the badge, its bar,
the Levels panel, the celebration and the locks of the effect and trigger panels follow the
``xp.update`` and ``level.up`` frames. Guests and readers see the table and why they do not
earn. No timing assertions: every wait is for a condition (the celebration's own timer
included). Screenshots go to ``shots``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from playwright.sync_api import Browser, Locator, Page, WebSocket, expect

from bambid import config as configuration
from bambid.profiles.gates import level_table
from bambid.profiles.xp import XpTable
from tests.daemon import Daemon
from tests.test_browser_chat import CONTRAST_JS, FakeServer
from tests.test_browser_companion import DAEMON_ENV, People, Tab

pytestmark = pytest.mark.slow

WAIT = 15000  # ms
#: The celebration hides itself after 10 s: a generous wait for that.
AUTO_HIDE_WAIT = 30000
XP_ENV = {
    "BAMBID_XP_LEVELS": "10,30,60,100",
    "BAMBID_XP_UNLOCKS": "collar,spirals,session_history,triggers",
    "BAMBID_XP_CHAT_MESSAGE": "10",
}
#: What the server's table is for XP_ENV (bambid.profiles.gates.level_table).
LEVELS = level_table(XpTable.from_config(configuration.load(None, XP_ENV).xp))

PANEL_TEXT = [
    ".levels-summary",
    ".levels-progress-text",
    ".levels-item-level",
    ".levels-item-xp",
    ".levels-item-state",
    ".levels-item-label",
    ".levels-item-desc",
]
BANNER_TEXT = [".levels-celebration-title", ".levels-celebration-detail"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with Daemon.start(
        tmp_path_factory.mktemp("levels"),
        env={**DAEMON_ENV, **XP_ENV, "BAMBID_LIMITS_CHAT_BURST": "50"},
    ) as daemon:
        yield daemon


@pytest.fixture
def people(browser: Browser) -> Iterator[People]:
    found = People(browser)
    yield found
    found.close()


@attrs.define
class LevelTab(Tab):
    """A chat page that also keeps the WebSocket frames it received."""

    received_frames: list[dict[str, Any]] = attrs.Factory(list)

    def received(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.received_frames if f["type"] == kind]

    def say(self, text: str) -> None:
        """Post ``text`` in the room, typing into the message box."""
        box = self.page.locator("#message-input")
        box.fill(text)
        box.press("Enter")

    def open_levels(self) -> Locator:
        self.page.locator("#levels-button").click()
        return shown(self.page)

    def close_levels(self) -> None:
        self.page.keyboard.press("Escape")
        expect(self.page.locator("#levels-panel")).to_be_hidden()


def shown(page: Page) -> Locator:
    """The Levels panel once it is open (its slide over, the focus inside)."""
    panel = page.locator("#levels-panel")
    expect(panel).to_have_class(re.compile(r"(^|\s)show(\s|$)"))
    page.wait_for_function(
        "document.getElementById('levels-panel').contains(document.activeElement)"
    )
    return panel


def open_chat(
    people: People, server: Daemon, name: str | None, guest: bool = False, **options: Any
) -> LevelTab:
    """A page of the chat for ``name`` (an account; a guest with ``guest``; None: signed
    out), connected and welcomed."""
    received: list[dict[str, Any]] = []

    def before(page: Page) -> None:
        def record(ws: WebSocket) -> None:
            ws.on("framereceived", lambda p: received.append(json.loads(str(p))))

        page.on("websocket", record)

    context = people.person(server, None if guest else name, **options)
    if guest:
        answer = context.request.post(server.http + "/api/auth/guest", data={"name": name})
        assert answer.status == 201, answer.text()
    tab = people.tab(context, server, before=before, ready=False)
    page = tab.page
    expect(page.locator("#connection-state")).to_have_attribute(
        "data-state", "connected", timeout=WAIT
    )
    expect(page.locator("#levels-button")).to_be_visible(timeout=WAIT)
    return LevelTab(page, tab.problems, tab.dialogs, received)


def items(page: Page) -> list[dict[str, str]]:
    found: list[dict[str, str]] = page.evaluate(
        """() => [...document.querySelectorAll("#levels-list > li")].map((li) => ({
          level: li.dataset.level,
          state: li.dataset.state,
          current: li.getAttribute("aria-current") || "",
          head: li.querySelector(".levels-item-head").textContent.replace(/\\s+/g, " ").trim(),
          label: li.querySelector(".levels-item-label").textContent,
          desc: li.querySelector(".levels-item-desc")?.textContent || "",
        }))"""
    )
    return found


def fill_width(page: Page) -> str:
    width: str = page.evaluate("document.getElementById('xp-fill').style.width")
    return width


def active_id(page: Page) -> str:
    found: str = page.evaluate("document.activeElement ? document.activeElement.id : ''")
    return found


def animation(page: Page, selector: str) -> str:
    name: str = page.evaluate(
        "(s) => getComputedStyle(document.querySelector(s)).animationName", selector
    )
    return name


def set_level_up_notifications(page: Page, on: bool) -> None:
    """What the preferences code (another module) does when the person changes it."""
    page.evaluate(
        """(on) => window.dispatchEvent(new CustomEvent("bambid:preferences",
             {detail: {notifications: {level_up: on}}}))""",
        on,
    )


def low_contrast(page: Page, selectors: list[str]) -> dict[str, float]:
    contrast: dict[str, float] = page.evaluate(CONTRAST_JS, selectors)
    assert set(contrast) == set(selectors), contrast
    return {s: round(r, 2) for s, r in contrast.items() if r < 4.5}


# --- tests ---------------------------------------------------------------------------------------


def test_the_level_bar_reflects_awards_made_over_the_websocket(
    people: People, server: Daemon, shots: Path
) -> None:
    tab = open_chat(people, server, "lv_ada")
    page = tab.page
    expect(page.locator("#composer")).to_be_visible(timeout=WAIT)

    # The server's table, in the welcome and from the API.
    (welcome,) = tab.received("welcome")
    assert welcome["levels"] == LEVELS
    answer = page.request.get(server.http + "/api/levels")
    assert answer.ok and answer.json() == {"levels": LEVELS}

    # The badge at level 0.
    expect(page.locator("#xp-badge")).to_be_visible()
    expect(page.locator("#levels-button-text")).to_be_hidden()
    expect(page.locator("#xp-level")).to_have_text("Lv 0")
    expect(page.locator("#xp-points")).to_have_text("0 / 10 XP")
    assert fill_width(page) == "0%"
    expect(page.locator("#levels-button")).to_have_accessible_name(
        "Level 0, 0 of 10 XP for level 1. Show the levels"
    )

    # The locks say the levels of this server's table, not the defaults.
    collar = page.locator("#fx-collar")
    expect(collar).to_have_attribute("data-locked", "true")
    expect(collar.locator(".fx-lock-text")).to_have_text("The collar unlocks at level 1.")
    expect(page.locator("#fx-spirals .fx-lock-text")).to_have_text("Spirals unlock at level 2.")
    expect(page.locator("#fx-history .fx-lock-text")).to_have_text(
        "Session history unlocks at level 3."
    )
    # Not in this server's table: open to everyone.
    expect(page.locator("#fx-binaural")).to_have_attribute("data-locked", "false")
    expect(page.locator("#trig-lock-text")).to_have_text("Triggers unlock at level 4")
    expect(page.locator("#trig-badge")).to_have_text("Level 4")

    # The panel, from the keyboard: every level of the custom table.
    page.locator("#levels-button").focus()
    page.keyboard.press("Enter")
    panel = shown(page)
    expect(panel.get_by_role("heading", name="Levels")).to_be_visible()
    expect(page.locator("#levels-summary")).to_have_text("You are level 0 · 0 XP")
    expect(page.locator("#levels-progress-text")).to_have_text("10 XP to level 1 (The collar).")
    listed = items(page)
    assert [(i["level"], i["label"], i["desc"]) for i in listed] == [
        (str(row["level"]), row["label"], row["description"]) for row in LEVELS
    ]
    assert [(i["state"], i["head"]) for i in listed] == [
        ("next", "Level 1 10 XP Next · 10 XP to go"),
        ("locked", "Level 2 30 XP Locked · 30 XP to go"),
        ("locked", "Level 3 60 XP Locked · 60 XP to go"),
        ("locked", "Level 4 100 XP Locked · 100 XP to go"),
    ]
    tab.close_levels()
    assert active_id(page) == "levels-button"  # the focus comes back to the badge

    # One message: 10 XP, level 1, celebrated without taking the focus from the box.
    tab.say("Hello, breathing slowly today.")
    expect(page.locator("#xp-level")).to_have_text("Lv 1", timeout=WAIT)
    expect(page.locator("#xp-points")).to_have_text("10 / 30 XP")
    assert fill_width(page) == "0%"  # the bar runs from this level's 10 XP, not from 0
    banner = page.locator("#level-up")
    expect(banner).to_be_visible()
    expect(banner.locator("#level-up-title")).to_have_text("Level 1 reached — The collar unlocked")
    expect(banner.locator("#level-up-detail")).to_have_text(LEVELS[0]["description"])
    expect(page.locator("#levels-announce")).to_have_text("Level 1 reached — The collar unlocked.")
    assert active_id(page) == "message-input"
    assert animation(page, "#level-up") == "levels-arrive"
    # The locked card unlocks at once.
    expect(collar).to_have_attribute("data-locked", "false")
    expect(page.locator("#fx-collar-form")).to_be_visible()
    expect(page.locator("#fx-spirals .fx-lock-meta")).to_have_text(
        "You are level 1 · 10 / 30 XP to level 2."
    )
    banner.evaluate("(b) => Promise.all(b.getAnimations({subtree: true}).map((a) => a.finished))")
    page.screenshot(path=str(shots / "levels-celebration.png"))
    assert low_contrast(page, BANNER_TEXT) == {}
    page.locator("#level-up-close").click()
    expect(banner).to_be_hidden()

    # A second message: half way from level 1 to level 2.
    tab.say("Still here, shoulders relaxed.")
    expect(page.locator("#xp-points")).to_have_text("20 / 30 XP", timeout=WAIT)
    assert fill_width(page) == "50%"
    tab.open_levels()
    expect(page.locator("#levels-summary")).to_have_text("You are level 1 · 20 XP")
    expect(page.locator("#levels-progress-text")).to_have_text("10 XP to level 2 (Spirals).")
    progress = page.locator("#levels-progress")
    assert [progress.get_attribute(a) for a in ("aria-valuemin", "aria-valuenow")] == ["10", "20"]
    assert progress.get_attribute("aria-valuemax") == "30"
    assert page.evaluate("document.getElementById('levels-progress-bar').style.width") == "50%"
    listed = items(page)
    assert [(i["state"], i["current"], i["head"]) for i in listed] == [
        ("reached", "step", "Level 1 10 XP ✓ Reached"),
        ("next", "", "Level 2 30 XP Next · 10 XP to go"),
        ("locked", "", "Level 3 60 XP Locked · 40 XP to go"),
        ("locked", "", "Level 4 100 XP Locked · 80 XP to go"),
    ]
    page.locator("#levels-panel").screenshot(path=str(shots / "levels-panel.png"))
    assert low_contrast(page, PANEL_TEXT) == {}
    tab.close_levels()

    # Level-up notifications switched off (preferences): only the badge changes.
    set_level_up_notifications(page, False)
    page.mouse.move(5, 700)  # nothing hovers the banner's place
    tab.say("Third message.")
    expect(page.locator("#xp-level")).to_have_text("Lv 2", timeout=WAIT)
    tab.say("Fourth message.")  # its answer comes after the level.up of the third
    expect(page.locator("#xp-points")).to_have_text("40 / 60 XP", timeout=WAIT)
    assert len(tab.received("level.up")) == 2
    expect(banner).to_be_hidden()
    expect(page.locator("#fx-spirals")).to_have_attribute("data-locked", "false")

    # Switched on again: level 3 is celebrated, then the banner goes by itself.
    set_level_up_notifications(page, True)
    tab.say("Fifth message.")
    tab.say("Sixth message.")
    expect(banner).to_be_visible(timeout=WAIT)
    expect(banner.locator("#level-up-title")).to_have_text(
        "Level 3 reached — Session history unlocked"
    )
    expect(page.locator("#fx-history")).to_have_attribute("data-locked", "false")
    assert active_id(page) == "message-input"
    expect(banner).to_be_hidden(timeout=AUTO_HIDE_WAIT)
    assert active_id(page) == "message-input"
    tab.assert_clean()


def test_the_celebration_is_still_under_reduced_motion_and_closes_from_the_keyboard(
    people: People, server: Daemon
) -> None:
    tab = open_chat(people, server, "lv_still", reduced_motion=True)
    page = tab.page
    expect(page.locator("#composer")).to_be_visible(timeout=WAIT)
    tab.say("Hello.")
    banner = page.locator("#level-up")
    expect(banner).to_be_visible(timeout=WAIT)
    assert animation(page, "#level-up") == "none"
    assert animation(page, ".levels-celebration-icon") == "none"
    assert active_id(page) == "message-input"
    # Reached from the keyboard, it stays while focused; Escape closes it and the focus goes
    # to the badge, not to the page's start.
    page.locator("#level-up-see").focus()
    page.keyboard.press("Escape")
    expect(banner).to_be_hidden()
    assert active_id(page) == "levels-button"
    # "See all levels" opens the panel.
    tab.say("Again.")
    tab.say("And again.")
    expect(page.locator("#xp-level")).to_have_text("Lv 2", timeout=WAIT)
    expect(banner).to_be_visible()
    page.locator("#level-up-see").click()
    shown(page)
    expect(banner).to_be_hidden()
    tab.close_levels()
    assert active_id(page) == "levels-button"
    tab.assert_clean()


def test_guests_and_readers_see_the_table_and_why_they_do_not_earn(
    people: People, server: Daemon
) -> None:
    guest = open_chat(people, server, "lv_guest", guest=True)
    page = guest.page
    expect(page.locator("#xp-badge")).to_be_hidden()  # guests earn no XP
    expect(page.locator("#levels-button")).to_have_accessible_name("Levels")
    guest.open_levels()
    expect(page.locator("#levels-summary")).to_have_text("Guests stay at level 0.")
    expect(page.locator("#levels-progress")).to_be_hidden()
    expect(page.locator("#levels-note-guest")).to_be_visible()
    expect(page.locator("#levels-note-guest")).to_contain_text("Guests don’t earn XP.")
    expect(page.locator("#levels-note-anon")).to_be_hidden()
    listed = items(page)
    assert [(i["label"], i["state"], i["head"]) for i in listed] == [
        (row["label"], "locked", f"Level {row['level']} {row['xp']} XP Locked") for row in LEVELS
    ]
    guest.close_levels()
    guest.assert_clean()

    reader = open_chat(people, server, None)
    page = reader.page
    expect(page.locator("#xp-badge")).to_be_hidden()
    reader.open_levels()
    expect(page.locator("#levels-note-anon")).to_be_visible()
    expect(page.locator("#levels-note-anon").get_by_role("link", name="Sign in")).to_be_visible()
    expect(page.locator("#levels-note-guest")).to_be_hidden()
    assert [i["label"] for i in items(page)] == [row["label"] for row in LEVELS]
    reader.close_levels()
    reader.assert_clean()


def scripted_chat(people: People, server: Daemon, name: str, levels_status: int | None) -> Tab:
    """A chat page of ``name`` whose WebSocket is answered by a scripted server whose
    ``welcome`` has no ``levels``; ``levels_status`` (when not None) answers the page's
    ``GET /api/levels`` with that status and no table."""
    user = {"name": name, "role": "user", "guest": False, "xp": 0, "level": 0, "next": 10}

    def before(page: Page) -> None:
        FakeServer(page, user, ["lobby"])
        if levels_status is not None:
            page.route(
                re.compile(r"/api/levels$"),
                lambda route: route.fulfill(status=levels_status, body="{}"),
            )

    tab = people.tab(people.person(server, name), server, before=before, ready=False)
    expect(tab.page.locator("#connection-state")).to_have_attribute(
        "data-state", "connected", timeout=WAIT
    )
    expect(tab.page.locator("#levels-button")).to_be_visible(timeout=WAIT)
    return tab


def test_without_levels_in_the_welcome_the_table_comes_from_the_server(
    people: People, server: Daemon
) -> None:
    tab = scripted_chat(people, server, "lv_api", None)
    page = tab.page
    tab_levels = LevelTab(page, tab.problems, tab.dialogs)
    tab_levels.open_levels()
    # This server's table (GET /api/levels), not one the page assumed.
    listed = items(page)
    assert [(i["level"], i["label"]) for i in listed] == [
        (str(row["level"]), row["label"]) for row in LEVELS
    ]
    expect(page.locator("#levels-progress-text")).to_have_text("10 XP to level 1 (The collar).")
    tab_levels.close_levels()
    expect(page.locator("#fx-spirals .fx-lock-text")).to_have_text("Spirals unlock at level 2.")
    tab.assert_clean()


def test_a_server_without_a_level_table_shows_no_levels(people: People, server: Daemon) -> None:
    tab = scripted_chat(people, server, "lv_none", 404)
    page = tab.page
    tab_levels = LevelTab(page, tab.problems, tab.dialogs)
    tab_levels.open_levels()
    expect(page.locator("#levels-summary")).to_have_text("You are level 0 · 0 XP")
    assert items(page) == []
    tab_levels.close_levels()
    # Nothing is shown as gated; the only complaint is the browser's about the 404.
    expect(page.locator("#fx-spirals")).to_have_attribute("data-locked", "false")
    assert all("404" in problem for problem in tab.problems), tab.problems
    assert tab.dialogs == []

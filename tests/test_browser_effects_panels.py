"""The effect panels under the chat (web/templates/_effects.html, web/static/js/effects.js and
its panels) in a real headless Chromium (Debian's, driven by Playwright).

With the real stack (a daemon subprocess speaking with the real espeak-ng, and the fake LLM
subprocess answering with the prompt itself): the locks below each feature's level; the collar
saved and synced to a second tab; the spirals switched on animate (the canvas's pixels change)
and their settings follow to a second tab; the binaural beats start, retune and stop (their
state in data attributes; Chromium may start Web Audio without a gesture here), with
sequences locked until level 8; the session history lists, opens, replays and deletes past
conversations. People get their level by having XP written into their profile with the
daemon's own storage (``bambid.storage.sqlite``, in a subprocess) before the page connects.

Client rules that need a server on cue (a ``level_required`` answer, a level reached while the
page is open) use a WebSocket that Playwright answers itself. Screenshots at desktop and phone
width go to ``shots``. No timing assertions: every wait is for a condition.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import attrs
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    WebSocket,
    WebSocketRoute,
    expect,
)

from bambid.config import XPConfig
from tests.browsersupport import CHROMIUM, CHROMIUM_ARGS, CSP_RECORDER
from tests.daemon import REPO, Daemon, daemon_environment
from tests.test_browser_chat import CONTRAST_JS
from tests.test_browser_companion import FakeServer, People, Tab, fake_llm, until
from tests.test_browser_voice import RECORD_SCRIPT

pytestmark = pytest.mark.slow

WAIT = 15000  # ms
#: The default XP table (levels and unlocks); the rate limits are relaxed for quick tests.
DAEMON_ENV = {
    "BAMBID_LIMITS_CONNECTION_BURST": "1000",
    "BAMBID_LIMITS_CONNECTION_PER_SECOND": "1000",
    "BAMBID_AI_CONCURRENCY": "4",
}
#: XP at which each level starts (the default ``[xp] levels``): LEVEL_XP[n] is level n.
LEVEL_XP = [0, *XPConfig().levels]

#: Writes XP into a person's profile with the daemon's own storage (SQLite in WAL mode: the
#: running daemon reads it on its next request).
GIVE_XP = """
import sys
from pathlib import Path
from twisted.internet import defer, task
from bambid.storage.sqlite import SQLiteStorage

async def main(reactor):
    storage = SQLiteStorage(Path(sys.argv[1]), reactor)
    await storage.open()
    try:
        profile = await storage.ensure_profile(sys.argv[2], reactor.seconds())
        wanted = int(sys.argv[3])
        if wanted > profile.xp:
            await storage.add_xp(sys.argv[2], wanted - profile.xp)
    finally:
        await storage.close()

task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
"""

#: A fingerprint of the spiral canvas's pixels.
CANVAS_HASH_JS = """
() => {
  const canvas = document.getElementById("fx-spirals-canvas");
  if (!canvas || canvas.width < 2) return null;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let hash = 0;
  let lit = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 0) lit += 1;
    hash = (Math.imul(hash, 31) + data[i] + 7 * data[i + 1] + 13 * data[i + 3]) >>> 0;
  }
  return lit > 0 ? hash : null;
}
"""

#: Has the page's playback queue (playback.js) say that a clip of ``kind`` starts sounding.
CUE_JS = """
async (kind) => {
  const { playback } = await import("/static/js/playback.js");
  playback.dispatchEvent(new CustomEvent("start", { detail: { kind, key: "deep-breath" } }));
}
"""

#: Runs before the page's scripts: records CSP violations.
WATCH_SCRIPT = CSP_RECORDER


# --- the stack -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon speaking with the real espeak-ng (WAV clips) and a fake LLM that answers with
    the prompt itself (``echo``)."""
    with ExitStack() as exits:
        llm = exits.enter_context(fake_llm("echo"))
        daemon = exits.enter_context(
            Daemon.start(
                tmp_path_factory.mktemp("effects-panels"),
                env={
                    **DAEMON_ENV,
                    "BAMBID_AI_URL": llm.url,
                    "BAMBID_VOICE_BACKEND": "espeak",
                    "BAMBID_VOICE_FORMAT": "wav",
                },
            )
        )
        yield daemon


@pytest.fixture(scope="module")
def audio_browser() -> Iterator[Browser]:
    """Debian's Chromium allowed to start Web Audio without a user gesture."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[*CHROMIUM_ARGS, "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def people(audio_browser: Browser) -> Iterator[People]:
    found = People(audio_browser)
    yield found
    found.close()


def give_level(daemon: Daemon, name: str, level: int, extra: int = 0) -> None:
    """Write ``name``'s XP (the start of ``level``, plus ``extra``) with the daemon's storage."""
    subprocess.run(
        [
            sys.executable,
            "-c",
            GIVE_XP,
            str(daemon.workdir / "var" / "bambid.sqlite3"),
            name,
            str(LEVEL_XP[level] + extra),
        ],
        cwd=REPO,
        env=daemon_environment(),
        check=True,
        timeout=60,
    )


def person(
    people: People,
    daemon: Daemon,
    name: str,
    level: int,
    extra: int = 0,
    **options: Any,
) -> BrowserContext:
    """A registered person at ``level`` (no page open yet)."""
    context = people.person(daemon, name, **options)
    give_level(daemon, name, level, extra)
    return context


@attrs.define
class FxTab(Tab):
    """A ``Tab`` that also keeps the WebSocket frames the page sent and received."""

    sent_frames: list[dict[str, Any]] = attrs.Factory(list)
    received_frames: list[dict[str, Any]] = attrs.Factory(list)

    def sent(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.sent_frames if f["type"] == kind]

    def received(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.received_frames if f["type"] == kind]


def open_tab(
    people: People, context: BrowserContext, daemon: Daemon, script: str = "", **kwargs: Any
) -> FxTab:
    """A page of the chat, connected, with the effect panels shown (``script`` runs before
    the page's own)."""
    sent: list[dict[str, Any]] = []
    received: list[dict[str, Any]] = []

    def before(page: Page) -> None:
        page.add_init_script(script=WATCH_SCRIPT)
        if script:
            page.add_init_script(script=script)
        # A phone shows the chat first: open on the companion (as a person who chose it).
        page.add_init_script(script="sessionStorage.setItem('bambid.view', 'companion');")

        def record(ws: WebSocket) -> None:
            ws.on("framesent", lambda p: sent.append(json.loads(str(p))))
            ws.on("framereceived", lambda p: received.append(json.loads(str(p))))

        page.on("websocket", record)

    tab = people.tab(context, daemon, before=before, **kwargs)
    expect(tab.page.locator("#effects")).to_be_visible(timeout=WAIT)
    return FxTab(tab.page, tab.problems, tab.dialogs, sent, received)


def plays_of(page: Page, reply_id: str) -> list[tuple[str, int]]:
    """(reply, index) of each clip of ``reply_id`` that started playing (RECORD_SCRIPT)."""
    found: list[tuple[str, int]] = []
    for p in page.evaluate("window.__plays"):
        entry = (p["reply"], p["index"])
        if p["reply"] == reply_id and entry not in found:
            found.append(entry)
    return found


def converse(tab: Tab, text: str) -> None:
    """Send ``text`` to the companion and wait for its whole reply (the fake echoes it)."""
    tab.ask(text)
    reply = tab.page.locator("#companion-turns > .cturn--assistant").last
    expect(reply.locator(".cturn-body")).to_have_text(text, timeout=WAIT)
    tab.wait_idle()


def card(page: Page, name: str) -> Locator:
    return page.locator(f"#fx-{name}")


def wait(page: Page, predicate: str, arg: Any = None) -> Any:
    """Wait until the JS function ``predicate`` is truthy; its value."""
    return page.wait_for_function(predicate, arg=arg, timeout=WAIT).json_value()


def canvas_changes(page: Page) -> None:
    """The spiral canvas shows something, then something else."""
    first = wait(page, CANVAS_HASH_JS)
    changed = f"(before) => {{ const now = ({CANVAS_HASH_JS})(); return now && now !== before; }}"
    wait(page, changed, first)


# --- locks ---------------------------------------------------------------------------------------


def test_each_card_is_locked_below_its_level(people: People, server: Daemon, shots: Path) -> None:
    context = person(people, server, "lock_ada", 1, extra=500)
    tab = open_tab(people, context, server)
    page = tab.page
    collar = card(page, "collar")
    expect(collar).to_have_attribute("data-locked", "true")
    expect(collar.locator(".fx-lock")).to_be_visible()
    expect(collar.locator(".fx-lock-text")).to_have_text("The collar unlocks at level 2.")
    expect(collar.locator(".fx-lock-meta")).to_have_text(
        f"You are level 1 · {LEVEL_XP[1] + 500} / {LEVEL_XP[2]} XP to level 2."
    )
    assert collar.locator("progress").evaluate("(p) => [p.value, p.max]") == [
        LEVEL_XP[1] + 500,
        LEVEL_XP[2],
    ]
    expect(collar.locator("#fx-collar-form")).to_be_hidden()
    expect(collar.locator(".fx-badge")).to_have_text("Level 2")
    for name, text in [
        ("history", "Session history unlocks at level 3."),
        ("spirals", "Spirals unlock at level 4."),
        ("binaural", "Binaural beats unlock at level 7."),
    ]:
        expect(card(page, name).locator(".fx-lock-text")).to_have_text(text)
        expect(card(page, name).locator("[data-content]")).to_be_hidden()
    # Nothing gated was asked for: the page knows the levels.
    assert tab.sent("ai.conversations") == []
    assert tab.sent("settings.set") == []
    page.locator("#effects").screenshot(path=str(shots / "effects-locked.png"))
    tab.assert_clean()


def test_guests_and_readers(people: People, server: Daemon) -> None:
    reader = people.tab(people.person(server, None), server, ready=False)
    expect(reader.page.locator("#connection-state")).to_have_attribute(
        "data-state", "connected", timeout=WAIT
    )
    expect(reader.page.locator("#effects")).to_be_hidden()

    context = people.person(server, None)
    answer = context.request.post(server.http + "/api/auth/guest", data={"name": "fx_guest"})
    assert answer.ok, answer.text()
    tab = open_tab(people, context, server)
    lock = card(tab.page, "collar").locator(".fx-lock")
    expect(lock.locator(".fx-lock-meta")).to_have_text(
        "Guests stay at level 0: create an account to earn XP and unlock it."
    )
    expect(lock.locator("progress")).to_be_hidden()
    reader.assert_clean()
    tab.assert_clean()


# --- the collar ----------------------------------------------------------------------------------


def test_collar_saves_and_syncs_to_another_tab(people: People, server: Daemon) -> None:
    context = person(people, server, "collar_ada", 2)
    first = open_tab(people, context, server)
    second = open_tab(people, context, server)
    page = first.page
    form = page.locator("#fx-collar-form")
    expect(form).to_be_visible()
    expect(page.locator("#fx-collar-counter")).to_have_text("0 / 500")
    expect(card(page, "collar").locator(".fx-badge")).to_have_text("Off")

    text = page.get_by_label("Collar text")
    text.fill("Remind me to sit up straight and breathe slowly.")
    expect(page.locator("#fx-collar-counter")).to_have_text("48 / 500")
    expect(page.locator("#fx-collar-status")).to_have_text("Not saved yet.")
    page.get_by_label("Give it to my companion").check()
    xp_before = page.locator("#xp-points").inner_text()
    page.get_by_role("button", name="Save the collar").click()
    expect(page.locator("#fx-collar-status")).to_have_text("Saved.")
    assert first.sent("collar.set")[-1] | {"id": None} == {
        "type": "collar.set",
        "id": None,
        "text": "Remind me to sit up straight and breathe slowly.",
        "enabled": True,
    }
    # Saving earns XP (the server decides).
    expect(page.locator("#xp-points")).not_to_have_text(xp_before, timeout=WAIT)

    # The other tab follows (collar.state).
    other = second.page
    expect(other.get_by_label("Collar text")).to_have_value(
        "Remind me to sit up straight and breathe slowly.", timeout=WAIT
    )
    expect(other.get_by_label("Give it to my companion")).to_be_checked()
    expect(card(other, "collar").locator(".fx-badge")).to_have_text("On")

    # Too long: the counter says so and nothing is sent.
    text.fill("x" * 501)
    expect(page.locator("#fx-collar-counter")).to_have_text("501 / 500 · 1 too many")
    expect(page.get_by_role("button", name="Save the collar")).to_be_disabled()
    text.press("Control+Enter")
    assert len(first.sent("collar.set")) == 1

    # Edits in one tab survive a save from the other, which offers the saved text.
    other.get_by_label("Collar text").fill("Keep my shoulders relaxed.")
    other.get_by_role("button", name="Save the collar").click()
    expect(other.locator("#fx-collar-status")).to_have_text("Saved.")
    expect(page.locator("#fx-collar-status")).to_contain_text("changed the collar in another tab")
    expect(text).to_have_value("x" * 501)
    page.get_by_role("button", name="Use the saved text").click()
    expect(text).to_have_value("Keep my shoulders relaxed.")

    # Stored: a reload shows it.
    other.reload()
    expect(other.get_by_label("Collar text")).to_have_value(
        "Keep my shoulders relaxed.", timeout=WAIT
    )
    first.assert_clean()
    second.assert_clean()


# --- spirals -------------------------------------------------------------------------------------


def test_spirals_animate_and_sync_across_tabs(people: People, server: Daemon, shots: Path) -> None:
    context = person(people, server, "spiral_ada", 4)
    first = open_tab(people, context, server)
    second = open_tab(people, context, server)
    page, other = first.page, second.page
    stage = page.locator("#fx-spirals-stage")
    stage.scroll_into_view_if_needed()
    other.locator("#fx-spirals-stage").scroll_into_view_if_needed()
    expect(stage).to_have_attribute("data-state", "off")
    expect(page.locator("#fx-spirals-note")).to_have_text("Spirals are off.")

    page.get_by_role("switch", name="Show the spirals").check()
    expect(stage).to_have_attribute("data-state", "animating")
    canvas_changes(page)
    # The other tab follows and animates too.
    expect(other.get_by_role("switch", name="Show the spirals")).to_be_checked(timeout=WAIT)
    expect(other.locator("#fx-spirals-stage")).to_have_attribute(
        "data-state", "animating", timeout=WAIT
    )
    canvas_changes(other)

    # A width and a speed, sent together after a pause, reach the other tab.
    page.locator("#fx-spiral1Width").fill("8")
    page.locator("#fx-spiral2Speed").fill("45")  # the slider shows 55 - speed: right is faster
    expect(other.locator("#fx-spiral1Width")).to_have_value("8", timeout=WAIT)
    expect(other.locator("#fx-spiral2Speed")).to_have_value("45", timeout=WAIT)
    expect(other.locator("#fx-spiral2Speed-out")).to_have_text("1.0 s")
    until(page, lambda: len(first.sent("settings.set")) >= 2)
    stored = {}
    for frame in first.sent("settings.set"):
        assert frame["section"] == "spirals"
        stored.update(frame["values"])
    assert stored == {"enabled": True, "spiral1Width": 8, "spiral2Speed": 10}
    page.locator("#effects").screenshot(path=str(shots / "effects-spirals.png"))

    # A trigger cue starting in the playback queue makes the stage glow; speech does not.
    page.evaluate(CUE_JS, "speech")
    expect(stage).not_to_have_class(re.compile(r"fx-stage--pulse"))
    page.evaluate(CUE_JS, "cue")
    expect(stage).to_have_class(re.compile(r"\bfx-stage--pulse\b"))
    expect(stage).not_to_have_class(re.compile(r"fx-stage--pulse"), timeout=WAIT)

    # Collapsing the card stops the drawing; opening it starts it again.
    page.locator("#fx-spirals > summary").click()
    expect(stage).to_have_attribute("data-state", "paused")
    page.locator("#fx-spirals > summary").press("Enter")
    expect(stage).to_have_attribute("data-state", "animating")

    # Switched off in one tab: off in both.
    other.get_by_role("switch", name="Show the spirals").uncheck()
    expect(stage).to_have_attribute("data-state", "off", timeout=WAIT)
    expect(page.get_by_role("switch", name="Show the spirals")).not_to_be_checked()

    # Stored on the server.
    page.reload()
    first.wait_ready()
    expect(page.locator("#fx-spiral1Width")).to_have_value("8", timeout=WAIT)
    expect(page.get_by_role("switch", name="Show the spirals")).not_to_be_checked()
    first.assert_clean()
    second.assert_clean()


def test_spirals_stay_still_under_reduced_motion(people: People, server: Daemon) -> None:
    context = person(people, server, "still_ada", 4, reduced_motion=True)
    tab = open_tab(people, context, server)
    page = tab.page
    page.locator("#fx-spirals-stage").scroll_into_view_if_needed()
    page.get_by_role("switch", name="Show the spirals").check()
    stage = page.locator("#fx-spirals-stage")
    expect(stage).to_have_attribute("data-state", "still")
    expect(page.locator("#fx-spirals-motion")).to_be_visible()
    wait(page, CANVAS_HASH_JS)  # one frame is drawn
    page.evaluate(CUE_JS, "cue")  # no glow either
    expect(stage).not_to_have_class(re.compile(r"fx-stage--pulse"))
    tab.assert_clean()


# --- binaural beats ------------------------------------------------------------------------------


def test_binaural_beats_start_retune_and_stop(people: People, server: Daemon) -> None:
    context = person(people, server, "beats_ada", 7)
    tab = open_tab(people, context, server)
    page = tab.page
    panel = page.locator("#fx-binaural-panel")
    expect(panel).to_be_visible()
    expect(page.locator("#fx-binaural-panel .fx-hint")).to_contain_text("headphones")
    expect(panel).to_have_attribute("data-playing", "false")
    stop = page.get_by_role("button", name="Stop the binaural beats")
    expect(stop).to_be_disabled()
    # Sequences need level 8.
    expect(page.get_by_label("Sequence")).to_be_disabled()
    expect(page.locator("#fx-binaural-pattern-help")).to_have_text(
        "Binaural sequences unlock at level 8."
    )

    page.get_by_role("button", name="Play the binaural beats").click()
    expect(panel).to_have_attribute("data-playing", "true")
    expect(panel).to_have_attribute("data-preset", "alpha")
    expect(panel).to_have_attribute("data-beat", "10")
    expect(page.locator("#fx-binaural-status")).to_have_text(
        "Playing: Alpha · 10 Hz beat on a 200 Hz tone."
    )
    expect(card(page, "binaural").locator(".fx-badge")).to_have_text("Playing")

    # A preset chosen while playing is heard at once, and stored.
    page.locator("label[for='fx-preset-theta']").click()
    expect(panel).to_have_attribute("data-beat", "6")
    expect(panel).to_have_attribute("data-preset", "theta")
    page.locator("#fx-binaural-beat").fill("12.5")
    expect(panel).to_have_attribute("data-beat", "12.5")
    expect(panel).to_have_attribute("data-preset", "custom")
    expect(page.locator("#fx-preset-custom")).to_be_checked()

    stop.click()
    expect(panel).to_have_attribute("data-playing", "false")
    expect(page.locator("#fx-binaural-status")).to_have_text("Stopped.")
    expect(stop).to_be_disabled()

    until(page, lambda: any(f["values"].get("beat") == 12.5 for f in tab.sent("settings.set")))
    page.reload()
    tab.wait_ready()
    expect(page.locator("#fx-preset-custom")).to_be_checked(timeout=WAIT)
    expect(page.locator("#fx-binaural-beat-out")).to_have_text("12.5 Hz")
    tab.assert_clean()


def test_binaural_sequences_at_level_eight(people: People, server: Daemon, shots: Path) -> None:
    context = person(people, server, "seq_ada", 8)
    tab = open_tab(people, context, server)
    page = tab.page
    panel = page.locator("#fx-binaural-panel")
    pattern = page.get_by_label("Sequence")
    expect(pattern).to_be_enabled()
    pattern.select_option("descent")
    page.locator("#fx-binaural-minutes").fill("5")
    expect(page.locator("#fx-binaural-minutes-out")).to_have_text("5 min")
    page.get_by_role("button", name="Play the binaural beats").click()
    expect(panel).to_have_attribute("data-playing", "true")
    expect(panel).to_have_attribute("data-pattern", "descent")
    expect(panel).to_have_attribute("data-segment", "0")
    expect(page.locator("#fx-binaural-status")).to_have_text(
        "Playing: Descent · part 1 of 3: alpha 10 Hz for 1 min."
    )
    page.locator("#effects").screenshot(path=str(shots / "effects-binaural-sequence.png"))
    # Escape in the card stops it too.
    page.locator("#fx-binaural-volume").press("Escape")
    expect(panel).to_have_attribute("data-playing", "false")
    until(page, lambda: any(f["values"].get("pattern") for f in tab.sent("settings.set")))
    tab.assert_clean()


# --- session history -----------------------------------------------------------------------------


def test_session_history_lists_opens_replays_and_deletes(people: People, server: Daemon) -> None:
    context = person(people, server, "history_ada", 3)
    tab = open_tab(people, context, server, script=RECORD_SCRIPT)
    page = tab.page
    converse(tab, "Breathe in slowly. Let your shoulders drop.")
    page.locator("#companion-new").click()
    expect(page.locator("#companion-turns > .cturn")).to_have_count(0, timeout=WAIT)
    converse(tab, "Sit up tall and look ahead.")

    history = card(page, "history")
    items = history.locator(".fx-history-item")
    expect(items).to_have_count(2, timeout=WAIT)
    expect(items.locator(".fx-history-title")).to_have_text(
        ["Sit up tall and look ahead.", "Breathe in slowly. Let your shoulders drop."]
    )
    expect(items.first.locator(".fx-history-now")).to_be_visible()
    expect(items.first.locator(".fx-history-meta")).to_contain_text("2 messages")
    expect(history.locator(".fx-badge")).to_have_text("2")

    # Open the older one: the companion panel shows it (and the list puts it first).
    older_id = items.nth(1).get_attribute("data-conversation-id")
    older = history.locator(f".fx-history-item[data-conversation-id='{older_id}']")
    older.get_by_role("button", name="Open: Breathe in slowly. Let your shoulders drop.").click()
    expect(page.locator("#companion-conversation-title")).to_have_text(
        "Breathe in slowly. Let your shoulders drop.", timeout=WAIT
    )
    expect(older.locator(".fx-history-now")).to_be_visible(timeout=WAIT)
    expect(history.locator("#fx-history-status")).to_contain_text("is open in your companion panel")

    # Replay it through the voice: the server speaks it as a "replay-…" reading.
    older.get_by_role("button", name=re.compile("^Replay")).click()
    replay = history.locator("#fx-history-replay")
    expect(replay).to_be_visible()
    request = tab.sent("voice.replay")[-1]
    assert request["conversation_id"] == older_id
    until(page, lambda: any(f.get("id") == request["id"] for f in tab.received("ack")))
    reply_id = next(f for f in tab.received("ack") if f.get("id") == request["id"])["reply_id"]
    assert reply_id.startswith("replay-")
    until(page, lambda: any(f["reply_id"] == reply_id for f in tab.received("voice.done")))
    spoken = [f for f in tab.received("voice.audio") if f["reply_id"] == reply_id]
    assert " ".join(f["text"] for f in spoken) == "Breathe in slowly. Let your shoulders drop."
    # The companion's voice queue plays them.
    until(page, lambda: [(reply_id, f["index"]) for f in spoken] == plays_of(page, reply_id))
    expect(replay).to_be_hidden(timeout=WAIT)
    expect(history.locator("#fx-history-status")).to_have_text("Replay finished.")

    # Delete, after a confirmation; Cancel keeps it.
    newer = history.locator(".fx-history-item").filter(has_text="Sit up tall")
    newer.get_by_role("button", name=re.compile("^Delete")).click()
    confirm = newer.locator(".fx-history-confirm")
    expect(confirm).to_be_visible()
    expect(confirm).to_contain_text("Delete it for good?")
    expect(newer.get_by_role("button", name="Cancel")).to_be_focused()
    newer.get_by_role("button", name="Cancel").click()
    expect(confirm).to_be_hidden()
    assert tab.sent("ai.delete") == []
    doomed = newer.get_attribute("data-conversation-id")
    newer.get_by_role("button", name=re.compile("^Delete")).click()
    confirm.get_by_role("button", name=re.compile("^Delete")).click()
    expect(items).to_have_count(1, timeout=WAIT)
    assert tab.sent("ai.delete")[-1]["conversation_id"] == doomed
    expect(history.locator("#fx-history-status")).to_have_text(
        "“Sit up tall and look ahead.” was deleted."
    )
    # The server agrees.
    history.get_by_role("button", name="Refresh the list").click()
    expect(items).to_have_count(1, timeout=WAIT)
    expect(items.first).not_to_have_attribute("data-conversation-id", doomed)
    tab.assert_clean()


# --- a scripted server: levels that change, level_required ---------------------------------------


class LevelServer(FakeServer):
    """``FakeServer`` whose person is at ``level``, answering the effect requests like bambid
    (``refuse`` maps a request type to a ``level_required`` level)."""

    def __init__(self, page: Page, level: int) -> None:
        super().__init__(page)
        self.level = level
        self.refuse: dict[str, tuple[str, int]] = {}
        self.answers["collar.get"] = lambda m: [
            {"type": "collar.state", "id": m["id"], "text": "", "enabled": False}
        ]
        self.answers["settings.get"] = lambda m: [
            {"type": "settings.state", "id": m["id"], "sections": {}}
        ]
        self.answers["ai.conversations"] = lambda m: [
            {"type": "ai.conversations", "id": m["id"], "conversations": []}
        ]
        for kind in ("collar.set", "settings.set"):
            self.answers[kind] = self._maybe_refuse

    def _maybe_refuse(self, m: dict[str, Any]) -> list[dict[str, Any]]:
        if m["type"] in self.refuse:
            feature, level = self.refuse[m["type"]]
            return [
                {
                    "type": "error",
                    "id": m["id"],
                    "code": "level_required",
                    "message": f"{feature} unlocks at level {level}",
                    "feature": feature,
                    "level": level,
                }
            ]
        return [{"type": "ack", "id": m["id"]}]

    def _route(self, ws: WebSocketRoute) -> None:
        self.sockets.append(ws)
        ws.on_message(lambda raw: self._hello(ws, raw))

    def _hello(self, ws: WebSocketRoute, raw: str | bytes) -> None:
        message = json.loads(raw)
        if message["type"] != "hello":
            self._handle(ws, raw)
            return
        self.received.append(message)
        user = {
            "name": "fake_ada",
            "role": "user",
            "guest": False,
            "xp": LEVEL_XP[self.level],
            "level": self.level,
            "next": LEVEL_XP[self.level + 1],
        }
        ws.send(
            json.dumps(
                {
                    "type": "welcome",
                    "id": message["id"],
                    "server": "bambid",
                    "version": "test",
                    "protocol": 1,
                    "server_time": time.time(),
                    "connection_id": "fake",
                    "user": user,
                    "rooms": ["lobby"],
                }
            )
        )


def scripted(people: People, server: Daemon, level: int) -> tuple[Tab, LevelServer]:
    fakes: list[LevelServer] = []

    def before(page: Page) -> None:
        page.add_init_script(script=WATCH_SCRIPT)
        fakes.append(LevelServer(page, level))

    tab = people.tab(people.person(server, None), server, before=before)
    expect(tab.page.locator("#effects")).to_be_visible(timeout=WAIT)
    return tab, fakes[0]


def test_a_level_reached_unlocks_the_card_at_once(people: People, server: Daemon) -> None:
    tab, fake = scripted(people, server, 1)
    page = tab.page
    collar = card(page, "collar")
    expect(collar).to_have_attribute("data-locked", "true")
    assert fake.sent("collar.get") == []
    fake.push(type="xp.update", xp=LEVEL_XP[2], level=2, next=LEVEL_XP[3])
    fake.push(type="level.up", level=2, unlocked=["collar"])
    expect(collar).to_have_attribute("data-locked", "false")
    expect(page.locator("#fx-collar-form")).to_be_visible()
    until(page, lambda: len(fake.sent("collar.get")) == 1)
    expect(card(page, "history").locator(".fx-lock-meta")).to_have_text(
        f"You are level 2 · {LEVEL_XP[2]} / {LEVEL_XP[3]} XP to level 3."
    )
    tab.assert_clean()


def test_level_required_is_shown_politely(people: People, server: Daemon) -> None:
    tab, fake = scripted(people, server, 4)
    page = tab.page
    # This server puts the collar at level 5: the page learns it from the error.
    fake.refuse["collar.set"] = ("collar", 5)
    page.get_by_label("Collar text").fill("Breathe slowly.")
    page.get_by_role("button", name="Save the collar").click()
    expect(page.locator("#fx-collar-error")).to_have_text(
        "The collar unlocks at level 5. You are level 4."
    )
    collar = card(page, "collar")
    expect(collar).to_have_attribute("data-locked", "true")
    expect(collar.locator(".fx-lock-text")).to_have_text("The collar unlocks at level 5.")

    fake.refuse["settings.set"] = ("spirals", 6)
    page.locator("#fx-spirals-stage").scroll_into_view_if_needed()
    page.get_by_role("switch", name="Show the spirals").check()
    expect(page.locator("#fx-spirals-error")).to_have_text(
        "Spirals unlock at level 6. You are level 4."
    )
    expect(card(page, "spirals")).to_have_attribute("data-locked", "true")
    tab.assert_clean()


# --- look, keyboard, phone -----------------------------------------------------------------------


def fill_for_looks(people: People, server: Daemon, name: str, **options: Any) -> FxTab:
    """A level 8 person with a collar, a conversation and the spirals on."""
    context = person(people, server, name, 8, **options)
    tab = open_tab(people, context, server)
    page = tab.page
    converse(tab, "Breathe in slowly and relax your shoulders.")
    page.get_by_label("Collar text").fill("Remind me to sit up straight and breathe slowly.")
    page.get_by_label("Give it to my companion").check()
    page.get_by_role("button", name="Save the collar").click()
    expect(page.locator("#fx-collar-status")).to_have_text("Saved.")
    page.locator("#fx-spirals-stage").scroll_into_view_if_needed()
    page.get_by_role("switch", name="Show the spirals").check()
    expect(page.locator("#fx-spirals-stage")).to_have_attribute("data-state", "animating")
    expect(card(page, "history").locator(".fx-history-item")).to_have_count(1, timeout=WAIT)
    return tab


def test_desktop_look_and_keyboard(people: People, server: Daemon, shots: Path) -> None:
    tab = fill_for_looks(people, server, "look_ada")
    page = tab.page
    page.locator("#effects").scroll_into_view_if_needed()
    page.locator("#effects").screenshot(path=str(shots / "effects-desktop.png"))
    # Two columns: the collar and the history side by side, aligned at the top.
    boxes = []
    for name in ("collar", "history", "spirals", "binaural"):
        box = card(page, name).bounding_box()
        assert box is not None, name
        boxes.append(box)
    collar, history, spirals, binaural = boxes
    assert collar["y"] == history["y"] and collar["x"] < history["x"]
    assert spirals["x"] == collar["x"] and binaural["x"] == history["x"]
    lowest = page.evaluate(
        CONTRAST_JS,
        [".fx-title", ".fx-help", ".fx-label", ".fx-out", ".fx-history-meta", ".fx-counter"],
    )
    for selector, ratio in lowest.items():
        assert ratio >= 4.5, (selector, ratio)

    # Every card folds with the keyboard, and stays folded after a reload.
    summary = page.locator("#fx-binaural > summary")
    summary.press("Enter")
    expect(page.locator("#fx-binaural")).not_to_have_attribute("open", "")
    # Remembered on this device (when the "toggle" event has run).
    stored = "JSON.parse(localStorage.getItem('bambid.effects.open')) || {}"
    wait(page, f"() => ({stored})['fx-binaural'] === false")
    page.reload()
    tab.wait_ready()
    expect(page.locator("#fx-binaural")).not_to_have_attribute("open", "")
    expect(page.locator("#fx-collar")).to_have_attribute("open", "")
    page.locator("#fx-binaural > summary").press("Enter")
    expect(page.locator("#fx-binaural-panel")).to_be_visible()
    tab.assert_clean()


def test_phone_width(people: People, server: Daemon, shots: Path) -> None:
    tab = fill_for_looks(people, server, "phone_ada", viewport=(375, 740))
    page = tab.page
    page.locator("#effects").screenshot(path=str(shots / "effects-phone.png"))
    # The spirals draw only while their stage is on screen.
    page.locator("#fx-spirals-stage").scroll_into_view_if_needed()
    expect(page.locator("#fx-spirals-stage")).to_have_attribute("data-state", "animating")
    wait(page, CANVAS_HASH_JS)
    card(page, "spirals").screenshot(path=str(shots / "effects-phone-spirals.png"))
    # Nothing sticks out sideways, and the controls are big enough to tap.
    overflow = page.evaluate(
        "() => [...document.querySelectorAll('#effects *')]"
        ".filter((e) => e.getClientRects().length && e.getBoundingClientRect().right > 376)"
        ".map((e) => e.id || e.className)"
    )
    assert overflow == []
    for button in page.locator("#effects button:visible").all():
        box = button.bounding_box()
        assert box is not None and box["height"] >= 30, button.inner_text()
    tab.assert_clean()

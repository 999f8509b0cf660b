"""The trigger panel and the page's one playback queue in a real headless
Chromium (Debian's, driven by Playwright).

With the real stack (a daemon subprocess speaking with the real espeak-ng, WAV
clips, and the fake LLM subprocess answering with the prompt itself): below
level 1 the panel is locked and shows the progress, and opens when a chat
message earns the level; a trigger is switched on and saved and a second tab
of the person follows (``triggers.state``), also after a reload; a streamed
companion reply containing the trigger's phrase fires its cue, which the page
plays (its clip sounds, one clip at a time) while the name is flashed.

Client rules that need a server on cue (the cue's place between two sentences,
the playlist, the audio settings, errors) use a WebSocket that Playwright
answers itself (``TriggerServer``, built on the voice tests' scripted server);
the catalog, the cues and the sentences are then answered by Playwright too:
short WAV tones (``long-*`` clips last 8 s, so that what waits behind them is
seen waiting; Skip ends them).

Clips are observed through the ``<audio>`` element's events and the data
attributes the page sets (the kind and key of the clip loaded, the flash
overlay's text and count), never through timing.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.daemon import Daemon
from tests.test_browser_chat import CONTRAST_JS
from tests.test_browser_companion import DAEMON_ENV, People, Tab, fake_llm, until
from tests.test_browser_voice import LONG, SHORT, VoiceServer

pytestmark = pytest.mark.slow

WAIT = 15000  # ms

#: Runs before the page's scripts (test side only): records every clip that
#: starts and ends on any media element of the page, with the kind and key the
#: playback queue put on the element, how many sounded at once, and the flash
#: overlay as it is just after a clip started.
CLIPS_SCRIPT = """
window.__clips = [];
window.__maxActive = 0;
window.__flashes = [];
(() => {
  const live = new Map();
  document.addEventListener("playing", (event) => {
    const el = event.target;
    const src = el.currentSrc || "";
    if (src.startsWith("blob:") || live.has(el)) return;
    const entry = {kind: el.dataset.kind || null, key: el.dataset.key || null,
                   src: src ? new URL(src).pathname : ""};
    live.set(el, entry);
    window.__maxActive = Math.max(window.__maxActive, live.size);
    window.__clips.push({event: "start", ...entry});
    setTimeout(() => {
      const flash = document.getElementById("flash");
      if (flash) window.__flashes.push({key: entry.key, text: flash.dataset.text || null,
                                        visible: flash.dataset.visible});
    }, 0);
  }, true);
  for (const type of ["pause", "ended", "emptied"]) {
    document.addEventListener(type, (event) => {
      const entry = live.get(event.target);
      if (!entry) return;
      live.delete(event.target);
      window.__clips.push({event: "end", ...entry});
    }, true);
  }
})();
"""

CATALOG = {
    "version": 1,
    "categories": ["breathing", "posture"],
    "triggers": [
        {"key": "deep-breath", "name": "Deep Breath", "aliases": ["breathe deeply"],
         "description": "A slow, full breath.", "category": "breathing",
         "audio_url": "/audio/triggers/deep-breath"},
        {"key": "slow-exhale", "name": "Slow Exhale", "aliases": [],
         "description": "A long breath out.", "category": "breathing",
         "audio_url": "/audio/triggers/slow-exhale"},
        {"key": "sit-tall", "name": "Sit Tall", "aliases": [],
         "description": "Lengthen the spine.", "category": "posture",
         "audio_url": "/audio/triggers/sit-tall"},
    ],
}  # fmt: skip

AUDIO_DEFAULTS = {"volume": 0.8, "speed": 5, "loop": False, "background": "",
                  "background_volume": 0.3}  # fmt: skip


def person(level: int, guest: bool = False) -> dict[str, Any]:
    return {"name": "fake_ada", "role": "user", "guest": guest, "xp": level * 10,
            "level": level, "next": None if level >= 8 else (level + 1) * 10}  # fmt: skip


# --- a scripted server ------------------------------------------------------------------------


class TriggerServer(VoiceServer):
    """The voice tests' scripted server, speaking as ``user`` and answering
    ``triggers.get/set`` and ``settings.get/set`` like bambid; Playwright
    answers ``/api/triggers`` with CATALOG and the cues with tones (a key
    starting ``long-`` lasts 8 s). ``refuse[type]`` is an error frame for the
    next request of that type."""

    def __init__(self, page: Page, user: dict[str, Any]) -> None:
        super().__init__(page)
        self.user = user
        self.enabled: list[str] = []
        self.settings = dict(AUDIO_DEFAULTS)
        self.catalog = json.loads(json.dumps(CATALOG))
        self.catalog_fetches = 0
        self.refuse: dict[str, dict[str, Any]] = {}
        self.answers["triggers.get"] = lambda m: [self.state(m["id"])]
        self.answers["triggers.set"] = self._set_triggers
        self.answers["settings.get"] = lambda m: [
            {"type": "settings.state", "id": m["id"], "sections": {"audio": dict(self.settings)}}
        ]
        self.answers["settings.set"] = self._set_settings
        page.route(re.compile(r"/api/triggers$"), self._catalog)
        page.route(re.compile(r"/audio/triggers/"), self._cue)

    def state(self, rid: Any = None) -> dict[str, Any]:
        frame = {"type": "triggers.state", "enabled": list(self.enabled), "catalog_version": 1}
        if rid is not None:
            frame["id"] = rid
        return frame

    def _handle(self, ws: Any, raw: str | bytes) -> None:
        message = json.loads(raw)
        kind = message["type"]
        if kind == "hello":
            self.received.append(message)
            ws.send(json.dumps({
                "type": "welcome", "id": message.get("id"), "server": "bambid",
                "version": "test", "protocol": 1, "server_time": time.time(),
                "connection_id": "fake", "user": self.user, "rooms": ["lobby"],
            }))  # fmt: skip
            return
        if kind in self.refuse:
            self.received.append(message)
            ws.send(json.dumps({"id": message.get("id"), **self.refuse.pop(kind)}))
            return
        super()._handle(ws, raw)

    def _set_triggers(self, m: dict[str, Any]) -> list[dict[str, Any]]:
        self.enabled = list(m["enabled"])
        return [{"type": "ack", "id": m["id"]}, self.state()]

    def _set_settings(self, m: dict[str, Any]) -> list[dict[str, Any]]:
        assert m["section"] == "audio"
        self.settings.update(m["values"])
        return [
            {"type": "ack", "id": m["id"]},
            {"type": "settings.state", "section": "audio", "values": dict(self.settings)},
        ]

    def _catalog(self, route: Route) -> None:
        self.catalog_fetches += 1
        route.fulfill(status=200, body=json.dumps(self.catalog), content_type="application/json")

    def _cue(self, route: Route) -> None:
        key = route.request.url.rsplit("/", 1)[-1]
        self.fetched.append("/audio/triggers/" + key)
        body = LONG if key.startswith("long-") else SHORT
        route.fulfill(status=200, body=body, content_type="audio/wav")

    def fire(self, key: str, name: str, **extra: Any) -> None:
        url = f"/audio/triggers/{key}"
        self.push(type="trigger.fired", key=key, name=name, description="", audio_url=url,
                  source="ai", reply_id="r1", **extra)  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon speaking with the real espeak-ng (WAV) and a fake LLM that
    answers with the prompt (``echo``); levels every 10 XP, 10 XP a chat message."""
    with ExitStack() as exits:
        llm = exits.enter_context(fake_llm("echo"))
        yield exits.enter_context(
            Daemon.start(
                tmp_path_factory.mktemp("triggers"),
                env={
                    **DAEMON_ENV,
                    "BAMBID_AI_URL": llm.url,
                    "BAMBID_VOICE_BACKEND": "espeak",
                    "BAMBID_VOICE_FORMAT": "wav",
                    "BAMBID_XP_LEVELS": "10,20,30,40,50,60,70,80",
                    "BAMBID_XP_CHAT_MESSAGE": "10",
                    "BAMBID_LIMITS_CHAT_BURST": "50",
                },
            )
        )


@pytest.fixture
def people(browser: Browser) -> Iterator[People]:
    found = People(browser)
    yield found
    found.close()


def real_tab(people: People, daemon: Daemon, name: str, **person: Any) -> Tab:
    context = people.person(daemon, name, **person)
    return people.tab(
        context, daemon, before=lambda page: page.add_init_script(script=CLIPS_SCRIPT)
    )


def scripted_tab(
    people: People, daemon: Daemon, user: dict[str, Any], ready: bool = True, **options: Any
) -> tuple[Tab, TriggerServer]:
    fakes: list[TriggerServer] = []

    def before(page: Page) -> None:
        page.add_init_script(script=CLIPS_SCRIPT)
        fakes.append(TriggerServer(page, user))

    tab = people.tab(people.person(daemon, None, **options), daemon, before=before, ready=ready)
    return tab, fakes[0]


def earn(tab: Tab, levels: int) -> None:
    """Posts chat messages until the person reached ``levels`` more levels (10 XP each)."""
    page = tab.page
    start = int(page.locator("#triggers-panel").get_attribute("data-level") or "0")
    for n in range(1, levels + 1):
        page.locator("#message-input").fill(f"Hello, number {n}.")
        page.locator("#message-input").press("Enter")
        expect(page.locator("#xp-level")).to_have_text(f"Lv {start + n}", timeout=WAIT)


def panel(page: Page) -> Any:
    return page.locator("#triggers-panel")


def toggle(page: Page, name: str) -> Any:
    return panel(page).get_by_role("checkbox", name=name, exact=True)


def clips(page: Page) -> list[tuple[str, str | None, str | None]]:
    return [(c["event"], c["kind"], c["key"]) for c in page.evaluate("window.__clips")]


def starts(page: Page) -> list[tuple[str | None, str | None]]:
    return [(kind, key) for event, kind, key in clips(page) if event == "start"]


def assert_one_at_a_time(page: Page) -> None:
    """Every clip ended before the next one started, and never two at once."""
    events = clips(page)
    assert page.evaluate("window.__maxActive") <= 1
    for i, (event, _, _) in enumerate(events):
        assert event == ("start" if i % 2 == 0 else "end"), events


# --- the real stack ------------------------------------------------------------------------------


def test_below_level_one_the_panel_is_locked(people: People, stack: Daemon) -> None:
    tab = real_tab(people, stack, "lock_ada")
    page = tab.page
    expect(panel(page)).to_be_visible()
    expect(panel(page)).to_have_attribute("data-state", "locked")
    expect(page.locator("#trig-lock-text")).to_have_text("Triggers unlock at level 1")
    expect(page.locator("#trig-lock-meta")).to_have_text("You are level 0 · 0 / 10 XP to level 1.")
    expect(page.locator("#trig-badge")).to_have_text("Level 1")
    expect(page.locator("#trig-grid")).to_be_hidden()
    expect(panel(page).get_by_role("checkbox")).to_have_count(0)

    # One chat message earns the level: the panel opens where it is.
    earn(tab, 1)
    expect(panel(page)).to_have_attribute("data-state", "open", timeout=WAIT)
    expect(toggle(page, "Deep Breath")).to_be_visible()
    expect(page.locator("#trig-lock")).to_be_hidden()
    # The audio controls wait for level 6.
    expect(page.locator("#trig-audio-lock")).to_have_text(
        "The loop, pace, cue loudness and background sound unlock at level 6."
    )
    expect(panel(page).get_by_role("switch", name="Continuous loop")).to_be_disabled()
    tab.assert_clean()

    # A guest is level 0 for good: the lock says why.
    context = people.browser.new_context()
    people.contexts.append(context)
    answer = context.request.post(stack.http + "/api/auth/guest", data={"name": "lock_guest"})
    assert answer.status in (200, 201), answer.text()
    guest = people.tab(context, stack)
    expect(panel(guest.page)).to_have_attribute("data-state", "locked")
    expect(guest.page.locator("#trig-lock-meta")).to_have_text(
        "Guests do not earn XP: create an account to unlock triggers."
    )
    guest.assert_clean()

    # Nobody signed in: no panel.
    reader = people.tab(people.person(stack, None), stack, ready=False)
    expect(reader.page.locator("#connection-state")).to_have_attribute(
        "data-state", "connected", timeout=WAIT
    )
    expect(panel(reader.page)).to_be_hidden()
    reader.assert_clean()


def test_a_trigger_is_saved_and_every_tab_follows(people: People, stack: Daemon) -> None:
    frames: list[dict[str, Any]] = []
    context = people.person(stack, "save_ada")
    first = people.tab(context, stack)
    earn(first, 1)
    second = people.tab(
        context,
        stack,
        before=lambda page: page.on(
            "websocket",
            lambda ws: ws.on("framereceived", lambda p: frames.append(json.loads(str(p)))),
        ),
    )
    for tab in (first, second):
        expect(panel(tab.page)).to_have_attribute("data-state", "open", timeout=WAIT)
    page = first.page
    # Grouped by category, each with its description.
    titles = page.locator("#trig-grid legend").all_text_contents()
    assert titles[:2] == ["Breathing", "Relaxation"]
    box = toggle(page, "Deep Breath")
    expect(box).to_have_accessible_description(re.compile(r"A slow, full breath"))
    expect(box).not_to_be_checked()
    save = page.get_by_role("button", name="Save", exact=True)
    expect(save).to_be_disabled()

    box.check()
    expect(page.locator("#trig-save-state")).to_have_text("Not saved yet")
    save.click()
    expect(page.locator("#trig-save-state")).to_have_text("Saved", timeout=WAIT)
    expect(page.locator("#trig-badge")).to_have_text("1 on")
    # The other tab follows the server's triggers.state.
    expect(toggle(second.page, "Deep Breath")).to_be_checked(timeout=WAIT)
    expect(second.page.locator("#trig-badge")).to_have_text("1 on")
    pushed = [f for f in frames if f["type"] == "triggers.state" and "id" not in f]
    assert pushed and pushed[-1]["enabled"] == ["deep-breath"]

    # Select all, then clear all; saved from the second tab this time.
    other = second.page
    other.get_by_role("button", name="Select all").click()
    expect(toggle(other, "Sit Tall")).to_be_checked()
    expect(other.get_by_role("button", name="Clear all")).to_be_visible()
    other.get_by_role("button", name="Clear all").click()
    toggle(other, "Sit Tall").check()
    other.get_by_role("button", name="Save", exact=True).click()
    expect(toggle(page, "Sit Tall")).to_be_checked(timeout=WAIT)
    expect(toggle(page, "Deep Breath")).not_to_be_checked()

    # Stored: a reload shows it.
    page.reload()
    first.wait_ready()
    expect(toggle(page, "Sit Tall")).to_be_checked(timeout=WAIT)
    first.assert_clean()
    second.assert_clean()


def test_a_streamed_reply_fires_the_cue(people: People, stack: Daemon) -> None:
    frames: list[dict[str, Any]] = []
    context = people.person(stack, "fire_ada")

    def before(page: Page) -> None:
        page.add_init_script(script=CLIPS_SCRIPT)
        page.on(
            "websocket",
            lambda ws: ws.on("framereceived", lambda p: frames.append(json.loads(str(p)))),
        )

    tab = people.tab(context, stack, before=before)
    page = tab.page
    earn(tab, 1)
    expect(panel(page)).to_have_attribute("data-state", "open", timeout=WAIT)
    toggle(page, "Deep Breath").check()
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#trig-save-state")).to_have_text("Saved", timeout=WAIT)

    prompt = "Breathe in slowly. Now take a deep breath and hold it. Let your shoulders relax."
    tab.ask(prompt)
    tab.wait_idle()
    until(page, lambda: any(f["type"] == "voice.done" for f in frames))
    fired = [f for f in frames if f["type"] == "trigger.fired"]
    assert [(f["key"], f["source"]) for f in fired] == [("deep-breath", "ai")]
    spoken = [f for f in frames if f["type"] == "voice.audio"]
    assert len(spoken) == 3

    # The cue sounds once, every sentence too, never two at once.
    expect(page.locator("#voice-caption")).to_have_attribute("data-played", "3", timeout=WAIT)
    expect(panel(page)).to_have_attribute("data-cues", "1", timeout=WAIT)
    until(page, lambda: len(clips(page)) == 8)
    assert sorted(starts(page), key=str) == sorted(
        [("cue", "deep-breath")] + [("speech", f"{spoken[0]['reply_id']}/{i}") for i in range(3)],
        key=str,
    )
    assert [s for s in starts(page) if s[0] == "speech"] == [
        ("speech", f"{spoken[0]['reply_id']}/{i}") for i in range(3)
    ]
    assert_one_at_a_time(page)
    cue = next(c for c in page.evaluate("window.__clips") if c["kind"] == "cue")
    assert cue["src"] == fired[0]["audio_url"]
    # Its name was on screen while it sounded.
    flashes = [f for f in page.evaluate("window.__flashes") if f["key"] == "deep-breath"]
    assert flashes == [{"key": "deep-breath", "text": "Deep Breath", "visible": "true"}]
    flash = page.locator("#flash")
    expect(flash).to_have_attribute("data-visible", "false", timeout=WAIT)
    tab.assert_clean()


# --- the queue, scripted ------------------------------------------------------------------------


def test_a_cue_waits_for_the_sentence_then_plays_before_the_next(
    people: People, stack: Daemon
) -> None:
    tab, fake = scripted_tab(people, stack, person(1))
    page = tab.page
    expect(panel(page)).to_have_attribute("data-state", "open", timeout=WAIT)
    fake.reply("r1")
    fake.audio("r1", 0, name="long-r1-0")
    until(page, lambda: starts(page) == [("speech", "r1/0")])
    fake.audio("r1", 1)
    fake.fire("deep-breath", "Deep Breath")
    fake.push(type="effect.flash", text="Deep Breath", key="deep-breath")
    fake.audio("r1", 2)
    # Both wait behind the sentence being spoken: nothing talks over it.
    expect(page.locator("#voice-caption")).to_have_attribute("data-queued", "2")
    expect(panel(page)).to_have_attribute("data-fired", "1")
    page.wait_for_timeout(300)
    assert starts(page) == [("speech", "r1/0")]
    # Its flash waits for its sound.
    expect(page.locator("#flash[data-visible='true']")).to_have_count(0)

    page.get_by_role("button", name="Skip to the next sentence").click()
    until(page, lambda: len(clips(page)) == 8)
    assert starts(page) == [
        ("speech", "r1/0"),
        ("cue", "deep-breath"),
        ("speech", "r1/1"),
        ("speech", "r1/2"),
    ]
    assert_one_at_a_time(page)
    flashes = [f for f in page.evaluate("window.__flashes") if f["key"] == "deep-breath"]
    assert flashes == [{"key": "deep-breath", "text": "Deep Breath", "visible": "true"}]
    expect(page.locator("#flash")).to_have_attribute("data-count", "1")
    expect(page.locator("#voice-caption")).to_have_attribute("data-played", "2")

    # A flash of its own (no cue waiting for that key) shows at once.
    fake.push(type="effect.flash", text="Sit Tall", key="sit-tall")
    expect(page.locator("#flash")).to_have_attribute("data-text", "Sit Tall")
    expect(page.locator("#flash")).to_have_attribute("data-visible", "true")
    expect(page.locator("#flash")).to_have_attribute("data-visible", "false", timeout=WAIT)
    tab.assert_clean()


def test_play_selected_random_and_loop(people: People, stack: Daemon) -> None:
    tab, fake = scripted_tab(people, stack, person(8))
    page = tab.page
    fake.catalog["triggers"][0]["audio_url"] = "/audio/triggers/long-deep-breath"
    fake.enabled = ["deep-breath", "sit-tall"]
    page.reload()
    tab.wait_ready()
    expect(toggle(page, "Deep Breath")).to_be_checked(timeout=WAIT)
    play = page.get_by_role("button", name="Play selected")
    stop = page.get_by_role("button", name="Stop the playlist")
    expect(stop).to_be_disabled()

    # Fastest speed: the gaps between cues are short.
    panel(page).get_by_label("Pace").fill("10")
    until(page, lambda: bool(fake.sent("settings.set")))
    assert fake.sent("settings.set")[-1]["values"] == {"speed": 10}
    expect(page.locator("#trig-speed-out")).to_have_text("10 (faster)")

    play.click()
    until(page, lambda: starts(page) == [("playlist", "deep-breath")])
    expect(page.locator("#trig-now")).to_have_text("Playing: Deep Breath")
    expect(page.locator('.trig-item[data-key="deep-breath"]')).to_have_attribute(
        "data-playing", "true"
    )
    expect(page.locator("#flash")).to_have_attribute("data-text", "Deep Breath")
    expect(stop).to_be_enabled()
    # A fired cue jumps the playlist's queue, never its clip.
    fake.fire("slow-exhale", "Slow Exhale")
    expect(panel(page)).to_have_attribute("data-fired", "1")
    page.locator("#trig-stop").focus()  # the keyboard reaches it
    expect(stop).to_be_focused()
    page.keyboard.press("Enter")  # stops the playlist's long cue
    until(page, lambda: ("cue", "slow-exhale") in starts(page))
    until(page, lambda: len(clips(page)) == 4)
    assert starts(page) == [("playlist", "deep-breath"), ("cue", "slow-exhale")]
    expect(page.locator("#trig-now")).to_have_text("")

    # Play selected again, only Sit Tall this time: in order, then it ends.
    toggle(page, "Deep Breath").uncheck()
    play.click()
    until(page, lambda: starts(page)[-1] == ("playlist", "sit-tall"))
    expect(stop).to_be_disabled(timeout=WAIT)
    before = len(starts(page))

    # The continuous loop plays the selection again and again (stored).
    panel(page).get_by_role("switch", name="Continuous loop").check()
    until(page, lambda: fake.sent("settings.set")[-1]["values"] == {"loop": True})
    page.get_by_role("button", name="Random playlist").click()
    until(page, lambda: len(starts(page)) >= before + 3)
    assert set(starts(page)[before:]) == {("playlist", "sit-tall")}
    expect(page.locator("#trig-now")).not_to_have_text("")
    stop.click()
    expect(stop).to_be_disabled()
    # Nothing starts after the stop (the stopped clip's own "end" may still
    # be reported a moment later).
    count = len(starts(page))
    page.wait_for_timeout(500)
    assert len(starts(page)) == count
    assert_one_at_a_time(page)
    tab.assert_clean()


def test_audio_settings_follow_the_server(people: People, stack: Daemon) -> None:
    tab, fake = scripted_tab(people, stack, person(6))
    page = tab.page
    expect(panel(page)).to_have_attribute("data-state", "open", timeout=WAIT)
    expect(page.locator("#trig-audio-lock")).to_be_hidden()
    volume = panel(page).get_by_label("Cue loudness")
    expect(volume).to_have_value("80")
    volume.fill("40")
    until(page, lambda: bool(fake.sent("settings.set")))
    assert fake.sent("settings.set")[-1] == {
        "type": "settings.set",
        "id": fake.sent("settings.set")[-1]["id"],
        "section": "audio",
        "values": {"volume": 0.4},
    }
    expect(page.locator("#trig-volume-out")).to_have_text("40 %")
    # Cues play at that volume.
    fake.fire("sit-tall", "Sit Tall")
    until(page, lambda: ("cue", "sit-tall") in starts(page))
    assert page.evaluate("document.getElementById('voice-audio').volume") == pytest.approx(0.4)

    # Another tab changed them: this one follows.
    fake.settings.update(volume=0.6, speed=2, loop=True, background_volume=0.5)
    fake.push(type="settings.state", section="audio", values=fake.settings)
    expect(volume).to_have_value("60")
    expect(panel(page).get_by_label("Pace")).to_have_value("2")
    expect(page.locator("#trig-speed-out")).to_have_text("2 (slower)")
    expect(panel(page).get_by_role("switch", name="Continuous loop")).to_be_checked()
    expect(panel(page).get_by_label("Background loudness")).to_have_value("50")

    # The background loop plays under everything, through Web Audio.
    panel(page).get_by_label("Background sound").select_option("rain")
    until(page, lambda: fake.sent("settings.set")[-1]["values"] == {"background": "rain"})
    page.locator("#triggers-title").click()  # a gesture lets the audio context run
    expect(panel(page)).to_have_attribute("data-background", "rain:playing", timeout=WAIT)
    expect(page.locator("#trig-background-state")).to_have_text("playing")
    panel(page).get_by_label("Background sound").select_option("")
    expect(panel(page)).to_have_attribute("data-background", "")

    # Refused: the control goes back to what the server has, and says why politely.
    fake.refuse["settings.set"] = {
        "type": "error",
        "code": "level_required",
        "message": "The audio playlist unlocks at level 6",
        "feature": "audio_playlist",
        "level": 6,
    }
    volume.fill("10")
    expect(page.locator("#trig-status")).to_have_text(
        "The loop, pace, loudness and background sound unlock at level 6."
    )
    expect(volume).to_have_value("60")
    tab.assert_clean()


def test_errors_and_the_catalog(people: People, stack: Daemon) -> None:
    tab, fake = scripted_tab(people, stack, person(1))
    page = tab.page
    expect(panel(page)).to_have_attribute("data-state", "open", timeout=WAIT)
    assert fake.catalog_fetches == 1
    expect(panel(page).get_by_label("Cue loudness")).to_be_disabled()

    fake.refuse["triggers.set"] = {
        "type": "error",
        "code": "level_required",
        "message": "Triggers unlock at level 1",
        "feature": "triggers",
        "level": 1,
    }
    toggle(page, "Sit Tall").check()
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#trig-status")).to_have_text("Not saved: triggers unlock at level 1.")
    expect(page.locator("#trig-save-state")).to_have_text("Not saved yet")
    fake.refuse["triggers.set"] = {"type": "error", "code": "bad_request",
                                   "message": "unknown trigger: sit-tall"}  # fmt: skip
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#trig-status")).to_have_text("Not saved: unknown trigger: sit-tall")

    # The catalog was reloaded on the server: the grid follows.
    fake.catalog["triggers"].append(
        {
            "key": "jaw-relax",
            "name": "Jaw Relax",
            "aliases": [],
            "description": "Unclench.",
            "category": "relaxation",
            "audio_url": "/audio/triggers/jaw-relax",
        }  # fmt: skip
    )
    fake.catalog["categories"].append("relaxation")
    fake.catalog["version"] = 2
    fake.push(type="triggers.catalog", version=2)
    expect(toggle(page, "Jaw Relax")).to_be_visible(timeout=WAIT)
    assert fake.catalog_fetches == 2
    expect(page.locator("#trig-grid legend")).to_have_text(["Breathing", "Posture", "Relaxation"])

    # Hearing one cue: the small play button beside it.
    page.get_by_role("button", name="Hear Jaw Relax").click()
    until(page, lambda: ("cue", "jaw-relax") in starts(page))
    tab.assert_clean()


# --- looks ----------------------------------------------------------------------------------------


def test_the_tools_look_neat(people: People, stack: Daemon, shots: Path) -> None:
    tab, fake = scripted_tab(people, stack, person(6), reduced_motion=True)
    page = tab.page
    fake.enabled = ["deep-breath"]
    page.reload()
    tab.wait_ready()
    expect(toggle(page, "Deep Breath")).to_be_checked(timeout=WAIT)
    tools = page.locator("#tools")
    tools.scroll_into_view_if_needed()
    panel(page).screenshot(path=str(shots / "triggers-panel-desktop.png"))
    page.screenshot(path=str(shots / "triggers-page-desktop.png"), full_page=True)
    selectors = [".trig-name", ".trig-desc", ".trig-label", ".trig-out", ".trig-help",
                 ".trig-group-title", ".trig-subtitle", ".form-check-label"]  # fmt: skip
    contrast = page.evaluate(CONTRAST_JS, selectors)
    assert {s: round(r, 2) for s, r in contrast.items() if r < 4.5} == {}
    # The chat still fills the window; the tools follow below it.
    chat = page.locator("#chat").bounding_box()
    box = tools.bounding_box()
    assert chat is not None and box is not None
    assert box["y"] >= chat["y"] + chat["height"]
    tab.assert_clean()

    phone, fake = scripted_tab(
        people, stack, person(0), ready=False, viewport=(375, 740), reduced_motion=True
    )
    page = phone.page
    expect(panel(page)).to_have_attribute("data-state", "locked", timeout=WAIT)
    panel(page).screenshot(path=str(shots / "triggers-locked-phone.png"))
    phone.assert_clean()

    phone, fake = scripted_tab(
        people, stack, person(8), ready=False, viewport=(375, 740), reduced_motion=True
    )
    page = phone.page
    expect(panel(page)).to_have_attribute("data-state", "open", timeout=WAIT)
    panel(page).screenshot(path=str(shots / "triggers-panel-phone.png"))
    assert page.evaluate("document.documentElement.scrollWidth") <= 375, "no sideways scrolling"
    for selector in ("#trig-all", "#trig-save", "#trig-play", "#trig-random", "#trig-stop",
                     "#trig-speed", "#trig-background"):  # fmt: skip
        found = page.locator(selector).bounding_box()
        assert found is not None, selector
        assert found["x"] >= 0 and found["x"] + found["width"] <= 375, selector
        assert found["height"] >= 24, selector
    phone.assert_clean()

"""The companion's voice in a real headless Chromium (Debian's, driven by
Playwright): the audio queue, the caption, the controls.

With the real stack (a daemon subprocess speaking with the real espeak-ng, and
the fake LLM subprocess): a reply's clips are fetched from ``/audio/tts/…`` and
played in index order, the caption showing each sentence; choosing a voice
sends ``voice.set`` and the server's ``voice.prefs`` comes back.

Client rules that need a server on cue (a failed sentence, duplicates, Stop,
a new reply, other tabs' preferences) use a WebSocket that Playwright answers
itself (``FakeServer`` from test_browser_companion); the clips and the voice
list are then answered by Playwright too (``page.route``): short WAV tones.

Headless Chromium lets any page play sound. The browser rule that matters on a
phone (iOS plays only on an element that once played inside a user gesture) is
recreated by a test-side init script that makes ``play()`` refuse
(``NotAllowedError``) otherwise; the page's own code is unchanged.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import wave
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.daemon import Daemon
from tests.test_browser_chat import CONTRAST_JS
from tests.test_browser_companion import DAEMON_ENV, FakeServer, People, Tab, fake_llm, until

pytestmark = pytest.mark.slow

WAIT = 15000  # ms

#: Runs before the page's scripts (test side only): records each clip that
#: starts playing, as the caption names it when the element says "playing".
RECORD_SCRIPT = """
window.__plays = [];
document.addEventListener("playing", (event) => {
  const caption = document.getElementById("voice-caption");
  const src = event.target.currentSrc || "";
  if (!caption || src.startsWith("blob:")) return;
  window.__plays.push({
    reply: caption.dataset.replyId || null,
    index: caption.dataset.index === undefined ? null : Number(caption.dataset.index),
    src: new URL(src).pathname,
    text: document.getElementById("voice-caption-text").textContent,
  });
}, true);
"""

#: The iOS rule, recreated: an element plays only while a trusted tap, click or
#: key press is being dispatched, or once it has played inside one. (Chromium's
#: own user activation cannot be used: Playwright's ``evaluate`` grants it.)
#: Counts every play() call.
GESTURE_RULE_SCRIPT = """
(() => {
  const play = HTMLMediaElement.prototype.play;
  const blessed = new WeakSet();
  let inGesture = false;
  for (const type of ["pointerup", "touchend", "click", "keydown"]) {
    window.addEventListener(type, (event) => {
      if (!event.isTrusted) return;
      inGesture = true;
      setTimeout(() => { inGesture = false; }, 0);
    }, true);
  }
  window.__playCalls = 0;
  HTMLMediaElement.prototype.play = function () {
    window.__playCalls += 1;
    if (!blessed.has(this)) {
      if (!inGesture) {
        return Promise.reject(new DOMException("gesture needed", "NotAllowedError"));
      }
      blessed.add(this);
    }
    return play.call(this);
  };
})();
"""

VOICES = {
    "backend": "kokoro",
    "default_voice": "af_heart",
    "fallback": "espeak",
    "voices": [
        {"id": "af_heart", "name": "af_heart", "backend": "kokoro", "language": "en-us",
         "gender": "female"},
        {"id": "am_adam", "name": "am_adam", "backend": "kokoro", "language": "en-us",
         "gender": "male"},
        {"id": "bf_emma", "name": "bf_emma", "backend": "kokoro", "language": "en-gb",
         "gender": "female"},
    ],
}  # fmt: skip

PREFS = {
    "enabled": True,
    "voice": "af_heart",
    "speed": 1.0,
    "volume": 1.0,
    "backend": "kokoro",
    "default_voice": "af_heart",
}

SENTENCES = [
    "Breathe in slowly.",
    "Hold it for a moment.",
    "Now let it go, and relax your shoulders.",
]
REPLY_TEXT = " ".join(SENTENCES)


def tone(seconds: float, rate: int = 8000) -> bytes:
    """A WAV clip: a soft 440 Hz tone of ``seconds``."""
    frames = int(seconds * rate)
    samples = (int(3000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(frames))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(rate)
        clip.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return buffer.getvalue()


SHORT = tone(0.3)
LONG = tone(8.0)


# --- a scripted server with clips --------------------------------------------------------------


class VoiceServer(FakeServer):
    """``FakeServer`` that also answers ``voice.prefs`` / ``voice.set`` like
    bambid, and (through ``page.route``) the clips, the voice list and
    ``/api/tts``. A clip's name says what it is: ``long-*`` lasts 8 s,
    ``gone-*`` is a 404 (evicted), anything else 0.3 s."""

    def __init__(self, page: Page) -> None:
        super().__init__(page)
        self.prefs = dict(PREFS)
        self.refuse_set: str | None = None  # an error code for the next voice.set
        self.fetched: list[str] = []  # clip paths, /api/voices, /api/tts?… as asked
        self.answers["voice.prefs"] = lambda m: [
            {"type": "voice.prefs", "id": m["id"], **self.prefs}
        ]
        self.answers["voice.set"] = self._set
        page.route(re.compile(r"/audio/tts/"), self._clip)
        page.route(re.compile(r"/api/voices$"), self._voices)
        page.route(re.compile(r"/api/tts\?"), self._tts)

    def _set(self, m: dict[str, Any]) -> list[dict[str, Any]]:
        if self.refuse_set:
            code, self.refuse_set = self.refuse_set, None
            return [{"type": "error", "id": m["id"], "code": code, "message": "unknown voice"}]
        for key in ("enabled", "voice", "speed", "volume"):
            if key in m:
                self.prefs[key] = m[key]
        return [{"type": "ack", "id": m["id"]}, {"type": "voice.prefs", **self.prefs}]

    def _clip(self, route: Route) -> None:
        path = urlparse(route.request.url).path
        self.fetched.append(path)
        name = path.rsplit("/", 1)[-1]
        if name.startswith("gone-"):
            route.fulfill(status=404, body="{}", content_type="application/json")
            return
        body = LONG if name.startswith("long-") else SHORT
        route.fulfill(status=200, body=body, content_type="audio/wav")

    def _voices(self, route: Route) -> None:
        self.fetched.append("/api/voices")
        route.fulfill(status=200, body=json.dumps(VOICES), content_type="application/json")

    def _tts(self, route: Route) -> None:
        url = urlparse(route.request.url)
        self.fetched.append(url.path + "?" + url.query)
        route.fulfill(status=200, body=SHORT, content_type="audio/wav")

    # --- pushing a reply ------------------------------------------------------------------

    def reply(self, reply_id: str, text: str = REPLY_TEXT, prompt: str = "Help me relax.") -> None:
        """A whole reply from another tab: start, one delta, done."""
        self.push(type="ai.start", reply_id=reply_id, conversation_id="c1", prompt=prompt)
        self.push(type="ai.delta", reply_id=reply_id, index=1, text=text)
        self.push(type="ai.done", reply_id=reply_id, text=text, finish_reason="stop")

    def audio(self, reply_id: str, index: int, name: str | None = None, text: str = "") -> None:
        self.push(
            type="voice.audio",
            reply_id=reply_id,
            index=index,
            url=f"/audio/tts/{name or f'{reply_id}-{index}'}.wav",
            text=text or SENTENCES[index % len(SENTENCES)],
            voice="af_heart",
            backend="kokoro",
        )


@pytest.fixture
def people(browser: Browser) -> Iterator[People]:
    found = People(browser)
    yield found
    found.close()


def voice_tab(
    people: People, daemon: Daemon, gesture_rule: bool = False, **person: Any
) -> tuple[Tab, VoiceServer]:
    fakes: list[VoiceServer] = []

    def before(page: Page) -> None:
        page.add_init_script(script=RECORD_SCRIPT)
        # A phone shows the chat first: open on the companion (as a person who chose it).
        page.add_init_script(script="sessionStorage.setItem('bambid.view', 'companion');")
        if gesture_rule:
            page.add_init_script(script=GESTURE_RULE_SCRIPT)
        fakes.append(VoiceServer(page))

    tab = people.tab(people.person(daemon, None, **person), daemon, before=before)
    expect(tab.page.locator("#voice:not([hidden])")).to_have_count(1, timeout=WAIT)
    return tab, fakes[0]


def plays(page: Page) -> list[tuple[str, int]]:
    """(reply, index) of each clip that started, a resumed clip counted once."""
    found: list[tuple[str, int]] = []
    for p in page.evaluate("window.__plays"):
        entry = (p["reply"], p["index"])
        if not found or found[-1] != entry:
            found.append(entry)
    return found


def wait_plays(page: Page, expected: list[tuple[str, int]]) -> None:
    until(page, lambda: len(plays(page)) >= len(expected))
    assert plays(page) == expected


def caption(page: Page) -> Any:
    return page.locator("#voice-caption")


def wait_idle(page: Page) -> None:
    expect(caption(page)).to_have_attribute("data-state", "idle", timeout=WAIT)


def open_settings(page: Page) -> None:
    button = page.get_by_role("button", name="Voice settings")
    if button.get_attribute("aria-expanded") != "true":
        button.click()
    expect(page.locator("#voice-settings")).to_be_visible()


# --- the queue ------------------------------------------------------------------------------------


def test_a_reply_plays_in_index_order(people: People, daemon: Daemon) -> None:
    tab, fake = voice_tab(people, daemon)
    page = tab.page
    # The preferences are asked for after the conversation.
    kinds = [m["type"] for m in fake.received]
    assert kinds.index("voice.prefs") > kinds.index("ai.history")
    expect(caption(page)).to_have_attribute("data-state", "idle")
    expect(page.locator("#voice-caption-text")).to_have_text(
        "Your companion’s replies are read aloud."
    )

    fake.reply("r1")
    fake.audio("r1", 0)
    fake.audio("r1", 1)
    fake.audio("r1", 1)  # a repeat is not played twice
    fake.audio("r1", 2)
    fake.push(type="voice.done", reply_id="r1", sentences=3, stopped=False)
    wait_plays(page, [("r1", 0), ("r1", 1), ("r1", 2)])
    wait_idle(page)
    expect(caption(page)).to_have_attribute("data-played", "3")
    recorded = page.evaluate("window.__plays")
    assert [p["text"] for p in recorded] == SENTENCES  # the caption showed each sentence
    assert [p["src"] for p in recorded] == [f"/audio/tts/r1-{i}.wav" for i in range(3)]
    # The whole reply stays readable in the transcript.
    expect(page.locator("#companion-turns > .cturn--assistant .cturn-body")).to_have_text(
        REPLY_TEXT
    )
    tab.assert_clean()


def test_a_failed_sentence_does_not_stall_the_queue(people: People, daemon: Daemon) -> None:
    tab, fake = voice_tab(people, daemon)
    page = tab.page
    fake.reply("r1")
    fake.audio("r1", 0)
    fake.push(
        type="voice.error",
        reply_id="r1",
        index=1,
        code="unavailable",
        message="Kokoro is not answering",
        text=SENTENCES[1],
    )
    fake.audio("r1", 2)
    wait_plays(page, [("r1", 0), ("r1", 2)])
    status = page.locator("#voice-status")
    expect(status).to_have_text("A sentence was skipped: the voice service is not answering.")
    wait_idle(page)

    # A clip that is gone (evicted from the cache) is skipped too.
    fake.reply("r2")
    fake.audio("r2", 0, name="gone-r2-0")
    fake.audio("r2", 1)
    wait_plays(page, [("r1", 0), ("r1", 2), ("r2", 1)])
    expect(status).to_have_text("A sentence could not be played and was skipped.")
    wait_idle(page)
    assert tab.dialogs == []
    # The failed load is the browser's own console line; nothing else went wrong.
    assert [p for p in tab.problems if "404" not in p] == []


def test_skip_pause_and_stop(people: People, daemon: Daemon) -> None:
    tab, fake = voice_tab(people, daemon)
    page = tab.page
    fake.reply("r1")
    fake.audio("r1", 0, name="long-r1-0")
    fake.audio("r1", 1, name="long-r1-1")
    fake.audio("r1", 2)
    wait_plays(page, [("r1", 0)])
    expect(caption(page)).to_have_attribute("data-state", "playing")
    expect(caption(page)).to_have_attribute("data-queued", "2")
    expect(page.locator("#voice-caption-text")).to_have_text(SENTENCES[0])

    # The sentence being spoken is marked in the reply's text.
    marked = page.evaluate(
        "() => { const h = CSS.highlights.get('voice-sentence');"
        " return h ? [...h][0].toString() : null; }"
    )
    assert marked == SENTENCES[0]

    page.get_by_role("button", name="Skip to the next sentence").click()
    wait_plays(page, [("r1", 0), ("r1", 1)])
    expect(page.locator("#voice-caption-text")).to_have_text(SENTENCES[1])

    # Pause and play again: the same sentence goes on.
    page.get_by_role("button", name="Pause speaking").click()
    expect(caption(page)).to_have_attribute("data-state", "paused")
    assert page.evaluate("document.getElementById('voice-audio').paused")
    page.get_by_role("button", name="Play the reply aloud").click()
    expect(caption(page)).to_have_attribute("data-state", "playing")
    assert plays(page) == [("r1", 0), ("r1", 1)]

    page.get_by_role("button", name="Silence the reply").click()
    wait_idle(page)
    expect(caption(page)).to_have_attribute("data-queued", "0")
    assert page.evaluate("document.getElementById('voice-audio').paused")
    assert page.evaluate("CSS.highlights.has('voice-sentence')") is False
    # Later sentences of the stopped reply are not spoken.
    fake.audio("r1", 3, name="r1-3")
    page.wait_for_timeout(300)
    expect(caption(page)).to_have_attribute("data-queued", "0")
    assert plays(page) == [("r1", 0), ("r1", 1)]
    # The next reply speaks again.
    fake.reply("r2")
    fake.audio("r2", 0)
    wait_plays(page, [("r1", 0), ("r1", 1), ("r2", 0)])
    tab.assert_clean()


def test_the_companion_stop_button_silences_its_reply(people: People, daemon: Daemon) -> None:
    tab, fake = voice_tab(people, daemon)
    page = tab.page
    fake.answers["ai.stop"] = lambda m: [
        {"type": "ack", "id": m["id"], "reply_id": m["reply_id"], "stopped": True},
        {"type": "ai.done", "reply_id": m["reply_id"], "text": SENTENCES[0],
         "finish_reason": "stopped"},
        {"type": "voice.done", "reply_id": m["reply_id"], "sentences": 2, "stopped": True},
    ]  # fmt: skip
    # A reply still streaming, speaking its first sentence with another queued.
    fake.push(type="ai.start", reply_id="r1", conversation_id="c1", prompt="Talk to me.")
    fake.push(type="ai.delta", reply_id="r1", index=1, text=SENTENCES[0] + " " + SENTENCES[1])
    fake.audio("r1", 0, name="long-r1-0")
    fake.audio("r1", 1)
    wait_plays(page, [("r1", 0)])
    expect(caption(page)).to_have_attribute("data-queued", "1")

    page.get_by_role("button", name="Stop", exact=True).click()
    wait_idle(page)
    expect(caption(page)).to_have_attribute("data-queued", "0")
    assert fake.sent("ai.stop")[-1]["reply_id"] == "r1"
    tab.wait_idle()
    assert plays(page) == [("r1", 0)]
    tab.assert_clean()


def test_a_new_reply_drops_the_previous_ones_pending_clips(people: People, daemon: Daemon) -> None:
    tab, fake = voice_tab(people, daemon)
    page = tab.page
    fake.reply("r1")
    fake.audio("r1", 0, name="long-r1-0")
    fake.audio("r1", 1)
    fake.audio("r1", 2)
    wait_plays(page, [("r1", 0)])
    expect(caption(page)).to_have_attribute("data-queued", "2")

    # The next reply starts (asked in another tab): r1's waiting sentences go;
    # the one being spoken ends (skipped here to be quick), then r2 speaks.
    fake.push(type="ai.start", reply_id="r2", conversation_id="c1", prompt="And now?")
    expect(caption(page)).to_have_attribute("data-queued", "0")
    expect(caption(page)).to_have_attribute("data-reply-id", "r1")
    fake.push(type="ai.delta", reply_id="r2", index=1, text=SENTENCES[2])
    fake.audio("r2", 0, text=SENTENCES[2])
    fake.audio("r1", 3)  # late, from the old reply: ignored
    expect(caption(page)).to_have_attribute("data-queued", "1")
    page.get_by_role("button", name="Skip to the next sentence").click()
    wait_plays(page, [("r1", 0), ("r2", 0)])
    wait_idle(page)
    assert not any("r1-3" in path for path in fake.fetched)
    tab.assert_clean()


def test_auto_play_off_queues_until_play(people: People, daemon: Daemon) -> None:
    tab, fake = voice_tab(people, daemon)
    page = tab.page
    open_settings(page)
    autoplay = page.get_by_role("switch", name="Play automatically")
    expect(autoplay).to_be_checked()
    autoplay.uncheck()
    assert page.evaluate("localStorage.getItem('bambid.voice.autoplay')") == "0"
    expect(page.locator("#voice-caption-text")).to_have_text("Replies wait for you to press Play.")

    fake.reply("r1")
    fake.audio("r1", 0)
    fake.audio("r1", 1)
    expect(caption(page)).to_have_attribute("data-state", "waiting")
    expect(caption(page)).to_have_attribute("data-queued", "2")
    expect(page.locator("#voice-caption-text")).to_have_text(
        "2 sentences are waiting: press Play to hear them."
    )
    page.wait_for_timeout(300)
    assert plays(page) == []

    page.get_by_role("button", name="Play the reply aloud").click()
    fake.audio("r1", 2)  # arriving while it plays: part of what was asked for
    wait_plays(page, [("r1", 0), ("r1", 1), ("r1", 2)])
    wait_idle(page)

    # Remembered on this device.
    page.reload()
    tab.wait_ready()
    expect(page.locator("#voice")).to_be_visible(timeout=WAIT)
    open_settings(page)
    expect(page.get_by_role("switch", name="Play automatically")).not_to_be_checked()
    tab.assert_clean()


def test_sound_waits_for_a_gesture(people: People, daemon: Daemon, shots: Path) -> None:
    """As on iOS: no sound before the person touched the page; the queue is
    kept (no retry loop), and their next tap plays it."""
    tab, fake = voice_tab(people, daemon, gesture_rule=True)
    page = tab.page
    fake.reply("r1")
    fake.audio("r1", 0)
    unlock = page.get_by_role("button", name="Tap to enable sound")
    expect(unlock).to_be_visible(timeout=WAIT)
    expect(caption(page)).to_have_attribute("data-state", "blocked")
    fake.audio("r1", 1)
    expect(caption(page)).to_have_attribute("data-queued", "1")
    calls = page.evaluate("window.__playCalls")
    page.wait_for_timeout(500)
    assert page.evaluate("window.__playCalls") == calls, "play() was retried without a gesture"
    assert plays(page) == []
    page.screenshot(path=str(shots / "voice-blocked.png"))

    # A tap anywhere (here: the conversation) plays the queue.
    page.locator("#companion-log").click()
    wait_plays(page, [("r1", 0), ("r1", 1)])
    expect(unlock).to_be_hidden()
    wait_idle(page)
    # The element stays unlocked: the next reply plays without a gesture.
    fake.reply("r2")
    fake.audio("r2", 0)
    wait_plays(page, [("r1", 0), ("r1", 1), ("r2", 0)])
    tab.assert_clean()


def test_the_first_key_press_unlocks_sound(people: People, daemon: Daemon) -> None:
    tab, fake = voice_tab(people, daemon, gesture_rule=True)
    page = tab.page
    page.keyboard.press("Tab")  # any key, before anything is spoken
    until(page, lambda: page.evaluate("window.__playCalls") > 0)  # the silent clip
    fake.reply("r1")
    fake.audio("r1", 0)
    wait_plays(page, [("r1", 0)])
    expect(page.get_by_role("button", name="Tap to enable sound")).to_be_hidden()
    tab.assert_clean()


# --- the controls ---------------------------------------------------------------------------------


def test_voice_picker_speed_and_speak_replies(people: People, daemon: Daemon) -> None:
    tab, fake = voice_tab(people, daemon)
    page = tab.page
    open_settings(page)
    select = page.get_by_label("Voice", exact=True)
    expect(select).to_have_value("af_heart")
    groups = page.evaluate(
        "[...document.querySelectorAll('#voice-select optgroup')].map((g) =>"
        " [g.label, [...g.querySelectorAll('option')].map((o) => o.textContent)])"
    )
    assert groups == [
        ["American English", ["af_heart · female · default", "am_adam · male"]],
        ["British English", ["bf_emma · female"]],
    ]
    expect(page.locator("#voice-backend")).to_have_text(
        "Voices by Kokoro. If it fails, eSpeak NG speaks instead."
    )

    select.select_option("bf_emma")
    until(page, lambda: bool(fake.sent("voice.set")))
    assert {k: v for k, v in fake.sent("voice.set")[-1].items() if k != "id"} == {
        "type": "voice.set",
        "voice": "bf_emma",
    }
    expect(select).to_have_value("bf_emma")

    speed = page.get_by_label("Speed")
    expect(speed).to_have_value("1")
    speed.select_option("1.25")
    until(page, lambda: fake.sent("voice.set")[-1].get("speed") == 1.25)

    speak = page.get_by_role("switch", name="Speak replies")
    expect(speak).to_be_checked()
    speak.uncheck()
    until(page, lambda: fake.sent("voice.set")[-1].get("enabled") is False)
    expect(page.locator("#voice-caption-text")).to_have_text("Speaking replies is off.")

    # Changed in another tab: this one follows.
    fake.push(type="voice.prefs", **{**PREFS, "voice": "am_adam", "speed": 0.75})
    expect(select).to_have_value("am_adam")
    expect(speed).to_have_value("0.75")
    expect(speak).to_be_checked()

    # Refused: the choice goes back to what the server has.
    fake.refuse_set = "bad_request"
    select.select_option("bf_emma")
    expect(page.locator("#voice-status")).to_contain_text("not changed: unknown voice")
    expect(select).to_have_value("am_adam")

    # Preview: the selected voice says a short sample through /api/tts.
    page.get_by_role("button", name="Preview this voice").click()
    until(page, lambda: any(f.startswith("/api/tts?") for f in fake.fetched))
    query = parse_qs(next(f for f in fake.fetched if f.startswith("/api/tts?")).split("?", 1)[1])
    assert query["voice"] == ["am_adam"]
    assert query["text"] == ["Breathe in slowly, and let your shoulders relax."]

    # Volume plays here at once and is sent, so that it follows the person.
    volume = page.get_by_label("Volume")
    volume.fill("40")
    expect(page.locator("#voice-volume-out")).to_have_text("40 %")
    assert page.evaluate("document.getElementById('voice-audio').volume") == pytest.approx(0.4)
    until(page, lambda: fake.sent("voice.set")[-1].get("volume") == 0.4)
    # Changed on another device: this one plays at the server's volume.
    fake.push(type="voice.prefs", **{**fake.prefs, "volume": 0.25})
    expect(page.locator("#voice-volume-out")).to_have_text("25 %")
    assert page.evaluate("document.getElementById('voice-audio').volume") == pytest.approx(0.25)

    # Escape closes the settings, focus back on their button.
    select.focus()
    page.keyboard.press("Escape")
    expect(page.locator("#voice-settings")).to_be_hidden()
    expect(page.get_by_role("button", name="Voice settings")).to_be_focused()
    tab.assert_clean()


def test_keyboard_and_look(people: People, daemon: Daemon, shots: Path) -> None:
    tab, fake = voice_tab(people, daemon, reduced_motion=True)
    page = tab.page
    for name in ("Play the reply aloud", "Skip to the next sentence", "Silence the reply"):
        expect(page.get_by_role("button", name=name)).to_be_disabled()
    fake.reply("r1")
    fake.audio("r1", 0, name="long-r1-0")
    fake.audio("r1", 1, name="long-r1-1")
    wait_plays(page, [("r1", 0)])

    # Keyboard only: focus the skip button and press it.
    skip = page.get_by_role("button", name="Skip to the next sentence")
    skip.focus()
    page.keyboard.press("Enter")
    wait_plays(page, [("r1", 0), ("r1", 1)])
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_role("button", name="Pause speaking")).to_be_focused()
    page.keyboard.press("Space")
    expect(caption(page)).to_have_attribute("data-state", "paused")
    page.keyboard.press("Space")
    expect(caption(page)).to_have_attribute("data-state", "playing")
    settings = page.get_by_role("button", name="Voice settings")
    settings.focus()
    page.keyboard.press("Enter")
    expect(settings).to_have_attribute("aria-expanded", "true")
    expect(page.get_by_label("Voice", exact=True)).to_have_value("af_heart")
    page.screenshot(path=str(shots / "voice-desktop.png"))
    panel = page.locator("#companion")
    panel.screenshot(path=str(shots / "voice-panel.png"))

    selectors = [
        ".voice-caption-text",
        ".voice-label",
        ".voice-help",
        ".voice-backend",
        ".form-check-label",
        ".voice-volume-out",
    ]
    contrast = page.evaluate(CONTRAST_JS, selectors)
    assert set(contrast) == set(selectors)
    assert {s: round(r, 2) for s, r in contrast.items() if r < 4.5} == {}
    tab.assert_clean()


def test_phone_width(people: People, daemon: Daemon, shots: Path) -> None:
    tab, fake = voice_tab(people, daemon, viewport=(375, 740), reduced_motion=True)
    page = tab.page
    expect(page.locator("#chat-main")).to_be_hidden()
    page.screenshot(path=str(shots / "voice-phone-idle.png"))
    fake.reply("r1")
    fake.audio("r1", 0, name="long-r1-0", text=SENTENCES[2])
    wait_plays(page, [("r1", 0)])
    page.screenshot(path=str(shots / "voice-phone.png"))
    open_settings(page)
    page.locator("#voice-settings").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "voice-phone-settings.png"))
    assert page.evaluate("document.documentElement.scrollWidth") <= 375, "no sideways scrolling"
    for selector in ("#voice-caption", "#voice-play", "#voice-skip", "#voice-stop",
                     "#voice-settings-button", "#voice-select", "#voice-preview"):  # fmt: skip
        box = page.locator(selector).bounding_box()
        assert box is not None, selector
        assert box["x"] >= 0 and box["x"] + box["width"] <= 375, selector
        # Big enough to tap.
        if selector != "#voice-caption":
            assert box["height"] >= 30, selector
    tab.assert_clean()


# --- the real stack: espeak-ng speaks the fake LLM's reply ---------------------------------------


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon speaking with the real espeak-ng (WAV clips) and a fake LLM
    that answers with the prompt itself (``echo``)."""
    with ExitStack() as exits:
        llm = exits.enter_context(fake_llm("echo"))
        daemon = exits.enter_context(
            Daemon.start(
                tmp_path_factory.mktemp("voice"),
                env={
                    **DAEMON_ENV,
                    "BAMBID_AI_URL": llm.url,
                    "BAMBID_VOICE_BACKEND": "espeak",
                    "BAMBID_VOICE_FORMAT": "wav",
                },
            )
        )
        yield daemon


def test_the_real_stack_speaks_a_reply_in_order(people: People, spoken: Daemon) -> None:
    server = spoken
    frames: list[dict[str, Any]] = []

    def before(page: Page) -> None:
        page.add_init_script(script=RECORD_SCRIPT)
        page.on(
            "websocket",
            lambda ws: ws.on("framereceived", lambda p: frames.append(json.loads(str(p)))),
        )

    tab = people.tab(people.person(server, "voice_ada"), server, before=before)
    page = tab.page
    expect(page.locator("#voice")).to_be_visible(timeout=WAIT)

    prompt = "Breathe in slowly. Hold it for a moment. Now let it go."
    tab.ask(prompt)
    tab.wait_idle()
    until(page, lambda: any(f["type"] == "voice.done" for f in frames))
    announced = [f for f in frames if f["type"] == "voice.audio"]
    assert [f["index"] for f in announced] == list(range(len(announced)))
    assert len(announced) == 3
    assert [f["backend"] for f in announced] == ["espeak"] * 3
    reply_id = announced[0]["reply_id"]
    wait_plays(page, [(reply_id, i) for i in range(3)])
    wait_idle(page)
    recorded = page.evaluate("window.__plays")
    assert [p["src"] for p in recorded] == [f["url"] for f in announced]
    assert [p["text"] for p in recorded] == [f["text"] for f in announced]
    assert "".join(p["text"] for p in recorded).replace(" ", "") == prompt.replace(" ", "")
    tab.assert_clean()


def test_the_real_stack_changes_the_voice(people: People, spoken: Daemon) -> None:
    server = spoken
    context = people.person(server, "voice_bea")
    first = people.tab(context, server)
    second = people.tab(context, server)
    for tab in (first, second):
        expect(tab.page.locator("#voice")).to_be_visible(timeout=WAIT)
    page = first.page
    open_settings(page)
    select = page.get_by_label("Voice", exact=True)
    # espeak-ng's own list, from the server.
    until(page, lambda: page.locator("#voice-select option").count() > 5)
    expect(page.locator("#voice-backend")).to_contain_text("Voices by eSpeak NG")
    current = select.input_value()
    other = next(
        v
        for v in page.evaluate(
            "[...document.querySelectorAll('#voice-select option')].map((o) => o.value)"
        )
        if v != current and v.startswith("en")
    )
    select.select_option(other)
    # The server stores it and tells every tab.
    expect(select).to_have_value(other, timeout=WAIT)
    open_settings(second.page)
    expect(second.page.get_by_label("Voice", exact=True)).to_have_value(other, timeout=WAIT)
    # And it stays across a reload.
    page.reload()
    first.wait_ready()
    open_settings(page)
    expect(page.get_by_label("Voice", exact=True)).to_have_value(other, timeout=WAIT)
    first.assert_clean()
    second.assert_clean()

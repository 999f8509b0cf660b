"""The trigger-mania page (/psychodelic-trigger-mania) in a real headless
Chromium (Debian's, driven by Playwright) against a real daemon subprocess
speaking with the real espeak-ng (WAV clips).

Covered: the full-screen spiral canvas animates (and stays still under reduced
motion); a guest's ``.txt`` file is read aloud sentence by sentence
(``voice.read`` → ``voice.audio`` played in order, the caption showing each
sentence) while their trigger panel stays locked; Stop sends ``voice.stop`` and
silences the page; files that are too big, empty or not text are refused in the
page, before anything is sent; an account at level 1 plays its triggers here
(cue, flash) and the chat page open beside it does not speak the reading;
nobody signed in gets a sign-in prompt; desktop and phone screenshots.
Clips are observed through the ``<audio>`` element's events and the data
attributes the page sets, never through timing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, FilePayload, Page, expect

from tests.browsersupport import watch
from tests.daemon import Daemon
from tests.test_browser_companion import DAEMON_ENV, PASSWORD, WATCH_SCRIPT, until
from tests.test_browser_triggers import CLIPS_SCRIPT, clips, starts

pytestmark = pytest.mark.slow

WAIT = 15000  # ms
PATH = "/psychodelic-trigger-mania"
LIMIT = 30720  # triggers.read_max_bytes (the default)

#: Runs before the page's scripts (test side only): the caption as each clip starts.
READS_SCRIPT = """
window.__reads = [];
document.addEventListener("playing", (event) => {
  const caption = document.getElementById("mania-caption");
  const src = event.target.currentSrc || "";
  if (!caption || src.startsWith("blob:") || event.target.dataset.kind !== "speech") return;
  window.__reads.push({
    reply: caption.dataset.replyId || null,
    index: caption.dataset.index === undefined ? null : Number(caption.dataset.index),
    text: document.getElementById("mania-caption-text").textContent,
    src: new URL(src).pathname,
  });
}, true);
"""

#: A canvas snapshot, to see it change (a function: the CSP forbids evaluating expressions).
CANVAS_JS = "() => document.getElementById('mania-spirals').toDataURL()"

SENTENCES = [
    "Sit comfortably and let your shoulders drop.",
    "Breathe in slowly through your nose.",
    "Now breathe out, a little longer than you breathed in.",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon speaking with espeak-ng (WAV); a level every 10 XP, 10 XP a chat message."""
    with Daemon.start(
        tmp_path_factory.mktemp("mania"),
        env={
            **DAEMON_ENV,
            "BAMBID_VOICE_BACKEND": "espeak",
            "BAMBID_VOICE_FORMAT": "wav",
            "BAMBID_XP_LEVELS": "10,20,30,40,50,60,70,80",
            "BAMBID_XP_CHAT_MESSAGE": "10",
        },
    ) as daemon:
        yield daemon


class Mania:
    """One trigger-mania page, with the frames it sent and received."""

    def __init__(self, context: BrowserContext, server: Daemon, path: str = PATH) -> None:
        self.page = page = context.new_page()
        self.problems, self.dialogs = watch(page, WATCH_SCRIPT)
        page.add_init_script(script=CLIPS_SCRIPT)
        page.add_init_script(script=READS_SCRIPT)
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []

        def on_socket(ws: Any) -> None:
            ws.on("framesent", lambda p: self.sent.append(json.loads(str(p))))
            ws.on("framereceived", lambda p: self.received.append(json.loads(str(p))))

        page.on("websocket", on_socket)
        page.goto(server.http + path)
        expect(page.locator("#mania-connection")).to_have_attribute(
            "data-state", "connected", timeout=WAIT
        )

    def frames(self, kind: str, sent: bool = False) -> list[dict[str, Any]]:
        return [f for f in (self.sent if sent else self.received) if f["type"] == kind]

    def upload(self, name: str, body: bytes, mime: str = "text/plain") -> None:
        payload: FilePayload = {"name": name, "mimeType": mime, "buffer": body}
        self.page.locator("#mania-file").set_input_files(files=[payload])

    def reads(self) -> list[dict[str, Any]]:
        """The sentences that started, one entry each (a clip that stalled and
        went on says "playing" again)."""
        found: list[dict[str, Any]] = []
        for entry in self.page.evaluate("window.__reads"):
            if not found or (found[-1]["reply"], found[-1]["index"]) != (
                entry["reply"],
                entry["index"],
            ):
                found.append(entry)
        return found

    def assert_clean(self) -> None:
        assert self.problems == []
        assert self.dialogs == []
        assert self.page.evaluate("window.__csp") == []


class Visitors:
    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []

    def context(
        self,
        server: Daemon,
        account: str | None = None,
        guest: str | None = None,
        viewport: tuple[int, int] = (1280, 800),
        reduced_motion: bool = False,
    ) -> BrowserContext:
        context = self.browser.new_context(
            viewport={"width": viewport[0], "height": viewport[1]},
            reduced_motion="reduce" if reduced_motion else "no-preference",
        )
        self.contexts.append(context)
        if account:
            answer = context.request.post(
                server.http + "/api/auth/register",
                data={"username": account, "password": PASSWORD},
            )
            assert answer.status == 201, answer.text()
        if guest:
            answer = context.request.post(server.http + "/api/auth/guest", data={"name": guest})
            assert answer.status in (200, 201), answer.text()
        return context

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def visitors(browser: Browser) -> Iterator[Visitors]:
    found = Visitors(browser)
    yield found
    found.close()


def caption(page: Page) -> Any:
    return page.locator("#mania-caption")


def panel(page: Page) -> Any:
    return page.locator("#triggers-panel")


# --- reading a file aloud -------------------------------------------------------------------------


def test_a_guest_hears_a_text_file_sentence_by_sentence(visitors: Visitors, stack: Daemon) -> None:
    mania = Mania(visitors.context(stack, guest="reading_guest"), stack)
    page = mania.page
    # The spirals fill the screen and move.
    canvas = page.locator("#mania-spirals")
    expect(canvas).to_have_attribute("data-animating", "true")
    box = canvas.bounding_box()
    assert box is not None and box["width"] >= 1200 and box["height"] >= 780
    first = page.evaluate(CANVAS_JS)
    page.wait_for_function(
        f"() => document.getElementById('mania-spirals').toDataURL() !== {first!r}"
    )
    # Guests may listen, not use triggers.
    expect(panel(page)).to_have_attribute("data-state", "locked")
    expect(page.locator("#trig-lock-meta")).to_have_text(
        "Guests do not earn XP: create an account to unlock triggers."
    )
    read = page.get_by_role("button", name="Read aloud", exact=True)
    expect(read).to_be_disabled()
    expect(page.locator("#mania-limit")).to_have_text("30 KB")

    text = "\ufeff" + " ".join(SENTENCES) + "\n"
    mania.upload("calm.txt", text.encode("utf-8"))
    size = len(text.encode("utf-8"))
    expect(page.locator("#mania-file-info")).to_have_text(f"“calm.txt” · {size} bytes · 23 words")
    expect(page.locator("#mania-caption-text")).to_have_text("Press Read aloud to hear “calm.txt”.")
    read.click()
    until(page, lambda: bool(mania.frames("voice.done")))
    asked = mania.frames("voice.read", sent=True)
    assert [f["text"] for f in asked] == [" ".join(SENTENCES) + "\n"]  # without the BOM
    announced = mania.frames("voice.audio")
    assert len(announced) == 3
    reply_id = announced[0]["reply_id"]
    assert reply_id.startswith("read-")
    until(page, lambda: len(mania.reads()) == 3)
    assert [(r["reply"], r["index"]) for r in mania.reads()] == [(reply_id, i) for i in range(3)]
    assert [r["src"] for r in mania.reads()] == [f["url"] for f in announced]
    assert [r["text"] for r in mania.reads()] == [f["text"] for f in announced]
    expect(caption(page)).to_have_attribute("data-state", "done", timeout=WAIT)
    expect(caption(page)).to_have_attribute("data-played", "3")
    expect(page.locator("#mania-caption-text")).to_have_text("Finished reading “calm.txt”.")
    expect(page.get_by_role("button", name="Stop reading")).to_be_disabled()
    assert page.evaluate("window.__maxActive") == 1
    mania.assert_clean()


def test_stop_reading(visitors: Visitors, stack: Daemon) -> None:
    mania = Mania(visitors.context(stack, guest="stopping_guest"), stack)
    page = mania.page
    body = " ".join(f"This is calm sentence number {n}, read slowly." for n in range(1, 25))
    mania.upload("long.txt", body.encode())
    page.get_by_role("button", name="Read aloud", exact=True).click()
    until(page, lambda: len(mania.reads()) >= 1)
    expect(caption(page)).to_have_attribute("data-state", "reading")
    stop = page.get_by_role("button", name="Stop reading")
    stop.click()
    until(page, lambda: bool(mania.frames("voice.stop", sent=True)))
    reply_id = mania.frames("voice.audio")[0]["reply_id"]
    assert mania.frames("voice.stop", sent=True)[-1]["reply_id"] == reply_id
    expect(caption(page)).to_have_attribute("data-state", "idle")
    expect(page.locator("#mania-caption-text")).to_have_text("Reading stopped.")
    expect(stop).to_be_disabled()
    # The server ends it (or says it had already finished).
    until(page, lambda: any("stopped" in f for f in mania.frames("ack")))
    assert page.evaluate("document.getElementById('playback-audio').paused")
    played = len(mania.reads())
    page.wait_for_timeout(500)
    assert len(mania.reads()) == played < 24
    mania.assert_clean()


def test_files_are_checked_before_anything_is_sent(visitors: Visitors, stack: Daemon) -> None:
    mania = Mania(visitors.context(stack, guest="checking_guest"), stack)
    page = mania.page
    status = page.locator("#mania-status")
    read = page.get_by_role("button", name="Read aloud", exact=True)

    mania.upload("big.txt", b"Breathe. " * 8000)  # 72 000 bytes
    expect(status).to_have_text("“big.txt” is 70 KB: the limit is 30 KB.")
    expect(status).to_have_attribute("data-tone", "error")
    expect(read).to_be_disabled()
    mania.upload("picture.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, mime="image/png")
    expect(status).to_have_text(
        "Only plain text files (.txt) can be read aloud; “picture.png” is not one."
    )
    mania.upload("empty.txt", b"")
    expect(status).to_have_text("“empty.txt” is empty.")
    mania.upload("blank.txt", b"  \n\n ")
    expect(status).to_have_text("“blank.txt” has no words to read.")
    expect(read).to_be_disabled()
    # Exactly the limit is fine.
    mania.upload("edge.txt", b"a" * (LIMIT - 1) + b".")
    expect(status).to_have_text("")
    expect(page.locator("#mania-file-info")).to_have_text("“edge.txt” · 30 KB · 1 word")
    expect(read).to_be_enabled()
    assert mania.frames("voice.read", sent=True) == []
    mania.assert_clean()


# --- triggers here, and the chat page beside it --------------------------------------------------


def test_an_account_plays_its_triggers_here(visitors: Visitors, stack: Daemon) -> None:
    context = visitors.context(stack, account="mania_ada")
    home = context.new_page()
    home_problems, _ = watch(home)
    home.add_init_script(script=CLIPS_SCRIPT)
    home.goto(stack.http + "/")
    home.locator("#message-input").fill("Hello there.")
    home.locator("#message-input").press("Enter")
    expect(home.locator("#xp-level")).to_have_text("Lv 1", timeout=WAIT)

    mania = Mania(context, stack)
    page = mania.page
    expect(panel(page)).to_have_attribute("data-state", "open", timeout=WAIT)
    box = panel(page).get_by_role("checkbox", name="Sit Tall", exact=True)
    box.check()
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#trig-save-state")).to_have_text("Saved", timeout=WAIT)
    # The chat page beside it follows.
    expect(
        home.locator("#triggers-panel").get_by_role("checkbox", name="Sit Tall", exact=True)
    ).to_be_checked(timeout=WAIT)

    page.get_by_role("button", name="Play selected").click()
    until(page, lambda: ("playlist", "sit-tall") in starts(page))
    expect(page.locator("#flash")).to_have_attribute("data-text", "Sit Tall")
    expect(page.locator("#trig-now")).to_have_text("Playing: Sit Tall")
    until(page, lambda: len(clips(page)) == 2)
    expect(page.get_by_role("button", name="Stop the playlist")).to_be_disabled(timeout=WAIT)

    # A reading is spoken by the page that asked for it, not by the chat page.
    mania.upload("short.txt", b"Sit tall and breathe.")
    page.get_by_role("button", name="Read aloud", exact=True).click()
    expect(caption(page)).to_have_attribute("data-state", "done", timeout=WAIT)
    assert len(mania.reads()) == 1
    expect(home.locator("#voice-caption")).to_have_attribute("data-played", "0")
    assert [c for c in home.evaluate("window.__clips") if c["kind"] == "speech"] == []
    assert home_problems == []
    mania.assert_clean()


def test_nobody_signed_in_is_asked_to_sign_in(visitors: Visitors, stack: Daemon) -> None:
    mania = Mania(visitors.context(stack), stack)
    page = mania.page
    expect(page.locator("#mania-signin")).to_be_visible()
    expect(page.locator("#mania-reader-form")).to_be_hidden()
    expect(panel(page)).to_be_hidden()
    expect(page.locator("#mania-spirals")).to_have_attribute("data-animating", "true")
    mania.assert_clean()


# --- looks ----------------------------------------------------------------------------------------


def test_the_page_looks_neat(visitors: Visitors, stack: Daemon, shots: Path) -> None:
    mania = Mania(visitors.context(stack, guest="desk_guest"), stack)
    page = mania.page
    mania.upload("calm.txt", " ".join(SENTENCES).encode())
    page.get_by_role("button", name="Read aloud", exact=True).click()
    until(page, lambda: len(mania.reads()) >= 1)
    page.screenshot(path=str(shots / "mania-desktop.png"))
    # Hide the controls: the spirals alone (keyboard reachable button).
    toggle = page.get_by_role("button", name="Hide controls")
    toggle.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#mania-panel")).to_be_hidden()
    expect(page.get_by_role("button", name="Show controls")).to_have_attribute(
        "aria-expanded", "false"
    )
    page.screenshot(path=str(shots / "mania-desktop-bare.png"))
    mania.assert_clean()

    phone = Mania(
        visitors.context(stack, guest="phone_guest", viewport=(375, 740), reduced_motion=True),
        stack,
    )
    page = phone.page
    # Reduced motion: one still frame, nothing animates.
    expect(page.locator("#mania-spirals")).to_have_attribute("data-animating", "false")
    page.screenshot(path=str(shots / "mania-phone.png"))
    page.screenshot(path=str(shots / "mania-phone-full.png"), full_page=True)
    wide = page.evaluate(
        "() => [...document.querySelectorAll('body *')].filter((e) =>"
        " e.getBoundingClientRect().right > 376).map((e) => e.id || e.className).slice(0, 8)"
    )
    assert page.evaluate("document.documentElement.scrollWidth") <= 375, wide
    for selector in ("#mania-file", "#mania-read", "#mania-stop", "#mania-toggle", "#trig-lock"):
        found = page.locator(selector).bounding_box()
        assert found is not None, selector
        assert found["x"] >= 0 and found["x"] + found["width"] <= 375, selector
    phone.assert_clean()

"""The browser effect modules in a real headless Chromium: web/static/js/spirals.js
(the spiral canvas animates, stops, stays still under reduced motion, clamps its
settings, follows its container) and web/static/js/binaural.js (presets, clamps,
a stereo beat really at the beat frequency, timed sequences and their events,
stop). The modules are driven by tests/pages/effects.html, served here by a small
http.server (with bambid's Content-Security-Policy) on 127.0.0.1:0, not by bambid.
No timing assertions: every wait is for a condition."""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from bambid.web.site import CONTENT_SECURITY_POLICY
from tests.browsersupport import CHROMIUM, CHROMIUM_ARGS, watch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PAGES = ROOT / "tests" / "pages"
STATIC = ROOT / "web" / "static"
WAIT = 15000


class Handler(SimpleHTTPRequestHandler):
    """``/static/...`` from web/static, everything else from tests/pages; every
    response carries bambid's CSP so a violation shows up as a console error."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript"}

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0].split("#", 1)[0]
        if path.startswith("/static/"):
            base, rest = STATIC, path[len("/static/") :]
        else:
            base, rest = PAGES, path.lstrip("/")
        target = (base / rest).resolve()
        if not target.is_relative_to(base):
            return str(PAGES / "missing")
        return str(target)

    def end_headers(self) -> None:
        self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(PAGES)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


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
def page(audio_browser: Browser, server: str) -> Iterator[Page]:
    """The effects page, loaded, watched for script errors and CSP violations."""
    context = audio_browser.new_context(device_scale_factor=2)
    page = context.new_page()
    problems, dialogs = watch(page)
    page.goto(server + "/effects.html")
    page.wait_for_selector("body[data-ready='1']", timeout=WAIT)
    yield page
    assert (problems, dialogs) == ([], [])
    context.close()


def wait(page: Page, predicate: str, arg: Any = None) -> None:
    """Wait until ``predicate`` (a JS function, or an expression made into one:
    under the CSP Playwright cannot ``eval`` a bare expression) is truthy."""
    if not re.match(r"\s*(\([^)]*\)|\w+)\s*=>", predicate):
        predicate = f"() => ({predicate})"
    page.wait_for_function(predicate, arg=arg, timeout=WAIT)


# --- spirals ----------------------------------------------------------------------


def test_spirals_animate(page: Page) -> None:
    page.evaluate("effects.spirals.start()")
    assert page.evaluate("[effects.spirals.running, effects.spirals.animating]") == [True, True]
    wait(page, "effects.spirals.frames >= 3")
    first = page.evaluate("[effects.spirals.frames, effects.sample()]")
    wait(page, "n => effects.spirals.frames >= n + 3", first[0])
    second = page.evaluate("effects.sample()")
    assert first[1]["painted"] > 1000 and second["painted"] > 1000
    assert first[1]["hash"] != second["hash"], "the canvas did not change between two frames"
    # Both spiral colours are on the canvas.
    colours = page.evaluate(
        """() => {
            const c = document.getElementById('spirals');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const seen = new Set();
            for (let i = 0; i < d.length; i += 4) {
                if (d[i + 3] === 255) seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]);
            }
            return [seen.has('199,0,199'), seen.has('255,130,255')];
        }"""
    )
    assert colours == [True, True]


def test_spirals_stop(page: Page) -> None:
    page.evaluate("effects.spirals.start()")
    wait(page, "effects.spirals.frames >= 3")
    page.evaluate("effects.spirals.stop()")
    stopped = page.evaluate("effects.spirals.frames")
    assert page.evaluate("[effects.spirals.running, effects.spirals.animating]") == [False, False]
    page.evaluate("effects.frames(10)")
    assert page.evaluate("effects.spirals.frames") == stopped
    assert page.evaluate("effects.sample().painted") == 0, "stop() leaves a clear canvas"
    # It starts again.
    page.evaluate("effects.spirals.start()")
    wait(page, "n => effects.spirals.frames >= n + 3", stopped)


def test_spirals_disabled_draw_nothing(page: Page) -> None:
    page.evaluate("effects.spirals.update({enabled: false}); effects.spirals.start()")
    page.evaluate("effects.frames(5)")
    assert page.evaluate("[effects.spirals.running, effects.spirals.frames]") == [False, 0]
    page.evaluate("effects.spirals.update({enabled: true})")
    wait(page, "effects.spirals.frames >= 3")


def test_spirals_are_still_under_reduced_motion(page: Page) -> None:
    page.emulate_media(reduced_motion="reduce")
    wait(page, "matchMedia('(prefers-reduced-motion: reduce)').matches")
    page.evaluate("effects.frames(2)")  # the media query's change event has been delivered
    page.evaluate("effects.spirals.start()")
    state = page.evaluate(
        "[effects.spirals.running, effects.spirals.animating, effects.spirals.frames]"
    )
    assert state == [True, False, 1], "one still frame, no animation"
    still = page.evaluate("effects.sample()")
    assert still["painted"] > 1000
    page.evaluate("effects.frames(10)")
    assert page.evaluate("effects.spirals.frames") == 1
    assert page.evaluate("effects.sample().hash") == still["hash"]
    # New settings show at once, as another still frame.
    page.evaluate("effects.spirals.update({spiral1Width: 9})")
    assert page.evaluate("[effects.spirals.animating, effects.spirals.frames]") == [False, 2]
    assert page.evaluate("effects.sample().hash") != still["hash"]
    # The preference is watched: motion allowed again, the spirals animate.
    page.emulate_media(reduced_motion="no-preference")
    wait(page, "effects.spirals.animating && effects.spirals.frames >= 4")
    page.emulate_media(reduced_motion="reduce")
    wait(page, "!effects.spirals.animating")


def test_spirals_pause_while_the_tab_is_hidden(page: Page) -> None:
    page.evaluate("effects.spirals.start()")
    wait(page, "effects.spirals.frames >= 2")
    page.evaluate(
        """() => {
            const hidden = {value: 'hidden', configurable: true};
            Object.defineProperty(document, 'visibilityState', hidden);
            document.dispatchEvent(new Event('visibilitychange'));
        }"""
    )
    assert page.evaluate("[effects.spirals.running, effects.spirals.animating]") == [True, False]
    paused = page.evaluate("effects.spirals.frames")
    page.evaluate("effects.frames(5)")
    assert page.evaluate("effects.spirals.frames") == paused
    page.evaluate(
        """() => {
            delete document.visibilityState;
            document.dispatchEvent(new Event('visibilitychange'));
        }"""
    )
    wait(page, "n => effects.spirals.animating && effects.spirals.frames >= n + 2", paused)


def test_spirals_update_clamps(page: Page) -> None:
    defaults = page.evaluate("effects.spirals.settings")
    assert defaults == {
        "enabled": True,
        "spiral1Width": 5,
        "spiral2Width": 3,
        "spiral1Speed": 20,
        "spiral2Speed": 15,
        "rotation": 1.2,
        "spiral1Color": "rgb(199, 0, 199)",
        "spiral2Color": "rgb(255, 130, 255)",
    }
    page.evaluate(
        """effects.spirals.update({
            spiral1Width: 99, spiral2Width: -4, spiral1Speed: '1', spiral2Speed: 1000,
            rotation: -1, spiral1Color: 'red; background: url(x)', spiral2Color: '#336699',
            unknown: 5,
        })"""
    )
    settings = page.evaluate("effects.spirals.settings")
    assert settings["spiral1Width"] == 10
    assert settings["spiral2Width"] == 1
    assert settings["spiral1Speed"] == 5
    assert settings["spiral2Speed"] == 50
    assert settings["rotation"] == 0
    assert settings["spiral1Color"] == "rgb(199, 0, 199)"
    assert settings["spiral2Color"] == "#336699"
    assert "unknown" not in settings
    page.evaluate("effects.spirals.update({spiral1Width: 'abc', spiral2Width: NaN, enabled: 0})")
    settings = page.evaluate("effects.spirals.settings")
    widths = (settings["spiral1Width"], settings["spiral2Width"])
    assert (widths, settings["enabled"]) == ((10, 1), False)
    # The constructor clamps too.
    built = page.evaluate(
        """new effects.Spirals(document.createElement('canvas'),
               {spiral1Width: 0, spiral1Speed: 77.5, spiral2Speed: 12.5}).settings"""
    )
    assert (built["spiral1Width"], built["spiral1Speed"], built["spiral2Speed"]) == (1, 50, 12.5)


def test_spirals_follow_their_container(page: Page) -> None:
    wait(page, "document.getElementById('spirals').width === 800")
    assert page.evaluate("document.getElementById('spirals').height") == 600
    page.evaluate("document.getElementById('stage').style.width = '250px'")
    wait(page, "document.getElementById('spirals').width === 500")
    assert page.evaluate("getComputedStyle(document.getElementById('spirals')).width") == "250px"


# --- binaural ---------------------------------------------------------------------


def start_audio(page: Page) -> None:
    """Wait until the page's audio clock runs (the autoplay policy lets it)."""
    wait(page, "effects.binaural.context && effects.binaural.context.state === 'running'")
    wait(page, "effects.binaural.context.currentTime > 0")


def test_binaural_presets(page: Page) -> None:
    for preset, beat in (("alpha", 10), ("theta", 6), ("delta", 2), ("beta", 20)):
        page.evaluate("p => effects.binaural.play({preset: p})", preset)
        state = page.evaluate(
            """[effects.binaural.playing, effects.binaural.preset, effects.binaural.beat,
                effects.binaural.carrier, effects.binaural.volume]"""
        )
        assert state == [True, preset, beat, 200, 0.5]
    start_audio(page)
    page.evaluate("effects.binaural.stop()")
    types = page.evaluate("effects.events.map(e => e.type)")
    assert types == ["start", "change", "change", "change", "end"]
    assert page.evaluate("effects.events[1].detail") == {
        "beat": 6,
        "carrier": 200,
        "volume": 0.5,
        "preset": "theta",
    }


def test_binaural_clamps(page: Page) -> None:
    page.evaluate("effects.binaural.play({beat: 45, carrier: 50, volume: 3})")
    state = page.evaluate(
        """[effects.binaural.preset, effects.binaural.beat, effects.binaural.carrier,
            effects.binaural.volume]"""
    )
    assert state == ["custom", 30, 100, 1]
    page.evaluate("effects.binaural.play({beat: 0.1, carrier: 900})")
    assert page.evaluate("[effects.binaural.beat, effects.binaural.carrier]") == [1, 500]
    page.evaluate("effects.binaural.play({beat: 'x', carrier: null})")
    assert page.evaluate("[effects.binaural.beat, effects.binaural.carrier]") == [1, 500]
    page.evaluate("effects.binaural.setVolume(-2)")
    assert page.evaluate("effects.binaural.volume") == 0
    page.evaluate("effects.binaural.setVolume('0.25')")
    assert page.evaluate("effects.binaural.volume") == 0.25
    error = page.evaluate(
        "() => { try { effects.binaural.play({preset: 'gamma'}); } catch (e) { return e.name; } }"
    )
    assert error == "RangeError"
    assert page.evaluate("effects.binaural.beat") == 1, "a refused play() changes nothing"


def test_binaural_beat_is_between_the_ears(page: Page) -> None:
    """The left ear hears the carrier, the right ear carrier + beat (peak FFT bins)."""
    page.evaluate(
        """() => {
            window.probe = effects.analysedBinaural();
            probe.instance.play({preset: 'beta', carrier: 300, volume: 1});
        }"""
    )
    wait(page, "probe.context.state === 'running'")
    wait(
        page,
        """() => {
            const [left, right] = probe.peaks();
            const near = (hz, want) => Math.abs(hz - want) <= 2 * probe.resolution;
            return left.db > -60 && near(left.hz, 300) && near(right.hz, 320);
        }""",
    )
    # Retuned while playing: the right ear glides to the new beat.
    page.evaluate("probe.instance.play({beat: 8, glide: 0})")
    wait(
        page,
        """() => {
            const [left, right] = probe.peaks();
            return Math.abs(left.hz - 300) <= 2 * probe.resolution
                && Math.abs(right.hz - 308) <= 2 * probe.resolution;
        }""",
    )
    # dispose() leaves a context it was given open.
    page.evaluate("probe.instance.dispose()")
    state = page.evaluate("[probe.instance.sounding, probe.context.state]")
    assert state == [False, "running"]
    page.evaluate("probe.context.close()")


def test_binaural_dispose_closes_its_own_context(page: Page) -> None:
    assert page.evaluate("effects.binaural.context") is None, "created on the first play()"
    page.evaluate("effects.binaural.play({preset: 'alpha'})")
    start_audio(page)
    page.evaluate("window.own = effects.binaural.context; effects.binaural.dispose()")
    assert page.evaluate("[own.state, effects.binaural.context, effects.binaural.playing]") == [
        "closed",
        None,
        False,
    ]


def test_binaural_stop_really_stops(page: Page) -> None:
    page.evaluate("effects.binaural.play({preset: 'alpha'})")
    start_audio(page)
    assert page.evaluate("[effects.binaural.playing, effects.binaural.sounding]") == [True, True]
    # stop() resolves once the oscillators have ended and been disconnected.
    page.evaluate("effects.binaural.stop()")
    assert page.evaluate("[effects.binaural.playing, effects.binaural.sounding]") == [False, False]
    last = page.evaluate("effects.events.at(-1)")
    assert last == {"type": "end", "detail": {"reason": "stopped"}}
    # Stopping twice is harmless; playing again works.
    page.evaluate("effects.binaural.stop()")
    page.evaluate("effects.binaural.play({preset: 'delta'})")
    assert page.evaluate("[effects.binaural.playing, effects.binaural.beat]") == [True, 2]
    page.evaluate("effects.binaural.stop()")


def test_binaural_sequence_steps_through_its_segments(page: Page) -> None:
    page.evaluate(
        "effects.binaural.sequence('descent', {totalMinutes: 0.02, transitionSeconds: 0.1})"
    )
    assert page.evaluate("effects.binaural.pattern") == "descent"
    assert page.evaluate("effects.binaural.segment") == {
        "index": 0,
        "count": 3,
        "wave": "alpha",
        "beat": 10,
        "seconds": pytest.approx(0.3),
        "pattern": "descent",
    }
    wait(page, "effects.events.some(e => e.type === 'end')")
    events = page.evaluate("effects.events")
    assert [e["type"] for e in events] == ["start", "segment", "segment", "segment", "end"]
    segments = [e["detail"] for e in events if e["type"] == "segment"]
    assert [(s["index"], s["wave"], s["beat"]) for s in segments] == [
        (0, "alpha", 10),
        (1, "theta", 6),
        (2, "delta", 2),
    ]
    # The segments keep the pattern's 5:10:5 proportions, scaled to 0.02 minutes.
    assert [s["seconds"] for s in segments] == pytest.approx([0.3, 0.6, 0.3])
    assert events[-1]["detail"] == {"reason": "finished"}
    state = page.evaluate(
        "[effects.binaural.playing, effects.binaural.pattern, effects.binaural.segment]"
    )
    assert state == [False, None, None]
    wait(page, "!effects.binaural.sounding")


def test_binaural_custom_sequence(page: Page) -> None:
    page.evaluate(
        """effects.binaural.sequence(
               [{wave: 'theta', minutes: 1}, {beat: 12.5, minutes: 3}, {beat: 99, minutes: 1}],
               {totalMinutes: 0.025, transitionSeconds: 500, carrier: 250})"""
    )
    assert page.evaluate("[effects.binaural.carrier, effects.binaural.pattern]") == [250, "custom"]
    wait(page, "effects.events.some(e => e.type === 'end')")
    segments = page.evaluate("effects.events.filter(e => e.type === 'segment').map(e => e.detail)")
    assert [(s["wave"], s["beat"]) for s in segments] == [
        ("theta", 6),
        ("alpha", 12.5),
        ("beta", 30),
    ]
    assert [s["seconds"] for s in segments] == pytest.approx([0.3, 0.9, 0.3])


def test_binaural_refuses_bad_patterns(page: Page) -> None:
    errors = page.evaluate(
        """[ 'nope', [], [{minutes: 1}], [{wave: 'alpha', minutes: 0}], [{wave: 'alpha'}],
             [null], Array.from({length: 33}, () => ({wave: 'alpha', minutes: 1})) ]
           .map(p => { try { effects.binaural.sequence(p); return 'accepted'; }
                       catch (e) { return e.name; } })"""
    )
    assert errors == ["RangeError"] * 7
    bad_total = page.evaluate(
        """() => { try { effects.binaural.sequence('focus', {totalMinutes: 0}); }
                   catch (e) { return e.message; } }"""
    )
    assert "totalMinutes" in bad_total
    assert page.evaluate("[effects.binaural.playing, effects.events.length]") == [False, 0]


def test_play_ends_a_running_sequence(page: Page) -> None:
    page.evaluate("effects.binaural.sequence('focus', {totalMinutes: 10})")
    assert page.evaluate("effects.binaural.segment.wave") == "alpha"
    page.evaluate("effects.binaural.play({preset: 'theta'})")
    state = page.evaluate(
        """[effects.binaural.playing, effects.binaural.pattern, effects.binaural.segment,
            effects.binaural.beat]"""
    )
    assert state == [True, None, None, 6]
    assert page.evaluate("effects.events.map(e => e.type)") == ["start", "segment", "change"]
    page.evaluate("effects.binaural.stop()")
    assert page.evaluate("effects.events.at(-1).detail.reason") == "stopped"


def test_pattern_library(page: Page) -> None:
    patterns = page.evaluate(
        """Object.fromEntries(Object.entries(effects.PATTERNS).map(
               ([name, p]) => [name, p.map(s => [s.wave, s.beat, s.minutes])]))"""
    )
    assert patterns == {
        "descent": [["alpha", 10, 5], ["theta", 6, 10], ["delta", 2, 5]],
        "ascent": [["delta", 2, 5], ["theta", 6, 10], ["alpha", 10, 5]],
        "focus": [["alpha", 10, 5], ["beta", 18, 10], ["alpha", 10, 5]],
        "trance": [["alpha", 10, 5], ["theta", 6, 10], ["alpha", 9, 5]],
    }
    assert page.evaluate("effects.PRESETS") == {"alpha": 10, "theta": 6, "delta": 2, "beta": 20}
    scaled = page.evaluate("effects.resolvePattern('trance', 40).map(s => s.seconds)")
    assert scaled == [600, 1200, 600]


# --- the audio library ------------------------------------------------------------


def test_audio_library_decodes_in_chromium(page: Page) -> None:
    """Every shipped sound decodes through Web Audio, and the loops come out at
    exactly 40 s (Chromium honours the LAME header: no padding, so no gap)."""
    names = sorted(
        p.relative_to(STATIC / "audio").as_posix() for p in (STATIC / "audio").rglob("*.mp3")
    )
    assert names
    decoded = page.evaluate(
        """async (names) => {
            const out = {};
            for (const name of names) {
                const context = new OfflineAudioContext(1, 1, 44100);
                const response = await fetch('/static/audio/' + name);
                const buffer = await context.decodeAudioData(await response.arrayBuffer());
                out[name] = buffer.duration;
            }
            return out;
        }""",
        names,
    )
    assert sorted(decoded) == names
    for name, seconds in decoded.items():
        if name.startswith("background/"):
            assert seconds == pytest.approx(40, abs=1e-3), name
        else:
            assert 0.05 < seconds < 10, name

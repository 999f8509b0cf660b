"""The AI companion panel in a real headless Chromium (Debian's, driven by
Playwright) against a real daemon subprocess whose ``[ai] url`` points at a
fake OpenAI-compatible server subprocess (``python -m tests.fakellm``).

Covered with the real stack: a reply streams in (a partial state is seen, then
the whole text) and ends, and Regenerate answers again; Stop mid-reply; the
Markdown subset and an HTML payload shown inert (the ``echo`` scenario); a
reload mid-reply resumes without duplicated text; two tabs of one person see
the same reply, a new conversation and a loaded past one; no backend (a
failing one, a closed port) gives a friendly message; the anonymous visitor;
phone width.

Client rules that need a server to misbehave on cue (duplicate and catch-up
deltas, queue positions, every error code, a reconnect) use a WebSocket that
Playwright answers itself (``page.route_web_socket``); the page still comes
from a daemon. The Markdown renderer is also driven directly with hostile
input.

Each scenario gets its own fake LLM and daemon (module scope, started on
first use); every test uses its own people.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, WebSocketRoute, expect

from tests.browsersupport import CSP_RECORDER, watch
from tests.daemon import REPO, Daemon, daemon_environment
from tests.fakellm import NORMAL_REPLY
from tests.test_browser_chat import CONTRAST_JS, SocketCutter

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
WAIT = 15000  # ms, for anything that crosses the network
#: Seconds between the fake's tokens: "slow" leaves time to act mid-reply.
TOKEN_DELAY = {"slow": 0.2, "echo": 0.03, "normal": 0.0, "fail": 0.0}
DAEMON_ENV = {
    "BAMBID_LIMITS_CONNECTION_BURST": "1000",
    "BAMBID_LIMITS_CONNECTION_PER_SECOND": "1000",
    "BAMBID_AI_CONCURRENCY": "4",
}

#: This module's daemons only (other modules import DAEMON_ENV): past
#: conversations (session history) unlock at level 1, reached with the first
#: companion reply (1 XP a level), so the tests can open them.
HISTORY_ENV = {
    "BAMBID_XP_LEVELS": "[1, 2, 3, 4, 5, 6, 7, 8]",
    "BAMBID_XP_UNLOCKS": "session_history,triggers,collar,spirals,hypnosis,"
    "audio_playlist,binaural,advanced_binaural",
}

#: Runs before the page's scripts: records CSP violations.
WATCH_SCRIPT = CSP_RECORDER

#: The panel's turns as the reader sees them.
TURNS_JS = """
() => [...document.querySelectorAll("#companion-turns > .cturn")].map((li) => ({
  role: li.classList.contains("cturn--user") ? "user" : "assistant",
  text: li.querySelector(".cturn-body").textContent,
  note: li.querySelector(".cturn-note")?.hidden === false
    ? li.querySelector(".cturn-note").textContent : "",
  live: li.classList.contains("cturn--live"),
  stopped: li.classList.contains("cturn--stopped"),
  pending: li.classList.contains("cturn--pending"),
}))
"""

#: Resolves with the streaming reply's text once it has some (a partial state).
PARTIAL_JS = """
() => {
  const li = document.querySelector("#companion-turns > .cturn--live.cturn--streaming");
  const text = li ? li.querySelector(".cturn-body").textContent : "";
  return text.length > 0 ? text : null;
}
"""


# --- the stack: a fake LLM and a daemon per scenario ------------------------------------------


@attrs.define
class FakeLLM:
    process: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_fake/stats", timeout=5) as r:
            found: dict[str, int] = json.load(r)
        return found


@contextmanager
def fake_llm(scenario: str) -> Iterator[FakeLLM]:
    """``python -m tests.fakellm --scenario SCENARIO`` until the block ends."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakellm",
            "--scenario",
            scenario,
            "--token-delay",
            str(TOKEN_DELAY[scenario]),
        ],
        cwd=REPO,
        env=daemon_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.search(r"listening on (\d+)", first)
        assert match, f"the fake LLM said {first!r}"
        stdout = process.stdout
        threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()
        yield FakeLLM(process, int(match.group(1)))
    finally:
        process.kill()
        process.wait(timeout=30)


def closed_port_url() -> str:
    """A base URL where nothing listens (the port was just free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@attrs.define
class Stack:
    daemon: Daemon
    llm: FakeLLM | None


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Stack]]:
    """``stacks(scenario)``: the daemon (and fake LLM) for a scenario, started
    once per module. ``"closed"`` is a daemon whose backend port is closed."""
    with ExitStack() as exits:
        started: dict[str, Stack] = {}

        def get(scenario: str) -> Stack:
            if scenario not in started:
                llm = None if scenario == "closed" else exits.enter_context(fake_llm(scenario))
                url = llm.url if llm is not None else closed_port_url()
                daemon = exits.enter_context(
                    Daemon.start(
                        tmp_path_factory.mktemp(f"companion-{scenario}"),
                        env={**DAEMON_ENV, **HISTORY_ENV, "BAMBID_AI_URL": url},
                    )
                )
                started[scenario] = Stack(daemon, llm)
            return started[scenario]

        yield get


# --- people and their tabs ---------------------------------------------------------------------


@attrs.define
class Tab:
    """One page of the chat with the companion panel."""

    page: Page
    problems: list[str]
    dialogs: list[str]

    @property
    def input(self) -> Any:
        return self.page.locator("#companion-input")

    def ask(self, text: str) -> None:
        self.input.fill(text)
        self.input.press("Enter")

    def turns(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.page.evaluate(TURNS_JS)
        return found

    def partial(self) -> str:
        """Waits for a streaming reply with some text, and returns that text."""
        handle = self.page.wait_for_function(PARTIAL_JS, timeout=WAIT)
        text: str = handle.json_value()
        return text

    def wait_idle(self) -> None:
        """Waits until no reply is waiting or streaming."""
        expect(self.page.locator("#companion-turns > .cturn--live")).to_have_count(0, timeout=WAIT)
        expect(self.page.locator("#companion-stop")).to_be_hidden()

    def wait_ready(self) -> None:
        """Connected, the conversation loaded, the box shown."""
        expect(self.page.locator("#connection-state")).to_have_attribute(
            "data-state", "connected", timeout=WAIT
        )
        expect(self.page.locator("#companion-composer")).to_be_visible(timeout=WAIT)
        expect(self.page.locator("#companion-conversation-title")).not_to_be_empty(timeout=WAIT)

    def assert_clean(self) -> None:
        assert self.problems == []
        assert self.dialogs == []
        assert self.page.evaluate("window.__csp") == []


class People:
    """Browser contexts (one per person) and their tabs."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []

    def person(
        self,
        server: Daemon,
        name: str | None,
        viewport: tuple[int, int] = (1280, 800),
        reduced_motion: bool = False,
    ) -> BrowserContext:
        context = self.browser.new_context(
            viewport={"width": viewport[0], "height": viewport[1]},
            reduced_motion="reduce" if reduced_motion else "no-preference",
        )
        self.contexts.append(context)
        if name is not None:
            answer = context.request.post(
                server.http + "/api/auth/register", data={"username": name, "password": PASSWORD}
            )
            assert answer.status == 201, answer.text()
        return context

    def tab(
        self,
        context: BrowserContext,
        server: Daemon,
        before: Callable[[Page], Any] | None = None,
        ready: bool = True,
    ) -> Tab:
        page = context.new_page()
        problems, dialogs = watch(page, WATCH_SCRIPT)
        if before is not None:
            before(page)
        page.goto(server.http + "/")
        tab = Tab(page, problems, dialogs)
        if ready:
            tab.wait_ready()
        return tab

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def people(browser: Browser) -> Iterator[People]:
    found = People(browser)
    yield found
    found.close()


# --- the real stack -----------------------------------------------------------------------------


def test_a_reply_streams_in_ends_and_regenerates(stacks: Callable[[str], Stack], people: People):
    server = stacks("slow").daemon
    tab = people.tab(people.person(server, "stream_ada"), server)
    page = tab.page
    expect(page.locator("#companion-empty")).to_be_visible()
    expect(page.locator("#companion-counter")).to_have_text("0 / 4000")
    xp_before = page.locator("#xp-points").inner_text()

    tab.ask("Help me relax for a minute.")
    expect(tab.input).to_have_value("")
    partial = tab.partial()
    assert NORMAL_REPLY.startswith(partial) and len(partial) < len(NORMAL_REPLY)
    log = page.locator("#companion-log")
    expect(log).to_have_attribute("aria-busy", "true")
    expect(page.locator("#companion-stop")).to_be_visible()
    expect(page.locator("#companion-regenerate")).to_be_hidden()
    # The live region is for the finished reply, not for every delta.
    assert NORMAL_REPLY not in page.locator("#companion-announce").inner_text()

    tab.wait_idle()
    quiet = {"note": "", "live": False, "stopped": False, "pending": False}
    assert tab.turns() == [
        {"role": "user", "text": "Help me relax for a minute.", **quiet},
        {"role": "assistant", "text": NORMAL_REPLY, **quiet},
    ]
    expect(log).to_have_attribute("aria-busy", "false")
    expect(page.locator("#companion-announce")).to_contain_text(NORMAL_REPLY)
    expect(page.locator("#companion-conversation-title")).to_have_text(
        "Help me relax for a minute."
    )
    # A completed reply earns XP; the chat's badge shows it.
    expect(page.locator("#xp-points")).not_to_have_text(xp_before, timeout=WAIT)

    # Regenerate: the last reply is replaced by a new one to the same prompt.
    page.get_by_role("button", name="Regenerate the last reply").click()
    tab.partial()
    assert [t["role"] for t in tab.turns()] == ["user", "assistant"]
    tab.wait_idle()
    assert [(t["role"], t["text"]) for t in tab.turns()] == [
        ("user", "Help me relax for a minute."),
        ("assistant", NORMAL_REPLY),
    ]
    # What the server stored is what the page showed.
    page.reload()
    tab.wait_ready()
    expect(page.locator("#companion-turns > .cturn")).to_have_count(2)
    assert [(t["role"], t["text"]) for t in tab.turns()] == [
        ("user", "Help me relax for a minute."),
        ("assistant", NORMAL_REPLY),
    ]
    tab.assert_clean()


def test_stop_mid_reply(stacks: Callable[[str], Stack], people: People, shots: Path) -> None:
    stack = stacks("slow")
    assert stack.llm is not None
    server = stack.daemon
    tab = people.tab(people.person(server, "stop_ada"), server)
    page = tab.page
    disconnected_before = stack.llm.stats()["disconnected"]

    tab.ask("Tell me a long story.")
    tab.partial()
    stop = page.get_by_role("button", name="Stop")
    stop.click()
    reply = page.locator("#companion-turns > .cturn--assistant").last
    expect(reply).to_have_class(re.compile(r"\bcturn--stopped\b"), timeout=WAIT)
    expect(reply.locator(".cturn-badge")).to_have_text("stopped")
    expect(stop).to_be_hidden()
    expect(page.locator("#companion-log")).to_have_attribute("aria-busy", "false")
    shown = reply.locator(".cturn-body").inner_text()
    assert shown and NORMAL_REPLY.startswith(shown) and shown != NORMAL_REPLY

    # The backend saw the request go away; by then nothing more was added.
    deadline = time.monotonic() + WAIT / 1000
    while stack.llm.stats()["disconnected"] <= disconnected_before:
        assert time.monotonic() < deadline, "the fake LLM never saw the request closed"
        page.wait_for_timeout(50)
    assert reply.locator(".cturn-body").inner_text() == shown
    expect(page.locator("#companion-regenerate")).to_be_visible()
    page.screenshot(path=str(shots / "companion-stopped.png"))

    # Stored as stopped, with the same partial text.
    page.reload()
    tab.wait_ready()
    stored = page.locator("#companion-turns > .cturn--assistant").last
    expect(stored).to_have_class(re.compile(r"\bcturn--stopped\b"))
    assert stored.locator(".cturn-body").inner_text() == shown
    tab.assert_clean()


#: Sent with the echo scenario, which answers with the prompt itself.
ECHO_PROMPT = (
    "Try *this* and `that`:\n"
    "- one\n"
    "- **two**\n"
    "\n"
    "1. first\n"
    "2. second\n"
    "\n"
    "```\n"
    "<script>alert(2)</script>\n"
    "```\n"
    "<img src=x onerror=alert(1)> **bold** [a link](javascript:alert(3))"
)


def test_markdown_renders_and_html_stays_inert(
    stacks: Callable[[str], Stack], people: People
) -> None:
    server = stacks("echo").daemon
    tab = people.tab(people.person(server, "md_ada"), server)
    page = tab.page
    # Counted in the transcript: other panels (triggers, effects) draw their own
    # icons as they load, which says nothing about the reply.
    census = ", ".join(
        f"#companion-turns {tag}"
        for tag in ("script", "img", "iframe", "svg", "object", "embed", "a[href^='javascript']")
    )
    before = page.evaluate(f"document.querySelectorAll({census!r}).length")

    tab.ask(ECHO_PROMPT)
    tab.wait_idle()
    reply = page.locator("#companion-turns > .cturn--assistant").last
    body = reply.locator(".cturn-body")
    expect(body.locator("em")).to_have_text("this")
    expect(body.locator("code.md-code-inline")).to_have_text("that")
    expect(body.locator("ul > li")).to_have_text(["one", "two"])
    expect(body.locator("ul > li strong")).to_have_text("two")
    expect(body.locator("ol > li")).to_have_text(["first", "second"])
    expect(body.locator("pre code")).to_have_text("<script>alert(2)</script>")
    expect(body.locator("p").last).to_have_text(
        "<img src=x onerror=alert(1)> bold a link (javascript:alert(3))"
    )
    expect(body.locator("p").last.locator("strong")).to_have_text("bold")
    # Nothing was injected: no new elements of those kinds, no links, no dialog.
    assert page.evaluate(f"document.querySelectorAll({census!r}).length") == before
    assert body.locator("a").count() == 0
    tags = page.evaluate(
        "() => [...new Set([...document.querySelectorAll('#companion-turns *')]"
        ".map((n) => n.tagName))]"
    )
    assert set(tags) <= {"LI", "DIV", "SPAN", "TIME", "P", "EM", "STRONG", "CODE", "PRE", "UL"} | {
        "OL",
        "BR",
    }
    # The prompt is plain text (no Markdown for what the person wrote).
    prompt = page.locator("#companion-turns > .cturn--user").last
    expect(prompt.locator(".cturn-body")).to_have_text(ECHO_PROMPT)
    assert prompt.locator("em, strong, code").count() == 0
    # After a reload, the stored reply renders the same way.
    page.reload()
    tab.wait_ready()
    expect(page.locator("#companion-turns .cturn--assistant ul > li")).to_have_text(["one", "two"])
    assert page.evaluate(f"document.querySelectorAll({census!r}).length") == before
    tab.assert_clean()


def test_a_reload_mid_reply_resumes(stacks: Callable[[str], Stack], people: People) -> None:
    server = stacks("slow").daemon
    tab = people.tab(people.person(server, "reload_ada"), server)
    page = tab.page
    tab.ask("Stay with me.")
    before = tab.partial()
    assert len(before) < len(NORMAL_REPLY)
    page.reload()
    tab.wait_ready()
    # The reply picks up where it is and goes on streaming here.
    after = tab.partial()
    assert NORMAL_REPLY.startswith(after)
    tab.wait_idle()
    assert [(t["role"], t["text"]) for t in tab.turns()] == [
        ("user", "Stay with me."),
        ("assistant", NORMAL_REPLY),
    ]
    tab.assert_clean()


def test_a_dropped_connection_resumes_the_reply(
    stacks: Callable[[str], Stack], people: People
) -> None:
    server = stacks("slow").daemon
    cutters: list[SocketCutter] = []
    tab = people.tab(
        people.person(server, "drop_ada"),
        server,
        before=lambda page: cutters.append(SocketCutter(page)),
    )
    cut, page = cutters[0], tab.page
    tab.ask("Keep going.")
    tab.partial()
    cut.cut()
    expect(page.locator("#connection-state")).to_have_attribute(
        "data-state", "disconnected", timeout=WAIT
    )
    expect(page.locator(".cturn--live .cturn-note")).to_contain_text("reconnecting")
    cut.restore()
    tab.wait_ready()
    tab.wait_idle()
    assert [(t["role"], t["text"]) for t in tab.turns()] == [
        ("user", "Keep going."),
        ("assistant", NORMAL_REPLY),
    ]
    # The hello after the reconnect was followed by ai.history again.
    hello_at = max(i for i, m in enumerate(cut.sent) if m.get("type") == "hello")
    assert any(m.get("type") == "ai.history" for m in cut.sent[hello_at:])
    tab.assert_clean()


def test_two_tabs_share_the_conversation(stacks: Callable[[str], Stack], people: People) -> None:
    server = stacks("slow").daemon
    person = people.person(server, "tabs_ada")
    first = people.tab(person, server)
    second = people.tab(person, server)

    first.ask("Hello from the first tab.")
    # The other tab shows the prompt and the reply as it streams.
    assert NORMAL_REPLY.startswith(second.partial())
    expect(second.page.locator("#companion-stop")).to_be_visible()
    for tab in (first, second):
        tab.wait_idle()
    expected = [("user", "Hello from the first tab."), ("assistant", NORMAL_REPLY)]
    for tab in (first, second):
        assert [(t["role"], t["text"]) for t in tab.turns()] == expected

    # A new conversation, started in the second tab, shows in both.
    second.page.get_by_role("button", name="New conversation").click()
    for tab in (first, second):
        expect(tab.page.locator("#companion-turns > .cturn")).to_have_count(0, timeout=WAIT)
        expect(tab.page.locator("#companion-empty")).to_be_visible()
        expect(tab.page.locator("#companion-conversation-title")).to_have_text("New conversation")

    # The first one is among the past conversations; loading it shows it in both.
    # (The reply's XP unlocked them: wait until the page knows the level.)
    expect(first.page.locator("#xp-level")).not_to_have_text(re.compile(r"Lv 0$"), timeout=WAIT)
    first.page.get_by_role("button", name="Past conversations").click()
    past = first.page.locator("#companion-past-list")
    expect(past.locator("button")).to_have_count(2, timeout=WAIT)
    expect(past.locator("button[aria-current=true]")).to_contain_text("Untitled conversation")
    past.get_by_role("button", name=re.compile("Hello from the first tab")).click()
    expect(first.page.locator("#companion-past-panel")).to_be_hidden()
    for tab in (first, second):
        expect(tab.page.locator("#companion-turns > .cturn")).to_have_count(2, timeout=WAIT)
        assert [(t["role"], t["text"]) for t in tab.turns()] == expected
    first.assert_clean()
    second.assert_clean()


@pytest.mark.parametrize("scenario", ["fail", "closed"])
def test_no_backend_gives_a_friendly_message(
    stacks: Callable[[str], Stack], people: People, scenario: str, shots: Path
) -> None:
    server = stacks(scenario).daemon
    tab = people.tab(people.person(server, f"{scenario}_ada"), server)
    page = tab.page
    tab.ask("Are you there?")
    tab.wait_idle()
    friendly = re.compile(r"can’t be reached right now: no AI service is answering")
    # Either the send itself is refused or the reply fails: both say the same.
    panel = page.locator("#companion")
    expect(panel).to_contain_text(friendly, timeout=WAIT)
    expect(page.locator("#companion-announce")).to_contain_text(friendly)
    expect(page.locator("#companion-regenerate")).to_be_visible()
    page.screenshot(path=str(shots / f"companion-no-backend-{scenario}.png"))
    # After a reload the stored, failed attempt still says what happened.
    page.reload()
    tab.wait_ready()
    expect(page.locator("#companion-turns .cturn-note--error")).to_contain_text(
        "could not be reached"
    )
    tab.assert_clean()


def test_an_anonymous_visitor_is_asked_to_sign_in(
    stacks: Callable[[str], Stack], people: People, shots: Path
) -> None:
    server = stacks("echo").daemon
    sent: list[str] = []
    tab = people.tab(
        people.person(server, None),
        server,
        before=lambda page: page.on(
            "websocket", lambda ws: ws.on("framesent", lambda p: sent.append(str(p)))
        ),
        ready=False,
    )
    page = tab.page
    prompt = page.locator("#companion-signin")
    expect(prompt).to_be_visible(timeout=WAIT)
    expect(prompt).to_contain_text("Sign in or continue as guest")
    expect(prompt.locator('a[href="/login"]')).to_be_visible()
    expect(prompt.locator('a[href="/register"]')).to_be_visible()
    expect(page.locator("#companion-composer")).to_be_hidden()
    expect(page.locator("#companion-tools")).to_be_hidden()
    assert not any('"ai.' in frame for frame in sent)  # nothing asked that would be refused
    page.screenshot(path=str(shots / "companion-anonymous.png"))
    tab.assert_clean()


def test_phone_width(stacks: Callable[[str], Stack], people: People, shots: Path) -> None:
    server = stacks("echo").daemon
    tab = people.tab(
        people.person(server, "phone_ada", viewport=(375, 740), reduced_motion=True),
        server,
        ready=False,
    )
    page = tab.page
    # The first-visit privacy notice takes the top of a small screen until answered.
    page.locator('#consent [data-consent="no"]').click(timeout=WAIT)
    expect(page.locator("#consent")).to_be_hidden()
    # The chat comes first; the companion is one tap away.
    switch = page.get_by_role("group", name="Show")
    expect(switch).to_be_visible(timeout=WAIT)
    expect(page.locator("#message-input")).to_be_visible(timeout=WAIT)
    expect(page.locator("#companion")).to_be_hidden()
    switch.get_by_role("button", name="Companion").click()
    expect(page.locator("#view-companion")).to_have_attribute("aria-pressed", "true")
    tab.wait_ready()
    expect(page.locator("#chat-main")).to_be_hidden()
    expect(tab.input).to_be_focused()

    tab.ask(ECHO_PROMPT)
    # Back to the chat while it answers: a dot says a reply came.
    switch.get_by_role("button", name="Chat").click()
    expect(page.locator("#message-input")).to_be_visible()
    expect(page.locator("#companion-unread")).to_be_visible(timeout=WAIT)
    switch.get_by_role("button", name=re.compile("Companion")).click()
    expect(page.locator("#companion-unread")).to_be_hidden()
    tab.wait_idle()
    expect(page.locator("#companion-turns .cturn--assistant ol > li")).to_have_count(2)
    page.screenshot(path=str(shots / "companion-phone.png"))

    assert page.evaluate("document.documentElement.scrollWidth") <= 375, "no sideways scrolling"
    for selector in ("#companion-input", "#companion-send", "#companion-log", "#view-chat"):
        box = page.locator(selector).bounding_box()
        assert box is not None, selector
        assert box["x"] >= 0 and box["x"] + box["width"] <= 375, selector
        assert box["y"] >= 0 and box["y"] + box["height"] <= 740, selector

    expect(page.locator("#xp-level")).not_to_have_text(re.compile(r"Lv 0$"), timeout=WAIT)
    page.get_by_role("button", name="Past conversations").click()
    expect(page.locator("#companion-past-list button")).to_have_count(1, timeout=WAIT)
    page.screenshot(path=str(shots / "companion-phone-past.png"))
    selectors = [
        ".chat-switch-button",
        ".chat-switch-button[aria-pressed=true]",
        ".companion-past-title",
        ".companion-past-name",
        ".companion-past-meta",
    ]
    contrast = page.evaluate(CONTRAST_JS, selectors)
    assert set(contrast) == set(selectors)
    assert {s: round(r, 2) for s, r in contrast.items() if r < 4.5} == {}
    page.keyboard.press("Escape")
    expect(page.locator("#companion-past-panel")).to_be_hidden()
    expect(page.get_by_role("button", name="Past conversations")).to_be_focused()
    tab.assert_clean()


def test_desktop_look(stacks: Callable[[str], Stack], people: People, shots: Path) -> None:
    """A picture for people reviewing the page, and the controls by their names."""
    server = stacks("echo").daemon
    tab = people.tab(people.person(server, "desk_ada"), server)
    page = tab.page
    tab.ask(ECHO_PROMPT)
    tab.wait_idle()
    tab.ask("Thanks, that **helps**.")
    tab.wait_idle()
    page.screenshot(path=str(shots / "companion-desktop.png"))
    # Beside the chat on a wide screen: both visible, no switch.
    expect(page.locator("#chat-main")).to_be_visible()
    expect(page.locator("#companion")).to_be_visible()
    expect(page.get_by_role("group", name="Show")).to_be_hidden()
    for role, name in [
        ("textbox", "Message to your companion"),
        ("button", "Regenerate the last reply"),
        ("button", "New conversation"),
        ("button", "Past conversations"),
        ("region", "Your conversation with your companion"),
    ]:
        expect(page.get_by_role(role, name=name)).to_be_visible()  # type: ignore[arg-type]
    expect(page.get_by_role("link", name="Skip to your companion")).to_have_count(1)
    # Enough contrast (WCAG AA, 4.5:1) for every kind of text in the panel.
    contrast = page.evaluate(CONTRAST_JS, CONTRAST_SELECTORS)
    assert set(contrast) == set(CONTRAST_SELECTORS)
    low = {selector: round(ratio, 2) for selector, ratio in contrast.items() if ratio < 4.5}
    assert low == {}
    tab.assert_clean()


CONTRAST_SELECTORS = [
    ".companion-title",
    ".companion-subtitle",
    ".cturn-who",
    ".cturn--assistant .cturn-who",
    ".cturn-time",
    ".cturn--user .cturn-body",
    ".cturn--assistant .cturn-body",
    ".md-code-inline",
    ".md-code code",
    ".md-url",
    ".companion-help",
    ".companion-counter",
    "#companion-input",
    "#companion-regenerate",
    "#companion-new",
    "#companion-past",
]


# --- a scripted server ---------------------------------------------------------------------------

FAKE_USER = {"name": "fake_ada", "role": "user", "guest": False, "xp": 10, "level": 0, "next": 100}


class FakeServer:
    """Answers the page's WebSocket itself like a bambid server with a
    companion would; a test pushes ``ai.*`` frames and scripts the answers."""

    def __init__(self, page: Page, turns: list[dict[str, Any]] | None = None) -> None:
        self.sockets: list[WebSocketRoute] = []
        self.received: list[dict[str, Any]] = []
        self.turns: list[dict[str, Any]] = turns or []
        self.title = "A scripted conversation"
        self.answers: dict[str, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {}
        page.route_web_socket(re.compile(r"/ws$"), self._route)

    @property
    def ws(self) -> WebSocketRoute:
        return self.sockets[-1]

    def push(self, **frame: Any) -> None:
        self.ws.send(json.dumps(frame))

    def sent(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m["type"] == kind]

    def _route(self, ws: WebSocketRoute) -> None:
        self.sockets.append(ws)
        ws.on_message(lambda raw: self._handle(ws, raw))

    def _handle(self, ws: WebSocketRoute, raw: str | bytes) -> None:
        message = json.loads(raw)
        self.received.append(message)
        kind, rid = message["type"], message.get("id")

        def send(**frame: Any) -> None:
            ws.send(json.dumps(frame))

        if kind == "hello":
            send(
                type="welcome",
                id=rid,
                server="bambid",
                version="test",
                protocol=1,
                server_time=time.time(),
                connection_id="fake",
                user=FAKE_USER,
                rooms=["lobby"],
            )
        elif kind == "room.join":
            send(type="ack", id=rid, room="lobby")
            send(type="chat.history", room="lobby", messages=[], has_more=False)
            send(type="presence", room="lobby", users=[])
        elif kind in self.answers:
            for frame in self.answers[kind](message):
                send(**frame)
        elif kind == "ai.history":
            send(
                type="ai.conversation",
                id=rid,
                conversation_id="c1",
                title=self.title,
                turns=self.turns,
            )


def until(page: Page, condition: Callable[[], bool]) -> None:
    """Lets the page run until ``condition`` (about frames the fake received) holds."""
    deadline = time.monotonic() + WAIT / 1000
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        page.wait_for_timeout(20)


def turn(role: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, "ts": time.time(), **extra}


def scripted(
    people: People, stacks: Callable[[str], Stack], **kwargs: Any
) -> tuple[Tab, FakeServer]:
    server = stacks("echo").daemon
    fakes: list[FakeServer] = []
    tab = people.tab(
        people.person(server, None, **kwargs),
        server,
        before=lambda page: fakes.append(FakeServer(page)),
    )
    return tab, fakes[0]


def test_deltas_apply_once_by_index(stacks: Callable[[str], Stack], people: People) -> None:
    tab, fake = scripted(people, stacks, reduced_motion=True)
    page = tab.page
    fake.answers["ai.send"] = lambda m: [
        {"type": "ack", "id": m["id"], "reply_id": "r1", "conversation_id": "c1"}
    ]
    tab.ask("Count for me.")
    expect(page.locator("#companion-turns > .cturn--live")).to_have_count(1)
    expect(page.locator("#companion-stop")).to_be_visible()
    fake.push(type="ai.start", reply_id="r1", conversation_id="c1", prompt="Count for me.")
    expect(page.locator(".cturn--live .cturn-note")).to_have_text("Your companion is thinking…")
    for index, text in [(1, "one"), (2, " two"), (2, " two"), (1, "one"), (3, " three")]:
        fake.push(type="ai.delta", reply_id="r1", index=index, text=text)
    live = page.locator("#companion-turns > .cturn--live .cturn-body")
    expect(live).to_have_text("one two three")
    expect(page.locator("#companion-log")).to_have_attribute("aria-busy", "true")
    # The caret does not blink for people who asked for less motion.
    animation = page.evaluate(
        "getComputedStyle(document.querySelector('.cturn--live .cturn-body > p'), '::after')"
        ".animationName"
    )
    assert animation == "none"

    # As after a reconnect: the history (with the stored prompt), the start
    # again and one delta holding everything so far.
    fake.turns = [turn("user", "Count for me.")]
    fake.ws.close(code=1001, reason="restarting")
    expect(page.locator("#connection-state")).to_have_attribute(
        "data-state", "connected", timeout=WAIT
    )
    expect(page.locator("#companion-turns > .cturn")).to_have_count(1)  # the stored prompt
    assert len(fake.sent("ai.history")) == 2
    fake.push(type="ai.start", reply_id="r1", conversation_id="c1", prompt="Count for me.")
    fake.push(type="ai.delta", reply_id="r1", index=4, text="one two three four")
    fake.push(type="ai.delta", reply_id="r1", index=4, text=" four")
    fake.push(type="ai.delta", reply_id="r1", index=5, text=" five")
    expect(live).to_have_text("one two three four five")
    fake.push(
        type="ai.done",
        reply_id="r1",
        text="one two three four five",
        finish_reason="stop",
        usage=None,
    )
    tab.wait_idle()
    assert [(t["role"], t["text"]) for t in tab.turns()] == [
        ("user", "Count for me."),
        ("assistant", "one two three four five"),
    ]
    expect(page.locator("#companion-announce")).to_have_text(
        "Your companion replied: one two three four five"
    )
    # A frame for a reply this page never saw start makes it ask where things
    # are (once), rather than show text it cannot place.
    fake.turns = [turn("user", "Count for me."), turn("assistant", "one two three four five")]
    fake.push(type="ai.delta", reply_id="r-unknown", index=7, text="stray")
    fake.push(type="ai.delta", reply_id="r-unknown", index=8, text="stray")
    until(page, lambda: len(fake.sent("ai.history")) == 3)
    expect(page.locator("#companion-turns > .cturn")).to_have_count(2)
    assert "stray" not in page.locator("#companion-turns").inner_text()
    tab.assert_clean()


def test_queue_errors_and_other_tabs(stacks: Callable[[str], Stack], people: People) -> None:
    tab, fake = scripted(people, stacks)
    page = tab.page
    error = page.locator("#companion-error")
    answers = ["busy", "in_progress", "unavailable"]
    fake.answers["ai.send"] = lambda m: [
        {"type": "error", "id": m["id"], "code": answers.pop(0), "message": "refused"}
    ]
    for expected in ("the waiting line is full", "still answering", "can’t be reached"):
        tab.ask("Hello?")
        expect(error).to_contain_text(expected)
        expect(tab.input).to_have_value("Hello?")  # the text comes back to send again
        expect(page.locator("#companion-turns > .cturn")).to_have_count(0)

    # Queued: the position, then the start.
    fake.answers["ai.send"] = lambda m: [
        {"type": "ack", "id": m["id"], "reply_id": "r2", "conversation_id": "c1"},
        {"type": "ai.queued", "reply_id": "r2", "position": 2},
    ]
    tab.ask("Hello?")
    note = page.locator(".cturn--live .cturn-note")
    expect(note).to_contain_text("You are number 2 in line")
    expect(page.locator("#companion-announce")).to_have_text("You are number 2 in line.")
    fake.push(type="ai.queued", reply_id="r2", position=1)
    expect(note).to_contain_text("You are number 1 in line")
    fake.push(type="ai.start", reply_id="r2", conversation_id="c1", prompt="Hello?")
    fake.push(type="ai.delta", reply_id="r2", index=1, text="Partial **answ")
    expect(page.locator(".cturn--live .cturn-body")).to_have_text("Partial **answ")
    # Sending while it answers is refused here, without a request.
    tab.ask("Another one")
    expect(error).to_contain_text("still answering")
    assert len(fake.sent("ai.send")) == 4
    # Broken off mid-reply: the partial text stays, with what happened.
    fake.push(
        type="ai.error",
        reply_id="r2",
        code="interrupted",
        message="the AI backend failed mid-reply (reset)",
        text="Partial **answ",
    )
    tab.wait_idle()
    reply = page.locator("#companion-turns > .cturn--assistant").last
    expect(reply.locator(".cturn-body")).to_have_text("Partial **answ")
    expect(reply.locator(".cturn-note")).to_contain_text("broke off part-way")
    expect(reply.locator(".cturn-note")).to_contain_text("(reset)")

    # A prompt sent from another tab: shown with its reply.
    fake.push(type="ai.start", reply_id="r3", conversation_id="c1", prompt="From my phone")
    fake.push(type="ai.delta", reply_id="r3", index=1, text="Hi phone")
    fake.push(type="ai.done", reply_id="r3", text="Hi phone", finish_reason="stop", usage=None)
    tab.wait_idle()
    assert [(t["role"], t["text"]) for t in tab.turns()][-2:] == [
        ("user", "From my phone"),
        ("assistant", "Hi phone"),
    ]
    # Stop while queued: the request names the reply.
    fake.answers["ai.send"] = lambda m: [
        {"type": "ack", "id": m["id"], "reply_id": "r4", "conversation_id": "c1"},
        {"type": "ai.queued", "reply_id": "r4", "position": 1},
    ]
    fake.answers["ai.stop"] = lambda m: [
        {"type": "ack", "id": m["id"], "reply_id": m["reply_id"], "stopped": True},
        {"type": "ai.done", "reply_id": "r4", "text": "", "finish_reason": "stopped"},
    ]
    tab.ask("Never mind")
    page.get_by_role("button", name="Stop").click()
    tab.wait_idle()
    assert fake.sent("ai.stop")[-1]["reply_id"] == "r4"
    expect(page.locator("#companion-turns > .cturn--assistant").last).to_contain_text(
        "Stopped before the first word."
    )

    # Regenerate pressed in another tab: the same prompt again, the last reply
    # dropped. The page cannot tell it from the prompt sent twice, so once the
    # reply is over it checks with the server.
    stored = [(t["role"], t["text"]) for t in tab.turns()]
    fake.turns = [turn(role, text) for role, text in stored[:-1]] + [
        turn("assistant", "A better answer")
    ]
    histories = len(fake.sent("ai.history"))
    fake.push(type="ai.start", reply_id="r5", conversation_id="c1", prompt="Never mind")
    fake.push(type="ai.delta", reply_id="r5", index=1, text="A better answer")
    expect(page.locator(".cturn--live .cturn-body")).to_have_text("A better answer")
    assert [(t["role"], t["text"]) for t in tab.turns()][:-1] == stored[:-1]
    fake.push(type="ai.done", reply_id="r5", text="A better answer", finish_reason="stop")
    until(page, lambda: len(fake.sent("ai.history")) == histories + 1)
    tab.wait_idle()
    expect(page.locator("#companion-turns > .cturn")).to_have_count(len(stored))
    assert [(t["role"], t["text"]) for t in tab.turns()] == [
        *stored[:-1],
        ("assistant", "A better answer"),
    ]
    tab.assert_clean()


def test_the_box_counts_and_limits(stacks: Callable[[str], Stack], people: People) -> None:
    tab, fake = scripted(people, stacks)
    page = tab.page
    counter = page.locator("#companion-counter")
    tab.input.fill("a" * 4000)
    expect(counter).to_have_text("4000 / 4000")
    expect(page.locator("#companion-send")).to_be_enabled()
    tab.input.fill("é" * 4001)
    expect(counter).to_have_text("4001 / 4000")
    expect(tab.input).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#companion-send")).to_be_disabled()
    tab.input.press("Enter")
    expect(page.locator("#companion-error")).to_contain_text("at most 4000 characters")
    # Shift+Enter is a new line, not a send.
    tab.input.fill("line one")
    tab.input.press("Shift+Enter")
    tab.input.press_sequentially("line two")
    expect(tab.input).to_have_value("line one\nline two")
    assert fake.sent("ai.send") == []
    tab.assert_clean()


# --- the Markdown renderer, driven directly ----------------------------------------------------

RENDER_JS = """
async (cases) => {
  const { renderMarkdown } = await import("/static/js/companion-markdown.js");
  return cases.map((text) => {
    const box = document.createElement("div");
    box.appendChild(renderMarkdown(text));
    const shape = (node) => {
      if (node.nodeType === 3) return JSON.stringify(node.data);
      const start = node.getAttribute("start");
      const kids = [...node.childNodes].map(shape).join(",");
      return node.tagName.toLowerCase() + (start ? "@" + start : "") + "(" + kids + ")";
    };
    const all = [...box.querySelectorAll("*")];
    return {
      shape: [...box.childNodes].map(shape).join(","),
      tags: [...new Set(all.map((n) => n.tagName))],
      text: box.textContent,
      attributes: all.flatMap((n) => [...n.attributes].map((a) => a.name)),
    };
  });
}
"""

MARKDOWN_CASES = {
    "plain": 'p("plain")',
    "two\nlines": 'p("two",br(),"lines")',
    "one\n\ntwo": 'p("one"),p("two")',
    "*em* **strong** `co*de*` _u_ __s__": (
        'p(em("em")," ",strong("strong")," ",code("co*de*")," ",em("u")," ",strong("s"))'
    ),
    "snake_case_name and 2 * 3 * 4": 'p("snake_case_name and 2 * 3 * 4")',
    "**unclosed and *also": 'p("**unclosed and *also")',
    "***both***": 'p(strong(em("both")))',
    "\\*not em\\*": 'p("*not em*")',
    "Steps:\n- a\n- b\n  - nested\n- c": (
        'p("Steps:"),ul(li("a"),li("b",ul(li("nested"))),li("c"))'
    ),
    "3. three\n4. four": 'ol@3(li("three"),li("four"))',
    "1. one\n\n2. two": 'ol(li("one"),li("two"))',
    "In 1999. we\nwent": 'p("In 1999. we",br(),"went")',
    "```js\nlet a = `<b>`;\n```\nafter": 'pre(code("let a = `<b>`;")),p("after")',
    "```\nunclosed <i>": 'pre(code("unclosed <i>"))',
    "# Title\ntext": 'p(strong("Title")),p("text")',
    "---": "hr()",
    "[x](https://e.org) and https://e.org": (
        'p(span("x")," ",span("(https://e.org)")," and https://e.org")'
    ),
    "<script>alert(1)</script>": 'p("<script>alert(1)</script>")',
    "<img src=x onerror=alert(1)>": 'p("<img src=x onerror=alert(1)>")',
}


def test_the_markdown_subset(stacks: Callable[[str], Stack], people: People) -> None:
    tab, _ = scripted(people, stacks)
    hostile = [
        "<svg onload=alert(1)>",
        "[click](javascript:alert(1))",
        '"><img src=x onerror=alert(1)>',
        "&lt;b&gt; &amp; &#60;i&#62;",
        "```<script>\n</script>```",
        "*" * 5000,
        "_" * 3000 + "x",
        "- " * 2000,
        "  " * 500 + "- deep",
        "\n".join("  " * i + "- level" for i in range(40)),
        "`" * 999,
        "[" * 3000,
    ]
    results = tab.page.evaluate(RENDER_JS, [*MARKDOWN_CASES, *hostile])
    for (source, expected), got in zip(MARKDOWN_CASES.items(), results, strict=False):
        assert got["shape"] == expected, source
    tags = {"P", "BR", "EM", "STRONG", "CODE", "PRE", "UL", "OL", "LI", "SPAN", "HR"}
    for source, got in zip([*MARKDOWN_CASES, *hostile], results, strict=True):
        assert set(got["attributes"]) <= {"start", "class", "data-lang", "aria-label"}, source
        assert set(got["tags"]) <= tags, source
    tab.assert_clean()

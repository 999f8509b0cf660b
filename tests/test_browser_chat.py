"""The chat page in a real headless Chromium (Debian's, driven by Playwright)
against a real daemon subprocess.

Covered: XSS payloads posted through the page stay inert (live and after a
reload); two people chat (order, presence, typing, mentions, unread rooms);
history after a reload; resume after a dropped connection (replay without
duplicates, and ``chat.reset`` past ``chat.resume_cap``); scrolling back
through history; moderation as the page shows it (notices, deletions, mutes,
bans, forbidden commands); the anonymous reader; the message box; phone width.

Client behaviour that needs a server to misbehave on cue (rate limits, kicks,
level-ups, out-of-order and duplicate frames) is driven by a WebSocket that
Playwright fakes (``page.route_web_socket``); the page itself still comes from
the daemon. Every room-changing test uses its own room, so the tests share one
daemon without seeing each other's messages.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import attrs
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, WebSocketRoute, expect

from bambid.chat.text import remove_control_characters
from tests.browsersupport import CSP_RECORDER, watch
from tests.daemon import Daemon

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
ADMIN = "boss"
ROOMS = [
    "lobby",
    "xss",
    "duo",
    "duo2",
    "again",
    "reset",
    "scroll",
    "mod",
    "phone",
    "anon",
    "keys",
    "desk",
]
RESUME_CAP = 3
DAEMON_ENV = {
    "BAMBID_CHAT_ROOMS": ",".join(ROOMS),
    "BAMBID_CHAT_RESUME_CAP": str(RESUME_CAP),
    "BAMBID_AUTH_ADMINS": ADMIN,
    # The tests post quickly; the limits themselves are tested elsewhere.
    "BAMBID_LIMITS_CHAT_BURST": "1000",
    "BAMBID_LIMITS_CHAT_PER_SECOND": "1000",
    "BAMBID_LIMITS_CONNECTION_BURST": "1000",
    "BAMBID_LIMITS_CONNECTION_PER_SECOND": "1000",
}
WAIT = 15000  # ms, for anything that crosses the network

#: Runs before the page's own scripts: records CSP violations and every
#: request for notification permission (the page must never ask by itself).
WATCH_SCRIPT = (
    CSP_RECORDER
    + """
window.__permissionAsks = 0;
if ("Notification" in window) {
  const ask = Notification.requestPermission.bind(Notification);
  Notification.requestPermission = (...args) => {
    window.__permissionAsks += 1;
    return ask(...args);
  };
}
"""
)

#: The messages in one room's view, as the reader sees them (without the
#: screen-reader-only words and the warning sign of flagged links).
MESSAGES_JS = """
(room) => [...document.querySelectorAll(`.chat-view[data-room="${room}"] .msg[data-seq]`)]
  .map((li) => {
    const body = li.querySelector(".msg-text").cloneNode(true);
    body.querySelectorAll(".visually-hidden, .msg-link-warning").forEach((n) => n.remove());
    return {
      seq: Number(li.dataset.seq),
      id: li.dataset.messageId || "",
      author: li.dataset.author,
      text: body.textContent,
      classes: li.className,
    };
  })
"""

#: A second connection of the page's person that sends ``frames`` (at most 32
#: in flight: the server allows 64) and resolves with the first error, or null
#: once every one is answered.
FRAMES_JS = """
async (frames) => {
  const ws = new WebSocket(location.origin.replace(/^http/, "ws") + "/ws");
  await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; });
  const waiting = new Map();
  ws.onmessage = (event) => {
    const m = JSON.parse(event.data);
    if (m.id !== undefined && waiting.has(m.id)) {
      waiting.get(m.id)(m);
      waiting.delete(m.id);
    }
  };
  const call = (frame) => new Promise((resolve) => {
    waiting.set(frame.id, resolve);
    ws.send(JSON.stringify(frame));
  });
  await call({type: "hello", protocol: 1, id: "hello"});
  let error = null;
  for (let i = 0; i < frames.length && error === null; i += 32) {
    const batch = frames.slice(i, i + 32).map((f, j) => call({...f, id: "f" + (i + j)}));
    error = (await Promise.all(batch)).find((answer) => answer.type === "error") || null;
  }
  ws.close();
  return error;
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with Daemon.start(tmp_path_factory.mktemp("chat-daemon"), env=DAEMON_ENV) as daemon:
        yield daemon


@attrs.define
class Person:
    """One person in their own browser context, on the chat page."""

    name: str | None
    context: BrowserContext
    page: Page
    problems: list[str]
    dialogs: list[str]

    def send(self, text: str) -> None:
        self.page.locator("#message-input").fill(text)
        self.page.locator("#message-input").press("Enter")

    def messages(self, room: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.page.evaluate(MESSAGES_JS, room)
        return found

    def texts(self, room: str) -> list[str]:
        return [m["text"] for m in self.messages(room)]

    def settle(self, room: str, count: int) -> None:
        """Wait until ``count`` server-confirmed messages show and none is pending."""
        self.page.wait_for_function(
            """([room, count]) => {
              const view = document.querySelector(`.chat-view[data-room="${room}"]`);
              return view !== null
                && view.querySelectorAll(".msg[data-seq]").length === count
                && view.querySelectorAll(".msg--pending, .msg--acked").length === 0;
            }""",
            arg=[room, count],
            timeout=WAIT,
        )

    def post_as_bot(self, room: str, texts: list[str]) -> None:
        """Post from a second connection (quicker than typing, and "elsewhere")."""
        frames: list[dict[str, Any]] = [{"type": "room.join", "room": room}]
        frames += [{"type": "chat.send", "room": room, "text": text} for text in texts]
        self.frames(frames)

    def frames(self, frames: list[dict[str, Any]]) -> None:
        error = self.page.evaluate(FRAMES_JS, frames)
        assert error is None, error

    def csp_violations(self) -> list[str]:
        found: list[str] = self.page.evaluate("window.__csp")
        return found

    def assert_clean(self) -> None:
        assert self.problems == []
        assert self.dialogs == []
        assert self.csp_violations() == []


OpenChat = Callable[..., Person]


@pytest.fixture
def open_chat(browser: Browser, server: Daemon) -> Iterator[OpenChat]:
    """``open_chat(name, room)``: register ``name`` (None: stay anonymous) in a
    fresh browser context and open the chat page on ``room``."""
    contexts: list[BrowserContext] = []

    def open_chat(
        name: str | None,
        room: str,
        viewport: tuple[int, int] = (1280, 800),
        before: Callable[[Page], Any] | None = None,
        expect_signed_in: bool = True,
        reduced_motion: bool = False,
        guest: bool = False,
    ) -> Person:
        context = browser.new_context(
            viewport={"width": viewport[0], "height": viewport[1]},
            reduced_motion="reduce" if reduced_motion else "no-preference",
        )
        contexts.append(context)
        if name is not None and guest:
            answer = context.request.post(server.http + "/api/auth/guest", data={"name": name})
            assert answer.status == 201, answer.text()
        elif name is not None:
            answer = context.request.post(
                server.http + "/api/auth/register", data={"username": name, "password": PASSWORD}
            )
            assert answer.status == 201, answer.text()
        page = context.new_page()
        problems, dialogs = watch(page, WATCH_SCRIPT)
        if before is not None:
            before(page)
        page.goto(f"{server.http}/#{room}")
        expect(page.locator("#connection-state")).to_have_attribute(
            "data-state", "connected", timeout=WAIT
        )
        view = page.locator(f'.chat-view[data-room="{room}"]')
        expect(view).to_be_visible(timeout=WAIT)
        if name is not None and expect_signed_in:
            expect(page.locator("#presence-list")).to_contain_text(name, timeout=WAIT)
            expect(page.locator("#message-input")).to_be_visible()
        return Person(name, context, page, problems, dialogs)

    yield open_chat
    for context in contexts:
        context.close()


class SocketCutter:
    """Routes a page's WebSocket through Playwright so that a test can cut
    the connection (as a network drop would) and let it come back. While cut,
    reconnection attempts are closed at once. Records every frame the page sends."""

    def __init__(self, page: Page) -> None:
        self.up = True
        self.live: list[tuple[WebSocketRoute, WebSocketRoute]] = []
        self.sent: list[dict[str, Any]] = []
        page.route_web_socket(re.compile(r"/ws$"), self._route)

    def _route(self, ws: WebSocketRoute) -> None:
        if not self.up:
            ws.close(code=4000, reason="network down")
            return
        server = ws.connect_to_server()

        def forward(message: str | bytes) -> None:
            if isinstance(message, str):
                self.sent.append(json.loads(message))
            server.send(message)

        ws.on_message(forward)
        pair = (ws, server)
        self.live.append(pair)
        ws.on_close(lambda code, reason: self.live.remove(pair) if pair in self.live else None)

    def cut(self) -> None:
        self.up = False
        for page_side, server_side in self.live:
            server_side.close()
            page_side.close(code=4000, reason="network down")
        self.live.clear()

    def restore(self) -> None:
        self.up = True

    def hellos(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("type") == "hello"]


def in_view(page: Page, selector: str) -> bool:
    """Whether the element is inside its scrolling message view's visible area."""
    inside: bool = page.evaluate(
        """(selector) => {
          const el = document.querySelector(selector);
          const view = el.closest(".chat-view").getBoundingClientRect();
          const box = el.getBoundingClientRect();
          return box.bottom > view.top && box.top < view.bottom;
        }""",
        selector,
    )
    return inside


def server_text(text: str) -> str:
    """What the server stores for ``text`` (bambid.chat.text; no filtered words here)."""
    return remove_control_characters(text).strip()


# --- XSS ------------------------------------------------------------------------------

XSS_PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    "<svg onload=alert(3)>",
    "<svg><script>alert(4)</script></svg>",
    "javascript:alert(5)",
    "[click me](javascript:alert(6))",
    '"><img src=x onerror=alert(7)>',
    "' onmouseover='alert(8)' x='",
    "</textarea><script>alert(9)</script>",
    "&lt;script&gt;alert(10)&lt;/script&gt; &amp; &#60;b&#62;",
    '<iframe src="javascript:alert(12)"></iframe>',
    '<a href="javascript:alert(13)">click me</a>',
    "{{7*7}} ${7*7} <%= 7*7 %> #{7*7} {{constructor.constructor('alert(14)')()}}",
    "\u202egnp.exe\u202d <b>right-to-left</b> \u2067isolate\u2069",
    "A" * 400,
    "**bold** _italic_ `code`\n# heading\n> quote\n- [ ] list\n```\n<script>alert(17)</script>```",
    "<style>body{display:none}</style>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(19)>",
    "<details open ontoggle=alert(20)>",
    "<body onload=alert(21)>",
    "<input autofocus onfocus=alert(22)>",
    '<base href="javascript:alert(23)//"><meta http-equiv="refresh" content="0;url=javascript:">',
    "%3Cscript%3Ealert(24)%3C%2Fscript%3E",
    "<!-- comment --><![CDATA[ x ]]>",
    'https://example.org/"><script>alert(26)</script> and https://user:pw@example.org/',
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgyNyk8L3NjcmlwdD4= http://127.0.0.1/admin",
    "@xss_mallory <img src=x onerror=alert(28)> \u200b\u200d zero width",
    "<scr<script>ipt>alert(29)</scr</script>ipt>",
]

#: Elements a message may consist of, and the classes they may have.
ALLOWED_TAGS = {"LI", "DIV", "SPAN", "TIME", "A", "EM"}
ALLOWED_ATTRIBUTES = {
    "class",
    "href",
    "rel",
    "target",
    "title",
    "datetime",
    "aria-hidden",
    "data-seq",
    "data-message-id",
    "data-author",
}
CENSUS_SELECTOR = (
    "script, img, svg, iframe, object, embed, style, base, meta, form, input, textarea, "
    "details, math, body, link, video, audio, frame"
)


def test_xss_payloads_posted_through_the_page_stay_inert(open_chat: OpenChat) -> None:
    assert len(XSS_PAYLOADS) >= 20
    mallory = open_chat("xss_mallory", "xss")
    page = mallory.page
    census_before = page.evaluate(f"document.querySelectorAll({CENSUS_SELECTOR!r}).length")

    for payload in XSS_PAYLOADS:
        mallory.send(payload)
    mallory.settle("xss", len(XSS_PAYLOADS))

    def check() -> None:
        shown = mallory.messages("xss")
        assert [m["text"] for m in shown] == [server_text(p) for p in XSS_PAYLOADS]
        assert [m["seq"] for m in shown] == sorted(m["seq"] for m in shown)
        report = page.evaluate(
            """() => {
              const out = {tags: [], attributes: [], hrefs: [], rels: []};
              for (const list of document.querySelectorAll(".chat-messages")) {
                for (const el of list.querySelectorAll("*")) {
                  out.tags.push(el.tagName);
                  for (const a of el.attributes) out.attributes.push(a.name);
                  if (el.tagName === "A") {
                    out.hrefs.push(el.getAttribute("href"));
                    out.rels.push(el.getAttribute("rel"));
                  }
                }
              }
              out.javascriptLinks = [...document.querySelectorAll("a, area, iframe, base")]
                .filter((el) => /^\\s*javascript:/i.test(
                    el.getAttribute("href") || el.getAttribute("src") || "")).length;
              return out;
            }"""
        )
        assert set(report["tags"]) <= ALLOWED_TAGS
        assert set(report["attributes"]) <= ALLOWED_ATTRIBUTES
        assert report["hrefs"], "the http(s) URLs in the payloads become /go links"
        assert all(re.fullmatch(r"/go\?[^\s\"'<>]*", href) for href in report["hrefs"])
        assert set(report["rels"]) == {"noopener noreferrer"}
        assert report["javascriptLinks"] == 0
        census = page.evaluate(f"document.querySelectorAll({CENSUS_SELECTOR!r}).length")
        assert census == census_before
        # Links the server flagged (credentials, IP address) carry the warning sign.
        flagged = page.locator(".chat-view[data-room=xss] a.msg-link--flagged")
        expect(flagged).to_have_count(2)
        expect(flagged.first.locator(".msg-link-warning")).to_have_text("⚠")
        mallory.assert_clean()

    check()
    page.reload()
    expect(page.locator("#connection-state")).to_have_attribute(
        "data-state", "connected", timeout=WAIT
    )
    mallory.settle("xss", len(XSS_PAYLOADS))
    check()


def test_the_renderer_refuses_hostile_server_data(open_chat: OpenChat) -> None:
    """Even a server that sent HTML in names or a non-/go href gets no markup
    or javascript: link into the page."""
    reader = open_chat(None, "lobby")
    result = reader.page.evaluate(
        """async () => {
          const render = await import("/static/js/chat-render.js");
          const li = render.buildMessage({
            seq: 1, message_id: "m1", kind: "message", ts: 1764121234.5, deleted: false,
            user: {name: "<img src=x onerror=alert(1)>", role: "x\\" onclick=\\"x", guest: false},
            text: "javascript:alert(2) https://evil.example/ /go?ok @<b>x</b> https://fine.example",
            mentions: ["<b>x</b>", "(.*)"],
            links: [
              {url: "javascript:alert(2)", href: "javascript:alert(2)", flagged: false},
              {url: "https://evil.example/", href: "https://evil.example/", flagged: false},
              {url: "/go?ok", href: "/go?m=1&i=0\\" onclick=\\"alert(3)", flagged: true},
              {url: "https://fine.example", href: "/go?m=1&i=3", flagged: true, reason: "x"},
            ],
          }, "someone");
          document.querySelector(".chat-view:not([hidden]) .chat-messages--live").appendChild(li);
          return {
            hrefs: [...li.querySelectorAll("a")].map((a) => a.getAttribute("href")),
            images: li.querySelectorAll("img").length,
            bold: li.querySelectorAll("b").length,
            author: li.querySelector(".msg-author").textContent,
            mentions: [...li.querySelectorAll(".msg-mention")].map((s) => s.textContent),
            text: li.querySelector(".msg-text").textContent,
          };
        }"""
    )
    assert result["hrefs"] == ["/go?m=1&i=3"]
    assert result["images"] == 0 and result["bold"] == 0
    assert result["author"] == "<img src=x onerror=alert(1)>"
    assert result["mentions"] == ["@<b>x</b>"]
    assert "javascript:alert(2)" in result["text"]
    reader.assert_clean()


# --- two people ------------------------------------------------------------------------


def test_two_people_chat(open_chat: OpenChat, shots: Path) -> None:
    ada = open_chat("duo_ada", "duo")
    bob = open_chat("duo_bob", "duo")

    for person in (ada, bob):
        presence = person.page.locator("#presence-list")
        expect(presence).to_contain_text("duo_ada", timeout=WAIT)
        expect(presence).to_contain_text("duo_bob", timeout=WAIT)
    expect(bob.page.locator("#presence-list .chat-person-you")).to_have_count(1)

    ada.page.locator("#message-input").press_sequentially("hel")
    expect(bob.page.locator("#typing")).to_have_text("duo_ada is typing…", timeout=WAIT)
    expect(ada.page.locator("#typing")).to_have_text("")

    ada.page.locator("#message-input").fill("")
    ada.send("hello bob")
    bob.settle("duo", 1)
    expect(bob.page.locator("#typing")).to_have_text("")  # sending ends "typing"
    bob.send("hi ada, how are you?")
    ada.settle("duo", 2)
    ada.send("fine,\nthanks")
    bob.send("great")
    conversation = ["hello bob", "hi ada, how are you?", "fine,\nthanks", "great"]
    for person in (ada, bob):
        person.settle("duo", 4)
    # Both show the room's order (by seq), whatever order the two sends crossed in.
    seen_by_ada, seen_by_bob = ada.messages("duo"), bob.messages("duo")
    assert [m["seq"] for m in seen_by_ada] == [m["seq"] for m in seen_by_bob]
    assert [m["seq"] for m in seen_by_ada] == sorted(m["seq"] for m in seen_by_ada)
    assert [m["text"] for m in seen_by_ada] == [m["text"] for m in seen_by_bob]
    assert sorted(m["text"] for m in seen_by_ada) == sorted(conversation)
    assert ada.texts("duo")[:2] == conversation[:2]
    own = ada.page.locator(".chat-view[data-room=duo] .msg--own")
    expect(own).to_have_count(2)

    # A mention: highlighted for bob, with an in-page toast and the title count.
    assert not bob.page.title().startswith("(")
    ada.send("@duo_bob look at https://example.org/page")
    bob.settle("duo", 5)
    mention = bob.page.locator(".chat-view[data-room=duo] .msg--mentions-me")
    expect(mention).to_have_count(1)
    expect(mention.locator(".msg-mention--me")).to_have_text("@duo_bob")
    expect(mention.locator("a.msg-link")).to_have_attribute("href", re.compile(r"^/go\?"))
    toast = bob.page.locator(".chat-toast--mention")
    expect(toast).to_contain_text("@duo_ada mentioned you in #duo", timeout=WAIT)
    expect(bob.page).to_have_title(re.compile(r"^\(1\) "))
    bob.page.wait_for_function(
        "() => getComputedStyle(document.querySelector('.chat-toast--mention')).opacity === '1'"
    )
    bob.page.screenshot(path=str(shots / "chat-mention.png"))
    # For ada it is just a mention of someone else.
    ada.settle("duo", 5)
    expect(ada.page.locator(".chat-view[data-room=duo] .msg--mentions-me")).to_have_count(0)
    expect(ada.page.locator(".chat-view[data-room=duo] .msg-mention")).to_have_text(["@duo_bob"])
    # Using the page clears the count.
    bob.page.locator("#message-input").press("Shift")
    expect(bob.page).not_to_have_title(re.compile(r"^\("))

    # Desktop notifications only after the person asks for them with the button.
    for person in (ada, bob):
        assert person.page.evaluate("window.__permissionAsks") == 0
    expect(bob.page.locator("#notify-button")).to_be_visible()
    bob.context.grant_permissions(["notifications"])  # what bob answers to the prompt
    bob.page.locator("#notify-button").click()
    expect(bob.page.locator("#notify-button")).to_be_hidden()
    assert bob.page.evaluate("window.__permissionAsks") == 1

    # Another room: bob joins it, comes back, and sees that ada posted there.
    bob.page.get_by_role("button", name="#duo2").click()
    expect(bob.page.locator("#room-title")).to_have_text("#duo2")
    expect(bob.page.locator(".chat-view[data-room=duo2] .chat-beginning")).to_be_visible(
        timeout=WAIT
    )
    bob.page.get_by_role("button", name="#duo", exact=True).click()
    expect(bob.page.locator(".chat-view[data-room=duo]")).to_be_visible()
    ada.post_as_bot("duo2", ["over here"])
    unread = bob.page.get_by_role("button", name=re.compile(r"#duo2"))
    expect(unread.locator(".badge")).to_have_text("1 unread", timeout=WAIT)
    unread.click()
    bob.settle("duo2", 1)
    assert bob.texts("duo2") == ["over here"]
    expect(unread.locator(".badge")).to_have_count(0)

    ada.assert_clean()
    bob.assert_clean()


# --- history, reload, resume -----------------------------------------------------------


def test_reload_shows_history_and_a_dropped_connection_resumes(open_chat: OpenChat) -> None:
    ada = open_chat("again_ada", "again")
    cutter: list[SocketCutter] = []
    bob = open_chat("again_bob", "again", before=lambda page: cutter.append(SocketCutter(page)))
    cut = cutter[0]

    for text in ("one", "two", "three"):
        ada.send(text)
    bob.settle("again", 3)
    bob.page.reload()
    expect(bob.page.locator("#connection-state")).to_have_attribute(
        "data-state", "connected", timeout=WAIT
    )
    bob.settle("again", 3)
    assert bob.texts("again") == ["one", "two", "three"]
    last_seq = bob.messages("again")[-1]["seq"]

    cut.cut()
    expect(bob.page.locator("#connection-state")).to_have_attribute(
        "data-state", "disconnected", timeout=WAIT
    )
    for text in ("four", "five"):  # missed by bob; no more than chat.resume_cap
        ada.send(text)
    ada.settle("again", 5)
    cut.restore()
    expect(bob.page.locator("#connection-state")).to_have_attribute(
        "data-state", "connected", timeout=WAIT
    )
    bob.settle("again", 5)
    ada.send("six")
    bob.settle("again", 6)

    shown = bob.messages("again")
    assert [m["text"] for m in shown] == ["one", "two", "three", "four", "five", "six"]
    seqs = [m["seq"] for m in shown]
    assert seqs == sorted(set(seqs))
    assert len({m["id"] for m in shown}) == 6
    assert cut.hellos()[-1]["resume"] == {"again": last_seq}
    bob.assert_clean()


def test_a_long_outage_resets_the_room(open_chat: OpenChat) -> None:
    ada = open_chat("reset_ada", "reset")
    cutter: list[SocketCutter] = []
    bob = open_chat("reset_bob", "reset", before=lambda page: cutter.append(SocketCutter(page)))
    cut = cutter[0]

    ada.send("before")
    bob.settle("reset", 1)
    cut.cut()
    expect(bob.page.locator("#connection-state")).to_have_attribute(
        "data-state", "disconnected", timeout=WAIT
    )
    missed = [f"missed {i}" for i in range(RESUME_CAP + 2)]
    ada.post_as_bot("reset", missed)
    cut.restore()
    bob.settle("reset", 1 + len(missed))
    assert bob.texts("reset") == ["before", *missed]
    hello_at = max(i for i, m in enumerate(cut.sent) if m.get("type") == "hello")
    assert cut.sent[hello_at]["resume"] == {"reset": 1}
    # chat.reset made the page join the room again, from scratch.
    assert any(
        m.get("type") == "room.join" and m.get("room") == "reset" for m in cut.sent[hello_at:]
    )
    bob.assert_clean()


def test_scrolling_back_loads_older_messages_and_keeps_the_place(open_chat: OpenChat) -> None:
    ada = open_chat("scroll_ada", "scroll")
    ada.post_as_bot("scroll", [f"message {i}" for i in range(1, 71)])
    history_requests: list[dict[str, Any]] = []

    def watch(ws: Any) -> None:
        def sent(payload: Any) -> None:
            message = json.loads(payload)
            if message.get("type") == "chat.history":
                history_requests.append(message)

        ws.on("framesent", sent)

    bob = open_chat("scroll_bob", "scroll", before=lambda page: page.on("websocket", watch))
    page = bob.page
    bob.settle("scroll", 50)  # the newest page of history
    assert bob.texts("scroll")[0] == "message 21"
    view = page.locator(".chat-view[data-room=scroll]")
    expect(view.locator(".chat-older")).to_be_visible()
    assert in_view(page, '.chat-view[data-room=scroll] .msg[data-seq="70"]')

    view.hover()
    page.mouse.wheel(0, -100000)
    bob.settle("scroll", 70)
    assert history_requests == [
        {"type": "chat.history", "room": "scroll", "before_seq": 21, "limit": 50, "id": ANY}
    ]
    # The reader still sees where they were, not the top of what was loaded.
    assert in_view(page, '.chat-view[data-room=scroll] .msg[data-seq="21"]')
    assert not in_view(page, '.chat-view[data-room=scroll] .msg[data-seq="1"]')
    assert bob.texts("scroll") == [f"message {i}" for i in range(1, 71)]

    page.mouse.wheel(0, -100000)
    expect(view.locator(".chat-beginning")).to_be_visible()
    expect(view.locator(".chat-older")).to_be_hidden()
    assert len(history_requests) == 1  # has_more was false: no more requests

    # Scrolled up: a new message waits behind a button.
    ada.post_as_bot("scroll", ["new while reading"])
    button = page.locator("#new-messages")
    expect(button).to_have_text(re.compile(r"1 new message"), timeout=WAIT)
    assert not in_view(page, '.chat-view[data-room=scroll] .msg[data-seq="71"]')
    button.click()
    expect(button).to_be_hidden()
    page.wait_for_function(
        "() => { const v = document.querySelector('.chat-view[data-room=scroll]');"
        " return v.scrollHeight - v.scrollTop - v.clientHeight < 48; }",
        timeout=WAIT,
    )
    # At the bottom: the next one scrolls into view by itself.
    ada.post_as_bot("scroll", ["and another"])
    bob.settle("scroll", 72)
    page.wait_for_function(
        "() => { const v = document.querySelector('.chat-view[data-room=scroll]');"
        " return v.scrollHeight - v.scrollTop - v.clientHeight < 48; }",
        timeout=WAIT,
    )
    expect(button).to_be_hidden()
    bob.assert_clean()


# --- moderation and errors as the page shows them ----------------------------------------


def test_moderation_seen_in_the_page(open_chat: OpenChat) -> None:
    boss = open_chat(ADMIN, "mod")
    bob = open_chat("mod_bob", "mod")

    bob.send("/kick boss")
    expect(bob.page.locator("#composer-error")).to_contain_text("not allowed", timeout=WAIT)
    bob.send("/help")
    expect(bob.page.locator(".chat-view[data-room=mod] .msg--local-command")).to_contain_text(
        "/help", timeout=WAIT
    )
    expect(bob.page.locator("#composer-error")).to_be_empty()

    # (A typed /notice goes to every room, and the other tests count messages.)
    boss.frames(
        [{"type": "admin.command", "cmd": "notice", "args": {"text": "Be kind.", "room": "mod"}}]
    )
    for person in (boss, bob):
        notice = person.page.locator(".chat-view[data-room=mod] .msg--notice")
        expect(notice).to_contain_text("Be kind.", timeout=WAIT)
        expect(notice.locator(".msg-notice-label")).to_have_text("Notice")

    bob.send("something regrettable")
    boss.settle("mod", 2)
    target = boss.messages("mod")[-1]
    assert target["text"] == "something regrettable"
    boss.send(f"/delete {target['id']}")
    removed = bob.page.locator(f'.chat-view[data-room=mod] .msg[data-message-id="{target["id"]}"]')
    expect(removed).to_have_class(re.compile(r"msg--deleted"), timeout=WAIT)
    expect(removed.locator(".msg-text")).to_have_text("message removed")
    bob.page.reload()
    expect(removed.locator(".msg-text")).to_have_text("message removed", timeout=WAIT)

    boss.send("/mute mod_bob 10m calm down")
    expect(bob.page.locator(".chat-view[data-room=mod] .msg--local-warning")).to_be_visible(
        timeout=WAIT
    )
    bob.send("am I muted?")
    expect(bob.page.locator("#composer-error")).to_contain_text("You are muted until", timeout=WAIT)
    expect(bob.page.locator("#message-input")).to_have_value("am I muted?")
    expect(bob.page.locator(".chat-view[data-room=mod] .msg--pending")).to_have_count(0)

    boss.send("/ban mod_bob 1d spamming")
    expect(bob.page.locator("#blocked-prompt")).to_contain_text("banned", timeout=WAIT)
    expect(bob.page.locator("#blocked-prompt")).to_contain_text("spamming")
    expect(bob.page.locator("#connection-state")).to_have_attribute("data-state", "disconnected")
    # Banned: no reconnecting.
    expect(bob.page.locator("#connection-detail")).not_to_contain_text("retrying")
    expect(bob.page.locator("#composer")).to_be_hidden()
    boss.assert_clean()
    assert bob.dialogs == [] and bob.csp_violations() == []


def test_an_anonymous_reader_reads_and_is_asked_to_sign_in(open_chat: OpenChat) -> None:
    writer = open_chat("anon_writer", "anon")
    writer.send("hello, whoever reads this")
    writer.settle("anon", 1)
    reader = open_chat(None, "anon")
    reader.settle("anon", 1)
    assert reader.texts("anon") == ["hello, whoever reads this"]
    expect(reader.page.locator("#composer")).to_be_hidden()
    prompt = reader.page.locator("#signin-prompt")
    expect(prompt).to_be_visible()
    expect(prompt).to_contain_text("Sign in or continue as guest")
    expect(prompt.locator('a[href="/login"]')).to_be_visible()
    expect(prompt.locator('a[href="/register"]')).to_be_visible()
    # Anonymous readers are not listed as present.
    expect(reader.page.locator("#presence-list")).to_have_text("anon_writer")
    reader.assert_clean()


def test_a_guest_chats_marked_as_a_guest(open_chat: OpenChat) -> None:
    host = open_chat("guest_host", "anon")
    guest = open_chat("visitor", "anon", guest=True)
    guest.send("hello from a guest")
    expect(host.page.locator("#presence-list .chat-person", has_text="visitor")).to_contain_text(
        "guest", timeout=WAIT
    )
    message = host.page.locator(".chat-view[data-room=anon] .msg", has_text="hello from a guest")
    expect(message.locator(".msg-badge--guest")).to_have_text("guest", timeout=WAIT)
    expect(guest.page.locator("#xp-badge")).to_be_hidden()  # guests earn no XP
    expect(host.page.locator("#xp-badge")).to_be_visible()
    guest.assert_clean()


def test_the_message_box(open_chat: OpenChat) -> None:
    ada = open_chat("keys_ada", "keys")
    page = ada.page
    box = page.get_by_label("Message", exact=True)
    expect(box).to_be_visible()
    live = page.locator(".chat-view[data-room=keys] .chat-messages--live")
    expect(live).to_have_attribute("aria-live", "polite")
    history = page.locator(".chat-view[data-room=keys] .chat-messages").first
    expect(history).not_to_have_attribute("aria-live", re.compile(".*"))

    box.press_sequentially("first line")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    expect(box).to_have_value("first line\nsecond line")
    expect(page.locator(".chat-view[data-room=keys] .msg")).to_have_count(0)
    box.press("Enter")
    ada.settle("keys", 1)
    assert ada.texts("keys") == ["first line\nsecond line"]
    expect(box).to_have_value("")
    expect(box).to_be_focused()

    box.fill("x" * 1990)
    expect(page.locator("#char-counter")).to_have_text("1990 / 2000")
    expect(page.locator("#send-button")).to_be_enabled()
    box.fill("x" * 2001)
    expect(page.locator("#char-counter")).to_have_text("2001 / 2000")
    expect(page.locator("#char-counter")).to_have_class(re.compile("chat-counter--over"))
    expect(page.locator("#send-button")).to_be_disabled()
    box.press("Enter")
    expect(page.locator("#composer-error")).to_contain_text("at most 2000")
    box.fill("short again")
    expect(page.locator("#char-counter")).to_have_text("")

    # Keyboard: the skip link leads to the box; the message view is focusable.
    skip = page.get_by_role("link", name="Skip to the message box")
    skip.focus()
    expect(skip).to_be_focused()
    page.keyboard.press("Enter")
    expect(box).to_be_focused()
    expect(page.get_by_role("region", name="Messages in #keys")).to_have_attribute("tabindex", "0")
    ada.assert_clean()


# --- phone ------------------------------------------------------------------------------


def test_phone_width(open_chat: OpenChat, shots: Path) -> None:
    # Phones often ask for less motion: toasts and the side panel then appear at once.
    ada = open_chat("phone_ada", "phone", viewport=(375, 740), reduced_motion=True)
    other = open_chat("phone_other", "phone")
    other.post_as_bot(
        "phone",
        [
            "Welcome to the phone test.",
            "a-very-long-word-" * 20,
            "see https://example.org/a/rather/long/path/that/goes/on/and/on?with=query",
            "@phone_ada are you there?",
        ],
    )
    page = ada.page
    # The first-visit privacy notice takes the top of a small screen until answered.
    page.locator('#consent [data-consent="no"]').click()
    expect(page.locator("#consent")).to_be_hidden()
    ada.settle("phone", 4)
    ada.send("Yes, on my phone!")
    ada.settle("phone", 5)
    toast = page.locator(".chat-toast--mention")
    expect(toast).to_contain_text("mentioned you")
    assert page.evaluate("getComputedStyle(document.querySelector('.chat-toast')).opacity") == "1"
    page.screenshot(path=str(shots / "chat-phone-toast.png"))
    toast.get_by_role("button", name="Close").click()
    expect(toast).to_have_count(0)
    page.screenshot(path=str(shots / "chat-phone.png"))

    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, "nothing may scroll sideways"
    for selector in ("#message-input", "#send-button", ".chat-view[data-room=phone]"):
        box = page.locator(selector).bounding_box()
        assert box is not None, selector
        assert box["x"] >= 0 and box["x"] + box["width"] <= 375, selector
        assert box["y"] >= 0 and box["y"] + box["height"] <= 740, selector
    assert in_view(page, '.chat-view[data-room=phone] .msg[data-seq="5"]')
    expect(page.locator(".chat-view[data-room=phone] .msg--mentions-me")).to_have_count(1)

    # Rooms and people live behind a toggle.
    sidebar = page.locator("#chat-sidebar")
    expect(sidebar).not_to_be_in_viewport()
    page.get_by_role("button", name=re.compile("Rooms & people")).click()
    expect(page.locator("#chat-sidebar.show")).to_be_in_viewport(ratio=1)
    expect(sidebar.locator("#presence-list")).to_contain_text("phone_ada")
    page.screenshot(path=str(shots / "chat-phone-sidebar.png"))
    sidebar.get_by_role("button", name="#lobby").click()
    expect(page.locator("#room-title")).to_have_text("#lobby")
    expect(sidebar).not_to_be_in_viewport()
    ada.assert_clean()


#: The contrast of each selector's text with what is behind it (alpha composited),
#: the lowest over every visible match (WCAG 2 relative luminance).
CONTRAST_JS = """
(selectors) => {
  const parse = (text) => {
    const m = text.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const p = m[1].split(/[\\s,/]+/).filter(Boolean).map(Number);
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
  };
  const over = (top, bottom) => ({
    r: top.r * top.a + bottom.r * (1 - top.a),
    g: top.g * top.a + bottom.g * (1 - top.a),
    b: top.b * top.a + bottom.b * (1 - top.a),
    a: 1,
  });
  const behind = (el) => {
    const layers = [];
    for (let node = el; node; node = node.parentElement) {
      const c = parse(getComputedStyle(node).backgroundColor);
      if (c && c.a > 0) {
        layers.push(c);
        if (c.a >= 1) break;
      }
    }
    return layers.reverse().reduce((bg, layer) => over(layer, bg), {r: 0, g: 0, b: 0, a: 1});
  };
  const luminance = (c) => {
    const f = (v) => ((v /= 255) <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4));
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  const lowest = {};
  for (const selector of selectors) {
    for (const el of document.querySelectorAll(selector)) {
      if (el.getClientRects().length === 0) continue;
      const bg = behind(el);
      const fg = over(parse(getComputedStyle(el).color), bg);
      const [a, b] = [luminance(fg), luminance(bg)];
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      lowest[selector] = Math.min(lowest[selector] ?? Infinity, ratio);
    }
  }
  return lowest;
}
"""
CONTRAST_SELECTORS = [
    ".msg-author",
    ".msg--own .msg-author",
    ".msg-time",
    ".msg-text",
    ".msg-mention",
    ".msg-mention--me",
    ".msg-link",
    ".msg-link--flagged",
    ".msg-badge--guest",
    ".chat-section-title",
    ".chat-room",
    ".chat-room[aria-current=true]",
    ".chat-person-name",
    ".chat-person-you",
    ".chat-beginning",
    ".chat-composer-help",
    ".chat-typing",
    "#connection-state",
    "#connection-detail",
    ".chat-xp-level",
    ".chat-xp-points",
    "#message-input",
]


def test_desktop_look_and_contrast(open_chat: OpenChat, shots: Path) -> None:
    """A picture for people reviewing the page, and enough contrast (WCAG AA,
    4.5:1) for every kind of text on it in the dark theme."""
    ada = open_chat("desk_ada", "desk")
    bob = open_chat("desk_bob", "desk")
    bob.post_as_bot(
        "desk",
        ["Hi @desk_ada, welcome!", "Docs: https://example.org/docs (not http://10.0.0.1/)"],
    )
    ada.send("Thanks, happy to be here. @desk_bob")
    ada.settle("desk", 3)
    bob.page.locator("#message-input").press_sequentially("typing")
    page = ada.page
    expect(page.locator("#typing")).to_have_text("desk_bob is typing…", timeout=WAIT)
    expect(page.locator("#presence-list")).to_contain_text("desk_bob")
    page.screenshot(path=str(shots / "chat-desktop.png"))
    contrast = page.evaluate(CONTRAST_JS, CONTRAST_SELECTORS)
    assert set(contrast) == set(CONTRAST_SELECTORS) - {".msg-badge--guest"}
    low = {selector: round(ratio, 2) for selector, ratio in contrast.items() if ratio < 4.5}
    assert low == {}
    ada.assert_clean()


# --- a scripted server ------------------------------------------------------------------


class FakeServer:
    """Answers the page's WebSocket itself (``page.route_web_socket``) like a
    bambid server would, and lets a test push frames or close the socket."""

    def __init__(self, page: Page, user: dict[str, Any] | None, rooms: list[str]) -> None:
        self.user = user
        self.rooms = rooms
        self.sockets: list[WebSocketRoute] = []
        self.received: list[dict[str, Any]] = []
        self.on_send: Callable[[dict[str, Any]], list[dict[str, Any]]] = lambda m: []
        self.on_hello: Callable[[WebSocketRoute, dict[str, Any]], bool] | None = None
        self.history: dict[str, list[dict[str, Any]]] = {room: [] for room in rooms}
        page.route_web_socket(re.compile(r"/ws$"), self._route)

    @property
    def ws(self) -> WebSocketRoute:
        return self.sockets[-1]

    def push(self, **frame: Any) -> None:
        self.ws.send(json.dumps(frame))

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
            if self.on_hello is not None and self.on_hello(ws, message):
                return
            send(
                type="welcome",
                id=rid,
                server="bambid",
                version="test",
                protocol=1,
                server_time=time.time(),
                connection_id="fake",
                user=self.user,
                rooms=self.rooms,
            )
        elif kind == "room.join":
            room = message["room"]
            send(type="ack", id=rid, room=room)
            send(type="chat.history", room=room, messages=self.history[room], has_more=False)
            send(type="presence", room=room, users=[person("fake_ada"), person("fake_bo")])
        elif kind == "chat.send":
            for frame in self.on_send(message):
                send(**frame)


def person(name: str) -> dict[str, Any]:
    return {"name": name, "role": "user", "guest": False}


def chat_message(seq: int, text: str, name: str = "fake_bo", **extra: Any) -> dict[str, Any]:
    return {
        "type": "chat.message",
        "room": "lobby",
        "seq": seq,
        "message_id": f"id-{seq}",
        "kind": "message",
        "user": person(name),
        "text": text,
        "ts": time.time(),
        "mentions": [],
        "links": [],
        "deleted": False,
        **extra,
    }


FAKE_USER = {**person("fake_ada"), "xp": 990, "level": 0, "next": 1000}


def test_errors_and_notices_from_the_server(open_chat: OpenChat) -> None:
    fakes: list[FakeServer] = []
    ada = open_chat(
        None,
        "lobby",
        before=lambda page: fakes.append(FakeServer(page, FAKE_USER, ["lobby"])),
        expect_signed_in=False,
    )
    fake = fakes[0]
    page = ada.page
    error = page.locator("#composer-error")
    box = page.locator("#message-input")

    answers: list[dict[str, Any]] = [
        {"code": "rate_limited", "message": "slow down", "retry_after": 2.2},
        {"code": "muted", "message": "you are muted", "until": None},
        {"code": "unauthenticated", "message": "sign in"},
        {"code": "forbidden", "message": "moderators only"},
    ]
    fake.on_send = lambda m: [{"type": "error", "id": m["id"], **answers.pop(0)}]
    ada.send("one")
    expect(error).to_have_text("You are sending messages too quickly. Try again in 3 seconds.")
    expect(box).to_have_value("one")  # the text comes back to be sent again
    ada.send("one")
    expect(error).to_have_text("You are muted until a moderator lifts it.")
    ada.send("one")
    expect(error).to_contain_text("Sign in or continue as guest")
    expect(error.locator('a[href="/login"]')).to_be_visible()
    expect(error.locator('a[href="/register"]')).to_be_visible()
    ada.send("one")
    expect(error).to_contain_text("You are not allowed to do that.")
    expect(page.locator(".msg--pending")).to_have_count(0)

    fake.push(type="system", message="You are muted for 10 minutes.", level="warning")
    expect(page.locator(".msg--local-warning")).to_have_text("You are muted for 10 minutes.")
    expect(page.locator(".chat-toast--warning")).to_contain_text("You are muted for 10 minutes.")

    expect(page.locator("#xp-level")).to_have_text("Lv 0")
    fake.push(type="xp.update", xp=1002, level=1, next=2500)
    fake.push(type="level.up", level=1, unlocked=["triggers"])
    expect(page.locator("#xp-level")).to_have_text("Lv 1")
    expect(page.locator("#xp-points")).to_have_text("1002 / 2500 XP")
    expect(page.locator("#level-up-title")).to_have_text("Level 1 reached — Triggers unlocked")

    fake.ws.close(code=1008, reason="kicked: be nice")
    expect(page.locator("#connection-state")).to_have_attribute("data-state", "disconnected")
    expect(page.locator("#connection-detail")).to_contain_text(
        "you were removed from the chat (be nice); retrying in"
    )
    ada.assert_clean()


def test_order_and_duplicates(open_chat: OpenChat) -> None:
    """Messages are placed by seq and shown once, however the frames arrive."""
    fakes: list[FakeServer] = []
    ada = open_chat(
        None,
        "lobby",
        before=lambda page: fakes.append(FakeServer(page, FAKE_USER, ["lobby"])),
        expect_signed_in=False,
    )
    fake = fakes[0]
    fake.history["lobby"] = [chat_message(1, "first"), chat_message(2, "second")]

    def echo_first(message: dict[str, Any]) -> list[dict[str, Any]]:
        # chat.message before its ack, then the same message again.
        mine = chat_message(6, message["text"], name="fake_ada", message_id="mine")
        ack = {"type": "ack", "id": message["id"], "message_id": "mine", "seq": 6}
        return [mine, ack, mine]

    fake.on_send = echo_first
    page = ada.page
    page.reload()  # now with the history above
    ada.settle("lobby", 2)
    fake.push(**chat_message(5, "fifth"))
    fake.push(**chat_message(3, "third"))
    fake.push(**chat_message(4, "fourth"))
    fake.push(**chat_message(5, "fifth"))
    ada.settle("lobby", 5)
    ada.send("sixth, mine")
    ada.settle("lobby", 6)
    fake.push(**{**chat_message(7, ""), "kind": "deletion", "target": "id-3"})
    fake.push(
        type="chat.history",
        room="lobby",
        resumed=True,
        has_more=False,
        messages=[chat_message(5, "fifth"), chat_message(8, "eighth")],
    )
    ada.settle("lobby", 7)
    shown = ada.messages("lobby")
    assert [m["seq"] for m in shown] == [1, 2, 3, 4, 5, 6, 8]
    assert [m["text"] for m in shown] == [
        "first",
        "second",
        "message removed",
        "fourth",
        "fifth",
        "sixth, mine",
        "eighth",
    ]
    assert "msg--own" in shown[5]["classes"]

    # chat.reset: the room is emptied and joined again.
    fake.history["lobby"] = [chat_message(9, "after the reset")]
    fake.push(type="chat.reset", room="lobby")
    ada.settle("lobby", 1)
    assert ada.texts("lobby") == ["after the reset"]
    joins = [m for m in fake.received if m["type"] == "room.join"]
    assert len(joins) == 3  # the first load, the reload, the reset
    ada.assert_clean()


def test_a_banned_person_sees_the_reason(browser: Browser, server: Daemon) -> None:
    context = browser.new_context()
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    hellos: list[dict[str, Any]] = []

    def route(ws: WebSocketRoute) -> None:
        def on_message(raw: str | bytes) -> None:
            hello = json.loads(raw)
            hellos.append(hello)
            refusal = {
                "type": "error",
                "id": hello["id"],
                "code": "banned",
                "message": "you are banned",
                "reason": "spam <b>links</b>",
                "until": None,
            }
            ws.send(json.dumps(refusal))
            ws.close(code=1008, reason="banned: spam <b>links</b>")

        ws.on_message(on_message)

    page.route_web_socket(re.compile(r"/ws$"), route)
    page.goto(server.http + "/")
    blocked = page.locator("#blocked-prompt")
    expect(blocked).to_have_text("You are banned: spam <b>links</b>.", timeout=WAIT)
    expect(page.locator("#connection-state")).to_have_attribute("data-state", "disconnected")
    expect(page.locator("#connection-detail")).to_have_text("you are banned: spam <b>links</b>")
    expect(page.locator("#composer")).to_be_hidden()
    expect(page.locator("#signin-prompt")).to_be_hidden()
    assert len(hellos) == 1
    assert problems == []
    context.close()

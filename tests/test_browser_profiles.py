"""Profile pages in a real headless Chromium (Debian's, driven by Playwright)
against a real daemon subprocess.

Covered: every payload of ``XSS_PAYLOADS`` as a bio and display name, and
every ``XSS_URLS`` value as a social link, renders inert — both written raw
into the daemon's own storage (so the rendering alone must be safe) and sent
through ``PATCH /api/profiles/<name>``; and a like clicked on one page updates
the counts on other pages showing that profile, live.

"Inert" means: no dialog, no console error or page error (a CSP violation is
a console error too, and is also recorded by an init script), the site's own
script files the only scripts in the document, and, inside the profile, no
``<script>`` (or other active element), no element with an ``on*`` attribute
and no link or source that is not http(s) or a local path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browsersupport import CSP_RECORDER, watch
from tests.daemon import REPO, Daemon, daemon_environment
from tests.test_browser_companion import People
from tests.xss_corpus import XSS_PAYLOADS, XSS_URLS

pytestmark = pytest.mark.slow

WAIT = 15000  # ms
DAEMON_ENV = {
    "BAMBID_PROFILES_PAGE_SIZE": "100",
    "BAMBID_LIMITS_CONNECTION_BURST": "1000",
    "BAMBID_LIMITS_CONNECTION_PER_SECOND": "1000",
}
PLATFORMS = ("twitter", "instagram", "discord", "reddit", "custom")

#: Writes profiles with the daemon's own storage (SQLite in WAL mode: the running daemon
#: reads them on its next request), bypassing every check of the API. argv: the database,
#: a JSON file of ``[{"name", "fields"}]`` (``social_links`` as an object).
WRITE_PROFILES = """
import json
import sys
from pathlib import Path
from twisted.internet import defer, task
from bambid.models import SocialLinks
from bambid.storage.sqlite import SQLiteStorage

async def main(reactor):
    storage = SQLiteStorage(Path(sys.argv[1]), reactor)
    await storage.open()
    try:
        for entry in json.loads(Path(sys.argv[2]).read_text(encoding="utf-8")):
            fields = dict(entry["fields"])
            if "social_links" in fields:
                fields["social_links"] = SocialLinks(**fields["social_links"])
            await storage.ensure_profile(entry["name"], reactor.seconds())
            await storage.update_profile(entry["name"], fields)
    finally:
        await storage.close()

task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
"""

#: What is active inside ``selector``: elements that run or load things, elements with
#: an on* attribute, and URLs that are not http(s) or local; and every script in the page.
INERT_JS = """
(selector) => {
  const roots = [...document.querySelectorAll(selector)];
  const active = "script, iframe, frame, object, embed, img, svg, math, style, link, meta, base, "
    + "form, input, textarea, video, audio, source, template, noscript, details, marquee";
  const found = { roots: roots.length, active: [], handlers: [], urls: [], scripts: [] };
  const allowed = (value) => /^(https?:\\/\\/|\\/(?!\\/))/i.test(value.trim());
  for (const root of roots) {
    for (const el of root.querySelectorAll(active)) found.active.push(el.outerHTML.slice(0, 80));
    for (const el of [root, ...root.querySelectorAll("*")]) {
      for (const attr of el.attributes) {
        const name = attr.name.toLowerCase();
        if (name.startsWith("on")) found.handlers.push(el.outerHTML.slice(0, 80));
        if (["href", "src", "action", "formaction", "xlink:href", "data", "srcdoc"].includes(name)
            && !allowed(attr.value)) {
          found.urls.push(name + "=" + attr.value);
        }
      }
    }
  }
  for (const script of document.scripts) found.scripts.push(script.getAttribute("src") || "inline");
  return found;
}
"""
#: Where the site's own scripts come from (the only ones a page may have).
SCRIPT_DIRS = ("/static/js/", "/vendor/bootstrap/js/")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with Daemon.start(tmp_path_factory.mktemp("profiles-daemon"), env=DAEMON_ENV) as daemon:
        yield daemon


@pytest.fixture
def people(browser: Browser) -> Iterator[People]:
    found = People(browser)
    yield found
    found.close()


def write_profiles(daemon: Daemon, tmp_path: Path, entries: list[dict[str, Any]]) -> None:
    """Store ``entries`` raw with the daemon's storage (see ``WRITE_PROFILES``)."""
    data = tmp_path / "profiles.json"
    data.write_text(json.dumps(entries), encoding="utf-8")
    subprocess.run(
        [
            sys.executable,
            "-c",
            WRITE_PROFILES,
            str(daemon.workdir / "var" / "bambid.sqlite3"),
            str(data),
        ],
        cwd=REPO,
        env=daemon_environment(),
        check=True,
        timeout=120,
    )


@attrs.define
class Tab:
    page: Page
    problems: list[str]
    dialogs: list[str]

    @classmethod
    def open(cls, context: BrowserContext) -> Tab:
        page = context.new_page()
        problems, dialogs = watch(page, CSP_RECORDER)
        return cls(page, problems, dialogs)

    def profile(self, server: Daemon, name: str) -> None:
        """Open ``name``'s profile and wait until its counts are live."""
        self.page.goto(f"{server.http}/profile/{name}")
        expect(self.page.locator("#profile-live")).to_have_attribute(
            "data-state", "live", timeout=WAIT
        )

    def assert_inert(self, selector: str) -> None:
        found = self.page.evaluate(INERT_JS, selector)
        context = self.page.url
        assert found["roots"] > 0, (context, selector)
        assert found["active"] == [], context
        assert found["handlers"] == [], context
        assert found["urls"] == [], context
        assert all(src.startswith(SCRIPT_DIRS) for src in found["scripts"]), found["scripts"]
        self.assert_clean()

    def assert_clean(self) -> None:
        assert self.problems == [], self.page.url
        assert self.dialogs == [], self.page.url
        assert self.page.evaluate("window.__csp") == [], self.page.url


def raw_entry(index: int, payload: str) -> dict[str, Any]:
    links = {p: XSS_URLS[(index + k) % len(XSS_URLS)] for k, p in enumerate(PLATFORMS)}
    return {
        "name": f"xss-{index:03d}",
        "fields": {"bio": payload, "display_name": payload, "social_links": links},
    }


def test_stored_payloads_render_inert(
    people: People, server: Daemon, tmp_path: Path, shots: Path
) -> None:
    entries = [raw_entry(i, payload) for i, payload in enumerate(XSS_PAYLOADS)]
    write_profiles(server, tmp_path, entries)
    tab = Tab.open(people.person(server, None))
    for index, entry in enumerate(entries):
        tab.profile(server, entry["name"])
        # The text is there, as text: the payload's words survive escaping.
        expect(tab.page.locator("#profile-bio")).not_to_be_empty()
        tab.assert_inert("#profile-bio")
        tab.assert_inert("#profile")
        links = tab.page.locator("#profile-links li")
        expect(links).to_have_count(len(PLATFORMS))
        if index == 0:
            tab.page.screenshot(path=str(shots / "profile-xss.png"), full_page=True)
    # Every display name and link at once on the community page (without profile.js).
    tab.page.goto(f"{server.http}/profiles?q=xss-&sort=name")
    expect(tab.page.locator("#profiles-list .profile-card")).to_have_count(len(entries))
    tab.assert_inert("#profiles-list")
    tab.assert_inert("#leaderboard")


def bio_chunks(payloads: list[str], limit: int = 2000) -> list[str]:
    """The payloads as few bios as fit in ``limit`` characters, blank-line separated."""
    chunks: list[str] = []
    current = ""
    for payload in payloads:
        candidate = f"{current}\n\n{payload}" if current else payload
        if len(candidate) > limit and current:
            chunks.append(current)
            candidate = payload
        current = candidate
    chunks.append(current)
    return chunks


def test_payloads_sent_through_the_api_render_inert(people: People, server: Daemon) -> None:
    context = people.person(server, "Patcher")
    api = f"{server.http}/api/profiles/Patcher"
    tab = Tab.open(people.person(server, None))
    chunks = bio_chunks(XSS_PAYLOADS)
    assert len(chunks) > 1
    for chunk in chunks:
        answer = context.request.patch(api, data={"bio": chunk})
        assert answer.status == 200, answer.text()
        tab.profile(server, "Patcher")
        tab.assert_inert("#profile-bio")
        tab.assert_inert("#profile")
    accepted = 0
    for payload in XSS_PAYLOADS:
        answer = context.request.patch(api, data={"display_name": payload})
        assert answer.status in (200, 422), answer.text()
        accepted += answer.status == 200
    assert accepted > 0
    tab.profile(server, "Patcher")
    tab.assert_inert("#profile")
    for url in XSS_URLS:
        for platform in PLATFORMS:
            answer = context.request.patch(api, data={"social_links": {platform: url}})
            assert answer.status in (200, 422), (url, answer.text())
            if answer.status == 200:
                stored = answer.json()["social_links"][platform]
                assert stored.startswith("https://"), (url, stored)
        tab.profile(server, "Patcher")
        tab.assert_inert("#profile")


def test_a_like_updates_the_other_pages_live(people: People, server: Daemon, shots: Path) -> None:
    ada = Tab.open(people.person(server, "Ada"))
    bob = Tab.open(people.person(server, "Bob"))
    cy = Tab.open(people.person(server, "Cyd"))
    reader = Tab.open(people.person(server, None))
    for tab in (ada, bob, cy, reader):
        tab.profile(server, "Ada")
    # Only others may react; the owner sees the counts, readers a disabled button.
    expect(ada.page.locator("#profile-like")).to_have_count(0)
    expect(ada.page.locator("#profile-edit-link")).to_be_visible()
    expect(reader.page.locator("#profile-like")).to_be_disabled()
    expect(reader.page.locator("#profile-react-hint")).to_contain_text("Log in or register")
    expect(bob.page.locator("#profile-edit-link")).to_have_count(0)

    bob.page.locator("#profile-like").click()
    expect(bob.page.locator("#profile-like")).to_have_attribute("aria-pressed", "true")
    for tab in (ada, bob, cy, reader):
        expect(tab.page.locator("#profile-likes")).to_have_text("1", timeout=WAIT)
    cy.page.locator("#profile-love").click()
    cy.page.locator("#profile-like").click()
    for tab in (ada, bob, cy, reader):
        expect(tab.page.locator("#profile-loves")).to_have_text("1", timeout=WAIT)
        expect(tab.page.locator("#profile-likes")).to_have_text("2", timeout=WAIT)
    bob.page.screenshot(path=str(shots / "profile-liked.png"), full_page=True)
    # Taking a like back is live too.
    bob.page.locator("#profile-like").click()
    expect(bob.page.locator("#profile-like")).to_have_attribute("aria-pressed", "false")
    for tab in (ada, bob, cy, reader):
        expect(tab.page.locator("#profile-likes")).to_have_text("1", timeout=WAIT)
    # After a reload the buttons remember what this person gave.
    cy.profile(server, "Ada")
    expect(cy.page.locator("#profile-love")).to_have_attribute("aria-pressed", "true")
    for tab in (ada, bob, cy, reader):
        tab.assert_clean()

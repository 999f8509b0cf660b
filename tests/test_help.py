"""The help center: /help and /help/<slug> served by a real service on
127.0.0.1:0, the shipped guide crawled link by link, search, 404s, the footer
links from the configuration, a replacement pages folder, and the pieces
(anchors, snippets, link safety) on their own."""

from __future__ import annotations

import re
from collections.abc import Iterable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, urldefrag, urlsplit

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor

from bambid import config as configuration
from bambid.config import ConfigError
from bambid.service import BambidService
from bambid.web.helpcenter import (
    MAX_QUERY,
    HelpError,
    anchor_slug,
    load_pages,
    packaged_pages,
    render_page,
)
from tests.chatsupport import chat_server
from tests.conftest import Running, make_config

GUIDE = [
    "getting-started",
    "chat",
    "companion",
    "voice",
    "triggers-and-effects",
    "levels",
    "profiles",
    "privacy",
]


@attrs.define
class Page:
    """What the tests need from an HTML page."""

    code: int
    body: str
    links: list[str] = attrs.Factory(list)
    ids: set[str] = attrs.Factory(set)
    stylesheets: list[str] = attrs.Factory(list)
    toc: list[str] = attrs.Factory(list)


class _Reader(HTMLParser):
    def __init__(self, page: Page) -> None:
        super().__init__(convert_charrefs=True)
        self.page = page
        self.in_toc = 0

    def handle_starttag(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
        found = dict(attributes)
        if found.get("id"):
            self.page.ids.add(str(found["id"]))
        if tag == "nav" and found.get("id") == "help-toc":
            self.in_toc = 1
        elif self.in_toc and tag == "nav":
            self.in_toc += 1
        if tag == "a" and found.get("href") is not None:
            href = str(found["href"])
            self.page.links.append(href)
            if self.in_toc:
                self.page.toc.append(href)
        if tag == "link" and found.get("rel") == "stylesheet":
            self.page.stylesheets.append(str(found["href"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "nav" and self.in_toc:
            self.in_toc -= 1


async def fetch(base: str, path: str) -> Page:
    response = await treq.get(base + path, allow_redirects=True)
    body = (await response.content()).decode("utf-8")
    page = Page(response.code, body)
    if "html" in (response.headers.getRawHeaders("content-type") or [""])[0]:
        _Reader(page).feed(body)
    return page


def internal(links: Iterable[str]) -> list[str]:
    """Links to this site: paths and fragments (no scheme, no host)."""
    return [link for link in links if not urlsplit(link).scheme and not link.startswith("//")]


def assert_no_inline_code(page: Page, where: str) -> None:
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.body), where
    assert "<style" not in page.body, where
    assert " style=" not in page.body, where
    assert not re.search(r"(href|src)=\"(javascript|data):", page.body, re.I), where


# -- the shipped guide --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_index_lists_every_page_in_order(running: Running) -> None:
    page = await fetch(running.http, "/help")
    assert page.code == 200
    listed = [link for link in page.links if re.fullmatch(r"/help/[a-z0-9-]+", link)]
    assert listed == [f"/help/{slug}" for slug in GUIDE]
    assert 'id="help-q"' in page.body and 'action="/help"' in page.body
    assert "/static/css/help.css" in page.stylesheets
    assert '<a class="nav-link" href="/help">Help</a>' in page.body
    assert_no_inline_code(page, "/help")


@pytest_twisted.ensureDeferred
async def test_every_page_renders_with_a_toc_and_prev_next(running: Running) -> None:
    for index, slug in enumerate(GUIDE):
        page = await fetch(running.http, f"/help/{slug}")
        assert page.code == 200, slug
        assert 'id="help-toc"' in page.body, slug
        assert len(page.toc) >= 3, (slug, page.toc)
        for href in page.toc:
            assert href.startswith("#") and href[1:] in page.ids, (slug, href)
        assert page.body.count("<h1") == 1, slug
        previous = f'rel="prev" href="/help/{GUIDE[index - 1]}"'
        following = f'rel="next" href="/help/{GUIDE[index + 1]}"' if index + 1 < len(GUIDE) else ""
        assert (previous in page.body) == (index > 0), slug
        assert 'rel="next"' in page.body if following else 'rel="next"' not in page.body
        if following:
            assert following in page.body, slug
        assert_no_inline_code(page, slug)
    chat = await fetch(running.http, "/help/chat")
    assert "<title>Chat · Help · bambid</title>" in chat.body
    assert '<h2 id="writing-messages">Writing messages</h2>' in chat.body
    assert '<h3 id="writing-too-fast">Writing too fast</h3>' in chat.body


@pytest_twisted.ensureDeferred
async def test_every_internal_link_of_every_help_page_resolves(running: Running) -> None:
    """Crawl from /help: every same-site link answers 200 (after redirects)
    and every #anchor names an element of the page it points to."""
    pages: dict[str, Page] = {}
    queue = ["/help"]
    checked: set[str] = set()
    while queue:
        path = queue.pop()
        if path in pages:
            continue
        page = pages[path] = await fetch(running.http, path)
        assert page.code == 200, path
        for link in [*internal(page.links), *page.stylesheets]:
            target, fragment = urldefrag(link)
            target = target or path
            if target.startswith("/help") and target not in pages:
                queue.append(target)
            elif not target.startswith("/help") and target not in checked:
                checked.add(target)
                other = await fetch(running.http, target)
                assert other.code == 200, f"{link} on {path}"
            if fragment:
                checked.add(f"{target}#{fragment}")
    assert {f"/help/{slug}" for slug in GUIDE} <= set(pages)
    # Pages of the guide link to each other by their .md names in the sources.
    assert "/help/triggers-and-effects#session-history" in pages["/help/companion"].links
    for reference in [c for c in checked if "#" in c]:
        target, fragment = reference.split("#", 1)
        page = pages.get(target) or await fetch(running.http, target)
        assert fragment in page.ids, f"#{fragment} missing on {target}"
    assert len([c for c in checked if "#" in c]) >= 3


# -- search ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_search_finds_a_phrase_from_the_chat_page(running: Running) -> None:
    page = await fetch(running.http, "/help?q=" + quote("  SHIFT+enter   for a new line "))
    assert page.code == 200
    assert "/help/chat#writing-messages" in page.links
    assert "<mark>Shift+Enter for a new line</mark>" in page.body
    snippet = re.search(
        r'<a class="help-result-link" href="/help/chat#writing-messages">(.*?)</a>\s*'
        r'<p class="help-snippet[^"]*">(.*?)</p>',
        page.body,
        re.S,
    )
    assert snippet is not None
    assert snippet.group(1) == "Chat › Writing messages"
    assert "Press Enter to send and <mark>" in snippet.group(2)
    assert len(re.sub(r"<[^>]+>", "", snippet.group(2))) < 200
    assert 'value="SHIFT+enter for a new line"' in page.body
    assert_no_inline_code(page, "search")

    # Headings are searched too; the search page still lists the guide.
    heading = await fetch(running.http, "/help?q=binaural")
    assert "/help/triggers-and-effects#binaural-beats" in heading.links
    assert "<mark>Binaural</mark> beats" in heading.body
    assert "/help/privacy" in heading.links

    nothing = await fetch(running.http, "/help?q=" + quote("zebra crossing"))
    assert "Nothing in the help mentions “zebra crossing”" in nothing.body
    assert "<mark>" not in nothing.body


@pytest_twisted.ensureDeferred
async def test_queries_are_escaped_and_capped(running: Running) -> None:
    page = await fetch(running.http, "/help?q=" + quote('<script>alert("x")</script>'))
    assert page.code == 200
    assert "<script>alert" not in page.body
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.body
    long = "breathe " * 40
    capped = await fetch(running.http, "/help?q=" + quote(long))
    value = re.search(r'id="help-q" name="q" value="([^"]*)"', capped.body)
    assert value is not None and value.group(1) == long.strip()[:MAX_QUERY].strip()
    assert len(value.group(1)) <= MAX_QUERY


# -- errors ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unknown_and_bad_slugs_get_the_404_page(running: Running) -> None:
    for path in (
        "/help/nothing-here",
        "/help/Chat",
        "/help/chat_x",
        "/help/chat.md",
        "/help/%2e%2e",
        "/help/" + "a" * 65,
        "/help/chat/more",
    ):
        page = await fetch(running.http, path)
        assert page.code == 404, path
        assert "Page not found" in page.body, path
        assert "Traceback" not in page.body


# -- footer links and configuration ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_footer_links_from_the_configuration_are_on_every_page(tmp_path: Path) -> None:
    links = ["House rules | /help/chat#commands", "Contact | mailto:team@example.org"]
    links.append("Status & news | https://status.example.org/?a=1&b=2")
    async with chat_server(tmp_path, help={"footer_links": links}) as r:
        for path in ("/", "/help", "/help/privacy", "/help/nothing", "/login"):
            page = await fetch(r.http, path)
            assert page.code in (200, 404), path
            footer = page.body[page.body.index("<footer") :]
            assert (
                '<a class="link-secondary footer-link" href="/help/chat#commands">House rules</a>'
                in footer
            )
            assert 'href="mailto:team@example.org">Contact</a>' in footer
            assert 'href="https://status.example.org/?a=1&amp;b=2">Status &amp; news</a>' in footer


def test_a_bad_footer_link_is_a_configuration_error(tmp_path: Path) -> None:
    for bad in (
        "Home | javascript:alert(1)",
        "no bar here",
        " | /help",
        "Elsewhere | //evil.example",
        "Files | ftp://example.org/",
        "Spaced | /a b",
    ):
        with pytest.raises(ConfigError) as caught:
            configuration.load(None, {"BAMBID_HELP_FOOTER_LINKS": f'["{bad}"]'})
        assert caught.value.key == "help.footer_links", bad
        assert str(caught.value).startswith("help.footer_links: "), bad
    path = tmp_path / "bambid.toml"
    path.write_text('[help]\nfooter_links = ["Fine | /help", "Bad | data:text/html,x"]\n')
    with pytest.raises(ConfigError, match=r"^help\.footer_links: .*data:text/html"):
        configuration.load(path, {})
    path.write_text('[help]\nfooter_links = ["Rules | /help/chat", "Mail | mailto:a@b.org"]\n')
    loaded = configuration.load(path, {})
    assert loaded.help.footer == [("Rules", "/help/chat"), ("Mail", "mailto:a@b.org")]


def test_a_missing_pages_dir_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    missing = attrs.evolve(config.help, pages_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError) as caught:
        BambidService(attrs.evolve(config, help=missing), reactor, base_dir=tmp_path)
    assert caught.value.key == "help.pages_dir"
    assert "nowhere" in caught.value.problem

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "untitled.md").write_text("No title here.\n\n## But a section\n")
    bad = attrs.evolve(config.help, pages_dir="broken")  # relative to base_dir
    with pytest.raises(ConfigError) as caught:
        BambidService(attrs.evolve(config, help=bad), reactor, base_dir=tmp_path)
    assert caught.value.key == "help.pages_dir"
    assert "untitled.md: a page needs a '# Title' heading" in caught.value.problem


# -- an operator's own pages --------------------------------------------------------------


def own_pages(folder: Path) -> Path:
    folder.mkdir()
    (folder / "order.txt").write_text("# ours\nwelcome\nrules\n")
    (folder / "welcome.md").write_text(
        "Intro before the title.\n\n# Welcome aboard\n\nRead the [rules](rules.md#be-kind) "
        "and [the old page](/help/chat).\n\n## Start here\n\nSay hello <b>loudly</b>.\n\n"
        "[bad](javascript:alert(1)) [site](https://example.org/) [mail](mailto:x@example.org)"
        " ![pic](data:image/png;base64,AAAA)\n"
    )
    (folder / "rules.md").write_text(
        "# Rules\n\n## Be kind\n\nAlways.\n\n## Be kind\n\nTwice.\n\n"
        "| left | right |\n|:-----|------:|\n| a | b |\n"
    )
    (folder / "zz-extra.md").write_text("# Extra\n\nNot in the order file: last.\n")
    (folder / "notes.txt").write_text("ignored")
    return folder


@pytest_twisted.ensureDeferred
async def test_pages_dir_replaces_the_shipped_guide(tmp_path: Path) -> None:
    folder = own_pages(tmp_path / "pages")
    async with chat_server(tmp_path, help={"pages_dir": str(folder)}) as r:
        index = await fetch(r.http, "/help")
        listed = [link for link in index.links if re.fullmatch(r"/help/[a-z0-9-]+", link)]
        assert listed == ["/help/welcome", "/help/rules", "/help/zz-extra"]
        assert (await fetch(r.http, "/help/chat")).code == 404

        welcome = await fetch(r.http, "/help/welcome")
        assert "<title>Welcome aboard · Help · bambid</title>" in welcome.body
        assert "/help/rules#be-kind" in welcome.links
        assert "Say hello &lt;b&gt;loudly&lt;/b&gt;." in welcome.body
        assert "<b>loudly" not in welcome.body
        assert "[bad](javascript:alert(1))" in welcome.body  # left as text
        assert '<a href="https://example.org/" rel="noopener noreferrer">site</a>' in welcome.body
        assert '<a href="mailto:x@example.org">mail</a>' in welcome.body
        assert "![pic](data:image/png;base64,AAAA)" in welcome.body  # not an image
        assert_no_inline_code(welcome, "welcome")

        rules = await fetch(r.http, "/help/rules")
        assert {"be-kind", "be-kind-2"} <= rules.ids
        assert '<th class="text-start">left</th>' in rules.body
        assert '<td class="text-end">b</td>' in rules.body
        assert_no_inline_code(rules, "rules")

        found = await fetch(r.http, "/help?q=" + quote("<b>"))
        assert "Say hello <mark>&lt;b&gt;</mark>loudly&lt;/b&gt;." in found.body


# -- the pieces -----------------------------------------------------------------------------


def test_the_shipped_pages_load_and_their_md_links_name_real_pages() -> None:
    pages = load_pages(packaged_pages())
    assert [page.slug for page in pages.pages] == GUIDE
    slugs = set(GUIDE)
    for page in pages.pages:
        for target in re.findall(r'href="/help/([a-z0-9-]+)', str(page.html)):
            assert target in slugs, (page.slug, target)
        assert ".md" not in re.sub(r"<code>[^<]*</code>", "", str(page.html)), page.slug


def test_anchors_are_stable_slugs() -> None:
    assert anchor_slug("Writing too fast") == "writing-too-fast"
    assert anchor_slug("  Café & *Crème*  2 ") == "cafe-creme-2"
    assert anchor_slug("!!!") == "section"
    page = render_page("p", b"# T\n\n## A b\n\n### A b\n\n## `code` here\n")
    assert [(h.level, h.anchor) for h in page.toc] == [(2, "a-b"), (3, "a-b-2"), (2, "code-here")]


def test_bad_page_folders_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# Read me\n")
    with pytest.raises(HelpError, match=r"README\.md: page files are named"):
        load_pages(tmp_path)
    (tmp_path / "README.md").unlink()
    with pytest.raises(HelpError, match="no pages"):
        load_pages(tmp_path)
    (tmp_path / "a.md").write_text("# A\n")
    (tmp_path / "order.txt").write_text("a\nb\n")
    with pytest.raises(HelpError, match=r"order\.txt: there is no page b\.md"):
        load_pages(tmp_path)
    (tmp_path / "order.txt").write_text("a\n")
    (tmp_path / "b.md").write_bytes(b"# B\n\xff\n")
    with pytest.raises(HelpError, match=r"b\.md: not UTF-8"):
        load_pages(tmp_path)
    (tmp_path / "b.md").write_bytes(b"# B\n" + b"x" * 300000)
    with pytest.raises(HelpError, match=r"b\.md: larger than"):
        load_pages(tmp_path)

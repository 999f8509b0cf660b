"""Profile bios: the markdown subset, links, raw HTML, the XSS corpus, limits."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import Markup, escape

from bambid.chat.links import LinkChecker
from bambid.profiles.bio import BIO_MAX, BioRenderer, normalise_bio, render_bio, validate_bio
from tests.xss_corpus import XSS_PAYLOADS, XSS_URLS

#: What a rendered bio may contain, written out here rather than imported so
#: that a change to the module's allowlist has to be made twice.
TAGS = {"p", "br", "em", "strong", "code", "ul", "ol", "li", "blockquote", "a"}
ATTRIBUTES = {"a": {"href", "rel", "target"}, "ol": {"start"}}
REL = "nofollow noopener noreferrer ugc"


class _Elements(HTMLParser):
    """Every start tag of a fragment with its attributes, and any markup
    that is not an element (comments, declarations, processing instructions)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.other: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_comment(self, data: str) -> None:
        self.other.append(f"comment {data!r}")

    def handle_decl(self, decl: str) -> None:
        self.other.append(f"declaration {decl!r}")

    def handle_pi(self, data: str) -> None:
        self.other.append(f"processing instruction {data!r}")

    def unknown_decl(self, data: str) -> None:
        self.other.append(f"declaration {data!r}")


def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Elements()
    parser.feed(html)
    parser.close()
    assert parser.other == []
    return parser.elements


def assert_inert(html: str) -> None:
    """Only allowlisted elements and attributes; every link an http(s) URL
    opening in a new tab with the full ``rel``."""
    assert "<script" not in html.lower()
    for tag, attrs in elements(html):
        assert tag in TAGS, (tag, html)
        assert set(attrs) <= ATTRIBUTES.get(tag, set()), (tag, attrs, html)
        if tag == "a":
            href = attrs.get("href")
            assert href is None or re.match(r"https?://[^\s\"'<>]+$", href), (href, html)
            assert attrs["rel"] == REL
            assert attrs["target"] == "_blank"
        if tag == "ol" and "start" in attrs:
            assert (attrs["start"] or "").isdigit()


def links(html: str) -> list[str | None]:
    return [attrs.get("href") for tag, attrs in elements(html) if tag == "a"]


# --- the markdown subset -------------------------------------------------------------


def test_paragraphs_line_breaks_emphasis_strong_and_code() -> None:
    html = render_bio(
        "Hello *there* and **welcome**, try `make run`.\nSecond line\n\nNew paragraph"
    )
    assert html == (
        "<p>Hello <em>there</em> and <strong>welcome</strong>, try <code>make run</code>.<br>\n"
        "Second line</p>\n<p>New paragraph</p>"
    )


def test_lists_and_blockquotes() -> None:
    html = render_bio("- one\n- two\n\n3. three\n4. four\n\n> quoted\n> still")
    assert html == (
        "<ul>\n<li>one</li>\n<li>two</li>\n</ul>\n"
        '<ol start="3">\n<li>three</li>\n<li>four</li>\n</ol>\n'
        "<blockquote>\n<p>quoted<br>\nstill</p>\n</blockquote>"
    )


def test_headings_rules_code_blocks_and_tables_stay_plain_text() -> None:
    html = render_bio("# Big\n\nTitle\n===\n\n---\n\n    indented\n\n| a | b |\n|---|---|")
    assert_inert(html)
    assert {tag for tag, _ in elements(html)} <= {"p", "br"}
    for text in ("# Big", "Title", "===", "---", "indented", "| a | b |"):
        assert text in html


def test_images_are_not_images() -> None:
    html = render_bio("![a cat](https://example.org/cat.png)")
    assert "<img" not in html
    assert_inert(html)


def test_an_empty_bio_renders_nothing() -> None:
    assert render_bio("") == ""
    assert render_bio("  \n\n ") == ""


def test_the_output_is_markup_and_stable() -> None:
    text = "*a* https://example.org <b>"
    html = render_bio(text)
    assert isinstance(html, Markup)
    assert str(escape(html)) == str(html)  # Jinja2 autoescape leaves it as it is
    assert render_bio(text) == html


# --- links ---------------------------------------------------------------------------


def test_markdown_links_autolinks_and_bare_urls() -> None:
    html = render_bio(
        "[my site](https://example.org/about) <https://example.net/a?b=1&c=2> "
        "and see https://example.com/page. (or http://example.com/x_(y))"
    )
    assert_inert(html)
    assert links(html) == [
        "https://example.org/about",
        "https://example.net/a?b=1&c=2",
        "https://example.com/page",
        "http://example.com/x_(y)",
    ]
    assert (
        '<a href="https://example.org/about" target="_blank" '
        'rel="nofollow noopener noreferrer ugc">my site</a>'
    ) in html
    assert "https://example.com/page</a>." in html


def test_urls_in_code_or_in_a_link_are_not_linked_again() -> None:
    html = render_bio("`https://example.org` [https://example.net](https://example.com)")
    assert links(html) == ["https://example.com"]


def test_an_international_name_is_linked_in_punycode() -> None:
    html = render_bio("https://пример.рф/")
    assert links(html) == ["https://xn--e1afmkfd.xn--p1ai/"]
    assert ">https://пример.рф/</a>" in html


@pytest.mark.parametrize(
    "text",
    [
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](&#106;avascript:alert(1))",
        "[x](javascript&#58;alert(1))",
        "[x](java%0ascript:alert(1))",
        "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
        "[x](vbscript:msgbox(1))",
        "[x](file:///etc/passwd)",
        "[x](mailto:someone@example.org)",
        "[x](/admin)",
        "[x](#top)",
        "[x](//example.org/)",
        "[x](https://)",
        "[x](https://example.org:99999/)",
        "<javascript:alert(1)>",
        "[x][r]\n\n[r]: javascript:alert(1)",
    ],
)
def test_links_other_than_absolute_http_are_text(text: str) -> None:
    html = render_bio(text)
    assert_inert(html)
    assert links(html) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://2130706433/",
        "http://[::1]/",
        "https://user:pw@example.org/",
        "https://example.org@evil.example/",
        "https://xn--80ak6aa92e.com/",
        "https://аррӏе.com/",
        "https://pаypal.com/",
    ],
)
def test_links_the_chat_would_flag_are_text(url: str) -> None:
    for text in (f"[x]({url})", f"<{url}>", f"see {url} here"):
        html = render_bio(text)
        assert_inert(html)
        assert links(html) == [], text


def test_a_renderer_with_a_denylist_leaves_denylisted_links_as_text() -> None:
    renderer = BioRenderer(LinkChecker(["malware.test"]))
    html = renderer.render(
        "[a](https://sub.malware.test/x) https://malware.test [b](https://ok.test)"
    )
    assert links(html) == ["https://ok.test"]
    assert links(render_bio("[a](https://sub.malware.test/x)")) == ["https://sub.malware.test/x"]


def test_link_titles_are_dropped() -> None:
    html = render_bio('[x](https://example.org "a title")')
    assert links(html) == ["https://example.org"]
    assert "title" not in html


# --- raw HTML and the XSS corpus ---------------------------------------------------


def test_raw_html_is_shown_not_interpreted() -> None:
    html = render_bio("<b>bold</b> <a href=\"/x\" onclick='go()'>a</a>\n\n<div>block</div>")
    assert html == (
        "<p>&lt;b&gt;bold&lt;/b&gt; &lt;a href=\"/x\" onclick='go()'&gt;a&lt;/a&gt;</p>"
        "\n<p>&lt;div&gt;block&lt;/div&gt;</p>"
    )


def test_the_corpus_is_large_enough() -> None:
    assert len(XSS_PAYLOADS) >= 40
    assert len(set(XSS_PAYLOADS)) == len(XSS_PAYLOADS)


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_every_payload_renders_inert(payload: str) -> None:
    for text in (payload, f"Hi *there* {payload} https://example.org", f"- {payload}\n> {payload}"):
        html = render_bio(text)
        assert_inert(html)
        assert not re.search(r"(?i)\son\w+\s*=", "".join(_tags(html)))


@pytest.mark.parametrize("url", XSS_URLS)
def test_every_dangerous_url_is_refused_as_a_link(url: str) -> None:
    for text in (f"[x]({url})", f"<{url}>", url):
        html = render_bio(text)
        assert_inert(html)
        assert all(href and href.startswith(("http://", "https://")) for href in links(html))
        assert not any(href and "xss.invalid" in href for href in links(html))


def _tags(html: str) -> list[str]:
    """The markup of every tag in ``html`` (text between tags left out)."""
    return re.findall(r"<[^>]*>", html)


# --- any text ------------------------------------------------------------------------

#: Text made of the pieces that matter to markdown and HTML.
_MARKDOWNISH = st.lists(
    st.sampled_from(
        list("<>&\"'`*_[]()!#-=>:/\\ \n\t.;%")
        + ["javascript:", "https://", "http://", "onerror=", "<script", "&#", "x", "é", "\x00"]
    ),
    max_size=80,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), _MARKDOWNISH))
def test_any_text_renders_without_script_or_handlers(text: str) -> None:
    html = render_bio(text)
    assert "<script" not in html.lower()
    for tag, attrs in elements(html):
        assert tag in TAGS
        assert not any(name.startswith("on") for name in attrs)


# --- the limit and validation ---------------------------------------------------------


def test_the_length_limit() -> None:
    assert BIO_MAX == 2000
    assert validate_bio("") is None
    assert validate_bio("x" * BIO_MAX) is None
    assert validate_bio("é" * BIO_MAX) is None  # characters, not bytes
    assert validate_bio("x" * (BIO_MAX + 1)) == "must be at most 2000 characters, got 2001"


def test_other_validation() -> None:
    assert validate_bio("line\nline\ttab\r\n") is None
    assert validate_bio(None) == "must be a string"
    assert validate_bio(42) == "must be a string"
    assert validate_bio("nul\x00") == "must not contain control characters"
    assert validate_bio("esc\x1b[31m") == "must not contain control characters"
    assert validate_bio("c1\x85") == "must not contain control characters"


def test_normalise_makes_form_text_what_is_stored() -> None:
    assert normalise_bio("  a\r\nb\rc\n\n") == "a\nb\nc"
    text = "x\r\n" * 1000  # a 2000-character textarea, as a browser submits it
    assert validate_bio(text) is not None
    assert validate_bio(normalise_bio(text)) is None


def test_a_long_bio_still_renders() -> None:
    html = render_bio("**word** " * 1000)
    assert html.count("<strong>") == 1000

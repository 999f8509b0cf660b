"""Profile bios: a small, safe markdown subset rendered to HTML.

A bio is at most ``BIO_MAX`` characters of markdown. What it may use:

- paragraphs, and line breaks (a single newline is a ``<br>``);
- ``*emphasis*``, ``**strong**`` and ```inline code```;
- bulleted and numbered lists, and ``>`` blockquotes;
- links: ``[text](https://...)``, ``<https://...>`` and bare ``https://...``
  URLs (found the way the chat finds them, ``bambid.chat.links.find_urls``).

Everything else stays the text it was written as: raw HTML is escaped (shown,
never interpreted); ``# headings`` and ``---`` rules are plain paragraph text;
images, tables, code blocks and fences are not parsed. A link is only a link
when it is an absolute ``http``/``https`` URL that the ``LinkChecker`` does not
flag (no IP literal, no user name or password, no punycode or look-alike host,
nothing on the denylist when the checker has one); any other link, such as
``[x](javascript:alert(1))`` or ``[x](/admin)``, is left as its markdown text.
Every link opens in a new tab with ``rel="nofollow noopener noreferrer ugc"``.

The markdown is rendered by markdown-it-py with HTML disabled, then cleaned by
nh3 with an allowlist of tags, attributes and URL schemes, as a second line of
defence should the first ever let something through. The output is
``markupsafe.Markup`` (safe to insert in a Jinja2 template as is, or with
``|safe``) and depends only on the text and the checker's denylist.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import nh3
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from markupsafe import Markup

from bambid.chat.links import LinkChecker, find_urls

BIO_MAX = 2000

#: The elements a rendered bio may contain, and their attributes. ``a`` also
#: carries the ``rel`` and ``target`` that the sanitiser sets on every link.
ALLOWED_TAGS = frozenset({"p", "br", "em", "strong", "code", "ul", "ol", "li", "blockquote", "a"})
ALLOWED_ATTRIBUTES: dict[str, frozenset[str]] = {
    "a": frozenset({"href"}),
    "ol": frozenset({"start"}),
}
LINK_REL = "nofollow noopener noreferrer ugc"
LINK_TARGET = "_blank"
URL_SCHEMES = frozenset({"http", "https"})

#: Markdown rules switched off: everything the subset leaves out, and raw HTML.
_DISABLED = [
    "code",
    "fence",
    "heading",
    "lheading",
    "hr",
    "html_block",
    "html_inline",
    "image",
]

#: Characters a bio may not contain: C0 and C1 controls other than tab and
#: the line endings.
_CONTROL = frozenset(chr(c) for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)]) - set("\t\n\r")


def normalise_bio(text: str) -> str:
    """``text`` with Windows and old-Mac line endings made ``\\n`` and
    surrounding whitespace removed: what a form's textarea sends, made into
    what is stored and measured."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def validate_bio(text: object) -> str | None:
    """Why ``text`` cannot be a bio, or None when it can. A bio is a string of
    at most ``BIO_MAX`` characters (code points, as given: normalise first)
    without control characters other than tab and newlines. The message does
    not name the field; the caller does."""
    if not isinstance(text, str):
        return "must be a string"
    if len(text) > BIO_MAX:
        return f"must be at most {BIO_MAX} characters, got {len(text)}"
    if any(ch in _CONTROL for ch in text):
        return "must not contain control characters"
    return None


class _BioMarkdown(MarkdownIt):
    """markdown-it with the bio's subset and a link check that only lets
    absolute http(s) URLs through, and only those ``links`` does not flag."""

    def __init__(self, links: LinkChecker) -> None:
        super().__init__(
            "commonmark",
            {"html": False, "breaks": True, "linkify": False, "typographer": False},
        )
        self.disable(_DISABLED)
        self.core.ruler.after("text_join", "bambid_linkify", _linkify)
        self.links = links

    def validateLink(self, url: str) -> bool:
        """``url`` is normalised (percent-encoded, hosts in punycode). It is
        checked both as written back for people (Unicode host) and as the
        browser will see it, except for the look-alike test, which would flag
        every international name in its punycode form."""
        if not url.lower().startswith(("http://", "https://")):
            return False
        shown = self.normalizeLinkText(url)
        for candidate in (url, shown):
            try:
                parts = urlsplit(candidate)
                parts.port  # noqa: B018 - raises ValueError for a bad port
            except ValueError:
                return False
            if parts.scheme.lower() not in URL_SCHEMES or not parts.hostname:
                return False
        if self.links.reason(shown) is not None:
            return False
        return self.links.reason(url) in (None, "lookalike")


def _linkify(state: StateCore) -> None:
    """Turn bare http(s) URLs in text (outside links and code) into links,
    as markdown-it's own linkify does, with the chat's URL finder."""
    md = state.md
    for block in state.tokens:
        if block.type != "inline" or not block.children:
            continue
        children: list[Token] = []
        depth = 0
        for token in block.children:
            if token.type == "link_open":
                depth += 1
            elif token.type == "link_close":
                depth -= 1
            if token.type != "text" or depth > 0:
                children.append(token)
                continue
            children.extend(_split_links(md, token))
        block.children = children


def _split_links(md: MarkdownIt, token: Token) -> list[Token]:
    text = token.content
    nodes: list[Token] = []
    position = 0
    for url in find_urls(text):
        start = text.find(url, position)
        href = md.normalizeLink(url)
        if start < 0 or not md.validateLink(href):
            continue
        if start > position:
            nodes.append(_text(text[position:start], token.level))
        link_open = Token("link_open", "a", 1, attrs={"href": href}, markup="linkify", info="auto")
        link_open.level = token.level
        nodes.append(link_open)
        nodes.append(_text(url, token.level + 1))
        link_close = Token("link_close", "a", -1, markup="linkify", info="auto")
        link_close.level = token.level
        nodes.append(link_close)
        position = start + len(url)
    if not nodes:
        return [token]
    if position < len(text):
        nodes.append(_text(text[position:], token.level))
    return nodes


def _text(content: str, level: int) -> Token:
    token = Token("text", "", 0, content=content)
    token.level = level
    return token


class BioRenderer:
    """Renders bios with one ``LinkChecker`` (see the module doc). Build one
    at start with the server's checker; ``render`` keeps no state between
    calls."""

    def __init__(self, links: LinkChecker | None = None) -> None:
        self.links = links if links is not None else LinkChecker(())
        self._markdown = _BioMarkdown(self.links)
        self._cleaner = nh3.Cleaner(
            tags=set(ALLOWED_TAGS),
            # "*": no attribute on every tag (nh3 would otherwise allow lang and title).
            attributes={"*": set()} | {t: set(names) for t, names in ALLOWED_ATTRIBUTES.items()},
            link_rel=LINK_REL,
            set_tag_attribute_values={"a": {"target": LINK_TARGET}},
            url_schemes=set(URL_SCHEMES),
            url_relative="deny",
            strip_comments=True,
        )

    def render(self, text: str) -> Markup:
        """``text`` as safe HTML (empty for an empty bio). Any string renders,
        whatever its length or content; ``validate_bio`` is for input."""
        if not text.strip():
            return Markup("")
        html = self._markdown.render(text)
        return Markup(self._cleaner.clean(html).strip())


_DEFAULT = BioRenderer()


def render_bio(text: str) -> Markup:
    """``text`` as safe HTML, links checked for IP literals, credentials and
    look-alike hosts but against no denylist (a ``BioRenderer`` built with the
    server's ``LinkChecker`` adds that)."""
    return _DEFAULT.render(text)

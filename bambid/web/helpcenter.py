"""The help center's pages: markdown files loaded, rendered, indexed and searched.

A pages folder holds one ``<slug>.md`` file per page (``slug``: 1-64 of
``a-z``, ``0-9`` and ``-``) and, optionally, ``order.txt``: one slug per line
(blank lines and ``#`` comments skipped) giving the order of the guide; pages
it does not list follow in alphabetical order. The shipped guide is the
package ``bambid.help``; ``help.pages_dir`` replaces it. Other files and
folders are ignored.

Each page:

- its **title** is its first ``#`` heading (required), shown by the page
  template and left out of the body;
- every other heading gets an ``id``, a stable slug of its text (``Your
  voice`` → ``your-voice``; a repeat gets ``-2``, ``-3``...); the ``##`` and
  ``###`` headings make its table of contents;
- it is rendered with markdown-it-py (CommonMark, tables, strikethrough) with
  raw HTML off: HTML in a page is shown as text. Links and images may only be
  ``http(s):``, ``mailto:`` or local (paths, ``#anchors``); anything else
  stays plain text. ``other-page.md#part`` becomes ``/help/other-page#part``,
  so the files read well on their own too; external links get
  ``rel="noopener noreferrer"``. Table alignment becomes a Bootstrap class (no
  ``style`` attribute: the CSP forbids them).

Search (``HelpPages.search``) is case-insensitive over headings and text, one
hit per section (the part of a page under one heading), with a snippet whose
matches are wrapped in ``<mark>`` — the snippet is built from escaped pieces,
never by pasting strings into HTML.

Loading is plain file reading and CPU work: ``load_pages`` is meant for a
thread (``HelpCenter.reload``) or for start-up, before the site listens.
Problems raise ``HelpError`` naming the file.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from markupsafe import Markup, escape
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from bambid.config import ConfigError, HelpConfig

SETTING = "help.pages_dir"
ORDER_FILE = "order.txt"
SLUG = re.compile(r"[a-z0-9-]{1,64}")
#: The longest search query; longer ones are cut.
MAX_QUERY = 100
MAX_PAGES = 100
MAX_PAGE_BYTES = 262144
MAX_RESULTS = 50
#: Characters of context around the first match in a snippet.
SNIPPET_CONTEXT = 70
SUMMARY_LENGTH = 160
_MD_LINK = re.compile(r"(?P<slug>[a-z0-9-]{1,64})\.md(?P<fragment>#.*)?")
_ALIGN = {"text-align:left": "text-start", "text-align:center": "text-center"}
_ALIGN["text-align:right"] = "text-end"


class HelpError(Exception):
    """A help page or the order file is unusable; ``str()`` names the file."""


@attrs.frozen
class Heading:
    """A ``##`` or ``###`` heading, for the table of contents."""

    level: int
    text: str
    anchor: str


@attrs.frozen
class Section:
    """The text of a page under one heading (``anchor`` "" is the intro)."""

    heading: str
    anchor: str
    text: str


@attrs.frozen
class HelpPage:
    slug: str
    title: str
    #: The rendered body (markdown-it's output with raw HTML off: safe).
    html: Markup
    toc: tuple[Heading, ...]
    sections: tuple[Section, ...]
    #: The start of the first paragraph, for the list of pages.
    summary: str
    #: The file's bytes, to tell what a reload changed.
    source: bytes = attrs.field(repr=False)


@attrs.frozen
class SearchHit:
    """One section matching a query; ``heading`` and ``snippet`` are HTML
    with the matches in ``<mark>``."""

    slug: str
    page_title: str
    anchor: str
    heading: Markup
    snippet: Markup

    @property
    def href(self) -> str:
        return f"/help/{self.slug}#{self.anchor}" if self.anchor else f"/help/{self.slug}"


@attrs.frozen
class HelpPages:
    """The pages of the guide, in order."""

    pages: tuple[HelpPage, ...]

    def get(self, slug: str) -> HelpPage | None:
        for page in self.pages:
            if page.slug == slug:
                return page
        return None

    def neighbours(self, slug: str) -> tuple[HelpPage | None, HelpPage | None]:
        """The pages before and after ``slug`` in the guide's order."""
        slugs = [page.slug for page in self.pages]
        index = slugs.index(slug)
        previous = self.pages[index - 1] if index > 0 else None
        following = self.pages[index + 1] if index + 1 < len(self.pages) else None
        return previous, following

    def search(self, query: str, limit: int = MAX_RESULTS) -> list[SearchHit]:
        """Sections whose heading or text contains ``query`` (any case, any
        run of whitespace between its words), in the guide's order."""
        words = normalize_query(query).split()
        if not words:
            return []
        pattern = re.compile(r"\s+".join(map(re.escape, words)), re.IGNORECASE)
        hits: list[SearchHit] = []
        for page in self.pages:
            for section in page.sections:
                heading = section.heading or page.title
                in_text = pattern.search(section.text)
                if in_text is None and pattern.search(heading) is None:
                    continue
                hits.append(
                    SearchHit(
                        slug=page.slug,
                        page_title=page.title,
                        anchor=section.anchor,
                        heading=highlight(heading, pattern),
                        snippet=snippet(section.text, pattern),
                    )
                )
                if len(hits) >= limit:
                    return hits
        return hits

    def changes_from(self, old: HelpPages) -> str:
        """What differs from ``old``, for the reload log line."""
        before = {page.slug: page.source for page in old.pages}
        after = {page.slug: page.source for page in self.pages}
        added = [slug for slug in after if slug not in before]
        removed = [slug for slug in before if slug not in after]
        changed = [slug for slug in after if slug in before and before[slug] != after[slug]]
        parts = [
            f"{name} {', '.join(slugs)}"
            for name, slugs in (("added", added), ("removed", removed), ("changed", changed))
            if slugs
        ]
        if [p.slug for p in self.pages] != [p.slug for p in old.pages] and not (added or removed):
            parts.append("new order")
        return "; ".join(parts) or "no changes"


def normalize_query(query: str) -> str:
    """``query`` without control characters, whitespace runs as one space,
    cut to ``MAX_QUERY`` characters."""
    cleaned = "".join(c for c in query if unicodedata.category(c)[0] != "C" or c in "\t\n")
    return " ".join(cleaned.split())[:MAX_QUERY].strip()


def highlight(text: str, pattern: re.Pattern[str]) -> Markup:
    """``text`` escaped, with every match of ``pattern`` in ``<mark>``."""
    pieces: list[Markup] = []
    position = 0
    for match in pattern.finditer(text):
        pieces.append(escape(text[position : match.start()]))
        pieces.append(Markup("<mark>{}</mark>").format(match.group(0)))
        position = match.end()
    pieces.append(escape(text[position:]))
    return Markup("").join(pieces)


def snippet(text: str, pattern: re.Pattern[str], context: int = SNIPPET_CONTEXT) -> Markup:
    """A short extract of ``text`` around the first match, matches marked;
    the start of ``text`` when only the heading matched."""
    match = pattern.search(text)
    if match is None:
        return escape(_shorten(text, 2 * context))
    start = max(0, match.start() - context)
    end = min(len(text), match.end() + context)
    if start > 0:
        space = text.find(" ", start, match.start())
        start = space + 1 if space != -1 else start
    if end < len(text):
        space = text.rfind(" ", match.end(), end)
        end = space if space != -1 else end
    marked = highlight(text[start:end], pattern)
    before = Markup("… ") if start > 0 else Markup("")
    after = Markup(" …") if end < len(text) else Markup("")
    return before + marked + after


def _shorten(text: str, length: int) -> str:
    if len(text) <= length:
        return text
    cut = text.rfind(" ", 0, length)
    return text[: cut if cut > 0 else length] + " …"


# --- loading --------------------------------------------------------------------------


def packaged_pages() -> Traversable:
    """The guide shipped with bambid (package ``bambid.help``)."""
    return files("bambid.help")


def load_pages(folder: Traversable) -> HelpPages:
    """Every page of ``folder`` in the guide's order; ``HelpError`` naming
    the file for a bad name, an unreadable or oversized file, a page without
    a ``#`` title or an order file naming a missing page."""
    sources: dict[str, bytes] = {}
    order: list[str] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.is_file():
            continue
        if entry.name == ORDER_FILE:
            order = _read_order(_read(entry).decode("utf-8", errors="replace"))
        elif entry.name.endswith(".md"):
            slug = entry.name[: -len(".md")]
            if not SLUG.fullmatch(slug):
                raise HelpError(
                    f"{entry.name}: page files are named [a-z0-9-].md (1-64 characters)"
                )
            sources[slug] = _read(entry)
            if len(sources) > MAX_PAGES:
                raise HelpError(f"more than {MAX_PAGES} pages")
    if not sources:
        raise HelpError("no pages (*.md files)")
    for slug in order:
        if slug not in sources:
            raise HelpError(f"{ORDER_FILE}: there is no page {slug}.md")
    ordered = [*order, *sorted(slug for slug in sources if slug not in order)]
    return HelpPages(tuple(render_page(slug, sources[slug]) for slug in ordered))


def _read(entry: Traversable) -> bytes:
    try:
        data = entry.read_bytes()
    except OSError as e:
        raise HelpError(f"{entry.name}: cannot read it: {e}") from None
    if len(data) > MAX_PAGE_BYTES:
        raise HelpError(f"{entry.name}: larger than {MAX_PAGE_BYTES} bytes")
    return data


def _read_order(text: str) -> list[str]:
    order: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        slug = line.split("#", 1)[0].strip()
        if not slug:
            continue
        if not SLUG.fullmatch(slug):
            raise HelpError(f"{ORDER_FILE}, line {number}: not a page name: {slug!r}")
        if slug not in order:
            order.append(slug)
    return order


def render_page(slug: str, source: bytes) -> HelpPage:
    """Render one page (see the module doc); ``HelpError`` naming the file."""
    name = f"{slug}.md"
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError:
        raise HelpError(f"{name}: not UTF-8 text") from None
    tokens = _MARKDOWN.parse(text)
    title = _take_title(tokens)
    if title is None:
        raise HelpError(f"{name}: a page needs a '# Title' heading")
    toc, sections = _index(tokens)
    html = _MARKDOWN.renderer.render(tokens, _MARKDOWN.options, {})
    return HelpPage(
        slug=slug,
        title=title,
        html=Markup(html),
        toc=toc,
        sections=sections,
        summary=_shorten(sections[0].text, SUMMARY_LENGTH) if sections else "",
        source=source,
    )


def _take_title(tokens: list[Token]) -> str | None:
    """Remove the first ``#`` heading from ``tokens``; its text."""
    for index, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag == "h1":
            title = _plain(tokens[index + 1])
            del tokens[index : index + 3]
            return title
    return None


def _index(tokens: list[Token]) -> tuple[tuple[Heading, ...], tuple[Section, ...]]:
    """Give every heading its ``id``; the table of contents and the sections."""
    used: set[str] = set()
    toc: list[Heading] = []
    sections: list[Section] = []
    heading, anchor = "", ""
    text: list[str] = []
    for index, token in enumerate(tokens):
        if token.type == "heading_open":
            if heading or anchor or text:
                sections.append(Section(heading, anchor, _collapse(text)))
            heading = _plain(tokens[index + 1])
            anchor = _unique(anchor_slug(heading), used)
            token.attrSet("id", anchor)
            text = []
            if token.tag in ("h2", "h3"):
                toc.append(Heading(int(token.tag[1]), heading, anchor))
        elif token.type == "inline" and index > 0 and tokens[index - 1].type == "heading_open":
            continue
        elif token.type == "inline":
            text.append(_plain(token))
        elif token.type in ("fence", "code_block"):
            text.append(token.content)
    if heading or anchor or text:
        sections.append(Section(heading, anchor, _collapse(text)))
    return tuple(toc), tuple(s for s in sections if s.text or s.heading)


def _plain(inline: Token) -> str:
    """The text of an inline token (what a reader sees)."""
    parts: list[str] = []
    for child in inline.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif child.type == "image":
            parts.append(_plain(child))
    return "".join(parts).strip()


def _collapse(parts: Iterable[str]) -> str:
    return " ".join(" ".join(parts).split())


def anchor_slug(text: str) -> str:
    """A stable ``id`` for a heading: ASCII letters and digits joined by ``-``."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-") or "section"


def _unique(anchor: str, used: set[str]) -> str:
    candidate, number = anchor, 1
    while candidate in used:
        number += 1
        candidate = f"{anchor}-{number}"
    used.add(candidate)
    return candidate


# --- markdown-it ----------------------------------------------------------------------


def _safe_link(url: str) -> bool:
    """Only http(s), mailto and local links (markdown-it's ``validateLink``)."""
    if url.startswith(("//", "/\\", "\\")):
        return False
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return False
    return scheme in ("", "http", "https", "mailto")


def _rewrite(state: StateCore) -> None:
    """Links between pages, ``rel`` on external links, tables for Bootstrap."""
    for token in state.tokens:
        if token.type == "table_open":
            token.attrSet("class", "table table-sm")
        elif token.type in ("th_open", "td_open"):
            style = token.attrs.pop("style", None)
            if isinstance(style, str) and style in _ALIGN:
                token.attrSet("class", _ALIGN[style])
        for child in token.children or []:
            if child.type != "link_open":
                continue
            href = str(child.attrGet("href") or "")
            page = _MD_LINK.fullmatch(href)
            if page:
                child.attrSet("href", f"/help/{page['slug']}{page['fragment'] or ''}")
            elif urlsplit(href).scheme.lower() in ("http", "https"):
                child.attrSet("rel", "noopener noreferrer")


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.validateLink = _safe_link  # type: ignore[method-assign]  # markdown-it's documented hook
    md.core.ruler.push("bambid_help_links", _rewrite)
    return md


_MARKDOWN = _markdown()


# --- the running help center ----------------------------------------------------------


@attrs.frozen
class FooterLink:
    label: str
    url: str


class HelpCenter:
    """The pages being served, and their reload (SIGHUP)."""

    _log = Logger()

    def __init__(self, pages: HelpPages, folder: Traversable, origin: str, reactor: Any) -> None:
        self.pages = pages
        self.folder = folder
        #: Where the pages come from, for log lines.
        self.origin = origin
        self.reactor = reactor

    @classmethod
    def build(cls, config: HelpConfig, reactor: Any, base_dir: Path) -> HelpCenter:
        """Load the pages of ``help.pages_dir`` (relative to ``base_dir``) or
        the shipped guide, at start-up (a few small files). ``ConfigError``
        for ``help.pages_dir`` when the folder is missing or a page is bad."""
        folder: Traversable
        if config.pages_dir:
            path = Path(config.pages_dir)
            path = path if path.is_absolute() else base_dir / path
            if not path.is_dir():
                raise ConfigError(SETTING, f"no such folder: {path}")
            folder, origin = path, str(path)
        else:
            folder, origin = packaged_pages(), "the packaged guide"
        try:
            pages = load_pages(folder)
        except HelpError as e:
            raise ConfigError(SETTING, f"{origin}: {e}") from None
        return cls(pages, folder, origin, reactor)

    def reload(self) -> Deferred[None]:
        """Read the pages again in a thread; logs one line saying what changed
        or why nothing did (the old pages stay). Never fails."""
        reading: Deferred[HelpPages] = threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), load_pages, self.folder
        )

        def loaded(pages: HelpPages) -> None:
            changes = pages.changes_from(self.pages)
            self.pages = pages
            self._log.info(
                "help pages reloaded from {origin}: {count} pages ({changes})",
                origin=self.origin,
                count=len(pages.pages),
                changes=changes,
            )

        def failed(failure: Any) -> None:
            if failure.check(HelpError):
                self._log.error(
                    "help pages were not reloaded (the old ones stay): {key}: {origin}: {error}",
                    key=SETTING,
                    origin=self.origin,
                    error=failure.getErrorMessage(),
                )
            else:
                self._log.failure("help pages were not reloaded (the old ones stay)", failure)

        return reading.addCallbacks(loaded, failed)


def footer_links(config: HelpConfig) -> Sequence[FooterLink]:
    """``help.footer_links`` for the page footer (validated with the config)."""
    return tuple(FooterLink(label, url) for label, url in config.footer)

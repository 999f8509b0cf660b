"""Finding links in chat text and deciding which ones deserve a warning.

Only ``http`` and ``https`` URLs are links; anything else (``javascript:``,
``ftp://``, ``data:``...) stays plain text. A link is *flagged*, with one
reason, when:

- ``denylisted``: its host, or a parent domain of it, is on the denylist;
- ``ip_address``: its host is an IP literal (IPv4 in any form a browser
  accepts, such as ``2130706433`` or ``0x7f.1``, or bracketed IPv6);
- ``credentials``: it carries a user name or password (``https://a@b``), the
  classic way to make ``https://bank.example@evil.test`` look like a bank;
- ``lookalike``: a label of its host is punycode (``xn--``) or mixes scripts
  (Latin with Cyrillic...), or is written entirely in look-alike letters of a
  non-Latin script (Cyrillic ``аррӏе``).

Checks run in that order and the first that applies is the reason. Nothing
here does I/O apart from reading the denylist once at start.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import attrs

REASONS = ("denylisted", "ip_address", "credentials", "lookalike")

#: Link candidates: a scheme at a word boundary, then anything up to whitespace
#: or characters that never end a URL in running text.
_CANDIDATE = re.compile(r"(?<![\w.+-])https?://[^\s<>\"'`{}|\\^]+", re.IGNORECASE)
_TRAILING = ".,;:!?'\"*_~"
_CLOSERS = {")": "(", "]": "[", "}": "{"}

#: Cyrillic and Greek letters that render like Latin ones. A label spelt only
#: with these (and digits or hyphens) imitates a Latin name.
_CONFUSABLE = frozenset("асԁеһіјӏоԛрѕуԝхԍɡοανρυειј")
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


@attrs.frozen
class FoundLink:
    """A link found in a text: the URL as written and its verdict."""

    url: str
    flagged: bool
    reason: str | None


def find_urls(text: str) -> list[str]:
    """Every http(s) URL in ``text``, in order, trailing punctuation removed
    (a closing bracket is kept when the URL opened it)."""
    urls = []
    for match in _CANDIDATE.finditer(text):
        url = _trim(match.group(0))
        if _host_of(url) is not None:
            urls.append(url)
    return urls


def _trim(url: str) -> str:
    while url:
        last = url[-1]
        if last in _TRAILING:
            url = url[:-1]
        elif last in _CLOSERS and url.count(last) > url.count(_CLOSERS[last]):
            url = url[:-1]
        else:
            break
    return url


def _host_of(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return None
    return host or None


class LinkChecker:
    """Finds links and decides whether each is flagged (see the module doc)."""

    def __init__(self, denylist: Iterable[str]) -> None:
        self.denylist = frozenset(
            h.strip().lower().rstrip(".") for h in denylist if h.strip() and not h.startswith("#")
        )

    @classmethod
    def load(cls, path: str = "") -> LinkChecker:
        """From ``path`` (``chat.link_denylist_file``: one host per line, ``#``
        comments), or the packaged default list when empty."""
        if path:
            text = Path(path).read_text(encoding="utf-8")
        else:
            text = (files("bambid.etc") / "link-denylist.txt").read_text(encoding="utf-8")
        return cls(line for line in text.splitlines() if not line.lstrip().startswith("#"))

    def find(self, text: str) -> list[FoundLink]:
        """The links of ``text`` in order, each with its verdict."""
        found = []
        for url in find_urls(text):
            reason = self.reason(url)
            found.append(FoundLink(url, reason is not None, reason))
        return found

    def reason(self, url: str) -> str | None:
        """Why ``url`` is flagged, or None when it is clean (or not a URL)."""
        try:
            parts = urlsplit(url)
            raw_host = parts.hostname
        except ValueError:
            return None
        if not raw_host:
            return None
        host = unicodedata.normalize("NFKC", raw_host).lower().rstrip(".")
        if self._denylisted(host):
            return "denylisted"
        if _is_ip_literal(host):
            return "ip_address"
        if parts.username is not None or parts.password is not None:
            return "credentials"
        if _is_lookalike(host):
            return "lookalike"
        return None

    def _denylisted(self, host: str) -> bool:
        labels = host.split(".")
        candidates = {".".join(labels[i:]) for i in range(len(labels))}
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_host = host
        labels = ascii_host.split(".")
        candidates |= {".".join(labels[i:]) for i in range(len(labels))}
        return not self.denylist.isdisjoint(candidates)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        pass
    # WHATWG URL parsing: a host whose last label is numeric is an IPv4
    # address (2130706433, 0x7f.1, 127.1 all reach 127.0.0.1).
    last = host.rsplit(".", 1)[-1]
    return bool(_NUMERIC_LABEL.match(last))


def _script(ch: str) -> str | None:
    """A rough script name from the character name; None for digits, hyphens
    and other characters common to every script."""
    if ch.isascii():
        return "LATIN" if ch.isalpha() else None
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else "UNKNOWN"


def _is_lookalike(host: str) -> bool:
    for label in host.split("."):
        if label.startswith("xn--"):
            return True
        if label.isascii():
            continue
        scripts = {s for s in map(_script, label) if s is not None}
        if len(scripts) > 1:
            return True
        letters = [ch for ch in label if ch.isalpha()]
        if letters and all(ch in _CONFUSABLE for ch in letters):
            return True
    return False


def location_header(url: str) -> bytes:
    """``url`` as an ASCII ``Location`` value: an IDN host in its ``xn--`` form,
    everything else outside printable ASCII percent-encoded."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            host = quote(host, safe="")
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    if parts.username is not None:
        userinfo = quote(parts.username, safe="")
        if parts.password is not None:
            userinfo += ":" + quote(parts.password, safe="")
        netloc = f"{userinfo}@{netloc}"
    safe = "/?#[]@!$&'()*+,;=%~:"
    rebuilt = urlunsplit(
        (
            parts.scheme.lower(),
            netloc,
            quote(parts.path, safe=safe),
            quote(parts.query, safe=safe),
            quote(parts.fragment, safe=safe),
        )
    )
    return rebuilt.encode("ascii")

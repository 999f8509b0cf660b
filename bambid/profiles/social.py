"""Social links on a profile: one per platform, each checked for its platform.

``validate_social_links`` takes what a person submitted (a mapping of field to
text) and answers the cleaned values and the problems, by field. What each
field accepts, and what it is stored as:

``twitter``
    ``https://x.com/<handle>`` or ``https://twitter.com/<handle>`` (also
    ``www.``/``mobile.``, ``http``, or no scheme), ``@handle`` or ``handle``.
    A handle is 1 to 15 letters, digits or ``_``, and not one of X's own
    pages (``home``, ``explore``...). Stored as ``https://x.com/<handle>``.
``instagram``
    ``https://www.instagram.com/<user>/`` (also without ``www.``, ``m.``,
    ``instagr.am``), ``@user`` or ``user``. A user name is 1 to 30 letters,
    digits, ``.`` and ``_``, not starting or ending with ``.`` nor with two in
    a row. Stored lower-case as ``https://www.instagram.com/<user>/``.
``discord``
    Either an invite, ``https://discord.gg/<code>`` or
    ``https://discord.com/invite/<code>`` (also ``discordapp.com``), stored
    as ``https://discord.gg/<code>``; or a Discord user name under the rules
    Discord has used since 2023 (``@name`` or ``name``): 2 to 32 characters,
    lower-case letters, digits, ``_`` and ``.``, no two ``.`` in a row, not
    containing ``discord`` and not ``everyone`` or ``here``; old tags
    (``name#1234``) are refused. A user name has no public web address, so
    it is stored as the name (lower-case, no ``@``) and is never a link.
``reddit``
    ``https://www.reddit.com/user/<name>`` or ``.../u/<name>`` (also
    ``old.``, ``new.``, ``np.``, ``m.`` or no subdomain), ``u/<name>``,
    ``/u/<name>`` or ``name``. A name is 3 to 20 letters, digits, ``_`` or
    ``-``. Stored as ``https://www.reddit.com/user/<name>``.
``custom``
    Any ``http``/``https`` URL (``https://`` is added when no scheme is
    given) of at most 300 characters, naming a public site: a host name of
    two or more labels (letters, digits, hyphens), not an IP address, no user
    name or password, no punycode or look-alike host, nothing on the denylist
    (the chat's ``LinkChecker`` decides these four), and no spaces, quotes or
    angle brackets. Stored with the scheme and host lower-cased, the rest as
    written.

Platform URLs may carry a query or fragment (share links do); they are
dropped. A ``javascript:``, ``data:`` or any other non-http(s) value is
refused in every field. An empty string (or ``None``) clears a field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from bambid.chat.links import LinkChecker

SOCIAL_FIELDS = ("twitter", "instagram", "discord", "reddit", "custom")

#: The longest value accepted in any field, before it is cleaned.
MAX_LENGTH = 300

#: Labels for custom links longer than this are shortened with an ellipsis.
LABEL_MAX = 48

_TWITTER_HOSTS = frozenset(
    {"x.com", "www.x.com", "mobile.x.com", "twitter.com", "www.twitter.com", "mobile.twitter.com"}
)
_TWITTER_HANDLE = re.compile(r"[A-Za-z0-9_]{1,15}")
#: Paths of x.com that are not people.
_TWITTER_RESERVED = frozenset(
    {
        "home",
        "explore",
        "search",
        "notifications",
        "messages",
        "settings",
        "i",
        "intent",
        "share",
        "hashtag",
        "compose",
        "login",
        "logout",
        "signup",
        "tos",
        "privacy",
        "account",
    }
)

_INSTAGRAM_HOSTS = frozenset(
    {"instagram.com", "www.instagram.com", "m.instagram.com", "instagr.am", "www.instagr.am"}
)
_INSTAGRAM_USER = re.compile(r"(?!\.)(?!.*\.\.)(?!.*\.$)[A-Za-z0-9._]{1,30}")
_INSTAGRAM_RESERVED = frozenset(
    {"p", "reel", "reels", "explore", "accounts", "stories", "direct", "tv", "about", "legal"}
)

_DISCORD_INVITE_HOSTS = frozenset({"discord.gg", "www.discord.gg"})
_DISCORD_HOSTS = frozenset(
    {"discord.com", "www.discord.com", "discordapp.com", "www.discordapp.com"}
)
_DISCORD_CODE = re.compile(r"[A-Za-z0-9-]{2,32}")
_DISCORD_USER = re.compile(r"(?!.*\.\.)[a-z0-9_.]{2,32}")
_DISCORD_RESERVED = frozenset({"everyone", "here"})

_REDDIT_HOSTS = frozenset(
    {
        "reddit.com",
        "www.reddit.com",
        "old.reddit.com",
        "new.reddit.com",
        "np.reddit.com",
        "m.reddit.com",
    }
)
_REDDIT_USER = re.compile(r"[A-Za-z0-9_-]{3,20}")

#: A scheme at the start: letters then ``:``, unless what follows is a port
#: number (``example.org:8080/``).
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(?!\d)")
#: A label of a host name: letters (in any script), digits, hyphens.
_HOST_LABEL = re.compile(r"[^\W_]+(?:-+[^\W_]+)*")
#: Characters never accepted in a link, even though a browser would encode them.
_FORBIDDEN = re.compile(r"[\s\"'<>`\\^{}|\x00-\x1f\x7f-\x9f]")

_LINK_PROBLEMS = {
    "denylisted": "its site is on this server's list of sites known for malware, scams or abuse",
    "ip_address": "must name a site, not an IP address",
    "credentials": "must not contain a user name or password",
    "lookalike": "its site name uses look-alike letters or an encoded (punycode) name",
}


class _Refused(Exception):
    """A value refused, with the message to show."""


def validate_social_links(
    value: Mapping[str, Any], *, links: LinkChecker | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """``(cleaned, problems)`` for the submitted ``value``.

    ``cleaned`` has an entry for each field of ``value`` that is valid: its
    stored form (see the module doc), ``""`` for a field being cleared.
    ``problems`` names each other field, unknown ones included, with a
    message that does not repeat the field's name. Fields that ``value``
    leaves out appear in neither, so a partial update can be merged with
    ``attrs.evolve(current, **cleaned)``. ``links`` checks custom links; by
    default only for IP literals, credentials and look-alike hosts, with no
    denylist.
    """
    checker = links if links is not None else _STRUCTURAL
    cleaned: dict[str, str] = {}
    problems: dict[str, str] = {}
    for field, raw in value.items():
        if field not in SOCIAL_FIELDS:
            problems[str(field)] = f"unknown social link; known: {', '.join(SOCIAL_FIELDS)}"
            continue
        if raw is None:
            cleaned[field] = ""
            continue
        if not isinstance(raw, str):
            problems[field] = "must be a string"
            continue
        text = raw.strip()
        if not text:
            cleaned[field] = ""
            continue
        if len(text) > MAX_LENGTH:
            problems[field] = f"must be at most {MAX_LENGTH} characters"
            continue
        try:
            cleaned[field] = _CLEANERS[field](text, checker)
        except _Refused as refused:
            problems[field] = str(refused)
    return cleaned, problems


def social_href(field: str, value: str) -> str | None:
    """Where a stored ``value`` of ``field`` links to: the value when it is
    an http(s) URL, None for a Discord user name, an empty value, or anything
    stored before these rules that no longer passes them."""
    if field not in SOCIAL_FIELDS:
        raise ValueError(f"unknown social link field {field!r}")
    if not value:
        return None
    try:
        cleaned = _CLEANERS[field](value, _STRUCTURAL)
    except _Refused:
        return None
    return cleaned if cleaned.startswith(("https://", "http://")) else None


def link_label(field: str, url: str) -> str:
    """How a stored value of ``field`` is shown: ``@handle`` for X and
    Instagram, ``u/name`` for Reddit, ``discord.gg/<code>`` or the user name
    for Discord, and host and path for a custom link (``example.org/about``,
    shortened to ``LABEL_MAX`` characters). A value that no longer passes the
    rules is shown as it is, shortened. The label is text: escape it."""
    if field not in SOCIAL_FIELDS:
        raise ValueError(f"unknown social link field {field!r}")
    if not url:
        return ""
    try:
        cleaned = _CLEANERS[field](url, _STRUCTURAL)
    except _Refused:
        return _shorten(url)
    if field == "twitter" or field == "instagram":
        return "@" + cleaned.rstrip("/").rsplit("/", 1)[1]
    if field == "reddit":
        return "u/" + cleaned.rsplit("/", 1)[1]
    if field == "discord":
        return cleaned.removeprefix("https://")
    parts = urlsplit(cleaned)
    shown = (parts.netloc + parts.path).rstrip("/")
    if parts.query:
        shown += "?" + parts.query
    return _shorten(shown)


def _shorten(text: str) -> str:
    return text if len(text) <= LABEL_MAX else text[: LABEL_MAX - 1] + "…"


# --- one cleaner per field: (text, checker) -> stored form, or _Refused -----------------


def _twitter(text: str, _: LinkChecker) -> str:
    refused = _Refused(
        "must be an X (Twitter) profile like https://x.com/name or @name "
        "(1 to 15 letters, digits or _)"
    )
    if _looks_like_url(text, _TWITTER_HOSTS):
        handle = _single_segment(_platform_url(text, _TWITTER_HOSTS, refused), refused)
    else:
        handle = text.removeprefix("@")
    if not _TWITTER_HANDLE.fullmatch(handle) or handle.lower() in _TWITTER_RESERVED:
        raise refused
    return f"https://x.com/{handle}"


def _instagram(text: str, _: LinkChecker) -> str:
    refused = _Refused(
        "must be an Instagram profile like https://www.instagram.com/name/ or @name "
        "(1 to 30 letters, digits, . or _)"
    )
    if _looks_like_url(text, _INSTAGRAM_HOSTS):
        user = _single_segment(_platform_url(text, _INSTAGRAM_HOSTS, refused), refused)
    else:
        user = text.removeprefix("@")
    if not _INSTAGRAM_USER.fullmatch(user) or user.lower() in _INSTAGRAM_RESERVED:
        raise refused
    return f"https://www.instagram.com/{user.lower()}/"


def _discord(text: str, _: LinkChecker) -> str:
    if _looks_like_url(text, _DISCORD_INVITE_HOSTS | _DISCORD_HOSTS):
        refused = _Refused(
            "must be a Discord invite like https://discord.gg/code or a Discord user name"
        )
        parts = _platform_url(text, _DISCORD_INVITE_HOSTS | _DISCORD_HOSTS, refused)
        segments = _segments(parts)
        host = (parts.hostname or "").rstrip(".")
        if host in _DISCORD_INVITE_HOSTS and len(segments) == 1:
            code = segments[0]
        elif host in _DISCORD_HOSTS and len(segments) == 2 and segments[0] == "invite":
            code = segments[1]
        else:
            raise refused
        if not _DISCORD_CODE.fullmatch(code):
            raise refused
        return f"https://discord.gg/{code}"
    if "#" in text:
        raise _Refused("Discord tags (name#1234) are no longer used: give your user name")
    name = text.removeprefix("@").lower()
    if not _DISCORD_USER.fullmatch(name) or "discord" in name or name in _DISCORD_RESERVED:
        raise _Refused(
            "must be a Discord invite like https://discord.gg/code or a Discord user name "
            "(2 to 32 lower-case letters, digits, _ or .)"
        )
    return name


def _reddit(text: str, _: LinkChecker) -> str:
    refused = _Refused(
        "must be a Reddit profile like https://www.reddit.com/user/name or u/name "
        "(3 to 20 letters, digits, _ or -)"
    )
    short = text.removeprefix("/")
    if short.lower().startswith("u/"):
        name = short[2:]
    elif _looks_like_url(text, _REDDIT_HOSTS):
        segments = _segments(_platform_url(text, _REDDIT_HOSTS, refused))
        if len(segments) != 2 or segments[0].lower() not in ("user", "u"):
            raise refused
        name = segments[1]
    else:
        name = text
    if not _REDDIT_USER.fullmatch(name):
        raise refused
    return f"https://www.reddit.com/user/{name}"


def _custom(text: str, checker: LinkChecker) -> str:
    refused = _Refused("must be a web address (http or https) like https://example.org/about")
    parts = _parse_url(text, refused)
    host = parts.hostname or ""
    reason = checker.reason(parts.geturl())
    if reason is not None:
        raise _Refused(_LINK_PROBLEMS[reason])
    labels = host.removesuffix(".").split(".")
    if len(labels) < 2 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise _Refused("must name a public site by its host name, like example.org")
    netloc = host.rstrip(".") if parts.port is None else f"{host.rstrip('.')}:{parts.port}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path, parts.query, parts.fragment))


_CLEANERS: dict[str, Callable[[str, LinkChecker], str]] = {
    "twitter": _twitter,
    "instagram": _instagram,
    "discord": _discord,
    "reddit": _reddit,
    "custom": _custom,
}

#: The checks that need no configuration: IP literals, credentials, look-alikes.
_STRUCTURAL = LinkChecker(())


def _looks_like_url(text: str, hosts: frozenset[str]) -> bool:
    """Whether ``text`` is meant as a URL rather than a name: it has a
    scheme or a ``/``, or is one of the platform's hosts (``x.com``)."""
    return "/" in text or ":" in text or text.lower().rstrip(".") in hosts


def _parse_url(text: str, refused: _Refused) -> SplitResult:
    """``text`` as an http(s) URL with a host (``https://`` added when it has
    no scheme); other schemes, bad ports and odd characters refused."""
    if _FORBIDDEN.search(text):
        raise _Refused("must not contain spaces, quotes, angle brackets or control characters")
    scheme = _SCHEME.match(text)
    if scheme is None:
        text = "https:" + text if text.startswith("//") else "https://" + text
    elif scheme.group(1).lower() not in ("http", "https"):
        raise _Refused("only http and https links are allowed")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise refused from None
    if not parts.hostname or not text.lower().startswith(("http://", "https://")):
        raise refused
    return parts


def _platform_url(text: str, hosts: frozenset[str], refused: _Refused) -> SplitResult:
    """``text`` as a URL on one of ``hosts``, with no credentials or port."""
    parts = _parse_url(text, refused)
    host = (parts.hostname or "").rstrip(".")
    if host not in hosts or parts.username is not None or parts.port is not None:
        raise refused
    return parts


def _segments(parts: SplitResult) -> list[str]:
    """The path's segments; a trailing slash ignored, an empty one refused."""
    path = parts.path.removesuffix("/")
    return path.split("/")[1:] if path else []


def _single_segment(parts: SplitResult, refused: _Refused) -> str:
    segments = _segments(parts)
    if len(segments) != 1:
        raise refused
    return segments[0]

"""URLs safe to show: what a configured URL may carry besides where it points.

A backend URL in the configuration (``ai.url``, ``voice.url``, a MongoDB
``storage.uri``) may hold credentials: a ``user:password@`` (or a token as
the user name) and API keys in its query (``?key=...``). ``redact_url`` is
the one place that hides them, for ``bambidctl config show`` and the
``/metrics`` labels alike.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str, mask: str = "***") -> str:
    """``url`` with its userinfo (everything before the ``@`` of the
    authority), query and fragment each replaced by ``mask``; an empty
    ``mask`` drops them with their ``@``, ``?`` and ``#``. The scheme, hosts
    (several, as in ``mongodb://a,b/``), port and path are kept as written.
    Text that is not a URL comes back as it is; one that cannot be parsed
    becomes ``mask``, and so does everything after ``scheme://`` when an
    ``@`` follows a ``/``, ``?`` or ``#`` there (a password holding one of
    those, written unencoded, would otherwise end the authority early)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return mask
    if "@" in parts.path + parts.query + parts.fragment and "@" not in parts.netloc:
        return f"{parts.scheme}://{mask}" if parts.scheme else mask
    _, at, host = parts.netloc.rpartition("@")
    netloc = (mask + "@" if mask else "") + host if at else parts.netloc
    query = mask if parts.query and mask else ""
    fragment = mask if parts.fragment and mask else ""
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))

"""Triggers: the catalog (``etc/triggers.json``) and detection of trigger
phrases in text, whole or streamed."""

from bambid.triggers.catalog import (
    Catalog,
    CatalogError,
    Trigger,
    load_catalog,
    parse_catalog,
    slug,
)
from bambid.triggers.detect import Match, Matcher, StreamScanner, normalise_phrase

__all__ = [
    "Catalog",
    "CatalogError",
    "Match",
    "Matcher",
    "StreamScanner",
    "Trigger",
    "load_catalog",
    "normalise_phrase",
    "parse_catalog",
    "slug",
]

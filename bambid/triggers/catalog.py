"""The trigger catalog: ``etc/triggers.json``, validated.

The file::

    {"version": 1,
     "triggers": [{"name": "Deep Breath", "aliases": ["breathe deeply"],
                   "description": "A slow, full breath in ...",
                   "category": "breathing", "audio": "deep-breath.mp3"}]}

``version`` is optional (1, the only format so far); ``aliases`` and ``audio``
are optional. Rules, each error naming the entry and field
(``triggers[3].name: must be 1-40 characters, got ''``):

- at most ``MAX_TRIGGERS`` triggers; no keys other than those above;
- ``name`` and each alias: 1-40 characters of letters, digits, single spaces,
  ``'`` and ``-``, with at least one letter, and words as the detector reads
  them (``Let - Go`` is refused); at most ``MAX_ALIASES`` aliases;
- no two names or aliases alike in the whole catalog: compared as the
  detector compares them (any case, ``’`` = ``'``), so each phrase finds one
  trigger; nor two names with the same key;
- ``description``: at most 300 characters, no control characters;
- ``category``: ``[a-z0-9-]{1,32}``;
- ``audio``: a plain file name (``[A-Za-z0-9_.-]{1,80}``, not starting with a
  dot) ending in ``.mp3``, ``.ogg``, ``.opus`` or ``.wav``; it names a file
  under ``web/static/audio/triggers/``. Without it the trigger's cue is
  synthesised by the voice pipeline.

A trigger's ``key`` is a slug of its name (``Deep Breath`` → ``deep-breath``):
the stable identity used in consent records, settings and protocol messages.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from bambid.triggers.detect import normalise_phrase

FORMAT_VERSION = 1
MAX_TRIGGERS = 1000
MAX_ALIASES = 20
MAX_NAME = 40
MAX_DESCRIPTION = 300
MAX_FILE_BYTES = 2 * 1024 * 1024
AUDIO_SUFFIXES = (".mp3", ".ogg", ".opus", ".wav")

_TOP_KEYS = frozenset({"version", "triggers"})
_ENTRY_KEYS = frozenset({"name", "aliases", "description", "category", "audio"})
_CATEGORY = re.compile(r"[a-z0-9-]{1,32}")
_AUDIO = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,79}")


class CatalogError(ValueError):
    """The catalog is unusable; ``str()`` starts with where (``triggers[3].name``,
    or the file) and says what is wrong."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


def slug(name: str) -> str:
    """A trigger's key: lower case, apostrophes dropped, every other run of
    non-alphanumeric characters a single hyphen (``Let's Relax`` → ``lets-relax``)."""
    text = name.casefold().replace("'", "")
    return "-".join(part for part in re.split(r"[\W_]+", text) if part)


@attrs.frozen
class Trigger:
    """One catalog entry. ``audio`` is a file name, "" when the cue is synthesised."""

    key: str
    name: str
    aliases: tuple[str, ...]
    description: str
    category: str
    audio: str = ""

    @property
    def phrases(self) -> tuple[str, ...]:
        """What the detector looks for: the name, then the aliases."""
        return (self.name, *self.aliases)


@attrs.frozen
class Catalog:
    """The triggers, in file order. Immutable: a reload builds a new one."""

    triggers: tuple[Trigger, ...]
    version: int = FORMAT_VERSION
    _by_key: Mapping[str, Trigger] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_by_key", {t.key: t for t in self.triggers})

    def get(self, key: str) -> Trigger | None:
        return self._by_key.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __len__(self) -> int:
        return len(self.triggers)

    def keys(self) -> tuple[str, ...]:
        return tuple(self._by_key)

    def categories(self) -> tuple[str, ...]:
        """Each category once, in order of first appearance."""
        return tuple(dict.fromkeys(t.category for t in self.triggers))

    def phrases(self) -> dict[str, str]:
        """Phrase → trigger key, every name and alias: the input of
        ``detect.Matcher``."""
        return {phrase: t.key for t in self.triggers for phrase in t.phrases}

    def as_json(self, audio_url_of: Callable[[Trigger], str]) -> dict[str, Any]:
        """The ``GET /api/triggers`` document::

            {"version": 1, "categories": ["breathing", ...],
             "triggers": [{"key", "name", "aliases", "description", "category",
                           "audio_url"}, ...]}

        ``audio_url_of(trigger)`` gives the URL of the trigger's cue: its file
        under the static audio directory, or the synthesised one."""
        return {
            "version": self.version,
            "categories": list(self.categories()),
            "triggers": [
                {
                    "key": t.key,
                    "name": t.name,
                    "aliases": list(t.aliases),
                    "description": t.description,
                    "category": t.category,
                    "audio_url": audio_url_of(t),
                }
                for t in self.triggers
            ],
        }


def load_catalog(path: Path) -> Catalog:
    """Read and validate the catalog file (once; it is small, at most
    ``MAX_FILE_BYTES``). Blocking: call it at start-up or in a thread. Every
    problem is a ``CatalogError``: a missing or unreadable file, bad JSON (with
    line and column), or a rule broken (see the module doc)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise CatalogError(str(path), f"cannot read: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise CatalogError(str(path), f"larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CatalogError(str(path), f"not UTF-8 (byte {e.start})") from None
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise CatalogError(
            str(path), f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except _DuplicateKey as e:
        raise CatalogError(str(path), f"key {e.args[0]!r} appears twice in one object") from None
    return parse_catalog(document)


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def parse_catalog(document: Any) -> Catalog:
    """Validate a parsed catalog document (see the module doc)."""
    if not isinstance(document, dict):
        raise CatalogError("(top level)", f"must be an object, got {_kind(document)}")
    _no_unknown_keys("(top level)", document, _TOP_KEYS)
    version = document.get("version", FORMAT_VERSION)
    if type(version) is not int or version != FORMAT_VERSION:
        raise CatalogError("version", f"must be {FORMAT_VERSION}, got {version!r}")
    entries = document.get("triggers")
    if not isinstance(entries, list):
        raise CatalogError("triggers", f"must be a list, got {_kind(entries)}")
    if len(entries) > MAX_TRIGGERS:
        raise CatalogError("triggers", f"at most {MAX_TRIGGERS} triggers, got {len(entries)}")
    triggers = []
    phrase_owner: dict[str, str] = {}  # normalised phrase → where it was first seen
    key_owner: dict[str, str] = {}
    for i, entry in enumerate(entries):
        where = f"triggers[{i}]"
        trigger = _parse_entry(where, entry)
        located = [(f"{where}.name", trigger.name)]
        located += [(f"{where}.aliases[{j}]", alias) for j, alias in enumerate(trigger.aliases)]
        for field, phrase in located:
            normal = normalise_phrase(phrase)
            if normal in phrase_owner:
                raise CatalogError(field, f"{phrase!r} is already {phrase_owner[normal]}")
            phrase_owner[normal] = f"{field} ({phrase!r})"
        if trigger.key in key_owner:
            raise CatalogError(
                f"{where}.name",
                f"{trigger.name!r} has the same key {trigger.key!r} as {key_owner[trigger.key]}",
            )
        key_owner[trigger.key] = f"{where}.name ({trigger.name!r})"
        triggers.append(trigger)
    return Catalog(tuple(triggers), version)


def _parse_entry(where: str, entry: Any) -> Trigger:
    if not isinstance(entry, dict):
        raise CatalogError(where, f"must be an object, got {_kind(entry)}")
    _no_unknown_keys(where, entry, _ENTRY_KEYS)
    for required in ("name", "description", "category"):
        if required not in entry:
            raise CatalogError(f"{where}.{required}", "missing")
    name = _phrase(f"{where}.name", entry["name"])
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list):
        raise CatalogError(f"{where}.aliases", f"must be a list, got {_kind(aliases)}")
    if len(aliases) > MAX_ALIASES:
        raise CatalogError(f"{where}.aliases", f"at most {MAX_ALIASES}, got {len(aliases)}")
    aliases = [_phrase(f"{where}.aliases[{j}]", alias) for j, alias in enumerate(aliases)]
    description = _string(f"{where}.description", entry["description"])
    if len(description) > MAX_DESCRIPTION:
        raise CatalogError(
            f"{where}.description",
            f"must be at most {MAX_DESCRIPTION} characters, got {len(description)}",
        )
    if any(unicodedata.category(c) == "Cc" for c in description):
        raise CatalogError(f"{where}.description", "must not contain control characters")
    category = _string(f"{where}.category", entry["category"])
    if not _CATEGORY.fullmatch(category):
        raise CatalogError(f"{where}.category", f"must match [a-z0-9-]{{1,32}}, got {category!r}")
    audio = ""
    if "audio" in entry:
        audio = _string(f"{where}.audio", entry["audio"])
        if not _AUDIO.fullmatch(audio) or not audio.lower().endswith(AUDIO_SUFFIXES):
            raise CatalogError(
                f"{where}.audio",
                "must be a file name of letters, digits, '_', '-' and '.' "
                f"ending in {', '.join(AUDIO_SUFFIXES)}, got {audio!r}",
            )
    return Trigger(slug(name), name, tuple(aliases), description, category, audio)


def _phrase(where: str, value: Any) -> str:
    """A name or an alias."""
    text = _string(where, value)
    if not 1 <= len(text) <= MAX_NAME:
        raise CatalogError(where, f"must be 1-{MAX_NAME} characters, got {text!r}")
    if not all(c.isalnum() or c in " '-" for c in text) or not any(c.isalpha() for c in text):
        raise CatalogError(
            where,
            f"must be letters, digits, spaces, ' and - with at least one letter, got {text!r}",
        )
    if "  " in text or text != text.strip():
        raise CatalogError(where, f"must not have leading, trailing or double spaces: {text!r}")
    try:
        normalise_phrase(text)
    except ValueError as e:
        raise CatalogError(where, f"{e} in {text!r}") from None
    return text


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise CatalogError(where, f"must be a string, got {_kind(value)}")
    return value


def _no_unknown_keys(where: str, document: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(document) - allowed)
    if unknown:
        raise CatalogError(
            where, f"unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})"
        )


def _kind(value: Any) -> str:
    """A JSON type name for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)

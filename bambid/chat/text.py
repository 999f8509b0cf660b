"""Cleaning the text of a chat message before it is stored.

``TextCleaner.clean`` is the one place that decides what a stored message may
contain: the text is normalised (``\\r\\n`` and ``\\r`` become ``\\n``), control
characters other than newline and tab are removed, and so are the Unicode
bidirectional overrides and isolates (they can make text read differently from
what it is); the result is trimmed, then the word filter replaces whole filtered
words and phrases, in any case, by asterisks of the same length. The cleaned
text must be 1 to ``max_length`` characters, or ``TextRejected`` is raised.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path

#: Bidirectional embeddings, overrides and isolates ("Trojan Source").
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_KEEP = frozenset("\n\t")


class TextRejected(ValueError):
    """The text is empty or too long after cleaning; ``str()`` says which."""


def remove_control_characters(text: str) -> str:
    """``text`` with line endings normalised to ``\\n`` and every control
    character (category Cc) except newline and tab, and every bidi control,
    removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(
        ch
        for ch in text
        if ch in _KEEP or (ch not in _BIDI_CONTROLS and unicodedata.category(ch) != "Cc")
    )


class WordFilter:
    """Replaces whole words and phrases, in any case, by asterisks.

    A phrase matches with any run of whitespace between its words. "Whole"
    means not preceded or followed by a letter, digit or underscore, so
    ``spamword`` is caught in ``Spamword!`` but not in ``spamwords``.
    """

    def __init__(self, phrases: Iterable[str]) -> None:
        words = sorted(
            {" ".join(p.split()).casefold() for p in phrases if p.strip()},
            key=lambda w: (-len(w), w),
        )
        self.phrases: tuple[str, ...] = tuple(words)
        if not words:
            self._pattern: re.Pattern[str] | None = None
            return
        alternatives = "|".join(r"\s+".join(map(re.escape, w.split())) for w in words)
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> WordFilter:
        """One word or phrase per line; blank lines and ``#`` comments skipped."""
        return cls(line for line in lines if not line.lstrip().startswith("#"))

    @classmethod
    def load(cls, path: str = "") -> WordFilter:
        """From ``path`` (``chat.filtered_words_file``), or the packaged default
        list when ``path`` is empty. ``OSError`` if the file cannot be read."""
        if path:
            text = Path(path).read_text(encoding="utf-8")
        else:
            text = (files("bambid.etc") / "filtered-words.txt").read_text(encoding="utf-8")
        return cls.from_lines(text.splitlines())

    def replace_with(self, other: WordFilter) -> None:
        """Filter what ``other`` filters from now on (SIGHUP reloads the file).
        In place, because the chat, the companion and the collar share this
        object."""
        self.phrases = other.phrases
        self._pattern = other._pattern

    def apply(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: "*" * len(m.group(0)), text)


class TextCleaner:
    """Turns what a client sent into what is stored (see the module doc)."""

    def __init__(self, word_filter: WordFilter, max_length: int) -> None:
        self.word_filter = word_filter
        self.max_length = max_length

    def clean(self, text: str) -> str:
        """The stored form of ``text``; ``TextRejected`` if it is empty or
        longer than ``max_length`` characters once cleaned."""
        cleaned = remove_control_characters(text).strip()
        if not cleaned:
            raise TextRejected("the message is empty")
        if len(cleaned) > self.max_length:
            raise TextRejected(f"the message is longer than {self.max_length} characters")
        return self.word_filter.apply(cleaned)

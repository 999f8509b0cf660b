"""Finding trigger phrases in text, in one pass, whole or streamed.

What matches (``scan`` and ``StreamScanner`` agree on every point):

- **Words.** A word is a run of word characters — Unicode letters and digits,
  ``_`` and combining marks — in which single apostrophes or hyphens may join
  parts: ``don't``, ``well-being`` and ``let-go`` are one word each. Apostrophe
  forms ``'`` ``’`` ``‘`` are the same character here, and so are ``-`` ``‐`` ``‑``.
- **Whole words only.** A phrase matches where its first word starts a word of
  the text and its last word ends one: ``relax`` does not match ``relaxation``,
  ``relaxes``, ``unrelax`` or ``relax's``; it does match ``(relax)``, ``relax!``,
  ``'relax'`` and ``relax-`` followed by a space. In scripts written without
  spaces a phrase needs non-letters around it: ``日本`` is not found in ``日本語``.
  A phrase starts with a letter, digit or ``_``.
- **Any case.** Both sides are compared casefolded (``STRASSE`` matches ``straße``).
- **Multi-word phrases.** Between two words of a phrase the text may have any
  run of 1-32 (``MAX_GAP``) whitespace characters — spaces, tabs, newlines — and
  nothing else: ``let go`` matches ``Let GO`` and ``let\\n  go`` but not
  ``let, go``, ``let-go`` or ``let … go``. The bound keeps a streaming
  scanner's memory small; no real text puts 33 blanks inside a phrase.
- **Leftmost, then longest.** Scanning left to right, the longest phrase that
  matches at a position wins and the scan resumes after it, so matches never
  overlap: with phrases ``let go`` and ``go now``, ``let go now`` gives
  ``let go``. With ``only``, the scan behaves exactly as a matcher built from
  the allowed phrases alone would (a disallowed longer phrase hides nothing).

Offsets (``Match.start``/``end``) index the original text; ``Match.phrase`` is
the text as written there (``"Let\\nGO"``).

The matcher compiles all phrases into one regular expression shaped as a
character trie, so a scan is one pass of the C regex engine over the
casefolded text whatever the number of phrases (not one expression per
phrase, and no flat alternation for the engine to try phrase by phrase).
"""

from __future__ import annotations

import bisect
import functools
import re
import sys
import unicodedata
from collections.abc import Collection, Iterator, Mapping

import attrs

MAX_GAP = 32
MAX_PHRASE = 200

_APOSTROPHES = "'\u2018\u2019"
_HYPHENS = "-\u2010\u2011"
_TO_ASCII = str.maketrans({"\u2018": "'", "\u2019": "'", "\u2010": "-", "\u2011": "-"})
_JOINERS = _APOSTROPHES + _HYPHENS
_JOINER = "['\u2018\u2019\\-\u2010\u2011]"
_ATOMS = {
    "'": "['\u2018\u2019]",
    "-": "[\\-\u2010\u2011]",
    " ": f"\\s{{1,{MAX_GAP}}}",
}


@attrs.frozen
class Match:
    """One occurrence of a phrase: ``text[start:end] == phrase``."""

    key: str
    phrase: str
    start: int
    end: int


@attrs.frozen
class _Patterns:
    word: str  # a character class: one word character
    word_char: re.Pattern[str]  # one word character
    word_re: re.Pattern[str]  # one whole word
    gap_re: re.Pattern[str]  # the whitespace allowed between two words of a phrase


@functools.cache
def _patterns() -> _Patterns:
    """Built on first use: finding the combining marks takes ~0.1 s."""
    marks = [
        c
        for c in range(sys.maxunicode + 1)
        if unicodedata.category(chr(c))[0] == "M" and not chr(c).isalnum()
    ]
    ranges: list[str] = []
    first = previous = marks[0]
    for c in [*marks[1:], -1]:
        if c != previous + 1:
            ranges.append(
                f"\\U{first:08x}-\\U{previous:08x}" if previous > first else f"\\U{first:08x}"
            )
            first = c
        previous = c
    word = f"[\\w{''.join(ranges)}]"
    return _Patterns(
        word=word,
        word_char=re.compile(word),
        word_re=re.compile(f"{word}+(?:{_JOINER}{word}+)*"),
        gap_re=re.compile(f"\\s{{1,{MAX_GAP}}}"),
    )


@functools.cache
def _expanding() -> re.Pattern[str]:
    """The characters whose casefold is longer than one character (``ß``)."""
    chars = [chr(c) for c in range(sys.maxunicode + 1) if len(chr(c).casefold()) > 1]
    return re.compile(f"[{re.escape(''.join(chars))}]")


def normalise_phrase(phrase: str) -> str:
    """The form phrases are compared in: casefolded words joined by single
    spaces, apostrophes and hyphens in their ASCII form (``"Don’t  LET go"`` →
    ``"don't let go"``). ValueError (the message says why, for catalog errors)
    if the phrase is not words separated by whitespace."""
    words = phrase.casefold().translate(_TO_ASCII).split()
    if not words:
        raise ValueError("has no words")
    word_re = _patterns().word_re
    for word in words:
        if not word_re.fullmatch(word) or not (word[0].isalnum() or word[0] == "_"):
            raise ValueError(
                f"{word!r} is not a whole word (letters and digits, joined inside by single ' or -)"
            )
    return " ".join(words)


class _Node:
    __slots__ = ("children", "terminal")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.terminal = False


def _emit(node: _Node, prefix: bool) -> str:
    """The regex for the trie below ``node``. Optional branches are greedy, so
    the engine tries the longer phrase first and backs off to a shorter one
    only if the longer fails (leftmost-longest with the boundary check after).
    Children start with distinct characters, so the order of alternatives does
    not matter. ``prefix``: match any prefix of a phrase (every node may stop),
    and after a whole phrase also a joiner (its last word may go on)."""
    parts = []
    for token, child in node.children.items():
        # Follow a chain of single children in a loop, not one recursion per
        # character (the prefix pattern, which may stop anywhere, does recurse
        # per character: MAX_PHRASE bounds the depth).
        atoms = [_ATOMS.get(token) or re.escape(token)]
        while not prefix and not child.terminal and len(child.children) == 1:
            (token, child) = next(iter(child.children.items()))
            atoms.append(_ATOMS.get(token) or re.escape(token))
        parts.append("".join(atoms) + _emit(child, prefix))
    if prefix and node.terminal:
        parts.append(_JOINER)
    if not parts:
        return ""
    body = "|".join(parts)
    if node.terminal or prefix:
        return f"(?:{body})?"
    return f"(?:{body})" if len(parts) > 1 else body


class _Folded:
    """A text casefolded, with the offset maps between the two. Casefolding is
    per character and never shortens one; when no character grows (nearly
    always), offsets are the same in both."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.folded = text.casefold()
        # Sorted offsets, after each character that grew, in both texts.
        self._original: list[int] = []
        self._in_folded: list[int] = []
        if len(self.folded) != len(text):
            extra = 0
            for found in _expanding().finditer(text):
                extra += len(found.group().casefold()) - 1
                self._original.append(found.end())
                self._in_folded.append(found.end() + extra)

    def to_folded(self, offset: int) -> int:
        if not self._original:
            return offset
        i = bisect.bisect_right(self._original, offset)
        return offset + (self._in_folded[i - 1] - self._original[i - 1] if i else 0)

    def to_original(self, offset: int) -> int:
        """For an offset at a character boundary of the original (matches and
        phrase starts always are: a grown character folds to word characters,
        so no word boundary falls inside it)."""
        if not self._original:
            return offset
        i = bisect.bisect_right(self._in_folded, offset)
        return offset - (self._in_folded[i - 1] - self._original[i - 1] if i else 0)

    @property
    def same(self) -> bool:
        """Whether offsets are the same in both texts."""
        return not self._original

    def match(self, key: str, start: int, end: int, base: int) -> Match:
        if self._original:
            start, end = self.to_original(start), self.to_original(end)
        return Match(key, self.text[start:end], base + start, base + end)


class Matcher:
    """All the phrases of a catalog, compiled once; ``scan`` texts against it.

    ``phrases`` maps each phrase (a trigger's name or alias) to its trigger key.
    ValueError if a phrase is not words (see ``normalise_phrase``), is longer
    than ``MAX_PHRASE`` characters, has an empty key, or two phrases that
    compare equal map to different keys. Immutable and safe to share between threads.
    """

    def __init__(self, phrases: Mapping[str, str]) -> None:
        p = _patterns()
        self._keys: dict[str, str] = {}
        root = _Node()
        longest = 0
        for phrase, key in phrases.items():
            if not key:
                raise ValueError(f"phrase {phrase!r} has an empty key")
            normal = normalise_phrase(phrase)
            if len(normal) > MAX_PHRASE:
                raise ValueError(f"phrase {phrase!r} is longer than {MAX_PHRASE} characters")
            if self._keys.setdefault(normal, key) != key:
                raise ValueError(f"phrase {phrase!r} is both {self._keys[normal]!r} and {key!r}")
            node = root
            for token in normal:
                node = node.children.setdefault(token, _Node())
            node.terminal = True
            longest = max(longest, len(normal) + normal.count(" ") * (MAX_GAP - 1))
        self._all_keys = frozenset(self._keys.values())
        # The longest text a phrase match can cover, plus a joiner: how far back
        # from the end of a stream a phrase can have started and still be open.
        self.window = longest + 1
        if not self._keys:
            self._pattern = self._prefix = re.compile("(?!)")
            return
        after = f"(?!{p.word})(?!{_JOINER}{p.word})"
        self._pattern = re.compile(f"\\b{_emit(root, False)}{after}")
        self._prefix = re.compile(f"\\b{_emit(root, True)}\\Z")

    @property
    def keys(self) -> frozenset[str]:
        return self._all_keys

    def scan(self, text: str, only: Collection[str] | None = None) -> list[Match]:
        """Every match in ``text``, left to right (see the module doc). With
        ``only``, just the phrases of those keys count."""
        allowed = self._allowed(only)
        if allowed is not None and not allowed:
            return []
        folded = _Folded(text)
        found = self._find(folded.folded, 0, allowed)
        if folded.same:
            return [Match(key, text[start:end], start, end) for start, end, key in found]
        return [folded.match(key, start, end, 0) for start, end, key in found]

    def stream(self, only: Collection[str] | None = None) -> StreamScanner:
        """A scanner for one text that arrives in pieces."""
        return StreamScanner(self, self._allowed(only))

    def _allowed(self, only: Collection[str] | None) -> frozenset[str] | None:
        """``only`` as a set, or None when it leaves nothing out."""
        if only is None:
            return None
        allowed = frozenset(only) & self._all_keys
        return None if allowed == self._all_keys else allowed

    def _key(self, matched: str) -> str:
        if not matched.isascii():
            matched = matched.translate(_TO_ASCII)
        return self._keys[" ".join(matched.split())]

    def _find(
        self, folded: str, pos: int, allowed: frozenset[str] | None
    ) -> Iterator[tuple[int, int, str]]:
        """(start, end, key) in ``folded`` from ``pos`` on.

        The pattern only asks for ``\\b`` before a phrase — a cheap test that
        fails inside words, where the scan spends most of its positions — and
        the few places it finds are checked here for the rest of the rule
        (not after a combining mark, nor after a word and a joiner). When one
        is refused, or ``allowed`` leaves the phrase out, the search restarts
        just after its start: a phrase may begin inside the refused one."""
        keys = self._keys
        while True:
            for found in self._pattern.finditer(folded, pos):
                matched = found.group()
                start = found.start()
                end = start + len(matched)
                if (
                    start
                    and not folded[start - 1].isspace()
                    and not self._starts_word(folded, start)
                ):
                    pos = start + 1
                    break
                key = keys.get(matched) or self._key(matched)
                if allowed is None or key in allowed:
                    yield start, end, key
                    continue
                # The longest phrase here is left out; a shorter one may count.
                end, key = self._shorter(folded, start, end, allowed)
                if key:
                    yield start, end, key
                    pos = end
                else:
                    pos = start + 1
                break
            else:
                return

    @staticmethod
    def _starts_word(folded: str, start: int) -> bool:
        """Whether a word starts at ``start`` > 0, given that a ``\\w``
        character is there and none is before it."""
        word_char = _patterns().word_char
        if word_char.match(folded, start - 1):  # a combining mark
            return False
        return (
            start < 2 or folded[start - 1] not in _JOINERS or not word_char.match(folded, start - 2)
        )

    def _shorter(
        self, folded: str, start: int, end: int, allowed: frozenset[str]
    ) -> tuple[int, str]:
        """The longest allowed phrase that starts at ``start`` and ends before
        ``end`` (where a longer phrase matched), or (start, "")."""
        p = _patterns()
        best = (start, "")
        pos = start
        words: list[str] = []
        while (word := p.word_re.match(folded, pos, end)) is not None:
            words.append(word.group())
            key = self._keys.get(" ".join(words).translate(_TO_ASCII))
            if key is not None and key in allowed and word.end() < end:
                best = (word.end(), key)
            gap = p.gap_re.match(folded, word.end(), end)
            if gap is None:
                break
            pos = gap.end()
        return best

    def _settle(
        self, text: str, pos: int, allowed: frozenset[str] | None, base: int, final: bool
    ) -> tuple[list[Match], int]:
        """The matches in ``text`` from ``pos`` on that more text cannot change,
        and where the scan must resume. ``text`` is the end of a stream so far
        (``final``: all of it). A match is settled when no phrase match that
        could still grow starts at or before it: the earliest place from which
        the rest of ``text`` is the beginning of a phrase match (or a whole one
        whose last word may go on) is found with the prefix pattern."""
        folded = _Folded(text)
        start = folded.to_folded(pos)
        end = len(folded.folded)
        if not final:
            at = max(start, end - self.window)
            while at < end and (tail := self._prefix.search(folded.folded, at)) is not None:
                if tail.start() == end:  # nothing open: an empty prefix
                    break
                if tail.start() == 0 or self._starts_word(folded.folded, tail.start()):
                    end = tail.start()
                    break
                at = tail.start() + 1
        settled = []
        resume = end
        if allowed is None or allowed:
            for m_start, m_end, key in self._find(folded.folded, start, allowed):
                if m_start >= end:
                    break
                settled.append(folded.match(key, m_start, m_end, base))
                resume = max(end, m_end)
        return settled, folded.to_original(resume)


class StreamScanner:
    """``Matcher.scan`` for a text that arrives in pieces (streamed AI reply
    deltas). ``feed`` returns the matches that became certain — each exactly
    once, offsets counted from the start of the stream — and ``flush`` (at the
    end of the text) the rest. Together they return exactly what ``scan``
    returns for the whole text. A phrase that ends where the text so far ends
    waits for the next piece, which shows whether its last word goes on.
    Memory: the scanner keeps at most ``matcher.window`` + 2 characters between
    calls (``held``), whatever the length of the stream."""

    def __init__(self, matcher: Matcher, allowed: frozenset[str] | None) -> None:
        self._matcher = matcher
        self._allowed = allowed
        self._tail = ""  # the stream from offset self._base on
        self._base = 0
        self._resume = 0  # where the scan goes on, in self._tail; before it: context
        self._done = False

    @property
    def held(self) -> int:
        """How many characters of the stream the scanner keeps."""
        return len(self._tail)

    def feed(self, piece: str) -> list[Match]:
        """Add the next piece of the text; return the matches now certain."""
        if self._done:
            raise ValueError("feed() after flush()")
        if not piece:
            return []
        self._tail += piece
        found, resume = self._matcher._settle(
            self._tail, self._resume, self._allowed, self._base, final=False
        )
        # Keep two characters before the resume point: whether a phrase may
        # start there depends on them (a word character, or one and a joiner).
        drop = max(resume - 2, 0)
        self._tail = self._tail[drop:]
        self._base += drop
        self._resume = resume - drop
        return found

    def flush(self) -> list[Match]:
        """The text is complete: the remaining matches. The scanner is done."""
        if self._done:
            return []
        self._done = True
        found, _ = self._matcher._settle(
            self._tail, self._resume, self._allowed, self._base, final=True
        )
        self._tail = ""
        return found

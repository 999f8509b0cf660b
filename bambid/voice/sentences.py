"""Streamed reply text → sentences a TTS engine can speak.

The companion's reply arrives as arbitrary pieces (a token, a few characters, a
word cut in two). :class:`SpeechSegmenter` returns each sentence as soon as it
is certainly complete, already cleaned for speech; :func:`clean_for_speech`
cleans one whole text (``/api/tts``) the same way.

The result never depends on how the text was cut into pieces: feeding a reply
whole or one character at a time gives the same sentences. To keep that
promise a decision is only taken once the characters it depends on have
arrived, so a sentence end at the very end of the text received so far waits
for the next piece (``3.`` may become ``3.5``, ``example.`` ``example.com``).
A sentence ended by a mark comes out with the piece that brings the first
character of the next word (an LLM token usually carries the space and the
word together); one ended by a line break comes out with the line break.

Work happens in two stages, each linear in the text:

1. **Removal** of ``<think>…</think>`` (and ``<thinking>``) reasoning blocks and
   fenced code (a run of three or more backticks up to the next run at least as
   long, anywhere in a line). Both vanish entirely, even when their markers are
   split across pieces; one left open when the reply ends is dropped with
   everything after it. Nothing is ever split inside them.
2. **Splitting** the remaining prose at sentence ends, then **cleaning** each
   sentence.

Splitting rules:

- Every line break ends a sentence (so headings, list items and table rows are
  sentences of their own).
- A run of ``.``, ``!``, ``?``, ``…`` (``?!``, ``...``), then optional closing
  quotes, brackets or emphasis markers (``"Breathe." Then`` splits after the
  quote), then whitespace, ends a sentence, unless the next word starts with a
  lowercase letter (``wait... and then``, ``"Why?" she asked``, ``approx. ten``)
  or with another sentence mark (``. . .``). ``。！？`` end a sentence even
  without a space after them.
- A single ``.`` does not end a sentence after a title (``Mr. Mrs. Ms. Dr. Prof.
  St.`` …) or a Latin or inner abbreviation (``e.g. i.e. cf. vs. approx.`` …),
  nor after ``No. p. fig. vol.`` … when a digit follows (``No. 5``), nor after a
  single capital letter other than ``I`` (initials: ``J. R. Smith``), nor after a
  dotted abbreviation (``U.S.``, ``Ph.D.``), nor after a number of one to three
  digits opening a line (``1. Breathe in``). ``etc. Jr. Inc. Ltd. a.m. p.m.`` …
  end a sentence only when the next word starts with a capital letter
  (``…, etc. Then we rest.`` splits; ``etc. and more`` does not).
- ``3.5``, ``example.com``, ``e.g.,``: a mark followed by anything but whitespace
  never ends a sentence.
- A run longer than ``max_length`` characters without any of these is cut at
  the last clause mark (``,;:—–`` then a space) in its second half, else at its
  last space, else (one enormous word) at ``max_length`` exactly. The length is
  measured on the raw text from the sentence's first non-blank character, and
  cleaning never makes a sentence longer, so no returned sentence is longer
  than ``max_length``.

Cleaning for speech (per sentence): HTML tags and comments removed, entities
decoded; images removed; links ``[text](url)`` become ``text``; bare URLs
(``http(s)://``, ``ftp://``, ``www.``) are removed, not read out or replaced;
inline code keeps its text without backticks; emphasis ``*`` ``_`` ``~~`` removed
(an underscore inside a word becomes a space: ``snake_case``); heading ``#``,
blockquote ``>``, bullets ``- * + •`` and task boxes at the start removed (list
numbers kept: "1. Breathe in" is spoken as such); table pipes removed, rules
and runs of ``=`` removed, ``--`` becomes a comma; emoji, pictographs, arrows,
box drawing and other symbols removed (``°``, ``©``, ``®``, ``™`` kept);
whitespace collapsed. A sentence with no letter or digit left is dropped.
"""

from __future__ import annotations

import html
import re
import unicodedata
from functools import lru_cache

__all__ = ["SpeechSegmenter", "clean_for_speech"]

# --- stage 1: reasoning blocks and fenced code -------------------------------------------

_TEXT, _THINK, _FENCE = 0, 1, 2
_OPENING = re.compile(r"<think(?:ing)?>|`{3,}", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think(?:ing)?>", re.IGNORECASE)
_OPEN_TAGS = ("<think>", "<thinking>")
_CLOSE_TAGS = ("</think>", "</thinking>")


@lru_cache(maxsize=32)
def _fence_close(length: int) -> re.Pattern[str]:
    return re.compile(f"`{{{length},}}")


def _partial_tag_at(text: str, pos: int, tags: tuple[str, ...]) -> int:
    """Where a proper prefix of one of ``tags`` ends ``text[pos:]``, else ``len(text)``."""
    n = len(text)
    i = text.rfind("<", max(pos, n - max(map(len, tags)) + 1))
    if i >= 0:
        tail = text[i:].lower()
        if any(tag.startswith(tail) for tag in tags):
            return i
    return n


def _trailing_ticks_at(text: str, pos: int) -> int:
    """Where the run of backticks ending ``text[pos:]`` starts (``len(text)`` if none)."""
    return max(pos, len(text.rstrip("`")))


class _Remover:
    """Stage 1: drops reasoning blocks and fenced code from a stream of pieces.

    Holds back only what may still turn out to be a marker: a partial tag
    (``<thin``) or a run of backticks touching the end of the text so far.
    """

    def __init__(self) -> None:
        self._carry = ""
        self._mode = _TEXT
        self._fence = 0

    def feed(self, piece: str, final: bool) -> str:
        text = self._carry + piece if self._carry else piece
        self._carry = ""
        n = len(text)
        out: list[str] = []
        pos = 0
        while True:
            if self._mode == _TEXT:
                m = _OPENING.search(text, pos)
                if m is None:
                    hold = n
                    if not final:
                        ticks = _trailing_ticks_at(text, pos)
                        hold = min(ticks, _partial_tag_at(text, pos, _OPEN_TAGS))
                    out.append(text[pos:hold])
                    self._carry = text[hold:]
                    break
                out.append(text[pos : m.start()])
                if m.group()[0] == "`":
                    if m.end() == n and not final:  # the run may still grow
                        self._carry = text[m.start() :]
                        break
                    self._mode, self._fence = _FENCE, m.end() - m.start()
                else:
                    self._mode = _THINK
                out.append(" ")
                pos = m.end()
            elif self._mode == _THINK:
                m = _THINK_CLOSE.search(text, pos)
                if m is None:
                    if not final:
                        self._carry = text[_partial_tag_at(text, pos, _CLOSE_TAGS) :]
                    break
                self._mode = _TEXT
                pos = m.end()
            else:
                m = _fence_close(self._fence).search(text, pos)
                if m is None:
                    if not final:
                        self._carry = text[_trailing_ticks_at(text, pos) :]
                    break
                if m.end() == n and not final:
                    self._carry = text[m.start() :]
                    break
                self._mode = _TEXT
                pos = m.end()
        if final:
            self._mode, self._carry = _TEXT, ""
        return "".join(out)


# --- stage 2: sentence boundaries --------------------------------------------------------

_NEWLINES = "\n\u2028\u2029"
_CANDIDATE = re.compile(r"[\n\u2028\u2029]|[.!?…。！？]+")
_BLANKS = re.compile(r"[^\S\n\u2028\u2029]*")
_MARKS = ".!?…。！？"
_CJK_MARKS = "。！？"
_CLOSERS = "\"')]}»”’*_~`"
_OPENERS = "\"'([{«“‘*_~`¿¡"
_CLAUSE = ",;:—–"
#: Whitespace or openers after a mark beyond which we stop looking for the next word.
_LOOKAHEAD = 64
#: The longest word an abbreviation check looks at.
_TOKEN = 24

#: Before a name: never the end of a sentence.
_TITLES = frozenset(
    "mr mrs ms mx dr prof st mt ft rev fr gen gov sen rep pres capt cpt lt col sgt maj "
    "adm cmdr hon messrs mme mlle mmes".split()
)
#: Inside a sentence: never the end of one.
_INNER = frozenset("e.g i.e cf vs viz approx appr ca incl excl esp resp w.r.t a.k.a al".split())
#: Before a number: ``No. 5``, ``p. 12``, ``fig. 3``.
_NUMBERING = frozenset("no nos nr p pp fig figs vol vols ch chap sec art para eq ref tel".split())
#: May end a sentence: only when the next word is capitalised.
_MAY_END = frozenset("etc jr sr inc ltd co corp bros llc plc a.m p.m".split())
_DOTTED = re.compile(r"(?:[A-Za-z]{1,2}\.)+[A-Za-z]{1,2}")


def _blank_end(text: str, i: int) -> int:
    """Past the blanks (not line breaks) at ``text[i:]``."""
    m = _BLANKS.match(text, i)
    return m.end() if m else i


def _token_before(text: str, s: int, a: int) -> tuple[str, int]:
    """The word ending at ``s`` (openers stripped) and where it starts; "" when it
    is longer than any abbreviation."""
    lo = max(a, s - _TOKEN)
    t = s
    while t > lo and not text[t - 1].isspace():
        t -= 1
    if t == lo and t > a and not text[t - 1].isspace():
        return "", t
    word = text[t:s]
    stripped = word.lstrip(_OPENERS)
    return stripped, t + len(word) - len(stripped)


def _ends_at(text: str, s: int, run: str, nxt: str, a: int, line_start: bool) -> bool:
    """Whether the mark ``run`` at ``s``, followed by whitespace then ``nxt``, ends a sentence."""
    if nxt.islower() or nxt in _MARKS:
        return False
    if run != ".":
        return True
    token, t = _token_before(text, s, a)
    if not token:
        return True
    low = token.lower()
    if low in _TITLES or low in _INNER:
        return False
    if low in _NUMBERING and nxt.isdigit():
        return False
    if low in _MAY_END:
        return nxt.isupper()
    if len(token) == 1 and token.isupper() and token != "I":
        return False
    if _DOTTED.fullmatch(token):
        return False
    if token.isdigit() and len(token) <= 3 and line_start:
        # a numbered list item: only quote or emphasis markers before it on its line
        return not all(c == ">" or c.isspace() or c in _OPENERS for c in text[a:t])
    return True


def _judge(
    text: str, m: re.Match[str], a: int, line_start: bool, final: bool
) -> tuple[bool | None, int]:
    """Whether the mark matched by ``m`` ends a sentence (``None``: not known before
    more text arrives), and where such a sentence ends (after its closers)."""
    n = len(text)
    e = m.end()
    while e < n and text[e] in _CLOSERS:
        e += 1
    if e == n:
        return (True if final else None), e
    if not text[e].isspace():
        return any(c in _CJK_MARKS for c in m.group()), e
    j, stop = e, min(n, e + _LOOKAHEAD)
    while j < stop and text[j].isspace():
        if text[j] in _NEWLINES:
            return True, e
        j += 1
    k = j
    while k < stop and text[k] in _OPENERS:
        k += 1
    if k == stop:
        if stop < n or final or stop - e >= _LOOKAHEAD:
            return True, e
        return None, e
    return _ends_at(text, m.start(), m.group(), text[k], a, line_start), e


def _cut(text: str, a: int, limit: int) -> int:
    """Where to cut a run that starts at ``a`` and has no sentence end before
    ``a + limit`` (``text`` extends past it): the end of the piece to return."""
    end = a + limit
    for i in range(end, a + limit // 2, -1):
        if text[i].isspace() and text[i - 1] in _CLAUSE:
            return i
    for i in range(end, a, -1):
        if text[i].isspace():
            return i
    return end


# --- cleaning ------------------------------------------------------------------------------

_TAG = re.compile(
    r"<!--.*?(?:-->|$)|</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>|<(?:https?|ftp|mailto):[^<>\s]*>",
    re.IGNORECASE,
)
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\](?:\([^)]*\)|\[[^\]]*\])")
_URL = re.compile(r"\b(?:https?://|ftp://|www\.)[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}*_]", re.IGNORECASE)
_LEADING_MARKERS = re.compile(
    r"^\s*(?:>\s*)*(?:#{1,6}(?=\s|$)|[-*+•‣◦▪](?=\s))?\s*(?:\[[ xX]\]\s+)?"
)
_HASHES = re.compile(r"(?<![^\s(])#+")
_INNER_UNDERSCORES = re.compile(r"(?<=[^\W_])_+(?=[^\W_])")
_EMPHASIS = re.compile(r"[*_`]+|~~+")
_DASHES = re.compile(r"-{2,}")
_RULES = re.compile(r"={2,}|\|")
_NON_BASIC = re.compile(r"[^\x00-\u036f]+")
_EMPTY_BRACKETS = re.compile(r"\(\s*\)|\[\s*\]")
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE = re.compile(r" (?=[.,;:!?…)\]}])")
_LEADING_PUNCTUATION = re.compile(r"^[\s,;:]+")
_KEEP_SYMBOLS = frozenset("°©®™")
_DROP_CATEGORIES = frozenset({"So", "Sk", "Cn", "Co", "Cs", "Me"})


@lru_cache(maxsize=4096)
def _unspeakable(c: str) -> bool:
    """Emoji, pictographs, arrows, box drawing, modifiers and invisible joiners."""
    if c in _KEEP_SYMBOLS:
        return False
    cp = ord(c)
    if (
        0x2190 <= cp <= 0x21FF  # arrows
        or 0x27F0 <= cp <= 0x27FF
        or 0x2900 <= cp <= 0x297F
        or 0xFE00 <= cp <= 0xFE0F  # variation selectors
        or 0xE0000 <= cp <= 0xE01EF  # tags, more variation selectors
        or cp == 0x2022  # bullet
    ):
        return True
    category = unicodedata.category(c)
    return category in _DROP_CATEGORIES or (category == "Cf" and cp != 0x200C)


def _symbols(m: re.Match[str]) -> str:
    run = m.group()
    return "".join(" " if _unspeakable(c) else c for c in run)


def _clean_sentence(raw: str) -> str:
    """One sentence (no line break) as it should be spoken; "" if nothing is speakable.
    Never longer than ``raw``."""
    s = _LEADING_MARKERS.sub("", raw, count=1)
    if "<" in s:
        s = _TAG.sub(" ", s)
    if "&" in s:
        s = html.unescape(s)
    if "](" in s or "][" in s:
        s = _IMAGE.sub(" ", s)
        s = _LINK.sub(r"\1", s)
    s = _URL.sub(" ", s)
    s = _HASHES.sub("", s)
    s = _INNER_UNDERSCORES.sub(" ", s)
    s = _EMPHASIS.sub("", s)
    s = _DASHES.sub(", ", s)
    s = _RULES.sub(" ", s)
    s = _NON_BASIC.sub(_symbols, s)
    s = _EMPTY_BRACKETS.sub(" ", s)
    s = _SPACES.sub(" ", s)
    s = _SPACE_BEFORE.sub("", s)
    s = _LEADING_PUNCTUATION.sub("", s).strip()
    if not any(c.isalnum() for c in s):
        return ""
    return s


def _fit(sentence: str, limit: int) -> list[str]:
    """``sentence`` in pieces of at most ``limit`` characters, cut at spaces."""
    pieces = []
    while len(sentence) > limit:
        cut = sentence.rfind(" ", 1, limit + 1)
        if cut <= 0:
            cut = limit
        pieces.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    pieces.append(sentence)
    return [p for p in pieces if any(c.isalnum() for c in p)]


# --- the segmenter -------------------------------------------------------------------------


class SpeechSegmenter:
    """Streamed reply text in, speakable sentences out (already cleaned for speech).

    ``feed`` each piece as it arrives: it returns the sentences that piece
    completed (often none). ``flush`` at the end of the reply returns the rest
    and resets the segmenter for another reply. No sentence returned is empty or
    longer than ``max_length`` characters. The sentences do not depend on how
    the reply was cut into pieces. Not thread-safe; pure computation.
    """

    def __init__(self, max_length: int = 250) -> None:
        if max_length < 1:
            raise ValueError("max_length must be at least 1")
        self.max_length = max_length
        self._remover = _Remover()
        self._reset()

    def _reset(self) -> None:
        #: Prose of the sentence in progress, from its first non-blank character.
        self._text = ""
        #: Where to look for the next sentence mark in ``_text``.
        self._scan = 0
        #: Whether ``_text`` starts a line (for numbered list items).
        self._line_start = True

    def feed(self, text: str) -> list[str]:
        """The sentences completed by ``text``, the next piece of the reply."""
        prose = self._remover.feed(text, final=False)
        if not prose:
            return []
        self._text += prose
        return self._split(final=False)

    def flush(self) -> list[str]:
        """The rest of the reply: everything not yet returned, as sentences. An
        unclosed reasoning block or code fence is dropped."""
        self._text += self._remover.feed("", final=True)
        try:
            return self._split(final=True)
        finally:
            self._reset()

    def _split(self, final: bool) -> list[str]:
        text, limit = self._text, self.max_length
        n = len(text)
        out: list[str] = []

        def emit(raw: str) -> None:
            out.extend(_fit(_clean_sentence(raw), limit))

        start, scan, line_start = 0, self._scan, self._line_start
        while True:
            a = _blank_end(text, start)
            m = _CANDIDATE.search(text, scan)
            newline = False
            if m is None:
                end, nxt, ends = n, n, final
            elif m.group() in _NEWLINES:
                end, nxt, ends, newline = m.start(), m.end(), True, True
            else:
                verdict, after = _judge(text, m, a, line_start, final)
                if verdict is False:
                    scan = after
                    continue
                end, nxt, ends = (after, after, True) if verdict else (m.end(), m.start(), False)
            # ``end``: where the sentence ends, or the earliest it can end (not ``ends``)
            if end - a > limit:
                cut = _cut(text, a, limit)
                emit(text[a:cut])
                start = scan = cut
                line_start = False
                continue
            if not ends:
                scan = nxt
                break
            if end > a:
                emit(text[a:end])
            start = scan = nxt
            line_start = newline
            if m is None:
                break
        a = _blank_end(text, start)
        self._text = text[a:]
        self._scan = max(scan - a, 0)
        self._line_start = line_start
        return out


def clean_for_speech(text: str) -> str:
    """One whole text (``/api/tts``) cleaned like reply sentences: its sentences
    joined by spaces, a full stop added after those that end without a mark
    (headings, list items) so they are spoken as separate phrases. "" if
    nothing in it is speakable."""
    segmenter = SpeechSegmenter(max_length=max(len(text), 1))
    sentences = segmenter.feed(text) + segmenter.flush()
    spoken = []
    for i, sentence in enumerate(sentences):
        if i < len(sentences) - 1 and sentence.rstrip(_CLOSERS)[-1:] not in _MARKS + _CLAUSE:
            sentence += "."
        spoken.append(sentence)
    return " ".join(spoken)

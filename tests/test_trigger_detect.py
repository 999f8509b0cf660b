"""Trigger detection: concrete cases, the streaming scanner, and properties
checked against a slow reference implementation written from the rules."""

from __future__ import annotations

import unicodedata
from collections.abc import Collection

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bambid.triggers.detect import (
    MAX_GAP,
    MAX_PHRASE,
    Match,
    Matcher,
    normalise_phrase,
)

PHRASES = {
    "Deep Breath": "deep-breath",
    "breathe deeply": "deep-breath",
    "Let Go": "let-go",
    "let": "let",
    "go now": "go-now",
    "let go now please": "please",
    "relax": "relax",
    "Don't Worry": "dont-worry",
    "well-being": "well-being",
    "Straße": "strasse",
    "café": "cafe",
    "спокойно": "calm-ru",
    "日本": "japan",
    "i": "i",
}
MATCHER = Matcher(PHRASES)


def found(
    text: str, matcher: Matcher = MATCHER, only: Collection[str] | None = None
) -> list[tuple[str, str, int]]:
    return [(m.key, m.phrase, m.start) for m in matcher.scan(text, only)]


def streamed(
    matcher: Matcher, pieces: list[str], only: Collection[str] | None = None
) -> list[Match]:
    scanner = matcher.stream(only)
    result = []
    for piece in pieces:
        result += scanner.feed(piece)
    return result + scanner.flush()


# --- concrete cases ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("nothing here", []),
        ("relax", [("relax", "relax", 0)]),
        (
            "RELAX, Relax! rElAx?",
            [("relax", "RELAX", 0), ("relax", "Relax", 7), ("relax", "rElAx", 14)],
        ),
        ("(relax) 'relax' \"relax\" relax.", [("relax", "relax", i) for i in (1, 9, 17, 24)]),
        # whole words: plurals, other forms and compounds do not match
        ("relaxes relaxed relaxation unrelax relax_mode relax2", []),
        ("relax's", []),
        ("relax'", [("relax", "relax", 0)]),
        ("relax-", [("relax", "relax", 0)]),
        ("re-relax relax-time", []),
        # multi-word: any run of whitespace, nothing else
        ("Let GO", [("let-go", "Let GO", 0)]),
        ("let\ngo", [("let-go", "let\ngo", 0)]),
        ("let \t\n  go", [("let-go", "let \t\n  go", 0)]),
        ("let, go", [("let", "let", 0)]),
        ("let-go", []),
        ("let.go", [("let", "let", 0)]),
        ("deep breaths", []),
        ("deep breath.", [("deep-breath", "deep breath", 0)]),
        ("Breathe deeply", [("deep-breath", "Breathe deeply", 0)]),
        # overlapping and nested phrases: leftmost, then longest, no overlaps
        ("let go now", [("let-go", "let go", 0)]),
        ("let go now please", [("please", "let go now please", 0)]),
        ("let go now pleased", [("let-go", "let go", 0)]),
        ("so go now", [("go-now", "go now", 3)]),
        (
            "let let go go now",
            [("let", "let", 0), ("let-go", "let go", 4), ("go-now", "go now", 11)],
        ),
        ("let gone", [("let", "let", 0)]),
        # apostrophes are inside words; typographic ones are the same
        ("don't worry", [("dont-worry", "don't worry", 0)]),
        ("DON’T worry", [("dont-worry", "DON’T worry", 0)]),
        ("don‘t worry", [("dont-worry", "don‘t worry", 0)]),
        ("dont worry", []),
        ("i don't", [("i", "i", 0)]),
        ("don't i", [("i", "i", 6)]),
        ("isn't", []),
        ("i'm", []),
        ("a'i", []),
        # hyphens join words; the non-breaking and Unicode hyphens are the same
        ("Well-Being", [("well-being", "Well-Being", 0)]),
        ("well\u2011being", [("well-being", "well\u2011being", 0)]),
        ("well being", []),
        ("well--being", []),
        ("well-being-ish", []),
        # Unicode letters are word characters
        ("Café!", [("cafe", "Café", 0)]),
        ("cafés", []),
        ("cafe", []),
        ("СПОКОЙНО.", [("calm-ru", "СПОКОЙНО", 0)]),
        ("спокойной", []),
        ("日本", [("japan", "日本", 0)]),
        ("日本語", []),  # no spaces in Japanese: a phrase needs non-letters around it
        ("「日本」", [("japan", "日本", 1)]),
        # combining marks belong to the word before them
        ("relax\u0301", []),
        ("a\u0301relax", []),
        ("cafe\u0301", []),  # a decomposed é is not the composed one
        # full casefolding, with offsets in the original text
        ("STRASSE", [("strasse", "STRASSE", 0)]),
        ("straße", [("strasse", "straße", 0)]),
        ("ßß straße relax", [("strasse", "straße", 3), ("relax", "relax", 10)]),
        ("ﬀ relax", [("relax", "relax", 2)]),
        ("İ relax", [("relax", "relax", 2)]),
        ("İ", []),  # "i̇": i and a combining dot, a different word than "i"
        ("I", [("i", "I", 0)]),
    ],
)
def test_scan(text: str, expected: list[tuple[str, str, int]]) -> None:
    assert found(text) == expected
    assert all(text[m.start : m.end] == m.phrase for m in MATCHER.scan(text))


def test_whitespace_between_words_is_bounded() -> None:
    assert found("let" + " " * MAX_GAP + "go") == [("let-go", "let" + " " * MAX_GAP + "go", 0)]
    assert found("let" + " " * (MAX_GAP + 1) + "go") == [("let", "let", 0)]


def test_only_restricts_to_those_keys_as_if_the_others_did_not_exist() -> None:
    text = "let go now please, relax"
    assert found(text, only=["relax"]) == [("relax", "relax", 19)]
    assert found(text, only={"let"}) == [("let", "let", 0)]
    assert found(text, only={"go-now"}) == [("go-now", "go now", 4)]
    assert found(text, only={"let-go", "relax"}) == [
        ("let-go", "let go", 0),
        ("relax", "relax", 19),
    ]
    assert found(text, only=()) == []
    assert found(text, only={"unknown"}) == []
    assert found(text, only=MATCHER.keys) == found(text)
    assert found(text, only={"go-now", "please"}) == [("please", "let go now please", 0)]


def test_an_empty_matcher_finds_nothing() -> None:
    empty = Matcher({})
    assert empty.scan("let go") == []
    assert streamed(empty, ["let", " go"]) == []


def test_normalise_phrase() -> None:
    assert normalise_phrase("  Don’t  LET\tgo ") == "don't let go"
    assert normalise_phrase("Straße") == "strasse"
    assert normalise_phrase("well\u2010being") == "well-being"
    for bad in ("", "   ", "-x", "x-", "a--b", "a'", "let , go", "hello!", "\u0301a"):
        with pytest.raises(ValueError):
            normalise_phrase(bad)


def test_matcher_refuses_bad_phrase_tables() -> None:
    with pytest.raises(ValueError, match="is both 'a' and 'b'"):
        Matcher({"Let Go": "a", "let  GO": "b"})
    with pytest.raises(ValueError, match="longer than"):
        Matcher({"a" * (MAX_PHRASE + 1): "a"})
    with pytest.raises(ValueError, match="empty key"):
        Matcher({"relax": ""})
    with pytest.raises(ValueError, match="not a whole word"):
        Matcher({"let - go": "x"})
    # Two spellings of one phrase for the same key are fine.
    assert found("let go", Matcher({"Let Go": "a", "let  go": "a"})) == [("a", "let go", 0)]


def test_long_phrases_and_many_of_them() -> None:
    long = " ".join(["word"] * 40)
    matcher = Matcher({long: "long", **{f"w{i} x{i}": f"k{i}" for i in range(1000)}})
    assert found(f"say {long}!", matcher) == [("long", long, 4)]
    assert found("w999 x999 w5 x5 w5x5", matcher) == [("k999", "w999 x999", 0), ("k5", "w5 x5", 10)]


# --- streaming ---------------------------------------------------------------------


def test_stream_reports_a_match_once_the_next_character_shows_the_word_ended() -> None:
    scanner = MATCHER.stream()
    assert scanner.feed("Please re") == []
    assert scanner.feed("lax") == []  # "relaxed" is still possible
    assert scanner.feed(" and") == [Match("relax", "relax", 7, 12)]
    assert scanner.feed(" relax") == []
    assert scanner.flush() == [Match("relax", "relax", 17, 22)]


def test_stream_waits_while_a_longer_phrase_is_possible() -> None:
    scanner = MATCHER.stream()
    assert scanner.feed("let ") == []  # "let go" may follow
    assert scanner.feed("go ") == []  # "let go now please" may follow
    assert scanner.feed("now") == []
    assert scanner.feed(" pleasant") == [Match("let-go", "let go", 0, 6)]
    assert scanner.flush() == []


def test_stream_a_word_that_goes_on_is_no_match() -> None:
    assert streamed(MATCHER, ["rela", "x", "ed"]) == []
    assert streamed(MATCHER, ["relax", "'", "s"]) == []
    assert streamed(MATCHER, ["relax", "'", " "]) == [Match("relax", "relax", 0, 5)]
    assert streamed(MATCHER, ["let", "-", "go"]) == []


def test_stream_offsets_count_from_the_start_of_the_stream() -> None:
    text = ("Take a deep breath. " * 50) + "Straße, then relax."
    pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
    assert streamed(MATCHER, pieces) == MATCHER.scan(text)
    assert streamed(MATCHER, pieces)[-1] == Match("relax", "relax", len(text) - 6, len(text) - 1)


def test_stream_with_only() -> None:
    pieces = ["let go", " now ", "relax"]
    assert streamed(MATCHER, pieces, only={"go-now", "relax"}) == [
        Match("go-now", "go now", 4, 10),
        Match("relax", "relax", 11, 16),
    ]
    assert streamed(MATCHER, pieces, only=()) == []


def test_stream_memory_is_bounded() -> None:
    scanner = MATCHER.stream()
    text = "let go now " + "le let go no " * 2000 + "x" * 5000 + " " * 500
    most = 0
    for i in range(0, len(text), 3):
        scanner.feed(text[i : i + 3])
        most = max(most, scanner.held)
    assert most <= MATCHER.window + 2
    assert scanner.flush() == []


def test_feed_after_flush_is_an_error() -> None:
    scanner = MATCHER.stream()
    assert scanner.feed("relax") == []
    assert scanner.flush() == [Match("relax", "relax", 0, 5)]
    assert scanner.flush() == []
    with pytest.raises(ValueError, match="after flush"):
        scanner.feed("more")


# --- properties --------------------------------------------------------------------
#
# A reference implementation written straight from the rules, one phrase and one
# character at a time; slow and obviously right (or at least independently wrong).

JOINERS = {
    "'": "'",
    "\u2018": "'",
    "\u2019": "'",
    "-": "-",
    "\u2010": "-",
    "\u2011": "-",
}


def is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_" or unicodedata.category(c).startswith("M")


def reference_scan(phrases: dict[str, str], text: str) -> list[Match]:
    folded: list[str] = []
    origin: list[int] = []
    for i, c in enumerate(text):
        for f in c.casefold():
            folded.append(JOINERS.get(f, f))
            origin.append(i)
    n = len(folded)
    table = {
        tuple(
            phrase.casefold().translate(str.maketrans("\u2018\u2019\u2010\u2011", "''--")).split()
        ): key
        for phrase, key in phrases.items()
    }

    def word_before(i: int) -> bool:
        return i > 0 and is_word_char(folded[i - 1])

    def starts_word(i: int) -> bool:
        joined = i > 1 and folded[i - 1] in "'-" and is_word_char(folded[i - 2])
        return not word_before(i) and not joined

    def ends_word(i: int) -> bool:
        joined = i + 1 < n and folded[i] in "'-" and is_word_char(folded[i + 1])
        return not (i < n and is_word_char(folded[i])) and not joined

    def end_of(i: int, words: tuple[str, ...]) -> int | None:
        for k, word in enumerate(words):
            if k:
                gap = 0
                while i + gap < n and folded[i + gap].isspace():
                    gap += 1
                if not 1 <= gap <= MAX_GAP:
                    return None
                i += gap
            if "".join(folded[i : i + len(word)]) != word:
                return None
            i += len(word)
        return i if ends_word(i) else None

    result = []
    i = 0
    while i < n:
        best: tuple[int, str] | None = None
        if starts_word(i):
            for words, key in table.items():
                end = end_of(i, words)
                if end is not None and (best is None or end > best[0]):
                    best = (end, key)
        if best is None:
            i += 1
            continue
        start, end = origin[i], origin[best[0] - 1] + 1
        result.append(Match(best[1], text[start:end], start, end))
        i = best[0]
    return result


WORDS = ["let", "go", "now", "relax", "don't", "straße", "café", "i", "well-being", "日本"]
TEXT_PIECES = [
    *WORDS,
    *(w.upper() for w in WORDS),
    *(w.title() for w in WORDS),
    "Let",
    "STRASSE",
    "strasse",
    "DON’T",
    "well\u2011being",
    "a",
    "x",
    "é",
    "ß",
    "İ",
    "ﬀ",
    "\u0301",
    "_",
    "7",
    " ",
    " ",
    " ",
    "  ",
    "\n",
    "\t",
    " " * (MAX_GAP + 1),
    ",",
    ".",
    "'",
    "’",
    "-",
    "!",
    "「",
]

texts = st.lists(st.sampled_from(TEXT_PIECES), max_size=30).map("".join)
phrase_tables = st.dictionaries(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join),
    st.sampled_from(["a", "b", "c", "d", "e"]),
    max_size=6,
)


def pieces_of(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in zip(points, points[1:], strict=False)]


@settings(deadline=None)
@given(phrase_tables, texts)
def test_scan_agrees_with_the_reference(phrases: dict[str, str], text: str) -> None:
    assert Matcher(phrases).scan(text) == reference_scan(phrases, text)


@settings(deadline=None)
@given(texts)
def test_scan_agrees_with_the_reference_on_the_fixed_table(text: str) -> None:
    assert MATCHER.scan(text) == reference_scan(PHRASES, text)


@settings(deadline=None, max_examples=300)
@given(texts, st.lists(st.integers(min_value=0), max_size=12))
def test_stream_finds_exactly_what_scan_finds(text: str, cuts: list[int]) -> None:
    assert streamed(MATCHER, pieces_of(text, cuts)) == MATCHER.scan(text)


@settings(deadline=None)
@given(phrase_tables, texts, st.lists(st.integers(min_value=0), max_size=12))
def test_stream_finds_exactly_what_scan_finds_any_table(
    phrases: dict[str, str], text: str, cuts: list[int]
) -> None:
    matcher = Matcher(phrases)
    assert streamed(matcher, pieces_of(text, cuts)) == matcher.scan(text)


@settings(deadline=None)
@given(texts, st.lists(st.integers(min_value=0), max_size=8))
def test_stream_one_character_at_a_time(text: str, cuts: list[int]) -> None:
    assert streamed(MATCHER, list(text)) == MATCHER.scan(text)


@settings(deadline=None)
@given(
    phrase_tables,
    texts,
    st.sets(st.sampled_from(["a", "b", "c", "d", "e"])),
    st.lists(st.integers(min_value=0), max_size=8),
)
def test_only_is_a_matcher_of_those_phrases_alone(
    phrases: dict[str, str], text: str, only: set[str], cuts: list[int]
) -> None:
    alone = Matcher({p: k for p, k in phrases.items() if k in only})
    matcher = Matcher(phrases)
    assert matcher.scan(text, only) == alone.scan(text)
    assert streamed(matcher, pieces_of(text, cuts), only) == alone.scan(text)


@settings(deadline=None)
@given(texts)
def test_case_changes_never_change_the_keys_found(text: str) -> None:
    keys = [m.key for m in MATCHER.scan(text)]
    for changed in (text.upper(), text.lower(), text.swapcase(), text.title()):
        # Case mappings that casefolding does not undo (the dotted İ lowercases
        # to "i̇", the dotless ı uppercases to I) are outside the promise.
        assume(changed.casefold() == text.casefold())
        assert [m.key for m in MATCHER.scan(changed)] == keys


@settings(deadline=None)
@given(texts, st.sampled_from(["x", "É", "ж", "ß", "日"]))
def test_a_letter_right_before_or_after_a_phrase_kills_that_match(text: str, letter: str) -> None:
    for m in MATCHER.scan(text):
        before = text[: m.start] + letter + text[m.start :]
        assert all(n.start != m.start + len(letter) for n in MATCHER.scan(before))
        after = text[: m.end] + letter + text[m.end :]
        assert all(n.end != m.end for n in MATCHER.scan(after))


@settings(deadline=None)
@given(texts)
def test_matches_are_ordered_disjoint_and_quote_the_text(text: str) -> None:
    matches = MATCHER.scan(text)
    for m in matches:
        assert text[m.start : m.end] == m.phrase
        assert normalise_phrase(m.phrase) in {normalise_phrase(p) for p in PHRASES}
    for a, b in zip(matches, matches[1:], strict=False):
        assert a.end <= b.start

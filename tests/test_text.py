"""What a chat message may contain: cleaning, the word filter, length."""

from __future__ import annotations

from pathlib import Path

import pytest

from bambid.chat.mentions import candidate_mentions
from bambid.chat.text import TextCleaner, TextRejected, WordFilter, remove_control_characters


def test_control_characters_are_removed_but_newlines_and_tabs_stay() -> None:
    assert remove_control_characters("a\x00b\x07c\x1bd\x7fe\x85f") == "abcdef"
    assert remove_control_characters("one\r\ntwo\rthree\n\tfour") == "one\ntwo\nthree\n\tfour"
    # bidi overrides and isolates can make text read backwards
    assert remove_control_characters("abc\u202edcba\u2066x\u2069") == "abcdcbax"
    # ordinary non-ASCII is kept
    assert remove_control_characters("café ☕ 日本 é") == "café ☕ 日本 é"


def test_the_word_filter_matches_whole_words_and_phrases_in_any_case() -> None:
    words = WordFilter.from_lines(["# comment", "", "darn", "  heck  ", "buy followers"])
    assert words.phrases == ("buy followers", "darn", "heck")
    assert words.apply("Darn it, HECK!") == "**** it, ****!"
    assert words.apply("darned heckle undarn") == "darned heckle undarn"
    assert words.apply("Buy   Followers now") == "*************** now"
    assert words.apply("buyfollowers") == "buyfollowers"
    assert words.apply("darn_it darn-it") == "darn_it ****-it"
    assert WordFilter([]).apply("anything") == "anything"


def test_the_packaged_word_list_and_an_operator_list(tmp_path: Path) -> None:
    assert "spamword" in WordFilter.load().phrases
    own = tmp_path / "words.txt"
    own.write_text("# mine\nzonk\n", encoding="utf-8")
    assert WordFilter.load(str(own)).phrases == ("zonk",)
    with pytest.raises(OSError):
        WordFilter.load(str(tmp_path / "missing.txt"))


def test_the_cleaner_trims_checks_length_then_filters() -> None:
    cleaner = TextCleaner(WordFilter(["darn"]), max_length=10)
    assert cleaner.clean("  darn \n") == "****"
    assert cleaner.clean("\x00 hi \x01") == "hi"
    assert cleaner.clean("x" * 10) == "x" * 10
    assert cleaner.clean(" " + "x" * 10 + "\x00 ") == "x" * 10  # counted after cleaning
    for bad in ("", "   ", "\n\t\n", "\x00\x01", "x" * 11):
        with pytest.raises(TextRejected):
            cleaner.clean(bad)


def test_mention_candidates() -> None:
    assert candidate_mentions("hi @Ada and @ada, @bob-1 mail@carl.example @x @Dee!") == [
        ("Ada", 3),
        ("bob-1", 18),
        ("Dee", 46),
    ]
    assert candidate_mentions("@@ada") == []

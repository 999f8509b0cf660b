"""Streamed reply text → spoken sentences: splitting, cleaning, chunking invariance."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bambid.voice.sentences import SpeechSegmenter, clean_for_speech


def split(text: str, max_length: int = 250) -> list[str]:
    """The sentences of ``text`` fed whole."""
    segmenter = SpeechSegmenter(max_length)
    return segmenter.feed(text) + segmenter.flush()


def split_pieces(pieces: list[str], max_length: int = 250) -> list[str]:
    segmenter = SpeechSegmenter(max_length)
    out: list[str] = []
    for piece in pieces:
        out += segmenter.feed(piece)
    return out + segmenter.flush()


def check(text: str, expected: list[str], max_length: int = 250) -> None:
    """``text`` gives ``expected`` whole, one character at a time, and in tokens."""
    assert split(text, max_length) == expected
    assert split_pieces(list(text), max_length) == expected
    tokens = [text[i : i + 3] for i in range(0, len(text), 3)]
    assert split_pieces(tokens, max_length) == expected


# --- streaming ---------------------------------------------------------------------------------


def test_a_sentence_comes_out_as_soon_as_the_next_piece_shows_it_is_complete() -> None:
    segmenter = SpeechSegmenter()
    assert segmenter.feed("Let's breathe in") == []
    assert segmenter.feed(" slowly.") == []  # could still be "slowly.5" or "slowly.com"
    assert segmenter.feed(" Hold") == ["Let's breathe in slowly."]
    assert segmenter.feed(" it!") == []
    assert segmenter.feed("\n") == ["Hold it!"]  # a line break needs no look-ahead
    assert segmenter.feed("Now relax") == []
    assert segmenter.flush() == ["Now relax"]
    # flush resets: the segmenter serves the next reply
    assert segmenter.feed("Again. And") == ["Again."]
    assert segmenter.flush() == ["And"]


def test_a_mark_at_the_end_of_the_text_so_far_waits() -> None:
    segmenter = SpeechSegmenter()
    assert segmenter.feed("The value is 3.") == []
    assert segmenter.feed("5 today. ") == []
    assert segmenter.feed("Visit example.") == ["The value is 3.5 today."]
    assert segmenter.feed("com now.") == []
    assert segmenter.flush() == ["Visit example.com now."]


def test_flush_of_nothing_and_of_blanks() -> None:
    assert SpeechSegmenter().flush() == []
    assert split("") == []
    assert split("   \n\n  \t ") == []
    assert split("...") == []
    assert split("😊 🌿") == []


# --- sentence ends ---------------------------------------------------------------------------


def test_plain_sentence_ends() -> None:
    check(
        "Breathe in. Hold it! Are you ready? Yes?! Good… Relax... Done",
        ["Breathe in.", "Hold it!", "Are you ready?", "Yes?!", "Good…", "Relax...", "Done"],
    )


def test_a_mark_needs_whitespace_after_it() -> None:
    check("Rest for 2.5 minutes.Then stretch.", ["Rest for 2.5 minutes.Then stretch."])
    check("Read example.com, e.g., today. Ok.", ["Read example.com, e.g., today.", "Ok."])


def test_closing_quotes_and_brackets_stay_with_their_sentence() -> None:
    check('"Breathe." Then relax.', ['"Breathe."', "Then relax."])
    check("(Take your time.) Then go on.", ["(Take your time.)", "Then go on."])
    check("She said “rest now.” Later we walk.", ["She said “rest now.”", "Later we walk."])
    check("**Step one.** Inhale.", ["Step one.", "Inhale."])


def test_a_lowercase_word_after_a_mark_continues_the_sentence() -> None:
    check('"Why?" she asked. Fine.', ['"Why?" she asked.', "Fine."])
    check("Wait... and then relax.", ["Wait... and then relax."])
    check("Wait… then relax. Wait... Then go.", ["Wait… then relax.", "Wait...", "Then go."])
    check("It takes approx. ten breaths. Ok.", ["It takes approx. ten breaths.", "Ok."])


def test_abbreviations() -> None:
    check(
        "Mr. Lee and Mrs. Lee met Ms. Park, Dr. Cho and Prof. Kim at St. Mary's. Then tea.",
        ["Mr. Lee and Mrs. Lee met Ms. Park, Dr. Cho and Prof. Kim at St. Mary's.", "Then tea."],
    )
    check(
        "Try e.g. Box breathing. Or i.e. Slow breaths. Red vs. Blue. Next.",
        ["Try e.g. Box breathing.", "Or i.e. Slow breaths.", "Red vs. Blue.", "Next."],
    )
    check("It is approx. 5 minutes. Ok.", ["It is approx. 5 minutes.", "Ok."])
    check("See No. 5 and p. 12 here. Ok.", ["See No. 5 and p. 12 here.", "Ok."])
    check("I said no. Then I rested.", ["I said no.", "Then I rested."])


def test_etc_ends_a_sentence_only_before_a_capital() -> None:
    check("We stretch, breathe, etc. Then we rest.", ["We stretch, breathe, etc.", "Then we rest."])
    check("Apples, pears, etc. and more.", ["Apples, pears, etc. and more."])
    check("Walks, naps, etc. 10 minutes each.", ["Walks, naps, etc. 10 minutes each."])
    check("Wake at 7 a.m. Then stretch.", ["Wake at 7 a.m.", "Then stretch."])
    check("The 7 a.m. walk helps.", ["The 7 a.m. walk helps."])
    check("Walks, naps, etc.", ["Walks, naps, etc."])


def test_initials_and_dotted_abbreviations() -> None:
    check("J. R. Smith wrote it. It helps.", ["J. R. Smith wrote it.", "It helps."])
    check("A U.S. Study says so. Yes.", ["A U.S. Study says so.", "Yes."])
    check("So do I. Then we go.", ["So do I.", "Then we go."])


def test_decimals_and_numbers() -> None:
    check("Breathe 3.5 seconds. Then 4.25 more.", ["Breathe 3.5 seconds.", "Then 4.25 more."])
    check("Count to 10. Then relax.", ["Count to 10.", "Then relax."])


def test_cjk_marks_need_no_space() -> None:
    check("你好。我很好！真的？", ["你好。", "我很好！", "真的？"])


# --- lines and lists -------------------------------------------------------------------------


def test_every_line_is_a_sentence() -> None:
    check("Breathe in\nBreathe out\n\nRest", ["Breathe in", "Breathe out", "Rest"])
    check("One.\r\nTwo.\u2028Three", ["One.", "Two.", "Three"])


def test_list_items_each_become_a_sentence() -> None:
    check(
        "Steps:\n1. Breathe in. Slowly.\n2. Hold\n10. Breathe out\n",
        ["Steps:", "1. Breathe in.", "Slowly.", "2. Hold", "10. Breathe out"],
    )
    check("> 1. Quoted step", ["1. Quoted step"])
    check("**1.** Breathe in", ["1. Breathe in"])
    check(
        "- Relax your jaw\n* Drop your shoulders\n+ Smile\n• Rest",
        [
            "Relax your jaw",
            "Drop your shoulders",
            "Smile",
            "Rest",
        ],
    )
    check("- [ ] Stretch\n- [x] Walk", ["Stretch", "Walk"])


def test_a_number_mid_line_is_not_a_list_marker() -> None:
    check("We count 1. Then 2.", ["We count 1.", "Then 2."])


# --- long runs ---------------------------------------------------------------------------------


def test_a_long_run_is_cut_at_a_word_boundary() -> None:
    text = " ".join(["breathe"] * 30)  # 239 characters, no mark
    sentences = split(text, 50)
    assert all(len(s) <= 50 for s in sentences)
    assert " ".join(sentences) == text
    assert sentences[0] == " ".join(["breathe"] * 6)  # 47 characters: a seventh would be 55
    check(text, sentences, 50)


def test_a_long_run_prefers_a_clause_boundary() -> None:
    text = "in and out, slowly and gently, with your eyes closed and your shoulders loose"
    assert split(text, 40) == [
        "in and out, slowly and gently,",
        "with your eyes closed and your shoulders",
        "loose",
    ]


def test_a_word_longer_than_the_limit_is_cut_hard() -> None:
    check("x" * 25 + " end", ["x" * 10, "x" * 10, "x" * 5 + " end"], 10)


def test_a_long_sentence_with_a_mark_is_cut_too() -> None:
    text = "word " * 20 + "end. Next one."
    sentences = split(text, 30)
    assert all(len(s) <= 30 for s in sentences)
    assert sentences[-1] == "Next one."
    assert " ".join(sentences[:-1]) == text[: -len(" Next one.")]


def test_max_length_is_validated() -> None:
    with pytest.raises(ValueError):
        SpeechSegmenter(0)


# --- reasoning and code ----------------------------------------------------------------------


def test_think_blocks_are_removed_even_split_across_pieces() -> None:
    text = "<think>The user wants calm. Be brief.</think>Let's breathe. Slowly."
    expected = ["Let's breathe.", "Slowly."]
    check(text, expected)
    pieces = ["<thi", "nk>The user", " wants calm.</th", "ink>Let's breathe. Slowly."]
    assert split_pieces(pieces) == expected
    check("Hi.<THINKING>\nhmm. Yes.\n</Thinking> Relax.", ["Hi.", "Relax."])
    check("Before <think>a</think>after.", ["Before after."])


def test_an_unclosed_think_block_is_dropped_at_the_end() -> None:
    segmenter = SpeechSegmenter()
    assert segmenter.feed("Rest now.\n<think>I wonder. Maybe") == ["Rest now."]
    assert segmenter.feed(" not.") == []
    assert segmenter.flush() == []
    assert split("Rest now. <think>I wonder. Maybe") == ["Rest now."]


def test_a_lone_angle_bracket_is_not_held_forever() -> None:
    check("3 < 4 is true. Yes.", ["3 < 4 is true.", "Yes."])
    check("Rest <thin", ["Rest <thin"])


def test_code_fences_are_removed_even_split_across_pieces() -> None:
    text = "Try this:\n```python\nprint('Breathe. In.')\n# done. Ok\n```\nThen rest. Good."
    expected = ["Try this:", "Then rest.", "Good."]
    check(text, expected)
    pieces = ["Try this:\n`", "`", "`py", "thon\nprint('Breathe. In.')\n`", "``\n", "Then rest."]
    assert split_pieces([*pieces, " Good."]) == expected
    check("Use ```ls -la``` to list. Done.", ["Use to list.", "Done."])


def test_a_longer_fence_needs_a_closing_run_as_long() -> None:
    check("A.\n````\nx\n```\ny.\n````\nB.", ["A.", "B."])


def test_an_unclosed_code_fence_is_dropped_at_the_end() -> None:
    segmenter = SpeechSegmenter()
    assert segmenter.feed("Here it is:\n```\nline one. Line two.\n") == ["Here it is:"]
    assert segmenter.flush() == []
    check("Ends with a fence ```", ["Ends with a fence"])


def test_inline_code_keeps_its_text() -> None:
    check("Type `relax` and `breathe`. Ok.", ["Type relax and breathe.", "Ok."])
    check("Two ``ticks`` here.", ["Two ticks here."])


# --- cleaning ------------------------------------------------------------------------------------


def test_markdown_is_removed() -> None:
    check("# Breathing\n\n## Step *one*\n", ["Breathing", "Step one"])
    check(
        "**Bold** and __strong__ and _soft_ and ~~gone~~ words.",
        ["Bold and strong and soft and gone words."],
    )
    check("> Breathe *slowly*.\n> > Nested.", ["Breathe slowly.", "Nested."])
    check("snake_case and #hashtag. C# stays.", ["snake case and hashtag.", "C# stays."])
    check("Top\n---\n***\n___\nBottom\n=====", ["Top", "Bottom"])
    check("Breathe -- then relax.", ["Breathe, then relax."])


def test_tables_lose_their_pipes_and_rules() -> None:
    check(
        "| Step | Time |\n|------|:----:|\n| Inhale | 4 s |\n| Exhale | 6 s |",
        ["Step Time", "Inhale 4 s", "Exhale 6 s"],
    )


def test_links_images_and_urls() -> None:
    check("Read [the guide](https://example.com/a_b). Done.", ["Read the guide.", "Done."])
    check("See [the guide][1] now.", ["See the guide now."])
    check("Look ![a calm lake](lake.png) here.", ["Look here."])
    check("More at https://example.com/page?x=1. Next.", ["More at.", "Next."])
    check("Visit www.example.org for more.", ["Visit for more."])
    check("(https://example.com) Breathe.", ["Breathe."])
    check("https://example.com/only", [])
    check("<https://example.com> Breathe.", ["Breathe."])


def test_html_is_removed() -> None:
    check("Breathe<br>in <b>slowly</b>. Rest &amp; relax.", ["Breathe in slowly.", "Rest & relax."])
    check("<!-- hidden --> Visible.", ["Visible."])
    check('<span class="x">Calm</span> now.', ["Calm now."])


def test_emoji_and_pictographs_are_removed() -> None:
    check("Great job! 😊🌿✨\nKeep going 👍🏽 now.", ["Great job!", "Keep going now."])
    check("Inhale → hold → exhale.", ["Inhale hold exhale."])
    check("┌──┐\n│ Box │\n└──┘", ["Box"])
    check("Family 👨‍👩‍👧 time. Flag 🇫🇷 here.", ["Family time.", "Flag here."])
    check("It is 20° today.", ["It is 20° today."])


def test_non_latin_text_is_kept() -> None:
    check(
        "Atmen Sie ruhig. Ça va? Привет. مرحبا.",
        [
            "Atmen Sie ruhig.",
            "Ça va?",
            "Привет.",
            "مرحبا.",
        ],
    )


def test_whitespace_is_collapsed() -> None:
    check("Breathe   in\t slowly .  Then   rest.", ["Breathe in slowly.", "Then rest."])


def test_clean_for_speech_of_a_whole_text() -> None:
    assert clean_for_speech("Breathe in **slowly**. Then rest.") == "Breathe in slowly. Then rest."
    assert clean_for_speech("# Calm\n- eggs\n- milk\nDone.") == "Calm. eggs. milk. Done."
    assert clean_for_speech("Wait:\nnow") == "Wait: now"
    assert clean_for_speech("<think>x</think>") == ""
    assert clean_for_speech("```\ncode\n```") == ""
    assert clean_for_speech("😊 https://example.com") == ""
    long = "word " * 200
    assert clean_for_speech(long) == long.strip()  # never cut


# --- properties --------------------------------------------------------------------------------

FRAGMENTS = [
    "a", "B", "1", "é", " ", "  ", "\n", "\n\n", ".", "!", "?", "…", "...", ",", '"', "'", ")",
    "(", "*", "**", "_", "~~", "`", "``", "```", "````", "<think>", "</think>", "<", ">",
    "Dr", "e.g", "etc", "No", "J", "I", "3.5", "#", "-", "|", "https://x.y/z", "[t](u)", "😊",
    "。", "word", "Word", "\u2028", "\t", "&amp;", "<b>", "1. ", "\n2. ", "> ", "www.x",
]  # fmt: skip

texts = st.lists(st.sampled_from(FRAGMENTS), max_size=80).map("".join)


def cut(text: str, points: list[int]) -> list[str]:
    bounds = sorted({min(p, len(text)) for p in points})
    return [text[i:j] for i, j in zip([0, *bounds], [*bounds, len(text)], strict=True)]


@settings(max_examples=500, deadline=None)
@given(
    text=texts,
    points=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    max_length=st.sampled_from([1, 7, 20, 40, 250]),
)
def test_the_sentences_do_not_depend_on_how_the_text_is_cut(
    text: str, points: list[int], max_length: int
) -> None:
    whole = split(text, max_length)
    assert split_pieces(cut(text, points), max_length) == whole
    assert split_pieces(list(text), max_length) == whole


@settings(max_examples=300, deadline=None)
@given(text=texts | st.text(max_size=300), max_length=st.integers(min_value=1, max_value=80))
def test_no_sentence_is_empty_or_longer_than_max_length(text: str, max_length: int) -> None:
    for sentence in split(text, max_length):
        assert 0 < len(sentence) <= max_length
        assert sentence == sentence.strip()
        assert any(c.isalnum() for c in sentence)


PROSE = st.lists(
    st.sampled_from(
        ["calm", "Breathe", "in", "J", "Dr", "etc", "e.g", "3", "5", "ten", "Relax", "slowly"]
        + [" ", " ", "  ", "\n", ".", ". ", "! ", "? ", "... ", ", ", '"', "'", "…"]
    ),
    max_size=120,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=PROSE, max_length=st.integers(min_value=1, max_value=120))
def test_no_letter_or_digit_of_plain_prose_is_lost(text: str, max_length: int) -> None:
    sentences = split(text, max_length)
    assert [c for c in "".join(sentences) if c.isalnum()] == [c for c in text if c.isalnum()]
    # words are cut only when one is longer than the limit
    if all(len(word) <= max_length for word in text.split()):
        assert re.findall(r"[^\W_]+", " ".join(sentences)) == re.findall(r"[^\W_]+", text)

"""The token estimate and fitting a conversation into the context budget."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bambid.ai.context import (
    CUT_MARKER,
    MESSAGE_OVERHEAD,
    MIN_NEWEST_TOKENS,
    estimate_tokens,
    fit,
    message_tokens,
    truncate_middle,
)


def turns(*contents: str) -> list[dict[str, str]]:
    """Alternating user/assistant turns, the first a user turn."""
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]


def test_estimate_is_a_quarter_of_ascii_and_one_per_other_character() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("x" * 400) == 100
    assert estimate_tokens("日本語") == 3
    assert estimate_tokens("café") == 1 + 1  # "caf" rounds up to 1, "é" is 1
    assert message_tokens("abcd") == 1 + MESSAGE_OVERHEAD


def test_estimate_is_above_a_real_tokenizer_for_english() -> None:
    # "The quick brown fox jumps over the lazy dog." is 10 tokens for the
    # Llama 3 / GPT-4 tokenizers; the estimate must not be lower.
    assert estimate_tokens("The quick brown fox jumps over the lazy dog.") >= 10


def test_everything_fits_when_there_is_room() -> None:
    fitted = fit("be calm", turns("hi", "hello", "breathe with me"), 1000)
    assert fitted.messages == [
        {"role": "system", "content": "be calm"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "breathe with me"},
    ]
    assert fitted.dropped == 0 and not fitted.truncated
    assert fitted.tokens == sum(message_tokens(m["content"]) for m in fitted.messages)


def test_oldest_turns_go_first_and_system_and_newest_stay() -> None:
    history = turns(*[f"turn {i} " + "x" * 96 for i in range(20)], "the newest question")
    fitted = fit("S" * 200, history, 400)
    assert fitted.messages[0] == {"role": "system", "content": "S" * 200}
    assert fitted.messages[-1] == {"role": "user", "content": "the newest question"}
    assert fitted.tokens <= 400
    kept = [m["content"] for m in fitted.messages[1:-1]]
    # The kept history is the most recent part, contiguous and in order.
    assert kept == [t["content"] for t in history[-1 - len(kept) : -1]]
    assert fitted.dropped == len(history) - len(kept) - 1
    assert fitted.dropped > 0
    # The history kept starts with a user turn.
    assert fitted.messages[1]["role"] == "user"


def test_a_huge_newest_turn_is_cut_in_the_middle_not_refused() -> None:
    prompt = "BEGIN " + "y" * 40_000 + " END"
    fitted = fit("system", turns("old", "reply", prompt), 1000)
    newest = fitted.messages[-1]["content"]
    assert fitted.truncated
    assert newest.startswith("BEGIN ") and newest.endswith(" END") and CUT_MARKER in newest
    assert fitted.tokens <= 1000
    assert [m["role"] for m in fitted.messages] == ["system", "user"]
    assert fitted.dropped == 2


def test_a_budget_smaller_than_the_system_prompt_still_sends_both() -> None:
    fitted = fit("S" * 10_000, turns("z" * 10_000), 100)
    assert [m["role"] for m in fitted.messages] == ["system", "user"]
    assert estimate_tokens(fitted.messages[1]["content"]) <= MIN_NEWEST_TOKENS
    assert fitted.truncated


def test_empty_turns_are_left_out_and_same_role_turns_joined() -> None:
    history = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": ""},  # stopped before any text
        {"role": "user", "content": "second"},
    ]
    fitted = fit("s", history, 1000)
    assert fitted.messages[1:] == [{"role": "user", "content": "first\n\nsecond"}]
    assert fitted.dropped == 1


def test_no_system_prompt() -> None:
    assert fit("", turns("hi"), 100).messages == [{"role": "user", "content": "hi"}]


def test_truncate_middle_keeps_short_text() -> None:
    assert truncate_middle("short", 10) == "short"


@given(
    st.lists(st.text(min_size=0, max_size=300), min_size=1, max_size=30),
    st.integers(min_value=1, max_value=2000),
)
def test_fit_never_fails_and_keeps_system_and_newest(contents: list[str], budget: int) -> None:
    history = [*turns(*contents), {"role": "user", "content": "the question"}]
    fitted = fit("sys", history, budget)
    assert fitted.messages[0] == {"role": "system", "content": "sys"}
    last = fitted.messages[-1]
    assert last["role"] == "user" and last["content"].endswith("the question")
    if budget >= message_tokens("sys") + MIN_NEWEST_TOKENS + MESSAGE_OVERHEAD:
        assert fitted.tokens <= budget
    assert 0 <= fitted.dropped <= len(history)

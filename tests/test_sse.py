"""The incremental SSE parser: the format rules, and that no chunking of a
stream changes the events it yields."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bambid.ai.sse import Event, SSEError, SSEParser


def parse(*chunks: bytes, max_line: int = 1 << 20) -> list[Event]:
    parser = SSEParser(max_line=max_line)
    events: list[Event] = []
    for piece in chunks:
        events += parser.feed(piece)
    return events + parser.close()


def test_data_with_and_without_the_space() -> None:
    assert parse(b"data: a\n\ndata:b\n\ndata:  c\n\n") == [Event("a"), Event("b"), Event(" c")]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert parse(b"data: one\ndata:\ndata: three\n\n") == [Event("one\n\nthree")]


def test_event_names_and_ignored_fields() -> None:
    stream = b"event: error\ndata: {}\n\nid: 7\nretry: 100\nfoo: bar\ndata: x\n\n"
    assert parse(stream) == [Event("{}", "error"), Event("x")]


def test_comments_are_ignored() -> None:
    assert parse(b": ping\n\n:\ndata: x\n: inside\n\n: ping\n\n") == [Event("x")]


def test_an_event_without_data_or_name_is_not_dispatched() -> None:
    assert parse(b"\n\n\nid: 3\n\n") == []


def test_a_name_without_data_is_dispatched() -> None:
    assert parse(b"event: error\n\n") == [Event("", "error")]


def test_a_line_without_a_colon_is_a_field_name() -> None:
    assert parse(b"data\n\n") == [Event("")]


@pytest.mark.parametrize("newline", [b"\n", b"\r", b"\r\n"])
def test_every_line_end(newline: bytes) -> None:
    stream = b"data: a" + newline + b"data: b" + newline + newline + b"data: c" + newline * 2
    assert parse(stream) == [Event("a\nb"), Event("c")]


def test_cr_and_lf_split_across_feeds_is_one_line_end() -> None:
    assert parse(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [Event("a\nb")]


def test_a_lone_cr_then_lf_started_chunk() -> None:
    # CR ends the line at once; the LF that follows in the next chunk belongs to it.
    parser = SSEParser()
    assert parser.feed(b"data: a\r\n\r") == [Event("a")]
    assert parser.feed(b"\ndata: b\r\n\r\n") == [Event("b")]


def test_a_multibyte_character_split_anywhere() -> None:
    stream = "data: héllo 🌍\n\n".encode()
    for cut in range(1, len(stream)):
        assert parse(stream[:cut], stream[cut:]) == [Event("héllo 🌍")]


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert parse(b"data: \xff\xfe!\n\n") == [Event("\ufffd\ufffd!")]


def test_a_leading_byte_order_mark_is_dropped() -> None:
    bom = "\ufeff".encode()
    assert parse(bom[:1], bom[1:] + b"data: x\n\n") == [Event("x")]


def test_close_flushes_an_unterminated_event() -> None:
    assert parse(b"data: [DONE]") == [Event("[DONE]")]
    assert parse(b"data: [DONE]\n") == [Event("[DONE]")]
    parser = SSEParser()
    assert parser.feed(b"data: x\n\ndata: y") == [Event("x")]
    assert parser.close() == [Event("y")]
    assert parser.close() == []
    with pytest.raises(SSEError):
        parser.feed(b"data: z\n\n")


def test_close_with_an_incomplete_character() -> None:
    assert parse("data: é".encode()[:-1]) == [Event("\ufffd")]


def test_an_absurd_line_is_refused_even_without_a_line_end() -> None:
    parser = SSEParser(max_line=100)
    parser.feed(b"data: " + b"x" * 90)
    with pytest.raises(SSEError):
        parser.feed(b"x" * 20)
    with pytest.raises(SSEError):
        SSEParser(max_line=100).feed(b"data: " + b"x" * 200 + b"\n\n")


def test_an_absurd_event_of_many_short_lines_is_refused() -> None:
    with pytest.raises(SSEError):
        parse(b"data: xxxxxxxx\n" * 20, max_line=100)


def test_lines_up_to_the_cap_are_fine() -> None:
    assert parse(b"data:" + b"x" * 95 + b"\n\n", max_line=100) == [Event("x" * 95)]


# --- properties -------------------------------------------------------------------

_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=12)
_events = st.lists(
    st.tuples(
        st.one_of(st.none(), st.text(st.sampled_from("abcdefghé-"), min_size=1, max_size=6)),
        st.lists(_text, min_size=1, max_size=3),
        st.booleans(),  # a comment before the event
    ),
    max_size=6,
)


def _serialise(events: list[tuple[str | None, list[str], bool]], newline: str) -> bytes:
    out: list[str] = []
    for name, lines, comment in events:
        if comment:
            out.append(f": ping {name or ''}{newline}")
        if name is not None:
            out.append(f"event: {name}{newline}")
        out += [f"data: {line}{newline}" for line in lines]
        out.append(newline)
    return "".join(out).encode()


def _expected(events: list[tuple[str | None, list[str], bool]]) -> list[Event]:
    return [Event("\n".join(lines), name or "message") for name, lines, _ in events]


def _cuts(data: bytes) -> st.SearchStrategy[list[bytes]]:
    offsets = st.lists(st.integers(0, len(data)), max_size=12)
    return offsets.map(lambda o: _pieces(data, o))


def _pieces(data: bytes, offsets: list[int]) -> list[bytes]:
    cuts = sorted({0, len(data), *offsets})
    return [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]


@settings(max_examples=300, deadline=None)
@given(events=_events, newline=st.sampled_from(["\n", "\r", "\r\n"]), data=st.data())
def test_any_chunking_gives_the_same_events(
    events: list[tuple[str | None, list[str], bool]], newline: str, data: st.DataObject
) -> None:
    stream = _serialise(events, newline)
    expected = _expected(events)
    assert parse(stream) == expected
    assert parse(*data.draw(_cuts(stream))) == expected
    assert parse(*(stream[i : i + 1] for i in range(len(stream)))) == expected


@settings(max_examples=200, deadline=None)
@given(stream=st.binary(max_size=200), data=st.data())
def test_arbitrary_bytes_parse_the_same_however_cut(stream: bytes, data: st.DataObject) -> None:
    whole = parse(stream)
    assert parse(*data.draw(_cuts(stream))) == whole

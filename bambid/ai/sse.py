"""An incremental Server-Sent Events parser (the WHATWG ``text/event-stream`` format).

Feed it the response body in whatever pieces the network delivers; it returns
the events completed so far. The result never depends on where the pieces were
cut: a piece may end inside a multi-byte UTF-8 character, inside a field name,
or between the CR and the LF of a CRLF.

The rules, as the specification and openai-python read them:

- lines end at CRLF, LF or CR; a blank line ends an event;
- a line starting with ``:`` is a comment (llama.cpp's keep-alive pings);
- ``field:value``, with one optional space after the colon removed; a line
  without a colon is a field with an empty value;
- ``data`` lines are joined with ``\\n``; ``event`` names the event (default
  ``"message"``); ``id``, ``retry`` and unknown fields are ignored;
- an event with neither data nor a name is not dispatched;
- a leading byte order mark is dropped; invalid UTF-8 becomes U+FFFD.

Unlike a browser, :meth:`SSEParser.close` also dispatches an event left
without its closing blank line: a server that ends the body with
``data: [DONE]\\n`` has still said ``[DONE]``.

A line (or the data of one event) longer than ``max_line`` characters raises
:class:`SSEError` instead of growing without bound.
"""

from __future__ import annotations

import codecs
import re

import attrs

__all__ = ["DEFAULT_MAX_LINE", "Event", "SSEError", "SSEParser"]

DEFAULT_MAX_LINE = 1 << 20
_LINE_END = re.compile(r"\r\n|\r|\n")


@attrs.frozen
class Event:
    """One dispatched event: its name and its data lines joined with ``\\n``."""

    data: str
    event: str = "message"


class SSEError(ValueError):
    """The stream broke a limit (an absurdly long line) or was used after close."""


class SSEParser:
    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self._max_line = max_line
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial: list[str] = []  # the current line, not yet ended
        self._partial_length = 0
        self._after_cr = False  # the last line ended with CR: skip one LF
        self._at_start = True  # a BOM may still come
        self._data: list[str] = []
        self._data_length = 0
        self._event: str | None = None
        self._closed = False

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by ``chunk``, in order."""
        if self._closed:
            raise SSEError("feed() after close()")
        return self._text(self._decoder.decode(chunk))

    def close(self) -> list[Event]:
        """End of stream: the last line and the last event, even unterminated."""
        if self._closed:
            return []
        events = self._text(self._decoder.decode(b"", final=True))
        self._closed = True
        if self._partial:
            self._line("".join(self._partial), events)
            self._partial.clear()
        self._dispatch(events)
        return events

    def _text(self, text: str) -> list[Event]:
        events: list[Event] = []
        if not text:
            return events
        if self._at_start:
            self._at_start = False
            if text[0] == "\ufeff":
                text = text[1:]
        if self._after_cr and text:
            self._after_cr = False
            if text[0] == "\n":
                text = text[1:]
        start = 0
        for match in _LINE_END.finditer(text):
            piece = text[start : match.start()]
            if self._partial:
                self._check_length(self._partial_length + len(piece))
                self._partial.append(piece)
                piece = "".join(self._partial)
                self._partial.clear()
                self._partial_length = 0
            else:
                self._check_length(len(piece))
            self._line(piece, events)
            start = match.end()
        rest = text[start:]
        if rest:
            self._partial_length += len(rest)
            self._check_length(self._partial_length)
            self._partial.append(rest)
        elif text and text[-1] == "\r":
            # A lone CR ends the line now; if the next piece starts with LF,
            # that LF belongs to this CR and is not a blank line.
            self._after_cr = True
        return events

    def _check_length(self, length: int) -> None:
        if length > self._max_line:
            raise SSEError(f"event stream line longer than {self._max_line} characters")

    def _line(self, line: str, events: list[Event]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line[0] == ":":
            return
        field, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data_length += len(value) + 1
            if self._data_length > self._max_line:
                raise SSEError(f"event stream event longer than {self._max_line} characters")
            self._data.append(value)
        elif field == "event":
            self._event = value

    def _dispatch(self, events: list[Event]) -> None:
        if self._data or self._event is not None:
            events.append(Event("\n".join(self._data), self._event or "message"))
        self._data.clear()
        self._data_length = 0
        self._event = None

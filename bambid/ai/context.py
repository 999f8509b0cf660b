"""Fitting a conversation into the model's context window.

The server has no tokenizer for whatever model the backend runs, so it
estimates: **one token per 4 ASCII characters, plus one token per non-ASCII
character, plus** ``MESSAGE_OVERHEAD`` **tokens per message** (the role and the
separators a chat template adds). For English prose real tokenizers (Llama 3,
Qwen, Mistral, GPT-4) average 4.2-4.8 characters a token, so the estimate is a
little high; for CJK text one token a character is about right; for accented
Latin text it is high. Being high is the point: an estimate that comes out low
means a backend (Ollama above all) silently cuts the start of the prompt, the
system prompt first.

``fit`` keeps, in this order of priority: the system prompt, the newest turn
(the prompt being answered; cut in the middle, never refused, when it alone is
too big), then as many earlier turns as fit, newest first. Older turns are
dropped whole, and the history kept always starts with a user turn (chat
templates that insist on user/assistant alternation reject anything else).
Empty turns are left out and consecutive turns of one role are joined, for the
same reason. ``Fitted.dropped`` says how many stored turns were left out, so
the person can be told (``ai.start {trimmed}``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
#: The newest turn keeps at least this many tokens, whatever the system prompt costs.
MIN_NEWEST_TOKENS = 64
CUT_MARKER = "\n[…]\n"

#: One chat message as sent to the backend: ``{"role": ..., "content": ...}``.
Message = dict[str, str]


def estimate_tokens(text: str) -> int:
    """The estimated token count of ``text`` (see the module doc); 0 for ""."""
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    return math.ceil((len(text) - non_ascii) / CHARS_PER_TOKEN) + non_ascii


def message_tokens(content: str) -> int:
    """The estimated cost of one message with ``content``."""
    return estimate_tokens(content) + MESSAGE_OVERHEAD


@attrs.frozen
class Fitted:
    """What ``fit`` chose: ``messages`` (system first, then the history kept,
    oldest first, ending with the newest turn), how many stored turns were
    ``dropped``, whether the newest turn was ``truncated``, and the estimated
    ``tokens`` of it all."""

    messages: list[Message]
    dropped: int
    truncated: bool
    tokens: int


@attrs.define
class _Item:
    role: str
    content: str
    turns: int  # how many stored turns this message stands for


def _normalise(turns: Sequence[Mapping[str, str]]) -> tuple[list[_Item], int]:
    """Non-empty turns, consecutive ones of one role joined; and how many
    stored turns were empty (they count as dropped: they are not sent)."""
    items: list[_Item] = []
    empty = 0
    for turn in turns:
        content = turn["content"]
        if not content.strip():
            empty += 1
            continue
        if items and items[-1].role == turn["role"]:
            items[-1].content += "\n\n" + content
            items[-1].turns += 1
        else:
            items.append(_Item(turn["role"], content, 1))
    return items, empty


def truncate_middle(text: str, max_tokens: int) -> str:
    """``text`` if it fits in ``max_tokens``, else its start and its end around
    ``CUT_MARKER`` (the largest such cut that fits)."""
    if estimate_tokens(text) <= max_tokens:
        return text
    low, high = 0, len(text)  # characters kept: low fits, high does not
    while high - low > 1:
        middle = (low + high) // 2
        if estimate_tokens(_cut(text, middle)) <= max_tokens:
            low = middle
        else:
            high = middle
    return _cut(text, low)


def _cut(text: str, keep: int) -> str:
    head = (keep + 1) // 2
    tail = keep - head
    return text[:head] + CUT_MARKER + (text[len(text) - tail :] if tail else "")


def fit(system: str, turns: Sequence[Mapping[str, str]], budget: int) -> Fitted:
    """The messages to send for ``turns`` (oldest first; the last is the one
    being answered) under the system prompt ``system``, within ``budget``
    tokens by the estimate (see the module doc). Never fails: with a budget
    too small for the system prompt and the newest turn, both are still sent,
    the newest cut to ``MIN_NEWEST_TOKENS``."""
    items, dropped = _normalise(turns)
    system_cost = message_tokens(system) if system else 0
    remaining = budget - system_cost
    kept: list[_Item] = []
    truncated = False
    if items:
        newest = items[-1]
        room = max(remaining - MESSAGE_OVERHEAD, MIN_NEWEST_TOKENS)
        content = truncate_middle(newest.content, room)
        truncated = content != newest.content
        kept.append(_Item(newest.role, content, newest.turns))
        remaining -= message_tokens(content)
        for item in reversed(items[:-1]):
            cost = message_tokens(item.content)
            if cost > remaining:
                break
            kept.append(item)
            remaining -= cost
        kept.reverse()
        while len(kept) > 1 and kept[0].role != "user":
            kept.pop(0)
        dropped += sum(item.turns for item in items) - sum(item.turns for item in kept)
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    messages.extend({"role": item.role, "content": item.content} for item in kept)
    tokens = sum(message_tokens(m["content"]) for m in messages)
    return Fitted(messages, dropped, truncated, tokens)

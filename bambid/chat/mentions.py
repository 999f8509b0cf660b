"""``@name`` mentions in chat text.

A mention is ``@`` followed by a possible username (3-32 of ``A-Z a-z 0-9 _ -``)
that is not glued to a preceding word (``a@b.c`` is an address, not a
mention). Names of existing accounts count, and the names of guests who are
online right now (a guest has no account to look up); they are returned as
spelt by their owner, each once, in order of first appearance, at most
``MAX_MENTIONS`` per message (so a message cannot make us look up or notify
hundreds of people).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from bambid.models import Mention, username_key
from bambid.storage import Storage

MAX_MENTIONS = 10
_MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9_-]{3,32})(?![A-Za-z0-9_-])")


def candidate_mentions(text: str) -> list[tuple[str, int]]:
    """``(name, index of the @)`` for each distinct name written as ``@name``."""
    seen: set[str] = set()
    found = []
    for match in _MENTION.finditer(text):
        key = username_key(match.group(1))
        if key not in seen:
            seen.add(key)
            found.append((match.group(1), match.start()))
    return found


async def resolve_mentions(
    storage: Storage, text: str, online_guest: Callable[[str], str | None] = lambda _: None
) -> tuple[Mention, ...]:
    """The mentions in ``text`` (see the module doc). ``online_guest(name)`` is
    the spelling of a guest of that name who is online now, else None."""
    mentions = []
    for name, index in candidate_mentions(text)[:MAX_MENTIONS]:
        account = await storage.get_account(name)
        if account is not None:
            mentions.append(Mention(account.username, index))
        elif (guest := online_guest(name)) is not None:
            mentions.append(Mention(guest, index))
    return tuple(mentions)

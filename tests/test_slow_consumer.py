"""A client that stops reading while its room is flooded is closed (1008)
before the server queues more than ``limits.send_buffer_bytes`` for it; a
client that keeps reading is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted

from bambid.models import ChatMessage
from tests.chatsupport import add_person, chat_server, connect, join, next_of, tick

CAP = 65536
MESSAGE = "x" * 8000
ROUND = 4  # messages per reactor turn: 32 KB, well under Twisted's 64 KB pause mark
GIVE_UP = 200 * 1024 * 1024


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_closed_before_its_backlog_passes_the_cap(
    tmp_path: Path,
) -> None:
    async with chat_server(tmp_path, limits={"send_buffer_bytes": CAP}) as r:
        hub = r.service.chat.hub
        slow, welcome = await connect(r, await add_person(r.service.storage, "Slowpoke"))
        await join(slow)
        healthy, _ = await connect(r, await add_person(r.service.storage, "Reader"))
        await join(healthy)
        (server_side,) = [
            c
            for c in r.service.ws_factory.connections
            if c.connection_id == welcome["connection_id"]
        ]
        transport: Any = slow.transport
        transport.pauseProducing()  # the client stops reading its socket

        room = hub.rooms["lobby"]
        published = 0
        largest_backlog = 0
        while server_side.state == server_side.STATE_OPEN and published < GIVE_UP:
            for _ in range(ROUND):
                seq = room.published + 1
                hub.publish(ChatMessage(f"m{seq}", "lobby", seq, "Reader", MESSAGE, 1.0), "user")
                published += len(MESSAGE)
                # the guard's count of what piled up while the transport was full
                largest_backlog = max(largest_backlog, server_side._guard.queued_while_paused)
            for _ in range(ROUND):  # the healthy reader keeps up
                while (await healthy.next())["type"] != "chat.message":
                    pass
            await tick()

        print(f"closed after {published} bytes; largest backlog {largest_backlog}")
        assert server_side.state != server_side.STATE_OPEN, "the slow client was never closed"
        assert largest_backlog <= CAP + len(MESSAGE) + 1000
        transport.resumeProducing()  # now it reads everything, then the close frame
        code, reason = await slow.closed
        assert code == 1008
        assert reason is not None and "too slow" in reason
        # the reader is still connected and still served
        assert healthy.state == healthy.STATE_OPEN
        healthy.send_json({"type": "chat.history", "room": "lobby", "limit": 1})
        assert (await next_of(healthy, "presence.update"))["left"]["name"] == "Slowpoke"
        assert (await next_of(healthy, "chat.history"))["room"] == "lobby"

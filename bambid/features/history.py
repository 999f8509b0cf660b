"""Session history: a person's past companion conversations (level
``session_history``).

- ``ai.conversations`` and ``ai.load`` of a conversation other than the
  current one need the level: ``gated`` and ``gated_load`` wrap the
  companion's own handlers (``bambid.ai.handlers``). The current
  conversation, ``ai.history``, ``ai.reset`` and the rest stay open.
- ``ai.delete {conversation_id}`` → ``ack {conversation_id}``: the
  conversation is deleted (``not_found`` for an unknown one or someone
  else's). When it is the current one, the companion first switches to a
  new, empty conversation as ``ai.reset`` does (a reply in progress is
  stopped and stored first), and every tab gets ``ai.conversation`` after
  the ``ack``. As with ``ai.reset``, an *empty* current conversation is
  reused, so deleting one leaves the person on an empty conversation with
  the same id (stored again with its first prompt).
- ``voice.replay {conversation_id}`` → ``ack {reply_id}`` (``replay-…``):
  the companion's turns of the person's conversation (``not_found``
  otherwise), the empty ones left out, are spoken in order as one reading
  (``VoicePipeline.start_reading``): ``voice.audio``… ``voice.done`` to every
  tab; ``voice.stop`` ends it, and so does any new reading or replay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bambid.ai.companion import Companion, owner_of
from bambid.features import ack, identity_of
from bambid.identity import Identity
from bambid.models import Conversation, username_key
from bambid.profiles.gates import Gates
from bambid.storage import Storage
from bambid.voice.pipeline import VoicePipeline
from bambid.ws.dispatch import ClientError, Connection, Handler

FEATURE = "session_history"


def gated(handler: Handler, gates: Gates, feature: str) -> Handler:
    """``handler`` for people who have reached ``feature``'s level; the others
    get ``level_required``. An anonymous connection goes to ``handler``, which
    answers it (``unauthenticated``)."""

    async def gate(connection: Connection, message: Mapping[str, Any]) -> None:
        if connection.identity is not None:
            await gates.require(connection.identity, feature)
        await handler(connection, message)

    return gate


class SessionHistory:
    """``ai.delete``, ``voice.replay`` and the gate of ``ai.load`` (see the module doc)."""

    def __init__(
        self, storage: Storage, gates: Gates, companion: Companion, pipeline: VoicePipeline
    ) -> None:
        self.storage = storage
        self.gates = gates
        self.companion = companion
        self.pipeline = pipeline

    def gated_load(self, handler: Handler) -> Handler:
        """``ai.load`` (``handler``) gated, except for the current conversation."""

        async def load(connection: Connection, message: Mapping[str, Any]) -> None:
            identity = connection.identity
            wanted = message.get("conversation_id")
            if (
                identity is not None
                and isinstance(wanted, str)
                and not await self.gates.allows(identity, FEATURE)
                and wanted != await self._current_id(identity)
            ):
                await self.gates.require(identity, FEATURE)
            await handler(connection, message)

        return load

    async def _current_id(self, identity: Identity) -> str:
        listed = await self.companion.conversations(identity)  # the current one first
        return str(listed[0]["conversation_id"])

    async def _owned(self, identity: Identity, conversation_id: Any) -> Conversation:
        """The person's stored conversation; ``bad_request`` / ``not_found``."""
        if not isinstance(conversation_id, str) or not conversation_id:
            raise ClientError("bad_request", "'conversation_id' must be a string")
        found = await self.storage.get_conversation_by_id(conversation_id)
        if found is None or username_key(found.owner) != username_key(owner_of(identity)):
            raise ClientError("not_found", "there is no such conversation")
        return found

    # -- handlers ----------------------------------------------------------------------

    async def delete(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = identity_of(connection)
        await self.gates.require(identity, FEATURE)
        conversation_id = message.get("conversation_id")
        if not isinstance(conversation_id, str) or not conversation_id:
            raise ClientError("bad_request", "'conversation_id' must be a string")
        fresh: Conversation | None = None
        if conversation_id == await self._current_id(identity):
            # Stops a reply in it (stored first), then a new current one.
            fresh = await self.companion.reset(identity)
        else:
            await self._owned(identity, conversation_id)
        await self.storage.delete_conversation(conversation_id)
        ack(connection, message, conversation_id=conversation_id)
        if fresh is not None:
            self.companion.announce(identity, fresh)

    async def replay(self, connection: Connection, message: Mapping[str, Any]) -> None:
        identity = identity_of(connection)
        await self.gates.require(identity, FEATURE)
        conversation = await self._owned(identity, message.get("conversation_id"))
        texts = [t.content for t in conversation.turns if t.role == "assistant" and t.content]
        reading = await self.pipeline.start_reading(identity, "replay")
        ack(connection, message, reply_id=reading.reply_id)
        for text in texts:
            reading.say(text)
        reading.finish()

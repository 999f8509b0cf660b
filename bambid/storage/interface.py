"""The storage port: what the rest of bambid may ask of a database.

Two backends implement it (``sqlite.SQLiteStorage``, ``mongo.MongoStorage``) and
one contract suite (``tests/storage_contract.py``) holds both to the same
behaviour. Nothing outside ``bambid.storage`` knows which backend is running.

Contract, for every method:

- It is a coroutine; awaiting it never blocks the reactor thread.
- When it returns, the write is durable: an acknowledged write survives
  ``kill -9`` of the daemon (SQLite: committed with ``synchronous=FULL``;
  MongoDB: the configured write concern, default majority + journal).
- Failures raise ``StorageError`` (or a subclass); backends never leak driver
  exceptions.
- Usernames are matched case-insensitively (``models.username_key``) but stored
  and returned as first written.
- Times come back rounded to the millisecond at worst (MongoDB stores BSON
  datetimes; SQLite keeps the float exactly).
- A ``limit`` of 0 or less gives an empty list.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, TypeVar

from bambid.models import (
    Account,
    ChatMessage,
    Conversation,
    LogRecord,
    NewChatMessage,
    Profile,
    Sanction,
    Session,
)

R = TypeVar("R", bound=LogRecord)


class StorageError(Exception):
    """A storage operation failed; the message is safe to log, not to show."""


class DuplicateError(StorageError):
    """A unique key (username, token) is already taken."""


class NotFoundError(StorageError):
    """The record to update does not exist."""


class Storage(abc.ABC):
    """The database as the application sees it."""

    #: Short name shown by /health/api: "sqlite" or "mongodb".
    backend: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, create indexes, run migrations. Called once before use."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish every queued write, then release connections and threads.
        After close, every method raises ``StorageError``."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Round-trip to the database; raises ``StorageError`` when it is down."""

    # -- accounts and sessions ------------------------------------------------

    @abc.abstractmethod
    async def create_account(self, account: Account) -> None:
        """Store a new account; ``DuplicateError`` if the username key exists."""

    @abc.abstractmethod
    async def get_account(self, username: str) -> Account | None:
        """The account whose username matches case-insensitively, or None."""

    @abc.abstractmethod
    async def set_account_role(self, username: str, role: str) -> None:
        """Change a role; ``NotFoundError`` if there is no such account."""

    @abc.abstractmethod
    async def create_session(self, session: Session) -> None:
        """Store a session; ``DuplicateError`` if the token hash exists."""

    @abc.abstractmethod
    async def get_session(self, token_hash: str) -> Session | None:
        """The session with this token hash, expired or not, or None."""

    @abc.abstractmethod
    async def delete_session(self, token_hash: str) -> None:
        """Forget one session; deleting a missing one is not an error."""

    @abc.abstractmethod
    async def delete_expired_sessions(self, now: float) -> int:
        """Delete sessions with ``expires_at <= now``; return how many."""

    @abc.abstractmethod
    async def list_sessions(self, username: str) -> list[Session]:
        """Every stored session (guest or not, expired or not) whose username
        matches case-insensitively, oldest first."""

    @abc.abstractmethod
    async def delete_sessions(self, username: str) -> int:
        """Delete every session of ``username`` (logout everywhere); how many."""

    @abc.abstractmethod
    async def list_accounts(self, offset: int, limit: int, prefix: str = "") -> list[Account]:
        """Accounts ordered by username key, optionally only those whose key
        starts with ``username_key(prefix)``; paged by offset and limit."""

    @abc.abstractmethod
    async def count_accounts(self, prefix: str = "") -> int:
        """How many accounts ``list_accounts`` would page through."""

    # -- moderation -------------------------------------------------------------

    @abc.abstractmethod
    async def set_sanction(self, sanction: Sanction) -> None:
        """Store a ban or mute, replacing any of the same kind for that user."""

    @abc.abstractmethod
    async def remove_sanction(self, kind: str, username: str) -> bool:
        """Lift a ban or mute; False if there was none."""

    @abc.abstractmethod
    async def get_sanction(self, kind: str, username: str) -> Sanction | None:
        """The stored sanction of ``kind`` for ``username``, expired or not."""

    @abc.abstractmethod
    async def list_sanctions(self, kind: str) -> list[Sanction]:
        """Every stored sanction of ``kind``, newest first, expired ones included."""

    # -- profiles -------------------------------------------------------------

    @abc.abstractmethod
    async def ensure_profile(self, username: str, now: float) -> Profile:
        """The profile for ``username``, created (xp 0, times ``now``) if absent."""

    @abc.abstractmethod
    async def get_profile(self, username: str) -> Profile | None:
        """The profile for ``username`` (case-insensitive), or None."""

    @abc.abstractmethod
    async def update_profile(self, username: str, fields: Mapping[str, Any]) -> Profile:
        """Set the given fields (names from ``models.PROFILE_UPDATABLE``, values
        of the types ``Profile`` declares) and return the new profile.
        ``NotFoundError`` if absent; ``ValueError`` for an unknown field."""

    @abc.abstractmethod
    async def add_xp(self, username: str, amount: int) -> Profile:
        """Atomically add ``amount`` XP (may be negative, never below 0) and
        return the new profile. ``NotFoundError`` if absent."""

    # -- public chat ----------------------------------------------------------

    @abc.abstractmethod
    async def append_chat_message(self, message: NewChatMessage) -> ChatMessage:
        """Store a message with its room's next sequence number (1 for the first
        message of a room) and a new unique ``message_id``. Concurrent appends
        to one room get distinct, gap-free sequence numbers."""

    @abc.abstractmethod
    async def chat_history(
        self, room: str, before_seq: int | None, limit: int
    ) -> list[ChatMessage]:
        """Up to ``limit`` messages of ``room`` with ``seq < before_seq`` (all,
        when None): the latest such messages, returned oldest first."""

    @abc.abstractmethod
    async def chat_since(self, room: str, after_seq: int, limit: int) -> list[ChatMessage]:
        """Up to ``limit`` messages of ``room`` with ``seq > after_seq``, oldest first."""

    @abc.abstractmethod
    async def get_chat_message(self, message_id: str) -> ChatMessage | None:
        """The message with this id (deleted or not), or None."""

    @abc.abstractmethod
    async def delete_chat_message(self, message_id: str) -> ChatMessage | None:
        """Mark a message deleted: ``deleted`` set, text emptied, mentions and
        links cleared, seq kept. Returns the updated message, None if there is
        no such message. Deleting twice returns the already-deleted message."""

    @abc.abstractmethod
    async def last_seq(self, room: str) -> int:
        """The highest sequence number in ``room``; 0 when it is empty."""

    # -- companion conversations (session history) ----------------------------

    @abc.abstractmethod
    async def save_conversation(self, conversation: Conversation) -> None:
        """Insert or replace the conversation with ``conversation.conversation_id``."""

    @abc.abstractmethod
    async def get_conversation(self, owner: str) -> Conversation | None:
        """The current conversation of ``owner`` (the one updated last, ties
        broken by id), or None."""

    @abc.abstractmethod
    async def get_conversation_by_id(self, conversation_id: str) -> Conversation | None:
        """The conversation with this id, or None."""

    @abc.abstractmethod
    async def list_conversations(self, owner: str, limit: int) -> list[Conversation]:
        """Up to ``limit`` conversations of ``owner``, updated last first."""

    @abc.abstractmethod
    async def delete_conversations(self, owner: str) -> int:
        """Delete every conversation of ``owner``; how many."""

    # -- interaction logs -----------------------------------------------------

    @abc.abstractmethod
    async def record(self, entry: LogRecord) -> None:
        """Append an interaction record to its collection (``entry.collection``)."""

    @abc.abstractmethod
    async def list_records(self, kind: type[R], username: str, limit: int) -> list[R]:
        """Up to ``limit`` records of ``kind`` for ``username``, newest first."""

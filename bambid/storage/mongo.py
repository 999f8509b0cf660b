"""The MongoDB backend, through txmongo.

Durability is the configured write concern (``storage.write_concern``, default
``majority``, with ``storage.journal``) on every write. Every driver call has a
deadline of ``storage.timeout`` seconds; driver exceptions surface as
``StorageError`` (``DuplicateError`` for a duplicate key). The indexes in
``INDEXES`` are created by ``open()``.

Times are stored as BSON datetimes (UTC), which keep milliseconds: a time
comes back rounded to the nearest millisecond. Usernames are stored as written
plus their ``username_key`` for case-insensitive lookups.

Per-room chat sequence numbers come from the ``counters`` collection
(``$inc`` in ``find_one_and_update``), so concurrent appends, from any number
of daemons, get distinct numbers. Without multi-document transactions, a
message whose insert fails after its number was taken leaves that number
unused: a gap in the room that ``chat_history`` readers must tolerate.

Sessions written before sessions carried a ``username_key`` get one at
``open()`` (``backfill_session_keys``), so that listing and deleting a user's
sessions finds them too.

Companion conversations are keyed by ``conversation_id`` (a person has many).
Conversations written when a person had only one (no ``conversation_id``,
unique ``{owner_key: 1}`` index) are upgraded by ``open()``: the old index is
dropped (``OBSOLETE_INDEXES``) and each such conversation gets an id
(``backfill_conversation_ids``) before the unique ``{conversation_id: 1}``
index is created.

txmongo is imported only when a connection is made: importing it installs
Twisted's global reactor, which a library module must not do on import. Its
connection pool runs on that global reactor.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
from bson.binary import UuidRepresentation
from bson.codec_options import CodecOptions
from pymongo import ReturnDocument
from pymongo.errors import ConfigurationError, DuplicateKeyError, OperationFailure
from pymongo.write_concern import WriteConcern
from twisted.internet.defer import Deferred

from bambid.config import ConfigError, StorageConfig
from bambid.models import (
    PROFILE_UPDATABLE,
    SANCTION_KINDS,
    Account,
    AIInteraction,
    AudioInteraction,
    ChatMessage,
    ClickedUrl,
    Conversation,
    ConversationTurn,
    LinkRef,
    LogRecord,
    Mention,
    NewChatMessage,
    Profile,
    Sanction,
    Session,
    SocialLinks,
    UsageStats,
    UserInteraction,
    UserTagInteraction,
    new_conversation_id,
    username_key,
)
from bambid.storage.interface import (
    DuplicateError,
    NotFoundError,
    R,
    Storage,
    StorageError,
)

T = TypeVar("T")

Document = dict[str, Any]

DEFAULT_DATABASE = "bambid"

#: Documents decode with timezone-aware UTC datetimes.
CODEC_OPTIONS: CodecOptions[Document] = CodecOptions(
    document_class=dict,
    tz_aware=True,
    tzinfo=dt.UTC,
    uuid_representation=UuidRepresentation.STANDARD,
)

_DUPLICATE_KEY_CODES = (11000, 11001, 12582)

# Collection names.
ACCOUNTS = "accounts"
SESSIONS = "sessions"
PROFILES = "profiles"
CHAT_MESSAGES = "chat_messages"
COUNTERS = "counters"
CONVERSATIONS = "conversations"
SANCTIONS = "sanctions"


# --- configuration -------------------------------------------------------------


def write_concern_from_config(config: StorageConfig) -> WriteConcern:
    """``storage.write_concern`` (a number when it is digits, else a mode such as
    ``majority``) with ``storage.journal``. Unacknowledged writes (``w=0``) are
    refused: the storage contract promises durable acknowledged writes."""
    text = config.write_concern.strip()
    w: int | str = int(text) if text.isdigit() else text
    if w == 0 or w == "":
        raise ConfigError(
            "storage.write_concern",
            f"must be 'majority', a number >= 1 or a tag set name, got {config.write_concern!r}",
        )
    try:
        return WriteConcern(w=w, j=config.journal)
    except (ConfigurationError, TypeError, ValueError) as e:
        raise ConfigError("storage.write_concern", str(e)) from None


@attrs.frozen
class MongoTarget:
    """What ``storage.uri`` says beyond the hosts (which txmongo parses itself)."""

    #: The database named in the URI path, or None.
    uri_database: str | None
    username: str | None
    password: str | None
    auth_source: str
    auth_mechanism: str

    @property
    def database(self) -> str:
        return self.uri_database or DEFAULT_DATABASE


def parse_uri(uri: str) -> MongoTarget:
    """Parse a ``mongodb://`` or ``mongodb+srv://`` URI without resolving anything."""
    parts = urlsplit(uri)
    if parts.scheme not in ("mongodb", "mongodb+srv"):
        raise ConfigError(
            "storage.uri", "a MongoDB URI must start with mongodb:// or mongodb+srv://"
        )
    if not parts.netloc or parts.netloc.endswith("@"):
        raise ConfigError("storage.uri", "the MongoDB URI names no host")
    database = unquote(parts.path.lstrip("/")) or None
    options = {key.lower(): value for key, value in parse_qsl(parts.query)}
    # urlsplit looks only at the last host for these; credentials precede them all.
    userinfo = parts.netloc.rpartition("@")[0]
    username, _, password = userinfo.partition(":")
    return MongoTarget(
        uri_database=database,
        username=unquote(username) if userinfo else None,
        password=unquote(password) if userinfo else None,
        auth_source=options.get("authsource") or database or "admin",
        auth_mechanism=options.get("authmechanism", "DEFAULT"),
    )


@attrs.frozen
class MongoSettings:
    """Everything needed to connect, derived from ``StorageConfig``."""

    uri: str
    target: MongoTarget
    database: str
    pool_size: int
    write_concern: WriteConcern
    timeout: float
    codec_options: CodecOptions[Document] = CODEC_OPTIONS


@attrs.frozen
class IndexSpec:
    collection: str
    keys: tuple[tuple[str, int], ...]
    unique: bool = False

    @property
    def name(self) -> str:
        """MongoDB's default index name (``room_1_seq_1``)."""
        return "_".join(f"{field}_{direction}" for field, direction in self.keys)


LOG_COLLECTIONS: tuple[str, ...] = (
    AIInteraction.collection,
    AudioInteraction.collection,
    UserInteraction.collection,
    ClickedUrl.collection,
    UserTagInteraction.collection,
)

#: Created by ``open()``. The seed's indexes, plus what the queries here need:
#: logs are listed per user (``username_key``, case-insensitive) newest first.
INDEXES: tuple[IndexSpec, ...] = (
    IndexSpec(ACCOUNTS, (("username_key", 1),), unique=True),
    IndexSpec(SESSIONS, (("token_hash", 1),), unique=True),
    IndexSpec(SESSIONS, (("expires_at", 1),)),
    IndexSpec(SESSIONS, (("username_key", 1),)),
    IndexSpec(PROFILES, (("username_key", 1),), unique=True),
    IndexSpec(PROFILES, (("last_active", -1),)),
    IndexSpec(CHAT_MESSAGES, (("room", 1), ("seq", 1)), unique=True),
    IndexSpec(CHAT_MESSAGES, (("timestamp", -1),)),
    IndexSpec(CHAT_MESSAGES, (("username", 1),)),
    IndexSpec(AIInteraction.collection, (("timestamp", -1),)),
    IndexSpec(AIInteraction.collection, (("username", 1),)),
    *(IndexSpec(name, (("username_key", 1), ("timestamp", -1))) for name in LOG_COLLECTIONS),
    IndexSpec(CONVERSATIONS, (("conversation_id", 1),), unique=True),
    IndexSpec(CONVERSATIONS, (("owner_key", 1), ("updated_at", -1))),
    IndexSpec(SANCTIONS, (("kind", 1), ("username_key", 1)), unique=True),
)

#: Indexes of older bambid versions that ``open()`` drops when they exist: the
#: unique ``{owner_key: 1}`` of the time when a person had one conversation.
OBSOLETE_INDEXES: tuple[IndexSpec, ...] = (
    IndexSpec(CONVERSATIONS, (("owner_key", 1),), unique=True),
)

#: ``drop_index`` errors meaning there was nothing to drop: IndexNotFound,
#: NamespaceNotFound (txmongo tolerates the latter by its message already).
_NO_SUCH_INDEX_CODES = (26, 27)

#: A person's conversations, current (updated last, then greatest id) first.
CONVERSATION_ORDER: tuple[tuple[str, int], ...] = (("updated_at", -1), ("conversation_id", -1))


# --- times -----------------------------------------------------------------------

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MILLISECOND = dt.timedelta(milliseconds=1)


def to_datetime(seconds: float) -> dt.datetime:
    """POSIX seconds as an aware UTC datetime, rounded to the millisecond (BSON's
    resolution), so that the value stored is the value compared."""
    return _EPOCH + round(seconds * 1000) * _MILLISECOND


def from_datetime(value: dt.datetime) -> float:
    """A BSON datetime (naive means UTC) back to POSIX seconds."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return ((value - _EPOCH) // _MILLISECOND) / 1000


# --- records <-> documents -------------------------------------------------------


def account_to_document(account: Account) -> Document:
    return {
        "username": account.username,
        "username_key": account.key,
        "password_hash": account.password_hash,
        "role": account.role,
        "created_at": to_datetime(account.created_at),
    }


def account_from_document(doc: Mapping[str, Any]) -> Account:
    return Account(
        username=doc["username"],
        password_hash=doc["password_hash"],
        role=doc["role"],
        created_at=from_datetime(doc["created_at"]),
    )


def session_to_document(session: Session) -> Document:
    return {
        "token_hash": session.token_hash,
        "username": session.username,
        "username_key": username_key(session.username),
        "created_at": to_datetime(session.created_at),
        "expires_at": to_datetime(session.expires_at),
        "guest": session.guest,
    }


def session_from_document(doc: Mapping[str, Any]) -> Session:
    return Session(
        token_hash=doc["token_hash"],
        username=doc["username"],
        created_at=from_datetime(doc["created_at"]),
        expires_at=from_datetime(doc["expires_at"]),
        guest=bool(doc.get("guest", False)),
    )


def sanction_to_document(sanction: Sanction) -> Document:
    return {
        "kind": sanction.kind,
        "username": sanction.username,
        "username_key": username_key(sanction.username),
        "reason": sanction.reason,
        "by": sanction.by,
        "created_at": to_datetime(sanction.created_at),
        "expires_at": None if sanction.expires_at is None else to_datetime(sanction.expires_at),
    }


def sanction_from_document(doc: Mapping[str, Any]) -> Sanction:
    expires_at = doc.get("expires_at")
    return Sanction(
        kind=doc["kind"],
        username=doc["username"],
        reason=doc.get("reason", ""),
        by=doc.get("by", ""),
        created_at=from_datetime(doc["created_at"]),
        expires_at=None if expires_at is None else from_datetime(expires_at),
    )


def social_links_to_document(links: SocialLinks) -> Document:
    return {
        "twitter": links.twitter,
        "instagram": links.instagram,
        "discord": links.discord,
        "reddit": links.reddit,
        "custom": links.custom,
    }


def social_links_from_document(doc: Mapping[str, Any]) -> SocialLinks:
    return SocialLinks(
        twitter=doc.get("twitter", ""),
        instagram=doc.get("instagram", ""),
        discord=doc.get("discord", ""),
        reddit=doc.get("reddit", ""),
        custom=doc.get("custom", ""),
    )


def usage_stats_to_document(stats: UsageStats) -> Document:
    return {
        "sessions_count": stats.sessions_count,
        "total_time_spent": stats.total_time_spent,
        "triggers_activated": stats.triggers_activated,
        "messages_posted": stats.messages_posted,
    }


def usage_stats_from_document(doc: Mapping[str, Any]) -> UsageStats:
    return UsageStats(
        sessions_count=int(doc.get("sessions_count", 0)),
        total_time_spent=float(doc.get("total_time_spent", 0.0)),
        triggers_activated=int(doc.get("triggers_activated", 0)),
        messages_posted=int(doc.get("messages_posted", 0)),
    )


def profile_to_document(profile: Profile) -> Document:
    return {
        "username": profile.username,
        "username_key": username_key(profile.username),
        "created_at": to_datetime(profile.created_at),
        "last_active": to_datetime(profile.last_active),
        "xp": profile.xp,
        "display_name": profile.display_name,
        "bio": profile.bio,
        "social_links": social_links_to_document(profile.social_links),
        "likes": profile.likes,
        "loves": profile.loves,
        "profile_style": profile.profile_style,
        "visibility": profile.visibility,
        "preferences": dict(profile.preferences),
        "usage_stats": usage_stats_to_document(profile.usage_stats),
    }


def profile_from_document(doc: Mapping[str, Any]) -> Profile:
    return Profile(
        username=doc["username"],
        created_at=from_datetime(doc["created_at"]),
        last_active=from_datetime(doc["last_active"]),
        xp=int(doc.get("xp", 0)),
        display_name=doc.get("display_name", ""),
        bio=doc.get("bio", ""),
        social_links=social_links_from_document(doc.get("social_links") or {}),
        likes=int(doc.get("likes", 0)),
        loves=int(doc.get("loves", 0)),
        profile_style=doc.get("profile_style", "default"),
        visibility=doc.get("visibility", "public"),
        preferences=dict(doc.get("preferences") or {}),
        usage_stats=usage_stats_from_document(doc.get("usage_stats") or {}),
    )


_TEXT_FIELDS = ("display_name", "bio", "profile_style", "visibility")


def profile_update_document(fields: Mapping[str, Any]) -> Document:
    """The ``$set`` document for ``update_profile``; ``ValueError`` for an unknown
    field or a value that is not of the type ``Profile`` declares."""
    unknown = sorted(set(fields) - PROFILE_UPDATABLE)
    if unknown:
        raise ValueError(f"cannot update profile field(s): {', '.join(unknown)}")
    update: Document = {}
    for name, value in fields.items():
        if name in _TEXT_FIELDS:
            if not isinstance(value, str):
                raise ValueError(f"profile.{name} must be a str, got {value!r}")
            update[name] = value
        elif name == "last_active":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"profile.last_active must be a number, got {value!r}")
            update[name] = to_datetime(value)
        elif name == "social_links":
            if not isinstance(value, SocialLinks):
                raise ValueError(f"profile.social_links must be SocialLinks, got {value!r}")
            update[name] = social_links_to_document(value)
        elif name == "usage_stats":
            if not isinstance(value, UsageStats):
                raise ValueError(f"profile.usage_stats must be UsageStats, got {value!r}")
            update[name] = usage_stats_to_document(value)
        else:  # preferences
            if not isinstance(value, Mapping):
                raise ValueError(f"profile.preferences must be a mapping, got {value!r}")
            update[name] = dict(value)
    return update


def chat_message_to_document(message: ChatMessage) -> Document:
    return {
        "_id": message.message_id,
        "room": message.room,
        "seq": message.seq,
        "username": message.username,
        "username_key": username_key(message.username),
        "text": message.text,
        "timestamp": to_datetime(message.timestamp),
        "message_type": message.message_type,
        "guest": message.guest,
        "mentions": [{"username": m.username, "index": m.index} for m in message.mentions],
        "links": [{"url": link.url, "is_clean": link.is_clean} for link in message.links],
        "reply_to": message.reply_to,
        "deleted": message.deleted,
    }


def chat_message_deletion() -> Document:
    """The ``$set`` that marks a chat message deleted: seq, room, author and
    ``reply_to`` stay; text, mentions and links go."""
    return {"deleted": True, "text": "", "mentions": [], "links": []}


def chat_message_from_document(doc: Mapping[str, Any]) -> ChatMessage:
    return ChatMessage(
        message_id=doc["_id"],
        room=doc["room"],
        seq=int(doc["seq"]),
        username=doc["username"],
        text=doc["text"],
        timestamp=from_datetime(doc["timestamp"]),
        message_type=doc.get("message_type", "user"),
        guest=bool(doc.get("guest", False)),
        mentions=tuple(
            Mention(username=m["username"], index=int(m["index"])) for m in doc.get("mentions", ())
        ),
        links=tuple(
            LinkRef(url=x["url"], is_clean=bool(x["is_clean"])) for x in doc.get("links", ())
        ),
        reply_to=doc.get("reply_to"),
        deleted=bool(doc.get("deleted", False)),
    )


def conversation_to_document(conversation: Conversation) -> Document:
    return {
        "conversation_id": conversation.conversation_id,
        "owner": conversation.owner,
        "owner_key": username_key(conversation.owner),
        "title": conversation.title,
        "created_at": to_datetime(conversation.created_at),
        "updated_at": to_datetime(conversation.updated_at),
        "turns": [
            {"role": t.role, "content": t.content, "timestamp": to_datetime(t.timestamp)}
            for t in conversation.turns
        ],
        "metadata": dict(conversation.metadata),
    }


def conversation_from_document(doc: Mapping[str, Any]) -> Conversation:
    return Conversation(
        owner=doc["owner"],
        title=doc["title"],
        created_at=from_datetime(doc["created_at"]),
        updated_at=from_datetime(doc["updated_at"]),
        turns=tuple(
            ConversationTurn(
                role=t["role"], content=t["content"], timestamp=from_datetime(t["timestamp"])
            )
            for t in doc.get("turns", ())
        ),
        metadata=dict(doc.get("metadata") or {}),
        conversation_id=doc["conversation_id"],
    )


def ai_interaction_to_document(entry: AIInteraction) -> Document:
    return {
        "username": entry.username,
        "username_key": username_key(entry.username),
        "interaction_type": entry.interaction_type,
        "input_data": entry.input_data,
        "output_data": entry.output_data,
        "duration": entry.duration,
        "timestamp": to_datetime(entry.timestamp),
        "connection_id": entry.connection_id,
        "error": entry.error,
        "model": entry.model,
        "backend": entry.backend,
        "prompt_tokens": entry.prompt_tokens,
        "completion_tokens": entry.completion_tokens,
    }


def ai_interaction_from_document(doc: Mapping[str, Any]) -> AIInteraction:
    return AIInteraction(
        username=doc["username"],
        interaction_type=doc["interaction_type"],
        input_data=doc["input_data"],
        output_data=doc["output_data"],
        duration=float(doc["duration"]),
        timestamp=from_datetime(doc["timestamp"]),
        connection_id=doc.get("connection_id", ""),
        error=doc.get("error"),
        model=doc.get("model", ""),
        backend=doc.get("backend", ""),
        prompt_tokens=int(doc.get("prompt_tokens", 0)),
        completion_tokens=int(doc.get("completion_tokens", 0)),
    )


def audio_interaction_to_document(entry: AudioInteraction) -> Document:
    return {
        "username": entry.username,
        "username_key": username_key(entry.username),
        "kind": entry.kind,
        "name": entry.name,
        "timestamp": to_datetime(entry.timestamp),
        "details": dict(entry.details),
    }


def audio_interaction_from_document(doc: Mapping[str, Any]) -> AudioInteraction:
    return AudioInteraction(
        username=doc["username"],
        kind=doc["kind"],
        name=doc["name"],
        timestamp=from_datetime(doc["timestamp"]),
        details=dict(doc.get("details") or {}),
    )


def user_interaction_to_document(entry: UserInteraction) -> Document:
    return {
        "username": entry.username,
        "username_key": username_key(entry.username),
        "action": entry.action,
        "timestamp": to_datetime(entry.timestamp),
        "details": dict(entry.details),
    }


def user_interaction_from_document(doc: Mapping[str, Any]) -> UserInteraction:
    return UserInteraction(
        username=doc["username"],
        action=doc["action"],
        timestamp=from_datetime(doc["timestamp"]),
        details=dict(doc.get("details") or {}),
    )


def clicked_url_to_document(entry: ClickedUrl) -> Document:
    return {
        "username": entry.username,
        "username_key": username_key(entry.username),
        "url": entry.url,
        "timestamp": to_datetime(entry.timestamp),
        "message_id": entry.message_id,
    }


def clicked_url_from_document(doc: Mapping[str, Any]) -> ClickedUrl:
    return ClickedUrl(
        username=doc["username"],
        url=doc["url"],
        timestamp=from_datetime(doc["timestamp"]),
        message_id=doc.get("message_id"),
    )


def user_tag_interaction_to_document(entry: UserTagInteraction) -> Document:
    return {
        "username": entry.username,
        "username_key": username_key(entry.username),
        "by": entry.by,
        "room": entry.room,
        "message_id": entry.message_id,
        "timestamp": to_datetime(entry.timestamp),
    }


def user_tag_interaction_from_document(doc: Mapping[str, Any]) -> UserTagInteraction:
    return UserTagInteraction(
        username=doc["username"],
        by=doc["by"],
        room=doc["room"],
        message_id=doc["message_id"],
        timestamp=from_datetime(doc["timestamp"]),
    )


@attrs.frozen
class LogCodec:
    to_document: Callable[[Any], Document]
    from_document: Callable[[Mapping[str, Any]], LogRecord]


LOG_CODECS: dict[type[Any], LogCodec] = {
    AIInteraction: LogCodec(ai_interaction_to_document, ai_interaction_from_document),
    AudioInteraction: LogCodec(audio_interaction_to_document, audio_interaction_from_document),
    UserInteraction: LogCodec(user_interaction_to_document, user_interaction_from_document),
    ClickedUrl: LogCodec(clicked_url_to_document, clicked_url_from_document),
    UserTagInteraction: LogCodec(
        user_tag_interaction_to_document, user_tag_interaction_from_document
    ),
}


def log_to_document(entry: LogRecord) -> Document:
    return _log_codec(type(entry)).to_document(entry)


def _log_codec(kind: type[Any]) -> LogCodec:
    try:
        return LOG_CODECS[kind]
    except KeyError:
        raise ValueError(f"not a log record class: {kind!r}") from None


# --- connecting ---------------------------------------------------------------------

#: Builds ``(pool, database)``: objects with txmongo's ConnectionPool and
#: Database interfaces. Replaced in tests that run without a server.
Connect = Callable[[MongoSettings], Awaitable[tuple[Any, Any]]]


async def connect_txmongo(settings: MongoSettings) -> tuple[Any, Any]:
    """A txmongo ``ConnectionPool`` (connecting in the background) and the
    ``Database`` with our write concern and codec options."""
    from txmongo.connection import ConnectionPool
    from txmongo.database import Database

    concern = settings.write_concern.document
    pool = ConnectionPool(
        settings.uri,
        pool_size=settings.pool_size,
        # ConnectionPool reads the write concern from these keywords (or the URI),
        # not from a WriteConcern object.
        w=concern.get("w"),
        j=concern.get("j"),
        codec_options=settings.codec_options,
    )
    target = settings.target
    if target.username is not None and target.uri_database is None:
        # txmongo authenticates only when the URI path names a database.
        try:
            await pool.authenticate(
                target.auth_source, target.username, target.password or "", target.auth_mechanism
            )
        except BaseException:
            await pool.disconnect()
            raise
    database = Database(
        pool,
        settings.database,
        write_concern=settings.write_concern,
        codec_options=settings.codec_options,
    )
    return pool, database


def key_prefix_query(prefix: str) -> Document:
    """The query for documents whose ``username_key`` starts with
    ``username_key(prefix)``: a range on the index. MongoDB orders strings by
    their UTF-8 bytes, that is by code point, so every key with the prefix ``p``
    lies in ``[p, successor)``, where the successor bumps the last character of
    ``p`` that can be bumped (skipping surrogates) and drops what follows."""
    key = username_key(prefix)
    if not key:
        return {}
    bounds: Document = {"$gte": key}
    chars = list(key)
    while chars:
        code = ord(chars.pop()) + 1
        if code == 0xD800:
            code = 0xE000
        if code <= 0x10FFFF:
            bounds["$lt"] = "".join(chars) + chr(code)
            break
    return {"username_key": bounds}


def _check_sanction_kind(kind: str) -> None:
    if kind not in SANCTION_KINDS:
        raise ValueError(f"unknown sanction kind {kind!r}; expected one of {SANCTION_KINDS}")


def _sort(keys: tuple[tuple[str, int], ...]) -> Any:
    from txmongo import filter as qf

    return qf.sort(list(keys))


# --- the storage ----------------------------------------------------------------------


class MongoStorage(Storage):
    """``Storage`` on a MongoDB database.

    The database is the one named in the URI path (``bambid`` if none), unless
    ``database`` names another. ``connect`` replaces the txmongo connection
    (tests without a server).
    """

    backend = "mongodb"

    def __init__(
        self,
        config: StorageConfig,
        *,
        database: str | None = None,
        connect: Connect | None = None,
    ) -> None:
        target = parse_uri(config.uri)
        self.settings = MongoSettings(
            uri=config.uri,
            target=target,
            database=database or target.database,
            pool_size=config.pool_size,
            write_concern=write_concern_from_config(config),
            timeout=config.timeout,
        )
        self._connect = connect or connect_txmongo
        self._timeout = config.timeout
        self._pool: Any = None
        self._db: Any = None
        self._state = "new"  # new → opening → open → closing → closed
        self._inflight = 0
        self._drained: list[Deferred[None]] = []
        self._closed: list[Deferred[None]] = []

    # -- lifecycle ----------------------------------------------------------------

    async def open(self) -> None:
        if self._state != "new":
            raise StorageError(f"MongoDB storage cannot be opened: it is {self._state}")
        self._state = "opening"
        try:
            with _driver_errors("connect"):
                self._pool, self._db = await self._connect(self.settings)
            for spec in OBSOLETE_INDEXES:
                with _driver_errors(f"drop index {spec.collection}.{spec.name}"):
                    await drop_index_if_exists(self._db, spec, self._timeout)
            with _driver_errors("backfill conversation ids"):
                await backfill_conversation_ids(self._db, self._timeout)
            for spec in INDEXES:
                with _driver_errors(f"create index {spec.collection}.{spec.name}"):
                    options: dict[str, Any] = {"name": spec.name}
                    if spec.unique:
                        options["unique"] = True
                    await self._db[spec.collection].ensure_index(
                        _sort(spec.keys), timeout=self._timeout, **options
                    )
            with _driver_errors("backfill session keys"):
                await backfill_session_keys(self._db, self._timeout)
        except BaseException:
            await self._disconnect()
            self._state = "closed"
            raise
        if self._state == "opening":
            self._state = "open"

    async def close(self) -> None:
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        if self._state == "closing":
            waiter: Deferred[None] = Deferred()
            self._closed.append(waiter)
            await waiter
            return
        self._state = "closing"
        if self._inflight:
            drained: Deferred[None] = Deferred()
            self._drained.append(drained)
            await drained
        await self._disconnect()
        self._state = "closed"
        waiters, self._closed = self._closed, []
        for w in waiters:
            w.callback(None)

    async def _disconnect(self) -> None:
        pool, self._pool, self._db = self._pool, None, None
        if pool is not None:
            try:
                await pool.disconnect()
            except Exception:
                pass  # closing anyway; nothing to tell the caller

    @contextlib.contextmanager
    def _operation(self, what: str) -> Iterator[Any]:
        """One public operation: refused unless open, awaited by ``close()``,
        driver errors wrapped. Yields the database."""
        if self._state != "open":
            raise StorageError(f"MongoDB storage is {self._state}")
        self._inflight += 1
        try:
            with _driver_errors(what):
                yield self._db
        finally:
            self._inflight -= 1
            if not self._inflight and self._drained:
                waiters, self._drained = self._drained, []
                for w in waiters:
                    w.callback(None)

    async def _find(
        self,
        db: Any,
        collection: str,
        query: Document,
        sort: tuple[tuple[str, int], ...],
        limit: int,
        skip: int = 0,
    ) -> list[Document]:
        """Documents matching ``query`` in ``sort`` order; ``limit`` 0 is all."""
        cursor = db[collection].find(
            query, sort=_sort(sort), skip=skip, limit=limit, timeout=self._timeout
        )
        # A txmongo Cursor used as a Deferred fires with every document found.
        docs: list[Document] = await cursor.addCallback(list)
        return docs

    async def ping(self) -> None:
        with self._operation("ping") as db:
            await db.command("ping", timeout=self._timeout)

    # -- accounts and sessions -------------------------------------------------------

    async def create_account(self, account: Account) -> None:
        doc = account_to_document(account)
        with self._operation("create account") as db:
            await db[ACCOUNTS].insert_one(doc, timeout=self._timeout)

    async def get_account(self, username: str) -> Account | None:
        with self._operation("get account") as db:
            doc = await db[ACCOUNTS].find_one(
                {"username_key": username_key(username)}, timeout=self._timeout
            )
        return account_from_document(doc) if doc else None

    async def set_account_role(self, username: str, role: str) -> None:
        with self._operation("set account role") as db:
            result = await db[ACCOUNTS].update_one(
                {"username_key": username_key(username)},
                {"$set": {"role": role}},
                timeout=self._timeout,
            )
        if result.matched_count == 0:
            raise NotFoundError(f"no account {username!r}")

    async def create_session(self, session: Session) -> None:
        doc = session_to_document(session)
        with self._operation("create session") as db:
            await db[SESSIONS].insert_one(doc, timeout=self._timeout)

    async def get_session(self, token_hash: str) -> Session | None:
        with self._operation("get session") as db:
            doc = await db[SESSIONS].find_one({"token_hash": token_hash}, timeout=self._timeout)
        return session_from_document(doc) if doc else None

    async def delete_session(self, token_hash: str) -> None:
        with self._operation("delete session") as db:
            await db[SESSIONS].delete_one({"token_hash": token_hash}, timeout=self._timeout)

    async def delete_expired_sessions(self, now: float) -> int:
        with self._operation("delete expired sessions") as db:
            result = await db[SESSIONS].delete_many(
                {"expires_at": {"$lte": to_datetime(now)}}, timeout=self._timeout
            )
        return int(result.deleted_count)

    async def list_sessions(self, username: str) -> list[Session]:
        query: Document = {"username_key": username_key(username)}
        with self._operation("list sessions") as db:
            docs = await self._find(db, SESSIONS, query, (("created_at", 1), ("token_hash", 1)), 0)
        return [session_from_document(doc) for doc in docs]

    async def delete_sessions(self, username: str) -> int:
        with self._operation("delete sessions") as db:
            result = await db[SESSIONS].delete_many(
                {"username_key": username_key(username)}, timeout=self._timeout
            )
        return int(result.deleted_count)

    async def list_accounts(self, offset: int, limit: int, prefix: str = "") -> list[Account]:
        if offset < 0:
            raise ValueError(f"offset must not be negative, got {offset}")
        if limit <= 0:
            return []
        query = key_prefix_query(prefix)
        with self._operation("list accounts") as db:
            docs = await self._find(db, ACCOUNTS, query, (("username_key", 1),), limit, offset)
        return [account_from_document(doc) for doc in docs]

    async def count_accounts(self, prefix: str = "") -> int:
        query = key_prefix_query(prefix)
        with self._operation("count accounts") as db:
            count = await db[ACCOUNTS].count_documents(query, timeout=self._timeout)
        return int(count)

    # -- moderation --------------------------------------------------------------------

    async def set_sanction(self, sanction: Sanction) -> None:
        _check_sanction_kind(sanction.kind)
        doc = sanction_to_document(sanction)
        query = {"kind": doc["kind"], "username_key": doc["username_key"]}
        with self._operation("set sanction") as db:
            for attempt in (1, 2):
                try:
                    await db[SANCTIONS].replace_one(query, doc, upsert=True, timeout=self._timeout)
                    break
                except DuplicateKeyError:
                    if attempt == 2:  # a concurrent first sanction won; replace it now
                        raise

    async def remove_sanction(self, kind: str, username: str) -> bool:
        _check_sanction_kind(kind)
        with self._operation("remove sanction") as db:
            result = await db[SANCTIONS].delete_one(
                {"kind": kind, "username_key": username_key(username)}, timeout=self._timeout
            )
        return int(result.deleted_count) > 0

    async def get_sanction(self, kind: str, username: str) -> Sanction | None:
        _check_sanction_kind(kind)
        with self._operation("get sanction") as db:
            doc = await db[SANCTIONS].find_one(
                {"kind": kind, "username_key": username_key(username)}, timeout=self._timeout
            )
        return sanction_from_document(doc) if doc else None

    async def list_sanctions(self, kind: str) -> list[Sanction]:
        _check_sanction_kind(kind)
        with self._operation("list sanctions") as db:
            docs = await self._find(
                db, SANCTIONS, {"kind": kind}, (("created_at", -1), ("username_key", 1)), 0
            )
        return [sanction_from_document(doc) for doc in docs]

    # -- profiles ---------------------------------------------------------------------

    async def ensure_profile(self, username: str, now: float) -> Profile:
        key = username_key(username)
        initial = profile_to_document(Profile(username=username, created_at=now, last_active=now))
        del initial["username_key"]  # the upsert takes it from the query
        with self._operation("ensure profile") as db:
            for attempt in (1, 2):
                try:
                    doc = await db[PROFILES].find_one_and_update(
                        {"username_key": key},
                        {"$setOnInsert": initial},
                        upsert=True,
                        return_document=ReturnDocument.AFTER,
                        timeout=self._timeout,
                    )
                    break
                except DuplicateKeyError:
                    if attempt == 2:  # a concurrent upsert won: it exists now
                        raise
        return profile_from_document(doc)

    async def get_profile(self, username: str) -> Profile | None:
        with self._operation("get profile") as db:
            doc = await db[PROFILES].find_one(
                {"username_key": username_key(username)}, timeout=self._timeout
            )
        return profile_from_document(doc) if doc else None

    async def update_profile(self, username: str, fields: Mapping[str, Any]) -> Profile:
        update = profile_update_document(fields)
        if not update:
            profile = await self.get_profile(username)
            if profile is None:
                raise NotFoundError(f"no profile {username!r}")
            return profile
        with self._operation("update profile") as db:
            doc = await db[PROFILES].find_one_and_update(
                {"username_key": username_key(username)},
                {"$set": update},
                return_document=ReturnDocument.AFTER,
                timeout=self._timeout,
            )
        if doc is None:
            raise NotFoundError(f"no profile {username!r}")
        return profile_from_document(doc)

    async def add_xp(self, username: str, amount: int) -> Profile:
        with self._operation("add xp") as db:
            # An update pipeline (MongoDB >= 4.2) floors the sum at 0 atomically.
            doc = await db[PROFILES].find_one_and_update(
                {"username_key": username_key(username)},
                [{"$set": {"xp": {"$max": [0, {"$add": [{"$ifNull": ["$xp", 0]}, amount]}]}}}],
                return_document=ReturnDocument.AFTER,
                timeout=self._timeout,
            )
        if doc is None:
            raise NotFoundError(f"no profile {username!r}")
        return profile_from_document(doc)

    # -- public chat -------------------------------------------------------------------

    async def append_chat_message(self, message: NewChatMessage) -> ChatMessage:
        with self._operation("append chat message") as db:
            for attempt in (1, 2):
                try:
                    counter = await db[COUNTERS].find_one_and_update(
                        {"_id": message.room},
                        {"$inc": {"seq": 1}},
                        upsert=True,
                        return_document=ReturnDocument.AFTER,
                        timeout=self._timeout,
                    )
                    break
                except DuplicateKeyError:
                    if attempt == 2:  # two first messages raced to create the counter
                        raise
            stored = ChatMessage(
                message_id=uuid.uuid4().hex,
                room=message.room,
                seq=int(counter["seq"]),
                username=message.username,
                text=message.text,
                timestamp=from_datetime(to_datetime(message.timestamp)),
                message_type=message.message_type,
                guest=message.guest,
                mentions=message.mentions,
                links=message.links,
                reply_to=message.reply_to,
            )
            await db[CHAT_MESSAGES].insert_one(
                chat_message_to_document(stored), timeout=self._timeout
            )
        return stored

    async def chat_history(
        self, room: str, before_seq: int | None, limit: int
    ) -> list[ChatMessage]:
        if limit <= 0:
            return []
        query: Document = {"room": room}
        if before_seq is not None:
            query["seq"] = {"$lt": before_seq}
        with self._operation("chat history") as db:
            docs = await self._find(db, CHAT_MESSAGES, query, (("seq", -1),), limit)
        return [chat_message_from_document(doc) for doc in reversed(docs)]

    async def chat_since(self, room: str, after_seq: int, limit: int) -> list[ChatMessage]:
        if limit <= 0:
            return []
        query: Document = {"room": room, "seq": {"$gt": after_seq}}
        with self._operation("chat since") as db:
            docs = await self._find(db, CHAT_MESSAGES, query, (("seq", 1),), limit)
        return [chat_message_from_document(doc) for doc in docs]

    async def get_chat_message(self, message_id: str) -> ChatMessage | None:
        with self._operation("get chat message") as db:
            doc = await db[CHAT_MESSAGES].find_one({"_id": message_id}, timeout=self._timeout)
        return chat_message_from_document(doc) if doc else None

    async def delete_chat_message(self, message_id: str) -> ChatMessage | None:
        with self._operation("delete chat message") as db:
            doc = await db[CHAT_MESSAGES].find_one_and_update(
                {"_id": message_id},
                {"$set": chat_message_deletion()},
                return_document=ReturnDocument.AFTER,
                timeout=self._timeout,
            )
        return chat_message_from_document(doc) if doc else None

    async def last_seq(self, room: str) -> int:
        with self._operation("last seq") as db:
            doc = await db[CHAT_MESSAGES].find_one(
                {"room": room}, sort=_sort((("seq", -1),)), timeout=self._timeout
            )
        return int(doc["seq"]) if doc else 0

    # -- companion conversations -----------------------------------------------------------

    async def save_conversation(self, conversation: Conversation) -> None:
        doc = conversation_to_document(conversation)
        query = {"conversation_id": doc["conversation_id"]}
        with self._operation("save conversation") as db:
            for attempt in (1, 2):
                try:
                    await db[CONVERSATIONS].replace_one(
                        query, doc, upsert=True, timeout=self._timeout
                    )
                    break
                except DuplicateKeyError:
                    if attempt == 2:  # a concurrent first save won; replace it now
                        raise

    async def get_conversation(self, owner: str) -> Conversation | None:
        with self._operation("get conversation") as db:
            doc = await db[CONVERSATIONS].find_one(
                {"owner_key": username_key(owner)},
                sort=_sort(CONVERSATION_ORDER),
                timeout=self._timeout,
            )
        return conversation_from_document(doc) if doc else None

    async def get_conversation_by_id(self, conversation_id: str) -> Conversation | None:
        with self._operation("get conversation by id") as db:
            doc = await db[CONVERSATIONS].find_one(
                {"conversation_id": conversation_id}, timeout=self._timeout
            )
        return conversation_from_document(doc) if doc else None

    async def list_conversations(self, owner: str, limit: int) -> list[Conversation]:
        if limit <= 0:
            return []
        query: Document = {"owner_key": username_key(owner)}
        with self._operation("list conversations") as db:
            docs = await self._find(db, CONVERSATIONS, query, CONVERSATION_ORDER, limit)
        return [conversation_from_document(doc) for doc in docs]

    async def delete_conversations(self, owner: str) -> int:
        with self._operation("delete conversations") as db:
            result = await db[CONVERSATIONS].delete_many(
                {"owner_key": username_key(owner)}, timeout=self._timeout
            )
        return int(result.deleted_count)

    # -- interaction logs ------------------------------------------------------------------

    async def record(self, entry: LogRecord) -> None:
        doc = log_to_document(entry)
        with self._operation(f"record {entry.collection}") as db:
            await db[entry.collection].insert_one(doc, timeout=self._timeout)

    async def list_records(self, kind: type[R], username: str, limit: int) -> list[R]:
        codec = _log_codec(kind)
        if limit <= 0:
            return []
        query: Document = {"username_key": username_key(username)}
        with self._operation(f"list {kind.collection}") as db:
            docs = await self._find(
                db, kind.collection, query, (("timestamp", -1), ("_id", -1)), limit
            )
        return [cast(R, codec.from_document(doc)) for doc in docs]


async def backfill_session_keys(db: Any, timeout: float) -> int:
    """Give every session stored without a ``username_key`` (written before
    sessions had one) its key; return how many usernames needed it. Idempotent:
    one ``distinct`` when there is nothing to do. MongoDB cannot casefold, so
    each username is folded here and set with one ``update_many``."""
    missing: Document = {"username_key": {"$exists": False}}
    names = await db[SESSIONS].distinct("username", missing, timeout=timeout)
    for name in names or ():
        await db[SESSIONS].update_many(
            {"username": name, **missing},
            {"$set": {"username_key": username_key(name)}},
            timeout=timeout,
        )
    return len(names or ())


async def drop_index_if_exists(db: Any, spec: IndexSpec, timeout: float) -> bool:
    """Drop the index ``spec`` names; False if there was none (or no collection)."""
    try:
        await db[spec.collection].drop_index(spec.name, timeout=timeout)
    except OperationFailure as e:
        if e.code in _NO_SUCH_INDEX_CODES:
            return False
        raise
    return True


async def backfill_conversation_ids(db: Any, timeout: float) -> int:
    """Give every conversation stored without a ``conversation_id`` (written when
    a person had one conversation) a new one; return how many. Idempotent: one
    ``distinct`` when there is nothing to do, then one ``update_one`` per
    conversation, which leaves alone one that got an id meanwhile (another
    daemon starting at the same time)."""
    missing: Document = {"conversation_id": {"$exists": False}}
    ids = await db[CONVERSATIONS].distinct("_id", missing, timeout=timeout)
    filled = 0
    for object_id in ids or ():
        result = await db[CONVERSATIONS].update_one(
            {"_id": object_id, **missing},
            {"$set": {"conversation_id": new_conversation_id()}},
            timeout=timeout,
        )
        filled += int(result.modified_count)
    return filled


@contextlib.contextmanager
def _driver_errors(what: str) -> Iterator[None]:
    """Turn whatever the driver raises into ``StorageError``/``DuplicateError``."""
    try:
        yield
    except StorageError:
        raise
    except DuplicateKeyError as e:
        raise DuplicateError(f"mongodb {what}: duplicate key") from e
    except OperationFailure as e:
        if e.code in _DUPLICATE_KEY_CODES:
            raise DuplicateError(f"mongodb {what}: duplicate key") from e
        raise StorageError(f"mongodb {what} failed: {e}") from e
    except Exception as e:
        raise StorageError(f"mongodb {what} failed: {type(e).__name__}: {e}") from e

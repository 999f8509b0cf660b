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

Profiles carry a ``display_name_key`` (the casefolded display name) for the
community search; profiles written before it get one at ``open()``
(``backfill_display_name_keys``). Likes and loves are documents of the
``reactions`` collection (unique per giver, profile and kind); each profile's
``likes``/``loves`` follow them by guarded ``$inc`` (``MongoStorage.set_reaction``
says how). Deleting a person is a sequence of single writes in a safe order
(``MongoStorage.delete_user``).

The admin analytics (``tally``, ``count_per_day``, ``profile_histogram``) are
aggregation pipelines built by ``tally_pipeline``, ``daily_pipeline`` and
``histogram_pipeline``: MongoDB counts, only the counts travel, in one batch.

txmongo is imported only when a connection is made: importing it installs
Twisted's global reactor, which a library module must not do on import. Its
connection pool runs on that global reactor.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
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
    Reaction,
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
    DAY_SECONDS,
    DELETED_KINDS,
    MAX_DAYS,
    MAX_TALLY,
    REACTION_COUNTERS,
    DuplicateError,
    NotFoundError,
    R,
    Storage,
    StorageError,
    check_daily,
    check_histogram,
    check_preference_key,
    check_profile_listing,
    check_reaction,
    check_replacement,
    check_setting_key,
    check_tally,
    check_usage_amounts,
    encode_setting,
    export_document,
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
REACTIONS = "reactions"
SETTINGS = "settings"


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
    # Profiles and progression: the community list's orders (each with its
    # tie-break by name), the search on display names (an unanchored regex
    # scans these keys rather than the documents), a person's messages for
    # export and deletion, and the reactions given (unique) and received.
    IndexSpec(PROFILES, (("xp", -1), ("username_key", 1))),
    IndexSpec(PROFILES, (("likes", -1), ("username_key", 1))),
    IndexSpec(PROFILES, (("loves", -1), ("username_key", 1))),
    IndexSpec(PROFILES, (("created_at", -1), ("username_key", 1))),
    IndexSpec(PROFILES, (("display_name_key", 1),)),
    IndexSpec(CHAT_MESSAGES, (("username_key", 1), ("timestamp", 1), ("room", 1), ("seq", 1))),
    IndexSpec(REACTIONS, (("from_key", 1), ("to_key", 1), ("kind", 1)), unique=True),
    IndexSpec(REACTIONS, (("to_key", 1), ("kind", 1))),
    # Analytics (``tally``, ``count_per_day``): every person's records of a
    # time range, with the field they are grouped or filtered by.
    IndexSpec(UserInteraction.collection, (("timestamp", 1), ("action", 1))),
    IndexSpec(AudioInteraction.collection, (("timestamp", 1), ("kind", 1), ("name", 1))),
    IndexSpec(CHAT_MESSAGES, (("timestamp", 1), ("message_type", 1))),
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
        "companion_replies": stats.companion_replies,
    }


def usage_stats_from_document(doc: Mapping[str, Any]) -> UsageStats:
    return UsageStats(
        sessions_count=int(doc.get("sessions_count", 0)),
        total_time_spent=float(doc.get("total_time_spent", 0.0)),
        triggers_activated=int(doc.get("triggers_activated", 0)),
        messages_posted=int(doc.get("messages_posted", 0)),
        companion_replies=int(doc.get("companion_replies", 0)),
    )


def profile_to_document(profile: Profile) -> Document:
    return {
        "username": profile.username,
        "username_key": username_key(profile.username),
        "created_at": to_datetime(profile.created_at),
        "last_active": to_datetime(profile.last_active),
        "xp": profile.xp,
        "display_name": profile.display_name,
        "display_name_key": username_key(profile.display_name),
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
            if name == "display_name":  # what the community search matches
                update["display_name_key"] = username_key(value)
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


# --- profiles and progression ----------------------------------------------------------

#: ``list_profiles`` orders (``models.PROFILE_SORTS``), each backed by an index.
PROFILE_ORDERS: dict[str, tuple[tuple[str, int], ...]] = {
    "xp": (("xp", -1), ("username_key", 1)),
    "likes": (("likes", -1), ("username_key", 1)),
    "loves": (("loves", -1), ("username_key", 1)),
    "joined": (("created_at", -1), ("username_key", 1)),
    "name": (("username_key", 1),),
}

#: What a regular expression gives a meaning to, outside a character class.
_REGEX_SPECIAL = frozenset("\\^$.|?*+()[]{}")


def regex_literal(text: str) -> str:
    """A regular expression (PCRE, as MongoDB's ``$regex``; Python's ``re``
    reads it the same) matching ``text`` itself anywhere: metacharacters are
    escaped, NUL (which a ``$regex`` string must not hold) is written ``\\x00``."""
    return "".join("\\x00" if c == "\x00" else "\\" + c if c in _REGEX_SPECIAL else c for c in text)


def profile_filter(query: str, public_only: bool) -> Document:
    """The filter of ``list_profiles`` and ``count_profiles``: the casefolded
    query within ``username_key`` or ``display_name_key``, public ones only."""
    conditions: Document = {}
    if public_only:
        conditions["visibility"] = {"$ne": "private"}
    key = username_key(query)
    if key:
        pattern = regex_literal(key)
        conditions["$or"] = [
            {"username_key": {"$regex": pattern}},
            {"display_name_key": {"$regex": pattern}},
        ]
    return conditions


def reaction_query(from_user: str, to_user: str, kind: str) -> Document:
    """The unique key of one reaction document."""
    return {"from_key": username_key(from_user), "to_key": username_key(to_user), "kind": kind}


def reaction_from_document(doc: Mapping[str, Any]) -> Reaction:
    return Reaction(from_user=doc["from_user"], to_user=doc["to_user"], kind=doc["kind"])


#: Sanctions of a person through the unique ``{kind, username_key}`` index.
def _sanctions_of(key: str) -> Document:
    return {"kind": {"$in": list(SANCTION_KINDS)}, "username_key": key}


# --- analytics: aggregation pipelines ---------------------------------------------------

_DAY_MS = round(DAY_SECONDS * 1000)


def _is_set(path: str) -> Document:
    """1 when the field at ``path`` holds a value other than null, else 0."""
    return {"$cond": [{"$eq": [{"$ifNull": [path, None]}, None]}, 0, 1]}


#: ``Storage.tally``: collection, grouped field, extra conditions.
TALLY_QUERIES: dict[str, tuple[str, str, Document]] = {
    "user_actions": (UserInteraction.collection, "action", {}),
    "audio_kinds": (AudioInteraction.collection, "kind", {}),
    "triggers_fired": (AudioInteraction.collection, "name", {"kind": "trigger"}),
    "companion_kinds": (AIInteraction.collection, "interaction_type", {}),
}

#: Errors that are not failures (``interface.DAILY_SERIES``): a stopped
#: reply, cancelled speech.
NOT_FAILED_PATTERN = "^(stopped|cancelled)(:|$)"


def _failed(path: str) -> Document:
    """1 when the error at ``path`` (a string or null) is set and is not a
    stop or a cancellation (``NOT_FAILED_PATTERN``), else 0."""
    stop = {"$regexMatch": {"input": path, "regex": NOT_FAILED_PATTERN}}
    return {"$cond": [{"$and": [{"$eq": [_is_set(path), 1]}, {"$not": [stop]}]}, 1, 0]}


#: ``Storage.count_per_day``: collection, "failed" expression, extra conditions.
DAILY_QUERIES: dict[str, tuple[str, Any, Document]] = {
    "chat_messages": (CHAT_MESSAGES, 0, {"message_type": "user"}),
    "companion_replies": (AIInteraction.collection, _failed("$error"), {}),
    "speech": (AudioInteraction.collection, _failed("$details.error"), {"kind": "tts"}),
}

#: ``Storage.profile_histogram``: the measured value and the profiles measured.
MEASURE_QUERIES: dict[str, tuple[Any, Document]] = {
    "xp": ("$xp", {}),
    "seconds_per_session": (
        {"$divide": ["$usage_stats.total_time_spent", "$usage_stats.sessions_count"]},
        {"usage_stats.sessions_count": {"$gt": 0}},
    ),
}


def _time_range(since: float, until: float) -> Document:
    return {"timestamp": {"$gte": to_datetime(since), "$lt": to_datetime(until)}}


def tally_pipeline(tally: str, since: float, until: float, limit: int) -> list[Document]:
    """``Storage.tally`` as an aggregation: match the range, group, sort, limit."""
    check_tally(tally, since, until)
    _, field, conditions = TALLY_QUERIES[tally]
    return [
        {"$match": {**_time_range(since, until), **conditions}},
        {"$group": {"_id": f"${field}", "count": {"$sum": 1}}},
        {"$sort": {"count": -1, "_id": 1}},
        {"$limit": max(1, min(limit, MAX_TALLY))},
    ]


def daily_pipeline(series: str, start: float, days: int) -> list[Document]:
    """``Storage.count_per_day`` as an aggregation: the day of a record is
    the milliseconds since ``start`` (date minus date) over a day's."""
    check_daily(series, start, days)
    _, failed, conditions = DAILY_QUERIES[series]
    origin = to_datetime(start)
    day = {"$floor": {"$divide": [{"$subtract": ["$timestamp", origin]}, _DAY_MS]}}
    return [
        {"$match": {**_time_range(start, start + days * DAY_SECONDS), **conditions}},
        {"$group": {"_id": day, "count": {"$sum": 1}, "failed": {"$sum": failed}}},
    ]


def histogram_pipeline(measure: str, bounds: Sequence[float]) -> list[Document]:
    """``Storage.profile_histogram`` as a ``$bucket``; values below the first
    bound land in the ``"other"`` bucket, which the caller drops."""
    edges = check_histogram(measure, bounds)
    value, conditions = MEASURE_QUERIES[measure]
    bucket: Document = {
        "groupBy": value,
        "boundaries": [*edges, math.inf],
        "default": "other",
        "output": {"count": {"$sum": 1}},
    }
    return [{"$match": conditions}, {"$bucket": bucket}]


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
            with _driver_errors("backfill display name keys"):
                await backfill_display_name_keys(self._db, self._timeout)
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

    async def set_preference(self, username: str, key: str, value: Any) -> Profile:
        check_preference_key(key)  # also makes the dotted field path safe
        json.dumps(value)  # JSON-compatible values only, as on SQLite
        with self._operation("set preference") as db:
            # One $set of the nested field: other keys are never rewritten.
            doc = await db[PROFILES].find_one_and_update(
                {"username_key": username_key(username)},
                {"$set": {f"preferences.{key}": value}},
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

    # -- profiles: usage, reactions, the community, your data -------------------------------

    async def bump_usage(
        self,
        username: str,
        now: float,
        *,
        sessions: int = 0,
        seconds: float = 0.0,
        messages: int = 0,
        triggers: int = 0,
        replies: int = 0,
    ) -> None:
        check_usage_amounts((sessions, messages, triggers, replies), seconds)
        initial = profile_to_document(Profile(username=username, created_at=now, last_active=now))
        # The upsert takes username_key from the query; $inc and $set write the
        # others (a field may appear in one operator only). $inc of every
        # counter, zeros included, gives a new profile all five and an old one
        # the counters it lacks.
        for name in ("username_key", "usage_stats", "last_active"):
            del initial[name]
        update: Document = {
            "$setOnInsert": initial,
            "$set": {"last_active": to_datetime(now)},
            "$inc": {
                "usage_stats.sessions_count": sessions,
                "usage_stats.total_time_spent": float(seconds),
                "usage_stats.triggers_activated": triggers,
                "usage_stats.messages_posted": messages,
                "usage_stats.companion_replies": replies,
            },
        }
        with self._operation("bump usage") as db:
            for attempt in (1, 2):
                try:
                    await db[PROFILES].update_one(
                        {"username_key": username_key(username)},
                        update,
                        upsert=True,
                        timeout=self._timeout,
                    )
                    break
                except DuplicateKeyError:
                    if attempt == 2:  # a concurrent upsert created it: now it updates
                        raise

    async def set_reaction(
        self, from_user: str, to_user: str, kind: str, on: bool
    ) -> tuple[bool, int, int]:
        """Without transactions, the reaction document and the profile's count
        are two writes. The count stays exact under races because the ``$inc``
        is guarded by the reaction document: only the call whose own write
        changed that document moves the count, by one. Giving inserts the
        document, and the unique ``{from_key, to_key, kind}`` index lets exactly
        one of any number of concurrent inserts succeed (the others get a
        duplicate key: nothing changed, no ``$inc``); taking back deletes it,
        and only a ``delete_one`` that reports one deleted document decrements.
        So every ``+1`` is paired with one insert and every ``-1`` with the
        delete of a document that was counted; racing give/take-back pairs
        may apply their two ``$inc`` in either order, and the count may show
        one less for that moment, never a wrong final value. If the profile
        disappears between the two writes (``delete_user``), the reaction just
        inserted is deleted again and ``NotFoundError`` raised. What a crash
        of the daemon between the two writes leaves (a count one off) needs a
        transaction to rule out; SQLite has it."""
        check_reaction(from_user, to_user, kind)
        key = reaction_query(from_user, to_user, kind)
        profile_query: Document = {"username_key": key["to_key"]}
        counter = REACTION_COUNTERS[kind]
        with self._operation("set reaction") as db:
            if await db[PROFILES].find_one(profile_query, timeout=self._timeout) is None:
                raise NotFoundError(f"no profile {to_user!r}")
            if on:
                try:
                    await db[REACTIONS].insert_one(
                        {**key, "from_user": from_user, "to_user": to_user},
                        timeout=self._timeout,
                    )
                    changed = True
                except DuplicateKeyError:
                    changed = False  # given already: this call changed nothing
            else:
                result = await db[REACTIONS].delete_one(key, timeout=self._timeout)
                changed = int(result.deleted_count) == 1
            if changed:
                doc = await db[PROFILES].find_one_and_update(
                    profile_query,
                    {"$inc": {counter: 1 if on else -1}},
                    return_document=ReturnDocument.AFTER,
                    timeout=self._timeout,
                )
                if doc is None:  # deleted meanwhile: leave no reaction to it behind
                    if on:
                        await db[REACTIONS].delete_one(key, timeout=self._timeout)
                    raise NotFoundError(f"no profile {to_user!r}")
            else:
                doc = await db[PROFILES].find_one(profile_query, timeout=self._timeout)
                if doc is None:
                    raise NotFoundError(f"no profile {to_user!r}")
        return changed, int(doc.get("likes", 0)), int(doc.get("loves", 0))

    async def reactions_given(self, from_user: str, to_user: str) -> frozenset[str]:
        query: Document = {"from_key": username_key(from_user), "to_key": username_key(to_user)}
        with self._operation("reactions given") as db:
            docs = await self._find(db, REACTIONS, query, (("kind", 1),), 0)
        return frozenset(doc["kind"] for doc in docs)

    async def list_profiles(
        self, *, offset: int, limit: int, sort: str, query: str = "", public_only: bool = True
    ) -> list[Profile]:
        check_profile_listing(offset, sort)
        if limit <= 0:
            return []
        conditions = profile_filter(query, public_only)
        with self._operation("list profiles") as db:
            docs = await self._find(db, PROFILES, conditions, PROFILE_ORDERS[sort], limit, offset)
        return [profile_from_document(doc) for doc in docs]

    async def count_profiles(self, *, query: str = "", public_only: bool = True) -> int:
        conditions = profile_filter(query, public_only)
        with self._operation("count profiles") as db:
            count = await db[PROFILES].count_documents(conditions, timeout=self._timeout)
        return int(count)

    async def export_user(self, username: str) -> dict[str, Any]:
        """Read one collection after another: not a snapshot, as MongoDB
        without a transaction gives none."""
        key = username_key(username)
        mine: Document = {"username_key": key}
        newest_first = (("timestamp", -1), ("_id", -1))
        with self._operation("export user") as db:
            account = await db[ACCOUNTS].find_one(mine, timeout=self._timeout)
            profile = await db[PROFILES].find_one(mine, timeout=self._timeout)
            sessions = await self._find(
                db, SESSIONS, mine, (("created_at", 1), ("token_hash", 1)), 0
            )
            sanctions = await self._find(db, SANCTIONS, _sanctions_of(key), (("kind", 1),), 0)
            messages = await self._find(
                db, CHAT_MESSAGES, mine, (("timestamp", 1), ("room", 1), ("seq", 1)), 0
            )
            conversations = await self._find(
                db, CONVERSATIONS, {"owner_key": key}, CONVERSATION_ORDER, 0
            )
            records: dict[str, list[LogRecord]] = {}
            for kind, codec in LOG_CODECS.items():
                docs = await self._find(db, kind.collection, mine, newest_first, 0)
                records[kind.collection] = [codec.from_document(doc) for doc in docs]
            names = await tag_names_of(db, key, self._timeout)
            tags_made = (
                await self._find(
                    db,
                    UserTagInteraction.collection,
                    {"by": {"$in": names}, "username_key": {"$ne": key}},
                    newest_first,
                    0,
                )
                if names
                else []
            )
            given = await self._find(
                db, REACTIONS, {"from_key": key}, (("to_key", 1), ("kind", 1)), 0
            )
            received = await self._find(
                db, REACTIONS, {"to_key": key}, (("from_key", 1), ("kind", 1)), 0
            )
        return export_document(
            username,
            account=account_from_document(account) if account else None,
            profile=profile_from_document(profile) if profile else None,
            sessions=[session_from_document(doc) for doc in sessions],
            sanctions=[sanction_from_document(doc) for doc in sanctions],
            chat_messages=[chat_message_from_document(doc) for doc in messages],
            conversations=[conversation_from_document(doc) for doc in conversations],
            records=records,
            user_tags_made=[user_tag_interaction_from_document(doc) for doc in tags_made],
            reactions_given=[reaction_from_document(doc) for doc in given],
            reactions_received=[reaction_from_document(doc) for doc in received],
        )

    async def delete_user(self, username: str, replacement: str) -> dict[str, int]:
        """MongoDB runs multi-document transactions only on a replica set, so
        this is a sequence of single writes, each durable before the next, in
        an order chosen so that stopping after any of them is safe:

        1. ``sessions``: signed out everywhere (callers close connections too).
        2. ``chat_messages`` renamed to ``replacement``, then the ``by`` of
           other people's user tag records: their name leaves public view first.
        3. ``profiles``: the page and the community entry go.
        4. ``reactions`` received (the profile they counted on is gone), then
           those given, one by one: ``delete_one`` by ``_id``, and only when it
           deleted the document the target profile's count ``$inc`` -1 (the
           guard of ``set_reaction``, so a concurrent take-back cannot
           decrement twice).
        5. ``sanctions``, ``conversations`` and every log collection.
        6. ``accounts`` last.

        Whatever a crash leaves after step 3 (reactions, conversations, logs,
        sanctions) is shown to nobody but the person, through their own
        account. The account goes last so that the name cannot be registered
        by someone else, who would see that rest, until nothing else is left;
        the person (or an admin) runs the deletion again to complete it, which
        is safe because every step is idempotent."""
        check_replacement(username, replacement)
        key = username_key(username)
        mine: Document = {"username_key": key}
        counts: dict[str, int] = {}
        timeout = self._timeout
        with self._operation("delete user") as db:
            result = await db[SESSIONS].delete_many(mine, timeout=timeout)
            counts["sessions"] = int(result.deleted_count)

            result = await db[CHAT_MESSAGES].update_many(
                mine,
                {"$set": {"username": replacement, "username_key": username_key(replacement)}},
                timeout=timeout,
            )
            counts["chat_messages"] = int(result.matched_count)
            counts["user_tags_made"] = 0
            for name in await tag_names_of(db, key, timeout):
                result = await db[UserTagInteraction.collection].update_many(
                    {"by": name, "username_key": {"$ne": key}},
                    {"$set": {"by": replacement}},
                    timeout=timeout,
                )
                counts["user_tags_made"] += int(result.matched_count)

            result = await db[PROFILES].delete_one(mine, timeout=timeout)
            counts["profile"] = int(result.deleted_count)

            result = await db[REACTIONS].delete_many({"to_key": key}, timeout=timeout)
            counts["reactions_received"] = int(result.deleted_count)
            given = await self._find(db, REACTIONS, {"from_key": key}, (("_id", 1),), 0)
            counts["reactions_given"] = 0
            for doc in given:
                result = await db[REACTIONS].delete_one({"_id": doc["_id"]}, timeout=timeout)
                if int(result.deleted_count) == 1:
                    await db[PROFILES].update_one(
                        {"username_key": doc["to_key"]},
                        {"$inc": {REACTION_COUNTERS[doc["kind"]]: -1}},
                        timeout=timeout,
                    )
                    counts["reactions_given"] += 1

            result = await db[SANCTIONS].delete_many(_sanctions_of(key), timeout=timeout)
            counts["sanctions"] = int(result.deleted_count)
            result = await db[CONVERSATIONS].delete_many({"owner_key": key}, timeout=timeout)
            counts["conversations"] = int(result.deleted_count)
            for collection in LOG_COLLECTIONS:
                result = await db[collection].delete_many(mine, timeout=timeout)
                counts[collection] = int(result.deleted_count)

            result = await db[ACCOUNTS].delete_one(mine, timeout=timeout)
            counts["account"] = int(result.deleted_count)
        return {kind: counts[kind] for kind in DELETED_KINDS}

    # -- analytics --------------------------------------------------------------------

    async def _aggregate(
        self, what: str, collection: str, pipeline: list[Document], batch: int
    ) -> list[Document]:
        """The documents ``pipeline`` gives, in one batch of at most ``batch``
        (so that no ``getMore`` without a deadline follows)."""
        with self._operation(what) as db:
            docs: list[Document] = await db[collection].aggregate(
                pipeline, initial_batch_size=batch, timeout=self._timeout
            )
        return docs

    async def count_active_profiles(self, since: float) -> int:
        query: Document = {"last_active": {"$gte": to_datetime(since)}}
        with self._operation("count active profiles") as db:
            count = await db[PROFILES].count_documents(query, timeout=self._timeout)
        return int(count)

    async def tally(
        self, tally: str, since: float, until: float, limit: int
    ) -> list[tuple[str, int]]:
        pipeline = tally_pipeline(tally, since, until, limit)
        if limit <= 0:
            return []
        collection = TALLY_QUERIES[tally][0]
        docs = await self._aggregate(f"tally {tally}", collection, pipeline, MAX_TALLY)
        return [(doc["_id"], int(doc["count"])) for doc in docs if isinstance(doc["_id"], str)]

    async def count_per_day(self, series: str, start: float, days: int) -> list[tuple[int, int]]:
        pipeline = daily_pipeline(series, start, days)
        collection = DAILY_QUERIES[series][0]
        docs = await self._aggregate(f"count {series} per day", collection, pipeline, MAX_DAYS)
        counts = [[0, 0] for _ in range(days)]
        for doc in docs:
            # Rounding may put a record just below the end on day ``days``.
            day = counts[min(max(int(doc["_id"]), 0), days - 1)]
            day[0] += int(doc["count"])
            day[1] += int(doc["failed"])
        return [(count, failed) for count, failed in counts]

    async def profile_histogram(self, measure: str, bounds: Sequence[float]) -> list[int]:
        pipeline = histogram_pipeline(measure, bounds)
        index = {edge: i for i, edge in enumerate(check_histogram(measure, bounds))}
        docs = await self._aggregate(f"{measure} histogram", PROFILES, pipeline, len(index) + 1)
        counts = [0] * len(index)
        for doc in docs:
            if doc["_id"] != "other":
                counts[index[float(doc["_id"])]] += int(doc["count"])
        return counts

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

    async def delete_conversation(self, conversation_id: str) -> bool:
        with self._operation("delete conversation") as db:
            result = await db[CONVERSATIONS].delete_one(
                {"conversation_id": conversation_id}, timeout=self._timeout
            )
        return int(result.deleted_count) > 0

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

    # -- shared settings --------------------------------------------------------------------

    async def get_setting(self, key: str) -> Any | None:
        """``settings`` documents are ``{_id: key, value: <JSON text>}``: the
        value is kept as the same JSON text as on SQLite, so any JSON value
        (keys with dots or ``$``, integers beyond 64 bits) reads back alike."""
        check_setting_key(key)
        with self._operation("get setting") as db:
            doc = await db[SETTINGS].find_one({"_id": key}, timeout=self._timeout)
        if doc is None:
            return None
        try:
            return json.loads(doc["value"])
        except (KeyError, TypeError, ValueError) as e:
            raise StorageError(f"mongodb setting {key!r} is not stored JSON text") from e

    async def set_setting(self, key: str, value: Any) -> None:
        check_setting_key(key)
        text = None if value is None else encode_setting(value)
        with self._operation("set setting") as db:
            if text is None:
                await db[SETTINGS].delete_one({"_id": key}, timeout=self._timeout)
            else:
                await db[SETTINGS].replace_one(
                    {"_id": key}, {"_id": key, "value": text}, upsert=True, timeout=self._timeout
                )


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


async def backfill_display_name_keys(db: Any, timeout: float) -> int:
    """Give every profile stored without a ``display_name_key`` (written before
    the community search) its key; return how many display names needed it.
    Idempotent: one ``distinct`` when there is nothing to do, then one
    ``update_many`` per display name (most old profiles share ``""``)."""
    missing: Document = {"display_name_key": {"$exists": False}}
    names = await db[PROFILES].distinct("display_name", missing, timeout=timeout)
    filled = 0
    for name in names or ():
        if isinstance(name, str):
            await db[PROFILES].update_many(
                {"display_name": name, **missing},
                {"$set": {"display_name_key": username_key(name)}},
                timeout=timeout,
            )
            filled += 1
    return filled


async def tag_names_of(db: Any, key: str, timeout: float) -> list[str]:
    """The spellings of the name with ``username_key`` ``key`` found as ``by`` in
    other people's user tag records (``by`` has no key field: one ``distinct``,
    folded here, since MongoDB cannot casefold)."""
    names = await db[UserTagInteraction.collection].distinct(
        "by", {"username_key": {"$ne": key}}, timeout=timeout
    )
    return [n for n in names or () if isinstance(n, str) and username_key(n) == key]


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

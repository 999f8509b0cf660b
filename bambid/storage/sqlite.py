"""The SQLite backend: one database thread, group commit, versioned migrations.

Every database access, reads included, runs on one ``threading.Thread`` owned by
the storage object (never the reactor thread, never Twisted's shared thread
pool); the connection is created, used and closed on that thread. Callers queue
jobs and get a Deferred that fires on the reactor thread via
``reactor.callFromThread``.

Group commit: the thread takes every queued job (at most ``batch_max``) and runs
them in one transaction (``BEGIN IMMEDIATE`` … ``COMMIT`` when any of them
writes). Each job runs inside its own ``SAVEPOINT``, so a failing job rolls back
only its own changes and fails only its own Deferred. Results are delivered only
after ``COMMIT`` returned; with ``journal_mode=WAL`` and ``synchronous=FULL`` the
WAL is fsynced by then, so an acknowledged write survives ``kill -9`` and power
loss. While one batch is being committed the next one queues up, so the cost of
an fsync is shared by every write that arrived meanwhile.

If SQLite abandons the whole transaction (disk full, I/O error) or ``COMMIT``
fails, every job of that batch fails with ``StorageError``: none of them is
acknowledged.

Schema migrations are the numbered files ``migrations/NNNN_name.sql``, applied in
order, each in one transaction together with ``PRAGMA user_version = NNNN``.
Migrations may call ``bambid_username_key(text)`` (``models.username_key``) to
fill in key columns of existing rows, and ``bambid_uuid_hex()``
(``uuid.uuid4().hex``) to give existing rows new ids.
"""

from __future__ import annotations

import collections
import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

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
    username_key,
)
from bambid.storage.interface import (
    DAY_SECONDS,
    DELETED_KINDS,
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

log = Logger()

#: The migrations shipped with bambid (package data).
MIGRATIONS_DIR = Path(__file__).parent / "migrations"

_MIGRATION_NAME = re.compile(r"^(\d{4})_[A-Za-z0-9_-]+\.sql$")


# --- migrations ----------------------------------------------------------------


@attrs.frozen
class Migration:
    """One schema step: ``version`` is the number its file name starts with."""

    version: int
    name: str
    sql: str


def load_migrations(directory: Path) -> list[Migration]:
    """The migrations in ``directory``, ordered; versions must run 1, 2, 3…"""
    found: list[Migration] = []
    for path in directory.iterdir():
        match = _MIGRATION_NAME.match(path.name)
        if match:
            found.append(Migration(int(match[1]), path.name, path.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise StorageError(
                f"migrations in {directory} must be numbered 0001, 0002, … without gaps; "
                f"found {migration.name} where version {expected} was expected"
            )
    return found


def split_statements(sql: str) -> list[str]:
    """Split a migration script into single statements (triggers included)."""
    statements: list[str] = []
    pending = ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    leftover = [
        line for line in pending.splitlines() if line.strip() and not line.strip().startswith("--")
    ]
    if leftover:
        raise StorageError(f"unterminated SQL statement: {leftover[0]!r}")
    return statements


def _sql_username_key(value: Any) -> Any:
    """``bambid_username_key()`` for SQL: non-text values pass unchanged."""
    return username_key(value) if isinstance(value, str) else value


def _sql_uuid_hex() -> str:
    """``bambid_uuid_hex()`` for SQL: a new id, as ``models.new_conversation_id``."""
    return uuid.uuid4().hex


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: list[Migration]) -> list[str]:
    """Apply the migrations newer than the database's ``user_version``, each in
    its own ``BEGIN IMMEDIATE`` transaction; return the names applied. Raises
    ``StorageError`` if the database is newer than the newest migration or a
    migration fails (that migration is rolled back entirely).

    Registers ``bambid_username_key(text)`` on ``conn`` for the migrations (SQL's
    ``lower()`` folds ASCII only, ``models.username_key`` is ``str.casefold``) and
    ``bambid_uuid_hex()``, a new random id per call (``uuid.uuid4().hex``)."""
    conn.create_function("bambid_username_key", 1, _sql_username_key, deterministic=True)
    conn.create_function("bambid_uuid_hex", 0, _sql_uuid_hex)
    latest = migrations[-1].version if migrations else 0
    current = _user_version(conn)
    if current > latest:
        raise StorageError(
            f"database schema version {current} is newer than this bambid knows ({latest})"
        )
    applied: list[str] = []
    for migration in migrations:
        if migration.version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process may have migrated.
            if _user_version(conn) < migration.version:
                for statement in split_statements(migration.sql):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {migration.version:d}")
                applied.append(migration.name)
            conn.execute("COMMIT")
        except Exception as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StorageError(f"migration {migration.name} failed: {e}") from e
    return applied


# --- the database thread -----------------------------------------------------


@attrs.define
class SQLiteStats:
    """Counters kept by the database thread. Each batch updates them before its
    results are delivered, so they are current once an operation has returned."""

    #: Transactions run, one per batch (read-only batches included).
    batches: int = 0
    #: Write transactions committed (``BEGIN IMMEDIATE`` … ``COMMIT``): one fsync each.
    transactions: int = 0
    #: Jobs run, and how many of them were writes.
    jobs: int = 0
    writes: int = 0
    #: Jobs that failed on their own (rolled back to their savepoint).
    failed_jobs: int = 0
    #: Batches that failed as a whole (``BEGIN``/``COMMIT`` failed, transaction lost).
    failed_batches: int = 0
    #: The most jobs committed in one transaction.
    largest_batch: int = 0


@attrs.frozen
class _Job(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    write: bool
    deferred: Deferred[T]


_Outcome = tuple[_Job[Any], bool, Any]


class _TransactionLost(Exception):
    """SQLite rolled back the whole transaction while a job was running."""


def _storage_error(error: Exception) -> Exception:
    """The exception a caller gets for ``error`` raised by its job: driver errors
    become ``StorageError``/``DuplicateError``; the job's own exceptions pass."""
    if isinstance(error, sqlite3.IntegrityError) and getattr(error, "sqlite_errorname", "") in (
        "SQLITE_CONSTRAINT_UNIQUE",
        "SQLITE_CONSTRAINT_PRIMARYKEY",
    ):
        duplicate = DuplicateError(f"duplicate key: {error}")
        duplicate.__cause__ = error
        return duplicate
    if isinstance(error, sqlite3.Error):
        wrapped = StorageError(f"sqlite: {error}")
        wrapped.__cause__ = error
        return wrapped
    return error


# --- JSON columns ----------------------------------------------------------------


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _social_links_to_json(links: SocialLinks) -> str:
    return _json(
        {
            "twitter": links.twitter,
            "instagram": links.instagram,
            "discord": links.discord,
            "reddit": links.reddit,
            "custom": links.custom,
        }
    )


def _social_links_from_json(text: str) -> SocialLinks:
    data = json.loads(text)
    return SocialLinks(
        twitter=data.get("twitter", ""),
        instagram=data.get("instagram", ""),
        discord=data.get("discord", ""),
        reddit=data.get("reddit", ""),
        custom=data.get("custom", ""),
    )


def _usage_stats_to_json(stats: UsageStats) -> str:
    return _json(
        {
            "sessions_count": stats.sessions_count,
            "total_time_spent": stats.total_time_spent,
            "triggers_activated": stats.triggers_activated,
            "messages_posted": stats.messages_posted,
            "companion_replies": stats.companion_replies,
        }
    )


def _usage_stats_from_json(text: str) -> UsageStats:
    data = json.loads(text)
    return UsageStats(
        sessions_count=int(data.get("sessions_count", 0)),
        total_time_spent=float(data.get("total_time_spent", 0.0)),
        triggers_activated=int(data.get("triggers_activated", 0)),
        messages_posted=int(data.get("messages_posted", 0)),
        companion_replies=int(data.get("companion_replies", 0)),
    )


def _mentions_to_json(mentions: Iterable[Mention]) -> str:
    return _json([{"username": m.username, "index": m.index} for m in mentions])


def _mentions_from_json(text: str) -> tuple[Mention, ...]:
    return tuple(Mention(username=m["username"], index=int(m["index"])) for m in json.loads(text))


def _links_to_json(links: Iterable[LinkRef]) -> str:
    return _json([{"url": link.url, "is_clean": link.is_clean} for link in links])


def _links_from_json(text: str) -> tuple[LinkRef, ...]:
    return tuple(LinkRef(url=x["url"], is_clean=bool(x["is_clean"])) for x in json.loads(text))


def _turns_to_json(turns: Iterable[ConversationTurn]) -> str:
    return _json([{"role": t.role, "content": t.content, "timestamp": t.timestamp} for t in turns])


def _turns_from_json(text: str) -> tuple[ConversationTurn, ...]:
    return tuple(
        ConversationTurn(role=t["role"], content=t["content"], timestamp=float(t["timestamp"]))
        for t in json.loads(text)
    )


# --- rows <-> records ------------------------------------------------------------


def _account_from_row(row: sqlite3.Row) -> Account:
    return Account(
        username=row["username"],
        password_hash=row["password_hash"],
        role=row["role"],
        created_at=row["created_at"],
    )


def _session_from_row(row: sqlite3.Row) -> Session:
    return Session(
        token_hash=row["token_hash"],
        username=row["username"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        guest=bool(row["guest"]),
    )


def _sanction_from_row(row: sqlite3.Row) -> Sanction:
    return Sanction(
        kind=row["kind"],
        username=row["username"],
        reason=row["reason"],
        by=row["by_username"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
    )


def _profile_from_row(row: sqlite3.Row) -> Profile:
    return Profile(
        username=row["username"],
        created_at=row["created_at"],
        last_active=row["last_active"],
        xp=row["xp"],
        display_name=row["display_name"],
        bio=row["bio"],
        social_links=_social_links_from_json(row["social_links"]),
        likes=row["likes"],
        loves=row["loves"],
        profile_style=row["profile_style"],
        visibility=row["visibility"],
        preferences=json.loads(row["preferences"]),
        usage_stats=_usage_stats_from_json(row["usage_stats"]),
    )


def _chat_from_row(row: sqlite3.Row) -> ChatMessage:
    return ChatMessage(
        message_id=row["message_id"],
        room=row["room"],
        seq=row["seq"],
        username=row["username"],
        text=row["text"],
        timestamp=row["timestamp"],
        message_type=row["message_type"],
        guest=bool(row["guest"]),
        mentions=_mentions_from_json(row["mentions"]),
        links=_links_from_json(row["links"]),
        reply_to=row["reply_to"],
        deleted=bool(row["deleted"]),
    )


def _conversation_from_row(row: sqlite3.Row) -> Conversation:
    return Conversation(
        owner=row["owner"],
        title=row["title"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        turns=_turns_from_json(row["turns"]),
        metadata=json.loads(row["metadata"]),
        conversation_id=row["conversation_id"],
    )


def _conversation_to_row(conversation: Conversation) -> tuple[Any, ...]:
    """The values of ``_CONVERSATION_COLUMNS`` for ``conversation``."""
    return (
        conversation.conversation_id,
        username_key(conversation.owner),
        conversation.owner,
        conversation.title,
        conversation.created_at,
        conversation.updated_at,
        _turns_to_json(conversation.turns),
        _json(conversation.metadata),
    )


_CONVERSATION_COLUMNS = (
    "conversation_id",
    "owner_key",
    "owner",
    "title",
    "created_at",
    "updated_at",
    "turns",
    "metadata",
)

#: A person's conversations, current (updated last, then greatest id) first.
_CONVERSATION_ORDER = " ORDER BY updated_at DESC, conversation_id DESC"


@attrs.frozen
class _LogTable:
    """How one log record class is stored: its table, columns and conversions."""

    table: str
    columns: tuple[str, ...]
    to_row: Callable[[Any], tuple[Any, ...]]
    from_row: Callable[[sqlite3.Row], LogRecord]


def _ai_to_row(e: AIInteraction) -> tuple[Any, ...]:
    return (
        e.username,
        username_key(e.username),
        e.interaction_type,
        e.input_data,
        e.output_data,
        e.duration,
        e.timestamp,
        e.connection_id,
        e.error,
        e.model,
        e.backend,
        e.prompt_tokens,
        e.completion_tokens,
    )


def _ai_from_row(row: sqlite3.Row) -> AIInteraction:
    return AIInteraction(
        username=row["username"],
        interaction_type=row["interaction_type"],
        input_data=row["input_data"],
        output_data=row["output_data"],
        duration=row["duration"],
        timestamp=row["timestamp"],
        connection_id=row["connection_id"],
        error=row["error"],
        model=row["model"],
        backend=row["backend"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
    )


def _audio_to_row(e: AudioInteraction) -> tuple[Any, ...]:
    return (e.username, username_key(e.username), e.kind, e.name, e.timestamp, _json(e.details))


def _audio_from_row(row: sqlite3.Row) -> AudioInteraction:
    return AudioInteraction(
        username=row["username"],
        kind=row["kind"],
        name=row["name"],
        timestamp=row["timestamp"],
        details=json.loads(row["details"]),
    )


def _user_interaction_to_row(e: UserInteraction) -> tuple[Any, ...]:
    return (e.username, username_key(e.username), e.action, e.timestamp, _json(e.details))


def _user_interaction_from_row(row: sqlite3.Row) -> UserInteraction:
    return UserInteraction(
        username=row["username"],
        action=row["action"],
        timestamp=row["timestamp"],
        details=json.loads(row["details"]),
    )


def _clicked_url_to_row(e: ClickedUrl) -> tuple[Any, ...]:
    return (e.username, username_key(e.username), e.url, e.timestamp, e.message_id)


def _clicked_url_from_row(row: sqlite3.Row) -> ClickedUrl:
    return ClickedUrl(
        username=row["username"],
        url=row["url"],
        timestamp=row["timestamp"],
        message_id=row["message_id"],
    )


def _tag_to_row(e: UserTagInteraction) -> tuple[Any, ...]:
    return (e.username, username_key(e.username), e.by, e.room, e.message_id, e.timestamp)


def _tag_from_row(row: sqlite3.Row) -> UserTagInteraction:
    return UserTagInteraction(
        username=row["username"],
        by=row["by_username"],
        room=row["room"],
        message_id=row["message_id"],
        timestamp=row["timestamp"],
    )


_LOG_TABLES: dict[type[Any], _LogTable] = {
    AIInteraction: _LogTable(
        "ai_interactions",
        (
            "username",
            "username_key",
            "interaction_type",
            "input_data",
            "output_data",
            "duration",
            "timestamp",
            "connection_id",
            "error",
            "model",
            "backend",
            "prompt_tokens",
            "completion_tokens",
        ),
        _ai_to_row,
        _ai_from_row,
    ),
    AudioInteraction: _LogTable(
        "audio_interactions",
        ("username", "username_key", "kind", "name", "timestamp", "details"),
        _audio_to_row,
        _audio_from_row,
    ),
    UserInteraction: _LogTable(
        "user_interactions",
        ("username", "username_key", "action", "timestamp", "details"),
        _user_interaction_to_row,
        _user_interaction_from_row,
    ),
    ClickedUrl: _LogTable(
        "clicked_urls",
        ("username", "username_key", "url", "timestamp", "message_id"),
        _clicked_url_to_row,
        _clicked_url_from_row,
    ),
    UserTagInteraction: _LogTable(
        "user_tag_interactions",
        ("username", "username_key", "by_username", "room", "message_id", "timestamp"),
        _tag_to_row,
        _tag_from_row,
    ),
}


def _log_table(kind: type[Any]) -> _LogTable:
    try:
        return _LOG_TABLES[kind]
    except KeyError:
        raise ValueError(f"not a log record class: {kind!r}") from None


# --- argument checks ---------------------------------------------------------------


def _check_sanction_kind(kind: str) -> None:
    if kind not in SANCTION_KINDS:
        raise ValueError(f"unknown sanction kind {kind!r}; expected one of {SANCTION_KINDS}")


def _check_offset(offset: int) -> None:
    if offset < 0:
        raise ValueError(f"offset must not be negative, got {offset}")


def _key_prefix(prefix: str) -> tuple[str, tuple[Any, ...]]:
    """The ``WHERE`` clause (and its parameters) for accounts whose username key
    starts with ``username_key(prefix)``: a range on the key's index, then an
    exact test (``substr`` and ``length`` count characters, as Python does)."""
    key = username_key(prefix)
    if not key:
        return "", ()
    return " WHERE username_key >= ? AND substr(username_key, 1, ?) = ?", (key, len(key), key)


# --- profile updates ---------------------------------------------------------------

_TEXT_FIELDS = ("display_name", "bio", "profile_style", "visibility")


def _profile_columns(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Column values for ``update_profile``; ``ValueError`` for an unknown field
    or a value that is not of the type ``Profile`` declares."""
    unknown = sorted(set(fields) - PROFILE_UPDATABLE)
    if unknown:
        raise ValueError(f"cannot update profile field(s): {', '.join(unknown)}")
    columns: dict[str, Any] = {}
    for name, value in fields.items():
        if name in _TEXT_FIELDS:
            if not isinstance(value, str):
                raise ValueError(f"profile.{name} must be a str, got {value!r}")
            columns[name] = value
            if name == "display_name":  # what the community search matches
                columns["display_name_key"] = username_key(value)
        elif name == "last_active":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"profile.last_active must be a number, got {value!r}")
            columns[name] = float(value)
        elif name == "social_links":
            if not isinstance(value, SocialLinks):
                raise ValueError(f"profile.social_links must be SocialLinks, got {value!r}")
            columns[name] = _social_links_to_json(value)
        elif name == "usage_stats":
            if not isinstance(value, UsageStats):
                raise ValueError(f"profile.usage_stats must be UsageStats, got {value!r}")
            columns[name] = _usage_stats_to_json(value)
        else:  # preferences
            if not isinstance(value, Mapping):
                raise ValueError(f"profile.preferences must be a mapping, got {value!r}")
            columns[name] = _json(dict(value))
    return columns


# --- the community list ------------------------------------------------------------

#: ``ORDER BY`` for each of ``models.PROFILE_SORTS``; each has an index (0005).
_PROFILE_ORDER = {
    "xp": "xp DESC, username_key",
    "likes": "likes DESC, username_key",
    "loves": "loves DESC, username_key",
    "joined": "created_at DESC, username_key",
    "name": "username_key",
}


def _profile_filter(query: str, public_only: bool) -> tuple[str, tuple[Any, ...]]:
    """The ``WHERE`` clause (and its parameters) of ``list_profiles`` and
    ``count_profiles``. Both keys are casefolded, so is the query; ``instr``
    rather than ``LIKE``: it has no wildcards to escape (``%``, ``_`` and ``\\``
    match themselves) and, unlike ``LIKE``, does not stop at a NUL."""
    clauses: list[str] = []
    params: list[Any] = []
    if public_only:
        clauses.append("visibility != 'private'")
    key = username_key(query)
    if key:
        clauses.append("(instr(username_key, ?) > 0 OR instr(display_name_key, ?) > 0)")
        params += [key, key]
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


# --- analytics ------------------------------------------------------------------------
#
# Constant SQL fragments per name (never caller text): the table, what is
# counted, and the condition that selects the records.

#: ``Storage.tally``: table, grouped column, extra condition. Indexes: 0007
#: (user and audio interactions by time), 0001 (ai_interactions by time).
_TALLY_SQL = {
    "user_actions": ("user_interactions", "action", ""),
    "audio_kinds": ("audio_interactions", "kind", ""),
    "triggers_fired": ("audio_interactions", "name", " AND kind = 'trigger'"),
    "companion_kinds": ("ai_interactions", "interaction_type", ""),
}


def _failed_sql(error: str) -> str:
    """1 when ``error`` (an SQL expression) is set and is neither a stop nor
    a cancellation (``interface.DAILY_SERIES``: its code, the text before the
    first ``:``, is not ``stopped`` or ``cancelled``), else 0."""
    return (
        f"({error} IS NOT NULL AND {error} NOT IN ('stopped', 'cancelled')"
        f" AND substr({error}, 1, 8) != 'stopped:' AND substr({error}, 1, 10) != 'cancelled:')"
    )


#: ``Storage.count_per_day``: table, "failed" expression, extra condition.
_DAILY_SQL = {
    "chat_messages": ("chat_messages", "0", " AND message_type = 'user'"),
    "companion_replies": ("ai_interactions", _failed_sql("error"), ""),
    "speech": (
        "audio_interactions",
        _failed_sql("json_extract(details, '$.error')"),
        " AND kind = 'tts'",
    ),
}

#: ``Storage.profile_histogram``: the measured value and the profiles measured.
_MEASURE_SQL = {
    "xp": ("xp", ""),
    "seconds_per_session": (
        "CAST(json_extract(usage_stats, '$.total_time_spent') AS REAL)"
        " / json_extract(usage_stats, '$.sessions_count')",
        " WHERE json_extract(usage_stats, '$.sessions_count') > 0",
    ),
}


def _reaction_from_row(row: sqlite3.Row) -> Reaction:
    return Reaction(from_user=row["from_user"], to_user=row["to_user"], kind=row["kind"])


# --- the storage -------------------------------------------------------------------


class SQLiteStorage(Storage):
    """``Storage`` on one SQLite file, all access on one dedicated thread.

    ``reactor`` only needs ``callFromThread``: it is how results come back.
    ``batch_max`` bounds the jobs committed in one transaction; ``timeout`` is
    SQLite's busy timeout (seconds to wait for a lock held by another process).
    ``migrations_dir`` replaces the shipped migrations (for tests).

    Cancelling the Deferred of a queued operation only stops waiting for it:
    the operation still runs.
    """

    backend = "sqlite"

    def __init__(
        self,
        path: str | Path,
        reactor: IReactorFromThreads,
        *,
        batch_max: int = 256,
        timeout: float = 10.0,
        migrations_dir: Path | None = None,
    ) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max must be >= 1, got {batch_max}")
        self.path = Path(path)
        self.stats = SQLiteStats()
        #: Names of the migrations the last ``open()`` applied.
        self.applied_migrations: list[str] = []
        self._reactor = reactor
        self._batch_max = batch_max
        self._timeout = timeout
        self._migrations_dir = migrations_dir or MIGRATIONS_DIR
        self._state = "new"  # new → opening → open → closing → closed
        self._cond = threading.Condition()
        self._queue: collections.deque[_Job[Any]] = collections.deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._opened: Deferred[None] = Deferred()
        self._close_waiters: list[Deferred[None]] = []

    @property
    def thread_ident(self) -> int | None:
        """``threading.get_ident()`` of the database thread while it runs."""
        return self._thread.ident if self._thread is not None else None

    # -- lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        if self._state != "new":
            raise StorageError(f"SQLite storage cannot be opened: it is {self._state}")
        self._state = "opening"
        self._thread = threading.Thread(
            target=self._main, name=f"bambid-sqlite:{self.path.name}", daemon=True
        )
        self._thread.start()
        try:
            await self._opened
        except Exception as e:
            # The thread reports the failure, then that it has finished.
            finished: Deferred[None] = Deferred()
            self._close_waiters.append(finished)
            await finished
            if isinstance(e, StorageError):
                raise
            raise StorageError(f"cannot open {self.path}: {e}") from e
        if self._stopping:
            raise StorageError("SQLite storage was closed while opening")
        self._state = "open"
        for name in self.applied_migrations:
            log.info("SQLite {path}: applied migration {migration}", path=self.path, migration=name)

    async def close(self) -> None:
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        waiter: Deferred[None] = Deferred()
        self._close_waiters.append(waiter)
        if self._state in ("opening", "open"):
            self._state = "closing"
            with self._cond:
                self._stopping = True
                self._cond.notify()
        await waiter

    def _finished(self) -> None:
        """On the reactor thread, once the database thread has closed the connection."""
        if self._thread is not None:
            self._thread.join()  # it has nothing left to do but return
        self._state = "closed"
        with self._cond:
            leftover, self._queue = list(self._queue), collections.deque()
        for job in leftover:  # only if the thread died of a bug
            job.deferred.errback(Failure(StorageError("SQLite storage thread stopped")))
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- the escape hatch -------------------------------------------------------

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """Run ``fn(connection)`` on the database thread, inside the next group
        transaction and its own savepoint, and return its result once that
        transaction committed. For maintenance tools and tests; ``fn`` must not
        commit, roll back or keep the connection."""
        return await self._submit(fn, write)

    def _submit(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> Deferred[T]:
        if self._state != "open":
            raise StorageError(f"SQLite storage is {self._state}")
        deferred: Deferred[T] = Deferred()
        with self._cond:
            self._queue.append(_Job(fn, write, deferred))
            self._cond.notify()
        return deferred

    # -- on the database thread ----------------------------------------------------

    def _main(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            try:
                conn = self._connect()
            except Exception as e:
                self._reactor.callFromThread(self._opened.errback, Failure(e))
                return
            self._reactor.callFromThread(self._opened.callback, None)
            while (batch := self._take()) is not None:
                self._run_batch(conn, batch)
        finally:
            try:
                if conn is not None:
                    conn.close()
            finally:
                self._reactor.callFromThread(self._finished)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            str(self.path),
            timeout=self._timeout,
            isolation_level=None,  # transactions are explicit
            check_same_thread=True,
        )
        try:
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(f"{self.path}: cannot switch to WAL (journal_mode={mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self.applied_migrations = migrate(conn, load_migrations(self._migrations_dir))
        except BaseException:
            conn.close()
            raise
        return conn

    def _take(self) -> list[_Job[Any]] | None:
        """The next batch; None once stopping and the queue is drained."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            count = min(len(self._queue), self._batch_max)
            return [self._queue.popleft() for _ in range(count)]

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job[Any]]) -> None:
        writes = sum(1 for job in batch if job.write)
        outcomes: list[_Outcome] = []
        try:
            conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
            for job in batch:
                outcomes.append(self._run_job(conn, job))
            conn.execute("COMMIT")
        except Exception as e:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the batch fails either way
            cause = e.__cause__ if isinstance(e, _TransactionLost) else e
            error = StorageError(f"sqlite transaction failed, nothing in it was stored: {cause}")
            error.__cause__ = cause
            outcomes = [(job, False, error) for job in batch]
            self.stats.failed_batches += 1
        else:
            self.stats.transactions += 1 if writes else 0
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            self.stats.failed_jobs += sum(1 for _, ok, _ in outcomes if not ok)
        self.stats.batches += 1
        self.stats.jobs += len(batch)
        self.stats.writes += writes
        self._reactor.callFromThread(self._deliver, outcomes)

    @staticmethod
    def _run_job(conn: sqlite3.Connection, job: _Job[Any]) -> _Outcome:
        conn.execute("SAVEPOINT job")
        try:
            value = job.fn(conn)
        except Exception as e:
            if not conn.in_transaction:
                raise _TransactionLost() from e
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            return (job, False, _storage_error(e))
        conn.execute("RELEASE job")
        return (job, True, value)

    @staticmethod
    def _deliver(outcomes: list[_Outcome]) -> None:
        for job, ok, value in outcomes:
            if job.deferred.called:
                continue  # the caller cancelled it; the job ran all the same
            if ok:
                job.deferred.callback(value)
            else:
                job.deferred.errback(Failure(value))

    # -- accounts and sessions --------------------------------------------------------

    async def ping(self) -> None:
        await self._submit(lambda conn: conn.execute("SELECT 1").fetchone(), False)

    async def create_account(self, account: Account) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO accounts (username_key, username, password_hash, role, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    account.key,
                    account.username,
                    account.password_hash,
                    account.role,
                    account.created_at,
                ),
            )

        await self._submit(insert, True)

    async def get_account(self, username: str) -> Account | None:
        def select(conn: sqlite3.Connection) -> Account | None:
            row = conn.execute(
                "SELECT * FROM accounts WHERE username_key = ?", (username_key(username),)
            ).fetchone()
            return _account_from_row(row) if row else None

        return await self._submit(select, False)

    async def set_account_role(self, username: str, role: str) -> None:
        def update(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE accounts SET role = ? WHERE username_key = ?",
                (role, username_key(username)),
            )
            if cursor.rowcount == 0:
                raise NotFoundError(f"no account {username!r}")

        await self._submit(update, True)

    async def create_session(self, session: Session) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO sessions"
                " (token_hash, username, username_key, created_at, expires_at, guest)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    session.token_hash,
                    session.username,
                    username_key(session.username),
                    session.created_at,
                    session.expires_at,
                    int(session.guest),
                ),
            )

        await self._submit(insert, True)

    async def get_session(self, token_hash: str) -> Session | None:
        def select(conn: sqlite3.Connection) -> Session | None:
            row = conn.execute(
                "SELECT * FROM sessions WHERE token_hash = ?", (token_hash,)
            ).fetchone()
            return _session_from_row(row) if row else None

        return await self._submit(select, False)

    async def delete_session(self, token_hash: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

        await self._submit(delete, True)

    async def delete_expired_sessions(self, now: float) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,)).rowcount

        return await self._submit(delete, True)

    async def list_sessions(self, username: str) -> list[Session]:
        def select(conn: sqlite3.Connection) -> list[Session]:
            rows = conn.execute(
                "SELECT * FROM sessions WHERE username_key = ? ORDER BY created_at, token_hash",
                (username_key(username),),
            ).fetchall()
            return [_session_from_row(row) for row in rows]

        return await self._submit(select, False)

    async def delete_sessions(self, username: str) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM sessions WHERE username_key = ?", (username_key(username),)
            ).rowcount

        return await self._submit(delete, True)

    async def list_accounts(self, offset: int, limit: int, prefix: str = "") -> list[Account]:
        _check_offset(offset)
        if limit <= 0:
            return []
        where, params = _key_prefix(prefix)

        def select(conn: sqlite3.Connection) -> list[Account]:
            rows = conn.execute(
                f"SELECT * FROM accounts{where} ORDER BY username_key LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
            return [_account_from_row(row) for row in rows]

        return await self._submit(select, False)

    async def count_accounts(self, prefix: str = "") -> int:
        where, params = _key_prefix(prefix)

        def select(conn: sqlite3.Connection) -> int:
            (count,) = conn.execute(f"SELECT COUNT(*) FROM accounts{where}", params).fetchone()
            return int(count)

        return await self._submit(select, False)

    # -- moderation -------------------------------------------------------------------

    async def set_sanction(self, sanction: Sanction) -> None:
        _check_sanction_kind(sanction.kind)

        def upsert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO sanctions (kind, username, username_key, reason, by_username,"
                " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (kind, username_key) DO UPDATE SET username = excluded.username,"
                " reason = excluded.reason, by_username = excluded.by_username,"
                " created_at = excluded.created_at, expires_at = excluded.expires_at",
                (
                    sanction.kind,
                    sanction.username,
                    username_key(sanction.username),
                    sanction.reason,
                    sanction.by,
                    sanction.created_at,
                    sanction.expires_at,
                ),
            )

        await self._submit(upsert, True)

    async def remove_sanction(self, kind: str, username: str) -> bool:
        _check_sanction_kind(kind)

        def delete(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM sanctions WHERE kind = ? AND username_key = ?",
                (kind, username_key(username)),
            )
            return cursor.rowcount > 0

        return await self._submit(delete, True)

    async def get_sanction(self, kind: str, username: str) -> Sanction | None:
        _check_sanction_kind(kind)

        def select(conn: sqlite3.Connection) -> Sanction | None:
            row = conn.execute(
                "SELECT * FROM sanctions WHERE kind = ? AND username_key = ?",
                (kind, username_key(username)),
            ).fetchone()
            return _sanction_from_row(row) if row else None

        return await self._submit(select, False)

    async def list_sanctions(self, kind: str) -> list[Sanction]:
        _check_sanction_kind(kind)

        def select(conn: sqlite3.Connection) -> list[Sanction]:
            rows = conn.execute(
                "SELECT * FROM sanctions WHERE kind = ? ORDER BY created_at DESC, username_key",
                (kind,),
            ).fetchall()
            return [_sanction_from_row(row) for row in rows]

        return await self._submit(select, False)

    # -- profiles ---------------------------------------------------------------------

    async def ensure_profile(self, username: str, now: float) -> Profile:
        key = username_key(username)

        def upsert(conn: sqlite3.Connection) -> Profile:
            self._insert_profile(conn, username, now)
            return self._select_profile(conn, key, username)

        return await self._submit(upsert, True)

    @staticmethod
    def _insert_profile(conn: sqlite3.Connection, username: str, now: float) -> None:
        """Create the default profile of ``username`` (times ``now``) unless one exists."""
        key = username_key(username)
        defaults = Profile(username=username, created_at=now, last_active=now)
        conn.execute(
            "INSERT INTO profiles (username_key, username, created_at, last_active, xp,"
            " display_name, display_name_key, bio, social_links, likes, loves, profile_style,"
            " visibility, preferences, usage_stats)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (username_key) DO NOTHING",
            (
                key,
                defaults.username,
                defaults.created_at,
                defaults.last_active,
                defaults.xp,
                defaults.display_name,
                username_key(defaults.display_name),
                defaults.bio,
                _social_links_to_json(defaults.social_links),
                defaults.likes,
                defaults.loves,
                defaults.profile_style,
                defaults.visibility,
                _json(defaults.preferences),
                _usage_stats_to_json(defaults.usage_stats),
            ),
        )

    @staticmethod
    def _select_profile(conn: sqlite3.Connection, key: str, username: str) -> Profile:
        row = conn.execute("SELECT * FROM profiles WHERE username_key = ?", (key,)).fetchone()
        if row is None:
            raise NotFoundError(f"no profile {username!r}")
        return _profile_from_row(row)

    async def get_profile(self, username: str) -> Profile | None:
        def select(conn: sqlite3.Connection) -> Profile | None:
            row = conn.execute(
                "SELECT * FROM profiles WHERE username_key = ?", (username_key(username),)
            ).fetchone()
            return _profile_from_row(row) if row else None

        return await self._submit(select, False)

    async def update_profile(self, username: str, fields: Mapping[str, Any]) -> Profile:
        columns = _profile_columns(fields)
        key = username_key(username)

        def update(conn: sqlite3.Connection) -> Profile:
            if columns:
                # Column names come from PROFILE_UPDATABLE only (checked above).
                assignments = ", ".join(f"{name} = ?" for name in columns)
                conn.execute(
                    f"UPDATE profiles SET {assignments} WHERE username_key = ?",
                    (*columns.values(), key),
                )
            return self._select_profile(conn, key, username)

        return await self._submit(update, True)

    async def set_preference(self, username: str, key: str, value: Any) -> Profile:
        check_preference_key(key)
        encoded = _json(value)  # refuses what is not JSON before it reaches the DB thread
        profile_key = username_key(username)

        def update(conn: sqlite3.Connection) -> Profile:
            # Read and write in one job on the one DB thread: no other write
            # can come between, so other keys are never lost.
            row = conn.execute(
                "SELECT preferences FROM profiles WHERE username_key = ?", (profile_key,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no profile {username!r}")
            preferences = json.loads(row["preferences"])
            preferences[key] = json.loads(encoded)
            conn.execute(
                "UPDATE profiles SET preferences = ? WHERE username_key = ?",
                (_json(preferences), profile_key),
            )
            return self._select_profile(conn, profile_key, username)

        return await self._submit(update, True)

    async def add_xp(self, username: str, amount: int) -> Profile:
        key = username_key(username)

        def update(conn: sqlite3.Connection) -> Profile:
            conn.execute(
                "UPDATE profiles SET xp = MAX(0, xp + ?) WHERE username_key = ?", (amount, key)
            )
            return self._select_profile(conn, key, username)

        return await self._submit(update, True)

    # -- profiles: usage, reactions, the community, your data -------------------------

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
        key = username_key(username)

        def bump(conn: sqlite3.Connection) -> None:
            # Read, add, write back: atomic, because the job runs inside the
            # batch's BEGIN IMMEDIATE (the write lock) on the only writer thread.
            self._insert_profile(conn, username, now)
            (text,) = conn.execute(
                "SELECT usage_stats FROM profiles WHERE username_key = ?", (key,)
            ).fetchone()
            old = _usage_stats_from_json(text)
            new = UsageStats(
                sessions_count=old.sessions_count + sessions,
                total_time_spent=old.total_time_spent + seconds,
                triggers_activated=old.triggers_activated + triggers,
                messages_posted=old.messages_posted + messages,
                companion_replies=old.companion_replies + replies,
            )
            conn.execute(
                "UPDATE profiles SET usage_stats = ?, last_active = ? WHERE username_key = ?",
                (_usage_stats_to_json(new), float(now), key),
            )

        await self._submit(bump, True)

    async def set_reaction(
        self, from_user: str, to_user: str, kind: str, on: bool
    ) -> tuple[bool, int, int]:
        check_reaction(from_user, to_user, kind)
        from_key, to_key = username_key(from_user), username_key(to_user)
        counter = REACTION_COUNTERS[kind]  # a column name from a fixed table

        def react(conn: sqlite3.Connection) -> tuple[bool, int, int]:
            exists = conn.execute("SELECT 1 FROM profiles WHERE username_key = ?", (to_key,))
            if exists.fetchone() is None:
                raise NotFoundError(f"no profile {to_user!r}")
            if on:
                cursor = conn.execute(
                    "INSERT INTO reactions (from_key, from_user, to_key, to_user, kind)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (from_key, to_key, kind) DO NOTHING",
                    (from_key, from_user, to_key, to_user, kind),
                )
            else:
                cursor = conn.execute(
                    "DELETE FROM reactions WHERE from_key = ? AND to_key = ? AND kind = ?",
                    (from_key, to_key, kind),
                )
            changed = cursor.rowcount == 1
            if changed:  # the count moves in the transaction that moved the row
                conn.execute(
                    f"UPDATE profiles SET {counter} = {counter} + ? WHERE username_key = ?",
                    (1 if on else -1, to_key),
                )
            likes, loves = conn.execute(
                "SELECT likes, loves FROM profiles WHERE username_key = ?", (to_key,)
            ).fetchone()
            return changed, int(likes), int(loves)

        return await self._submit(react, True)

    async def reactions_given(self, from_user: str, to_user: str) -> frozenset[str]:
        def select(conn: sqlite3.Connection) -> frozenset[str]:
            rows = conn.execute(
                "SELECT kind FROM reactions WHERE from_key = ? AND to_key = ?",
                (username_key(from_user), username_key(to_user)),
            ).fetchall()
            return frozenset(row["kind"] for row in rows)

        return await self._submit(select, False)

    async def list_profiles(
        self, *, offset: int, limit: int, sort: str, query: str = "", public_only: bool = True
    ) -> list[Profile]:
        check_profile_listing(offset, sort)
        if limit <= 0:
            return []
        where, params = _profile_filter(query, public_only)
        sql = f"SELECT * FROM profiles{where} ORDER BY {_PROFILE_ORDER[sort]} LIMIT ? OFFSET ?"

        def select(conn: sqlite3.Connection) -> list[Profile]:
            rows = conn.execute(sql, (*params, limit, offset)).fetchall()
            return [_profile_from_row(row) for row in rows]

        return await self._submit(select, False)

    async def count_profiles(self, *, query: str = "", public_only: bool = True) -> int:
        where, params = _profile_filter(query, public_only)

        def select(conn: sqlite3.Connection) -> int:
            (count,) = conn.execute(f"SELECT COUNT(*) FROM profiles{where}", params).fetchone()
            return int(count)

        return await self._submit(select, False)

    async def export_user(self, username: str) -> dict[str, Any]:
        key = username_key(username)

        def collect(conn: sqlite3.Connection) -> dict[str, Any]:
            # One job, one transaction: a consistent snapshot of the person.
            def rows(sql: str, *params: Any) -> list[sqlite3.Row]:
                return conn.execute(sql, params).fetchall()

            account = rows("SELECT * FROM accounts WHERE username_key = ?", key)
            profile = rows("SELECT * FROM profiles WHERE username_key = ?", key)
            records = {
                spec.table: [
                    spec.from_row(row)
                    for row in rows(
                        f"SELECT * FROM {spec.table} WHERE username_key = ?"
                        " ORDER BY timestamp DESC, id DESC",
                        key,
                    )
                ]
                for spec in _LOG_TABLES.values()
            }
            return export_document(
                username,
                account=_account_from_row(account[0]) if account else None,
                profile=_profile_from_row(profile[0]) if profile else None,
                sessions=[
                    _session_from_row(row)
                    for row in rows(
                        "SELECT * FROM sessions WHERE username_key = ?"
                        " ORDER BY created_at, token_hash",
                        key,
                    )
                ],
                sanctions=[
                    _sanction_from_row(row)
                    for row in rows(
                        "SELECT * FROM sanctions WHERE username_key = ? ORDER BY kind", key
                    )
                ],
                chat_messages=[
                    _chat_from_row(row)
                    for row in rows(
                        "SELECT * FROM chat_messages WHERE username_key = ?"
                        " ORDER BY timestamp, room, seq",
                        key,
                    )
                ],
                conversations=[
                    _conversation_from_row(row)
                    for row in rows(
                        f"SELECT * FROM conversations WHERE owner_key = ?{_CONVERSATION_ORDER}",
                        key,
                    )
                ],
                records=records,
                user_tags_made=[
                    _tag_from_row(row)
                    for row in rows(
                        # by_username has no key column: bambid_username_key is
                        # registered on this connection by migrate(). Mentions of
                        # themselves are among their own records already.
                        "SELECT * FROM user_tag_interactions"
                        " WHERE bambid_username_key(by_username) = ? AND username_key != ?"
                        " ORDER BY timestamp DESC, id DESC",
                        key,
                        key,
                    )
                ],
                reactions_given=[
                    _reaction_from_row(row)
                    for row in rows(
                        "SELECT * FROM reactions WHERE from_key = ? ORDER BY to_key, kind", key
                    )
                ],
                reactions_received=[
                    _reaction_from_row(row)
                    for row in rows(
                        "SELECT * FROM reactions WHERE to_key = ? ORDER BY from_key, kind", key
                    )
                ],
            )

        return await self._submit(collect, False)

    async def delete_user(self, username: str, replacement: str) -> dict[str, int]:
        check_replacement(username, replacement)
        key, new_key = username_key(username), username_key(replacement)

        def delete(conn: sqlite3.Connection) -> dict[str, int]:
            # One job: everything below commits together or not at all.
            counts: dict[str, int] = {}

            def change(kind: str, sql: str, *params: Any) -> None:
                counts[kind] = conn.execute(sql, params).rowcount

            change("sessions", "DELETE FROM sessions WHERE username_key = ?", key)
            change(
                "chat_messages",
                "UPDATE chat_messages SET username = ?, username_key = ? WHERE username_key = ?",
                replacement,
                new_key,
                key,
            )
            change(
                "user_tags_made",
                "UPDATE user_tag_interactions SET by_username = ?"
                " WHERE bambid_username_key(by_username) = ? AND username_key != ?",
                replacement,
                key,
                key,
            )
            change("profile", "DELETE FROM profiles WHERE username_key = ?", key)
            change("reactions_received", "DELETE FROM reactions WHERE to_key = ?", key)
            for kind, counter in REACTION_COUNTERS.items():
                # One reaction of a kind per profile: each such profile loses one.
                conn.execute(
                    f"UPDATE profiles SET {counter} = {counter} - 1 WHERE username_key IN"
                    " (SELECT to_key FROM reactions WHERE from_key = ? AND kind = ?)",
                    (key, kind),
                )
            change("reactions_given", "DELETE FROM reactions WHERE from_key = ?", key)
            change("sanctions", "DELETE FROM sanctions WHERE username_key = ?", key)
            change("conversations", "DELETE FROM conversations WHERE owner_key = ?", key)
            for spec in _LOG_TABLES.values():
                change(spec.table, f"DELETE FROM {spec.table} WHERE username_key = ?", key)
            change("account", "DELETE FROM accounts WHERE username_key = ?", key)
            return {kind: counts[kind] for kind in DELETED_KINDS}

        return await self._submit(delete, True)

    # -- analytics ------------------------------------------------------------------

    async def count_active_profiles(self, since: float) -> int:
        def select(conn: sqlite3.Connection) -> int:
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM profiles WHERE last_active >= ?", (float(since),)
            ).fetchone()
            return int(count)

        return await self._submit(select, False)

    async def tally(
        self, tally: str, since: float, until: float, limit: int
    ) -> list[tuple[str, int]]:
        check_tally(tally, since, until)
        if limit <= 0:
            return []
        table, column, condition = _TALLY_SQL[tally]
        sql = (
            f"SELECT {column} AS value, COUNT(*) AS count FROM {table}"
            f" WHERE timestamp >= ? AND timestamp < ?{condition}"
            " GROUP BY value ORDER BY count DESC, value LIMIT ?"
        )

        def select(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            rows = conn.execute(sql, (since, until, min(limit, MAX_TALLY))).fetchall()
            return [(str(row["value"]), int(row["count"])) for row in rows]

        return await self._submit(select, False)

    async def count_per_day(self, series: str, start: float, days: int) -> list[tuple[int, int]]:
        check_daily(series, start, days)
        table, failed, condition = _DAILY_SQL[series]
        sql = (
            f"SELECT CAST((timestamp - ?) / {DAY_SECONDS!r} AS INTEGER) AS day,"
            f" COUNT(*) AS count, SUM({failed}) AS failed FROM {table}"
            f" WHERE timestamp >= ? AND timestamp < ?{condition} GROUP BY day"
        )
        end = start + days * DAY_SECONDS

        def select(conn: sqlite3.Connection) -> list[tuple[int, int]]:
            counts = [[0, 0] for _ in range(days)]
            for row in conn.execute(sql, (start, start, end)):
                # Rounding may put a record just below ``end`` on day ``days``.
                day = counts[min(max(int(row["day"]), 0), days - 1)]
                day[0] += int(row["count"])
                day[1] += int(row["failed"])
            return [(count, failed) for count, failed in counts]

        return await self._submit(select, False)

    async def profile_histogram(self, measure: str, bounds: Sequence[float]) -> list[int]:
        edges = check_histogram(measure, bounds)
        value, where = _MEASURE_SQL[measure]
        # The bucket of a value is the number of bounds it reaches (1 for the first).
        bucket = " + ".join("(value >= ?)" for _ in edges)
        sql = (
            f"SELECT {bucket} AS bucket, COUNT(*) AS count"
            f" FROM (SELECT {value} AS value FROM profiles{where})"
            " WHERE value >= ? GROUP BY bucket"
        )

        def select(conn: sqlite3.Connection) -> list[int]:
            counts = [0] * len(edges)
            for row in conn.execute(sql, (*edges, edges[0])):
                counts[int(row["bucket"]) - 1] += int(row["count"])
            return counts

        return await self._submit(select, False)

    # -- public chat ----------------------------------------------------------------

    async def append_chat_message(self, message: NewChatMessage) -> ChatMessage:
        message_id = uuid.uuid4().hex

        def insert(conn: sqlite3.Connection) -> ChatMessage:
            # Safe without further locking: this thread is the only writer.
            (seq,) = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM chat_messages WHERE room = ?",
                (message.room,),
            ).fetchone()
            conn.execute(
                "INSERT INTO chat_messages (message_id, room, seq, username, username_key, text,"
                " timestamp, message_type, guest, mentions, links, reply_to)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message_id,
                    message.room,
                    seq,
                    message.username,
                    username_key(message.username),
                    message.text,
                    message.timestamp,
                    message.message_type,
                    int(message.guest),
                    _mentions_to_json(message.mentions),
                    _links_to_json(message.links),
                    message.reply_to,
                ),
            )
            return ChatMessage(
                message_id=message_id,
                room=message.room,
                seq=seq,
                username=message.username,
                text=message.text,
                timestamp=message.timestamp,
                message_type=message.message_type,
                guest=message.guest,
                mentions=message.mentions,
                links=message.links,
                reply_to=message.reply_to,
            )

        return await self._submit(insert, True)

    async def chat_history(
        self, room: str, before_seq: int | None, limit: int
    ) -> list[ChatMessage]:
        if limit <= 0:
            return []

        def select(conn: sqlite3.Connection) -> list[ChatMessage]:
            if before_seq is None:
                rows = conn.execute(
                    "SELECT * FROM chat_messages WHERE room = ? ORDER BY seq DESC LIMIT ?",
                    (room, limit),
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT * FROM chat_messages WHERE room = ? AND seq < ?"
                    " ORDER BY seq DESC LIMIT ?",
                    (room, before_seq, limit),
                ).fetchall()
            return [_chat_from_row(row) for row in reversed(rows)]

        return await self._submit(select, False)

    async def chat_since(self, room: str, after_seq: int, limit: int) -> list[ChatMessage]:
        if limit <= 0:
            return []

        def select(conn: sqlite3.Connection) -> list[ChatMessage]:
            rows = conn.execute(
                "SELECT * FROM chat_messages WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?",
                (room, after_seq, limit),
            ).fetchall()
            return [_chat_from_row(row) for row in rows]

        return await self._submit(select, False)

    async def get_chat_message(self, message_id: str) -> ChatMessage | None:
        def select(conn: sqlite3.Connection) -> ChatMessage | None:
            row = conn.execute(
                "SELECT * FROM chat_messages WHERE message_id = ?", (message_id,)
            ).fetchone()
            return _chat_from_row(row) if row else None

        return await self._submit(select, False)

    async def delete_chat_message(self, message_id: str) -> ChatMessage | None:
        def update(conn: sqlite3.Connection) -> ChatMessage | None:
            conn.execute(
                "UPDATE chat_messages SET deleted = 1, text = '', mentions = '[]', links = '[]'"
                " WHERE message_id = ?",
                (message_id,),
            )
            row = conn.execute(
                "SELECT * FROM chat_messages WHERE message_id = ?", (message_id,)
            ).fetchone()
            return _chat_from_row(row) if row else None

        return await self._submit(update, True)

    async def last_seq(self, room: str) -> int:
        def select(conn: sqlite3.Connection) -> int:
            (seq,) = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM chat_messages WHERE room = ?", (room,)
            ).fetchone()
            return int(seq)

        return await self._submit(select, False)

    # -- companion conversations ----------------------------------------------------------

    async def save_conversation(self, conversation: Conversation) -> None:
        values = _conversation_to_row(conversation)
        columns = ", ".join(_CONVERSATION_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in _CONVERSATION_COLUMNS[1:])
        sql = (
            f"INSERT INTO conversations ({columns})"
            f" VALUES ({', '.join('?' for _ in values)})"
            f" ON CONFLICT (conversation_id) DO UPDATE SET {updates}"
        )

        def upsert(conn: sqlite3.Connection) -> None:
            conn.execute(sql, values)

        await self._submit(upsert, True)

    async def get_conversation(self, owner: str) -> Conversation | None:
        conversations = await self.list_conversations(owner, 1)
        return conversations[0] if conversations else None

    async def get_conversation_by_id(self, conversation_id: str) -> Conversation | None:
        def select(conn: sqlite3.Connection) -> Conversation | None:
            row = conn.execute(
                "SELECT * FROM conversations WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
            return _conversation_from_row(row) if row else None

        return await self._submit(select, False)

    async def list_conversations(self, owner: str, limit: int) -> list[Conversation]:
        if limit <= 0:
            return []
        key = username_key(owner)

        def select(conn: sqlite3.Connection) -> list[Conversation]:
            rows = conn.execute(
                f"SELECT * FROM conversations WHERE owner_key = ?{_CONVERSATION_ORDER} LIMIT ?",
                (key, limit),
            ).fetchall()
            return [_conversation_from_row(row) for row in rows]

        return await self._submit(select, False)

    async def delete_conversations(self, owner: str) -> int:
        key = username_key(owner)

        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM conversations WHERE owner_key = ?", (key,)).rowcount

        return await self._submit(delete, True)

    async def delete_conversation(self, conversation_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM conversations WHERE conversation_id = ?", (conversation_id,)
            )
            return cursor.rowcount > 0

        return await self._submit(delete, True)

    # -- interaction logs -------------------------------------------------------------

    async def record(self, entry: LogRecord) -> None:
        spec = _log_table(type(entry))
        values = spec.to_row(entry)
        sql = (
            f"INSERT INTO {spec.table} ({', '.join(spec.columns)})"
            f" VALUES ({', '.join('?' for _ in spec.columns)})"
        )

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(sql, values)

        await self._submit(insert, True)

    async def list_records(self, kind: type[R], username: str, limit: int) -> list[R]:
        spec = _log_table(kind)
        if limit <= 0:
            return []
        sql = (
            f"SELECT * FROM {spec.table} WHERE username_key = ?"
            " ORDER BY timestamp DESC, id DESC LIMIT ?"
        )

        def select(conn: sqlite3.Connection) -> list[R]:
            rows = conn.execute(sql, (username_key(username), limit)).fetchall()
            return [cast(R, spec.from_row(row)) for row in rows]

        return await self._submit(select, False)

    # -- shared settings --------------------------------------------------------------

    async def get_setting(self, key: str) -> Any | None:
        check_setting_key(key)

        def select(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row["value"])

        text = await self._submit(select, False)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError as e:  # written by hand, or by something else
            raise StorageError(f"sqlite setting {key!r} is not stored JSON text") from e

    async def set_setting(self, key: str, value: Any) -> None:
        check_setting_key(key)
        text = None if value is None else encode_setting(value)

        def write(conn: sqlite3.Connection) -> None:
            if text is None:
                conn.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT INTO settings (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, text),
                )

        await self._submit(write, True)

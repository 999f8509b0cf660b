"""The SQLite backend: the storage contract on a real file, then what only
SQLite promises (WAL, synchronous=FULL, one database thread, group commit,
migrations, draining on close)."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.interfaces import IReactorFromThreads

from bambid.config import ConfigError, StorageConfig
from bambid.models import (
    Account,
    ChatMessage,
    Conversation,
    ConversationTurn,
    NewChatMessage,
    Sanction,
    Session,
)
from bambid.storage.factory import make_storage, sqlite_path
from bambid.storage.interface import DuplicateError, StorageError
from bambid.storage.mongo import MongoStorage
from bambid.storage.sqlite import (
    MIGRATIONS_DIR,
    SQLiteStorage,
    load_migrations,
    migrate,
    split_statements,
)
from tests.storage_contract import T0, NewStorage, StorageContract, run

BATCH_MAX = 64
reactor = IReactorFromThreads(global_reactor)


def storage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("bambid-sqlite")]


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Every test leaves no database thread behind (set up first, checked last)."""
    before = set(storage_threads())
    yield
    assert set(storage_threads()) <= before


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "bambid.sqlite3"


@pytest.fixture
def new_storage(db_path: Path) -> Iterator[NewStorage]:
    db_path.parent.mkdir(exist_ok=True)
    made: list[SQLiteStorage] = []

    def make() -> SQLiteStorage:
        storage = SQLiteStorage(db_path, reactor, batch_max=BATCH_MAX)
        made.append(storage)
        return storage

    yield make
    for storage in made:
        run(storage.close())


@pytest.fixture
def sqlite_storage(new_storage: NewStorage) -> Iterator[SQLiteStorage]:
    storage = new_storage()
    assert isinstance(storage, SQLiteStorage)
    run(storage.open())
    yield storage
    run(storage.close())


class TestSQLiteContract(StorageContract):
    pass


def message(i: int, room: str = "lobby") -> NewChatMessage:
    return NewChatMessage(room=room, username="Alice", text=f"message {i}", timestamp=T0 + i)


def pragma(path: Path, name: str) -> Any:
    """Read a pragma through a connection of our own (the storage is closed)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


# --- settings written by hand -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_setting_that_is_not_json_is_a_storage_error(
    new_storage: NewStorage, db_path: Path
) -> None:
    storage = new_storage()
    await storage.open()
    await storage.set_setting("maintenance", {"on": True})
    await storage.set_setting("other", 1)
    await storage.close()
    conn = sqlite3.connect(db_path)
    with conn:  # an operator's UPDATE in the sqlite3 shell, say
        conn.execute("UPDATE settings SET value = '{on: yes}' WHERE key = 'maintenance'")
    conn.close()
    storage = new_storage()
    await storage.open()
    with pytest.raises(StorageError, match="'maintenance'"):
        await storage.get_setting("maintenance")
    assert await storage.get_setting("other") == 1  # the others are fine
    await storage.set_setting("maintenance", {"on": False})  # and it can be mended
    assert await storage.get_setting("maintenance") == {"on": False}


# --- durability settings ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_wal_and_synchronous_full(sqlite_storage: SQLiteStorage, db_path: Path) -> None:
    mode = await sqlite_storage.run(
        lambda c: c.execute("PRAGMA journal_mode").fetchone()[0], write=False
    )
    synchronous = await sqlite_storage.run(
        lambda c: c.execute("PRAGMA synchronous").fetchone()[0], write=False
    )
    assert mode == "wal"
    assert synchronous == 2  # FULL
    await sqlite_storage.append_chat_message(message(1))
    assert db_path.with_name(db_path.name + "-wal").exists()
    await sqlite_storage.close()
    assert pragma(db_path, "journal_mode") == "wal"  # recorded in the file itself


# --- the database thread -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_all_access_on_one_dedicated_thread(sqlite_storage: SQLiteStorage) -> None:
    reactor_thread = threading.get_ident()
    executed_on: set[int] = set()

    def trace_every_statement(conn: sqlite3.Connection) -> int:
        conn.set_trace_callback(lambda sql: executed_on.add(threading.get_ident()))
        return threading.get_ident()

    worker = await sqlite_storage.run(trace_every_statement, write=False)

    # Reads and writes of every kind.
    await sqlite_storage.create_account(Account("Alice", "h", "user", T0))
    await sqlite_storage.get_account("alice")
    await sqlite_storage.ensure_profile("Alice", T0)
    await sqlite_storage.add_xp("alice", 5)
    await sqlite_storage.append_chat_message(message(1))
    await sqlite_storage.chat_history("lobby", None, 10)
    await sqlite_storage.last_seq("lobby")
    with pytest.raises(DuplicateError):
        await sqlite_storage.create_account(Account("ALICE", "h", "user", T0))
    await sqlite_storage.ping()
    assert threading.get_ident() == reactor_thread  # results come back on the reactor

    assert executed_on == {worker}
    assert worker != reactor_thread
    assert worker == sqlite_storage.thread_ident
    thread = next(t for t in threading.enumerate() if t.ident == worker)
    assert thread.name == "bambid-sqlite:bambid.sqlite3"  # ours, not a Twisted pool thread

    await sqlite_storage.close()
    assert not thread.is_alive()


# --- group commit ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_group_commit_batches_queued_writes(sqlite_storage: SQLiteStorage) -> None:
    gate = threading.Event()
    # Hold the database thread so that every append below is queued behind it.
    blocker = defer.Deferred.fromCoroutine(sqlite_storage.run(lambda c: gate.wait(30)))
    before = attrs.evolve(sqlite_storage.stats)
    appends = [
        defer.Deferred.fromCoroutine(sqlite_storage.append_chat_message(message(i)))
        for i in range(200)
    ]
    gate.set()
    assert await blocker is True
    messages = await defer.gatherResults(appends)
    stats = sqlite_storage.stats

    assert sorted(m.seq for m in messages) == list(range(1, 201))
    assert stats.writes - before.writes == 201
    transactions = stats.transactions - before.transactions
    # One for the blocker's batch, then at most ceil(200 / BATCH_MAX) more.
    assert transactions <= 1 + -(-200 // BATCH_MAX)
    assert stats.largest_batch == BATCH_MAX
    assert await sqlite_storage.last_seq("lobby") == 200


@pytest_twisted.ensureDeferred
async def test_failing_job_fails_only_its_caller(sqlite_storage: SQLiteStorage) -> None:
    await sqlite_storage.create_account(Account("Taken", "h", "user", T0))
    gate = threading.Event()
    blocker = defer.Deferred.fromCoroutine(sqlite_storage.run(lambda c: gate.wait(30)))
    before = attrs.evolve(sqlite_storage.stats)

    def write_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO accounts VALUES ('ghost', 'Ghost', 'h', 'user', ?)",
            (T0,),
        )
        raise ValueError("changed my mind")

    jobs = [
        sqlite_storage.append_chat_message(message(1)),
        sqlite_storage.run(lambda c: c.execute("INSERT INTO no_such_table VALUES (1)")),
        sqlite_storage.run(write_then_fail),
        sqlite_storage.create_account(Account("TAKEN", "h", "user", T0)),
        sqlite_storage.append_chat_message(message(2)),
    ]
    outcomes = defer.DeferredList(
        [defer.Deferred.fromCoroutine(job) for job in jobs], consumeErrors=True
    )
    gate.set()
    await blocker
    results: list[tuple[bool, Any]] = await outcomes
    (ok1, first), (ok2, bad_sql), (ok3, failed), (ok4, duplicate), (ok5, second) = results

    assert ok1 and ok5 and (first.seq, second.seq) == (1, 2)
    assert not ok2 and bad_sql.check(StorageError) and not bad_sql.check(DuplicateError)
    assert not ok3 and failed.check(ValueError)
    assert not ok4 and duplicate.check(DuplicateError)
    assert await sqlite_storage.get_account("ghost") is None  # rolled back to its savepoint
    assert [m.seq for m in await sqlite_storage.chat_history("lobby", None, 10)] == [1, 2]
    assert sqlite_storage.stats.failed_jobs - before.failed_jobs == 3
    assert sqlite_storage.stats.failed_batches == before.failed_batches
    # All five shared the blocker's transaction or the next one.
    assert sqlite_storage.stats.transactions - before.transactions <= 2


@pytest_twisted.ensureDeferred
async def test_lost_transaction_acknowledges_nothing(sqlite_storage: SQLiteStorage) -> None:
    gate = threading.Event()
    blocker = defer.Deferred.fromCoroutine(sqlite_storage.run(lambda c: gate.wait(30)))
    jobs = [
        sqlite_storage.append_chat_message(message(1)),
        # A job that ends the transaction behind the storage's back.
        sqlite_storage.run(lambda c: c.execute("ROLLBACK")),
        sqlite_storage.append_chat_message(message(2)),
    ]
    outcomes = defer.DeferredList(
        [defer.Deferred.fromCoroutine(job) for job in jobs], consumeErrors=True
    )
    gate.set()
    await blocker.addErrback(lambda f: None)
    results: list[tuple[bool, Any]] = await outcomes
    # Whatever shared the lost transaction failed; nothing reported success
    # without being stored.
    stored = await sqlite_storage.chat_history("lobby", None, 10)
    acknowledged = [value for ok, value in results if ok]
    assert all(f.check(StorageError) for ok, f in results if not ok)
    assert not results[1][0]
    assert [m.seq for m in stored] == [m.seq for m in acknowledged]
    assert sqlite_storage.stats.failed_batches >= 1
    # The storage keeps working afterwards.
    assert (await sqlite_storage.append_chat_message(message(3))).seq == len(stored) + 1


@pytest_twisted.ensureDeferred
async def test_cancelled_caller_does_not_disturb_its_batch(sqlite_storage: SQLiteStorage) -> None:
    gate = threading.Event()
    blocker = defer.Deferred.fromCoroutine(sqlite_storage.run(lambda c: gate.wait(30)))
    cancelled = defer.Deferred.fromCoroutine(sqlite_storage.append_chat_message(message(1)))
    kept = defer.Deferred.fromCoroutine(sqlite_storage.append_chat_message(message(2)))
    cancelled.cancel()
    gate.set()
    await blocker
    with pytest.raises(defer.CancelledError):
        await cancelled
    assert (await kept).seq == 2
    # A queued job cannot be taken back: the cancelled append was stored anyway.
    assert await sqlite_storage.last_seq("lobby") == 2


# --- lifecycle ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_close_finishes_queued_writes(new_storage: NewStorage) -> None:
    storage = new_storage()
    await storage.open()
    pending = [
        defer.Deferred.fromCoroutine(storage.append_chat_message(message(i))) for i in range(100)
    ]
    closing = defer.Deferred.fromCoroutine(storage.close())
    with pytest.raises(StorageError):
        await storage.get_account("alice")  # refused once closing began
    messages = await defer.gatherResults(pending)
    await closing
    assert sorted(m.seq for m in messages) == list(range(1, 101))
    assert isinstance(storage, SQLiteStorage) and storage.thread_ident not in {
        t.ident for t in threading.enumerate()
    }

    reopened = new_storage()
    await reopened.open()
    assert await reopened.last_seq("lobby") == 100


@pytest_twisted.ensureDeferred
async def test_open_failures_leave_no_thread(tmp_path: Path) -> None:
    missing_dir = SQLiteStorage(tmp_path / "missing" / "db.sqlite3", reactor)
    with pytest.raises(StorageError):
        await missing_dir.open()
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database" * 100)
    not_a_database = SQLiteStorage(garbage, reactor)
    with pytest.raises(StorageError):
        await not_a_database.open()
    with pytest.raises(StorageError):
        await not_a_database.open()  # opened once only
    await not_a_database.close()
    with pytest.raises(StorageError):
        await not_a_database.ping()


@pytest_twisted.ensureDeferred
async def test_close_while_opening(new_storage: NewStorage) -> None:
    storage = new_storage()
    opening = defer.Deferred.fromCoroutine(storage.open())
    await storage.close()
    with pytest.raises(StorageError):
        await opening


# --- migrations ----------------------------------------------------------------------------

#: The shipped migrations, and the schema version they lead to.
SHIPPED = [m.name for m in load_migrations(MIGRATIONS_DIR)]
LATEST = len(SHIPPED)


def next_migration(name: str, step: int = 1) -> str:
    """A migration file name (without .sql) numbered ``step`` after the shipped ones."""
    return f"{LATEST + step:04d}_{name}"


def migrations_dir(tmp_path: Path, **extra: str) -> Path:
    """The shipped migrations plus ``extra`` files (name without .sql → SQL)."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    for shipped in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(shipped, directory)
    for name, sql in extra.items():
        (directory / f"{name}.sql").write_text(sql)
    return directory


async def open_and_close(path: Path, migrations: Path | None = None) -> list[str]:
    storage = SQLiteStorage(path, reactor, migrations_dir=migrations)
    await storage.open()
    await storage.close()
    return storage.applied_migrations


@pytest_twisted.ensureDeferred
async def test_migrations_run_once_in_order(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    assert SHIPPED[:3] == ["0001_initial.sql", "0002_moderation.sql", "0003_conversations.sql"]
    assert await open_and_close(path) == SHIPPED
    assert pragma(path, "user_version") == LATEST
    assert await open_and_close(path) == []  # reopening re-runs nothing

    directory = migrations_dir(
        tmp_path,
        **{
            next_migration("notes"): """
                -- a comment; with a semicolon
                CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
                INSERT INTO notes (body) VALUES ('once; only');
                CREATE TRIGGER notes_upper AFTER INSERT ON notes BEGIN
                    UPDATE notes SET body = upper(body) WHERE id = new.id;
                END;
            """
        },
    )
    assert await open_and_close(path, directory) == [next_migration("notes") + ".sql"]
    assert await open_and_close(path, directory) == []
    assert pragma(path, "user_version") == LATEST + 1
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT body FROM notes").fetchall() == [("once; only",)]
    conn.close()

    # A bambid that knows fewer migrations refuses the newer database.
    with pytest.raises(StorageError, match="newer"):
        await open_and_close(path)


@pytest_twisted.ensureDeferred
async def test_failed_migration_is_rolled_back(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    broken = next_migration("broken")
    directory = migrations_dir(
        tmp_path,
        **{broken: "CREATE TABLE half (x);\nINSERT INTO missing VALUES (1);\n"},
    )
    with pytest.raises(StorageError, match=broken):
        await open_and_close(path, directory)
    assert pragma(path, "user_version") == LATEST  # the shipped ones committed, it not at all
    conn = sqlite3.connect(path)
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "accounts" in tables and "half" not in tables


@pytest_twisted.ensureDeferred
async def test_migration_numbers_must_not_skip(tmp_path: Path) -> None:
    later = next_migration("later", step=2)
    directory = migrations_dir(tmp_path, **{later: "SELECT 1;"})
    with pytest.raises(StorageError, match=later):
        await open_and_close(tmp_path / "db.sqlite3", directory)


def test_split_statements() -> None:
    script = "-- intro\nCREATE TABLE a (x);\n\nINSERT INTO a VALUES (';');\n-- trailing\n"
    assert split_statements(script) == [
        "-- intro\nCREATE TABLE a (x);",
        "INSERT INTO a VALUES (';');",
    ]
    with pytest.raises(StorageError):
        split_statements("CREATE TABLE b (x)\n")


def test_shipped_migration_is_package_data() -> None:
    assert [p.name for p in sorted(MIGRATIONS_DIR.glob("*.sql"))] == SHIPPED
    assert SHIPPED[0] == "0001_initial.sql"


def version_1_database(path: Path) -> None:
    """A database as bambid left it before migration 0002 (schema version 1),
    with an account, sessions, a profile and chat messages in it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(conn, load_migrations(MIGRATIONS_DIR)[:1])
        conn.execute("BEGIN")
        conn.execute("INSERT INTO accounts VALUES ('strasse', 'Straße', 'h', 'admin', ?)", (T0,))
        conn.executemany(
            "INSERT INTO sessions (token_hash, username, created_at, expires_at)"
            " VALUES (?, ?, ?, ?)",
            [("t1", "Straße", T0, T0 + 60), ("t2", "STRASSE", T0 + 1, T0 + 60)],
        )
        conn.execute(
            "INSERT INTO profiles (username_key, username, created_at, last_active, xp)"
            " VALUES ('strasse', 'Straße', ?, ?, 12)",
            (T0, T0),
        )
        conn.executemany(
            "INSERT INTO chat_messages (message_id, room, seq, username, username_key, text,"
            " timestamp, message_type, guest, mentions, links)"
            " VALUES (?, 'lobby', ?, 'Straße', 'strasse', ?, ?, 'user', 0, ?, '[]')",
            [
                ("m1", 1, "one", T0, "[]"),
                ("m2", 2, "two @Bob", T0 + 1, '[{"username":"Bob","index":4}]'),
            ],
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_version_1_database_upgrades_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    version_1_database(path)
    assert pragma(path, "user_version") == 1

    storage = SQLiteStorage(path, reactor)
    await storage.open()
    try:
        assert storage.applied_migrations == SHIPPED[1:]
        assert await storage.get_account("STRASSE") == Account("Straße", "h", "admin", T0)
        old_sessions = [
            Session("t1", "Straße", T0, T0 + 60),
            Session("t2", "STRASSE", T0 + 1, T0 + 60),
        ]
        assert await storage.get_session("t1") == old_sessions[0]  # guest: False
        # The new key column was filled in with str.casefold, not SQL's lower().
        assert await storage.list_sessions("strasse") == old_sessions
        profile = await storage.get_profile("straße")
        assert profile is not None and profile.xp == 12
        one = ChatMessage("m1", "lobby", 1, "Straße", "one", T0)
        assert await storage.get_chat_message("m1") == one  # deleted: False
        deleted = await storage.delete_chat_message("m2")
        assert deleted == ChatMessage("m2", "lobby", 2, "Straße", "", T0 + 1, deleted=True)
        assert await storage.chat_history("lobby", None, 10) == [one, deleted]
        assert (await storage.append_chat_message(message(3))).seq == 3
        # The new table and columns work.
        await storage.create_session(Session("t3", "strasse", T0 + 2, T0 + 60, guest=True))
        ban = Sanction("ban", "Straße", "r", "Mod", T0)
        await storage.set_sanction(ban)
        assert await storage.list_sanctions("ban") == [ban]
        assert await storage.delete_sessions("STRASSE") == 3
    finally:
        await storage.close()
    assert pragma(path, "user_version") == LATEST
    assert await open_and_close(path) == []
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert {"sessions_username", "sanctions"} <= indexes
    finally:
        conn.close()


def version_2_database(path: Path) -> None:
    """A database as bambid left it before migration 0003 (schema version 2),
    when each person had one companion conversation (``owner_key`` its key)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(conn, load_migrations(MIGRATIONS_DIR)[:2])
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO conversations (owner_key, owner, title, created_at, updated_at, turns,"
            " metadata) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    "strasse",
                    "Straße",
                    "Old chat",
                    T0,
                    T0 + 2.5,
                    '[{"role":"user","content":"Hallo 👋","timestamp":1700000001.0},'
                    '{"role":"assistant","content":"Hi!","timestamp":1700000002.5}]',
                    '{"model":"x","tokens":[1,2]}',
                ),
                ("guest:bob", "guest:Bob", "", T0, T0, "[]", "{}"),
            ],
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def schema(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
        ).fetchall()
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_version_2_database_upgrades_keeping_its_conversations(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    version_2_database(path)
    assert pragma(path, "user_version") == 2

    storage = SQLiteStorage(path, reactor)
    await storage.open()
    try:
        assert storage.applied_migrations == SHIPPED[2:]
        old = await storage.get_conversation("STRASSE")
        assert old is not None
        # The conversation kept everything and got an id like a new one's.
        assert old == Conversation(
            owner="Straße",
            title="Old chat",
            created_at=T0,
            updated_at=T0 + 2.5,
            turns=(
                ConversationTurn("user", "Hallo 👋", T0 + 1),
                ConversationTurn("assistant", "Hi!", T0 + 2.5),
            ),
            metadata={"model": "x", "tokens": [1, 2]},
            conversation_id=old.conversation_id,
        )
        assert len(old.conversation_id) == 32 and int(old.conversation_id, 16) >= 0
        guest = await storage.get_conversation("guest:bob")
        assert guest is not None and guest.owner == "guest:Bob"
        assert guest.conversation_id != old.conversation_id
        assert await storage.get_conversation_by_id(old.conversation_id) == old
        # A person may have many conversations now.
        new = Conversation("strasse", "New chat", T0 + 3, T0 + 3)
        await storage.save_conversation(new)
        assert await storage.list_conversations("straße", 10) == [new, old]
        assert await storage.delete_conversations("Straße") == 2
        assert await storage.list_conversations("guest:BOB", 10) == [guest]
    finally:
        await storage.close()
    assert pragma(path, "user_version") == LATEST
    assert await open_and_close(path) == []
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert "conversations_owner" in names and "conversations_0002" not in names
    finally:
        conn.close()
    fresh = tmp_path / "fresh.sqlite3"
    await open_and_close(fresh)
    assert schema(path) == schema(fresh)


@pytest_twisted.ensureDeferred
async def test_new_and_upgraded_schemas_are_the_same(tmp_path: Path) -> None:
    upgraded = tmp_path / "upgraded.sqlite3"
    version_1_database(upgraded)
    await open_and_close(upgraded)
    fresh = tmp_path / "fresh.sqlite3"
    await open_and_close(fresh)
    assert schema(upgraded) == schema(fresh)


def test_conversation_schema(tmp_path: Path) -> None:
    """Conversations are keyed by id, listed per owner through an index."""
    path = tmp_path / "db.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(conn, load_migrations(MIGRATIONS_DIR))
        plan = " ".join(
            row[3]
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT * FROM conversations WHERE owner_key = ?"
                " ORDER BY updated_at DESC, conversation_id DESC LIMIT 5",
                ("alice",),
            )
        )
        assert "conversations_owner" in plan
        row = ("c1", "alice", "Alice", "", T0, T0)
        insert = (
            "INSERT INTO conversations (conversation_id, owner_key, owner, title, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?)"
        )
        conn.execute(insert, row)
        conn.execute(insert, ("c2", *row[1:]))  # one owner, many conversations
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(insert, row)
    finally:
        conn.close()


# --- the factory ---------------------------------------------------------------------------


def test_sqlite_uri_paths(tmp_path: Path) -> None:
    assert sqlite_path("sqlite:///var/db.sqlite3", tmp_path) == tmp_path / "var" / "db.sqlite3"
    assert sqlite_path("sqlite:////srv/bambid/db.sqlite3", tmp_path) == Path(
        "/srv/bambid/db.sqlite3"
    )
    assert sqlite_path("sqlite:///my%20data/db", tmp_path) == tmp_path / "my data" / "db"
    for bad in ("sqlite:///", "sqlite:///dir/", "sqlite:///db?mode=ro", "sqlite://db"):
        with pytest.raises(ConfigError, match=r"^storage\.uri: "):
            sqlite_path(bad, tmp_path)


@pytest_twisted.ensureDeferred
async def test_make_storage_sqlite_creates_directories(tmp_path: Path) -> None:
    config = StorageConfig(uri="sqlite:///var/deep/bambid.sqlite3", batch_max=7)
    storage = make_storage(config, reactor, tmp_path)
    assert isinstance(storage, SQLiteStorage)
    assert storage.path == tmp_path / "var" / "deep" / "bambid.sqlite3"
    assert storage.path.parent.is_dir()
    await storage.open()
    await storage.ping()
    await storage.close()
    assert storage.path.exists()


def test_make_storage_picks_mongodb_without_connecting(tmp_path: Path) -> None:
    for uri in ("mongodb://db.example:27017/chat", "mongodb+srv://u:p@cluster.example/chat"):
        storage = make_storage(StorageConfig(uri=uri), reactor, tmp_path)
        assert isinstance(storage, MongoStorage)
        assert storage.backend == "mongodb"
    with pytest.raises(ConfigError):
        make_storage(StorageConfig(uri="postgres://x"), reactor, tmp_path)

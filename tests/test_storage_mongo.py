"""The MongoDB backend.

Three layers:

- the storage contract against a real MongoDB when ``BAMBID_TEST_MONGODB_URI``
  is set (each test gets its own database, dropped afterwards), skipped
  otherwise;
- the same contract, offline, against ``FakeMongo``: an in-memory stand-in for
  the few txmongo calls the backend makes, with MongoDB's semantics for them
  (unique indexes, upserts, ``$inc``, ``$exists``, ``$ne``, ``$in``, ``$regex``,
  ``$or``, dotted field paths, update pipelines, sort, skip and limit, counts,
  ``distinct``, dropping indexes), BSON
  round-trips of every document, and a check that every call carries a
  timeout;
- unit tests of what needs no server: URI parsing, write concern, index
  specifications and the record <-> document conversions.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import math
import os
import re
import socket
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import attrs
import bson
import pytest
import pytest_twisted
from bson import ObjectId
from hypothesis import given
from hypothesis import strategies as st
from pymongo.errors import AutoReconnect, DuplicateKeyError, OperationFailure
from pymongo.results import DeleteResult, InsertOneResult, UpdateResult
from twisted.internet import defer, reactor, task

from bambid.config import ConfigError, StorageConfig
from bambid.models import (
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
    Profile,
    Sanction,
    Session,
    SocialLinks,
    UsageStats,
    UserInteraction,
    UserTagInteraction,
)
from bambid.storage import mongo
from bambid.storage.interface import NotFoundError, StorageError
from bambid.storage.mongo import (
    CODEC_OPTIONS,
    INDEXES,
    IndexSpec,
    MongoSettings,
    MongoStorage,
    parse_uri,
    write_concern_from_config,
)
from tests.storage_contract import (
    T0,
    NewStorage,
    StorageContract,
    fast,
    new_message,
    plain_dicts,
    run,
    texts,
    times,
)

MONGODB_URI = os.environ.get("BAMBID_TEST_MONGODB_URI", "")
RUN_ID = uuid.uuid4().hex[:8]


# --- against a real server ----------------------------------------------------------


async def drop_database(uri: str, name: str) -> None:
    settings = MongoStorage(StorageConfig(uri=uri), database=name).settings
    pool, database = await mongo.connect_txmongo(settings)
    try:
        await database.command("dropDatabase", timeout=30)
    finally:
        await pool.disconnect()


@pytest.fixture
def server_storage() -> Iterator[NewStorage]:
    database = f"bambid_test_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    made: list[MongoStorage] = []

    def make() -> MongoStorage:
        storage = MongoStorage(StorageConfig(uri=MONGODB_URI, timeout=30), database=database)
        made.append(storage)
        return storage

    yield make
    for storage in made:
        run(storage.close())
    run(drop_database(MONGODB_URI, database))


@pytest.mark.mongodb
@pytest.mark.skipif(
    not MONGODB_URI, reason="set BAMBID_TEST_MONGODB_URI=mongodb://host/ to test on MongoDB"
)
class TestMongoServerContract(StorageContract):
    @pytest.fixture
    def new_storage(self, server_storage: NewStorage) -> NewStorage:
        return server_storage


# --- FakeMongo ----------------------------------------------------------------------------


def as_bson(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as MongoDB would store and return it."""
    result: dict[str, Any] = bson.decode(bson.encode(doc), codec_options=CODEC_OPTIONS)
    return result


def field(doc: dict[str, Any], name: str) -> Any:
    """The value at a dotted path (``usage_stats.messages_posted``), None if missing."""
    value: Any = doc
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def has_field(doc: dict[str, Any], name: str) -> bool:
    value: Any = doc
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True


def set_field(doc: dict[str, Any], name: str, value: Any) -> None:
    """Set a dotted path, creating the documents on the way (as ``$set``/``$inc`` do)."""
    *parents, last = name.split(".")
    for part in parents:
        doc = doc.setdefault(part, {})
        assert isinstance(doc, dict), f"cannot create field in {part}"
    doc[last] = value


def compare(a: Any, b: Any) -> int:
    if a is None or b is None:
        return (a is not None) - (b is not None)
    return (a > b) - (a < b)


def matches(doc: dict[str, Any], query: dict[str, Any]) -> bool:
    for name, condition in query.items():
        if name == "$or":
            if not any(matches(doc, branch) for branch in condition):
                return False
            continue
        value = field(doc, name)
        if isinstance(condition, dict) and condition and next(iter(condition)).startswith("$"):
            for op, operand in condition.items():
                if op == "$exists":
                    if has_field(doc, name) != bool(operand):
                        return False
                    continue
                if op == "$ne":  # a missing field is not equal to a value
                    if value == operand:
                        return False
                    continue
                if op == "$in":
                    if value not in operand:
                        return False
                    continue
                if op == "$regex":  # MongoDB's PCRE; the backend's patterns read the same in re
                    if not isinstance(value, str) or re.search(operand, value) is None:
                        return False
                    continue
                if value is None:
                    return False
                outcome = {
                    "$lt": value < operand,
                    "$lte": value <= operand,
                    "$gt": value > operand,
                    "$gte": value >= operand,
                }[op]
                if not outcome:
                    return False
        elif value != condition:
            return False
    return True


def evaluate(doc: dict[str, Any], expression: Any) -> Any:
    """The aggregation expressions the backend uses in update pipelines and
    aggregations."""
    if isinstance(expression, str) and expression.startswith("$"):
        return field(doc, expression[1:])
    if isinstance(expression, dict):
        ((op, args),) = expression.items()
        if op == "$regexMatch":  # named arguments; a null input does not match
            text = evaluate(doc, args["input"])
            if text is None:
                return False
            assert isinstance(text, str), f"$regexMatch needs a string, got {text!r}"
            return re.search(args["regex"], text) is not None
        values = [evaluate(doc, arg) for arg in (args if isinstance(args, list) else [args])]
        if op == "$and":
            return all(values)
        if op == "$not":
            return not values[0]
        if op == "$subtract":  # date minus date: milliseconds, as MongoDB does
            first, second = values
            if isinstance(first, dt.datetime):
                return (first - second) // dt.timedelta(milliseconds=1)
            return first - second
        if op == "$divide":
            return values[0] / values[1]
        if op == "$floor":
            return float(math.floor(values[0]))
        if op == "$eq":
            return compare(values[0], values[1]) == 0
        if op == "$cond":
            return values[1] if values[0] else values[2]
        if op == "$add":
            return None if None in values else sum(values)
        if op == "$max":
            return max((v for v in values if v is not None), default=None)
        if op == "$ifNull":
            return values[0] if values[0] is not None else values[1]
        raise AssertionError(f"FakeMongo does not know {op}")
    return expression


def group_stage(docs: list[dict[str, Any]], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """``$group`` with ``$sum`` accumulators."""
    groups: dict[Any, dict[str, Any]] = {}
    for doc in docs:
        key = evaluate(doc, spec["_id"])
        out = groups.setdefault(key, {"_id": key})
        for name, accumulator in spec.items():
            if name != "_id":
                ((op, expression),) = accumulator.items()
                assert op == "$sum", f"FakeMongo does not know {op}"
                out[name] = out.get(name, 0) + evaluate(doc, expression)
    return list(groups.values())


def bucket_stage(docs: list[dict[str, Any]], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """``$bucket``: ``_id`` is the lower boundary, or ``default`` outside them."""
    bounds = spec["boundaries"]
    assert len(bounds) >= 2 and bounds == sorted(bounds), bounds
    grouped = []
    for doc in docs:
        value = evaluate(doc, spec["groupBy"])
        key = spec["default"]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            pairs = zip(bounds, bounds[1:], strict=False)
            key = next((lo for lo, hi in pairs if lo <= value < hi), key)
        grouped.append({"key": key, **doc})
    output = {"_id": "$key", **spec["output"]}
    return sorted(group_stage(grouped, output), key=lambda d: (isinstance(d["_id"], str), d["_id"]))


class FakeCollection:
    def __init__(self, server: FakeMongo, name: str) -> None:
        self.server = server
        self.name = name
        self.docs: list[dict[str, Any]] = []
        self.indexes: dict[str, tuple[tuple[tuple[str, int], ...], bool]] = {}

    # -- helpers ----------------------------------------------------------------

    def _reply(self, method: str, kwargs: dict[str, Any], compute: Callable[[], Any]) -> Any:
        """Check the call, do it now (atomically), answer on a later reactor turn."""
        assert kwargs.get("timeout", 0) > 0, f"{self.name}.{method} called without a timeout"
        assert "deadline" not in kwargs
        self.server.calls.append(f"{self.name}.{method}")
        try:
            if self.server.fail_next is not None:
                error, self.server.fail_next = self.server.fail_next, None
                raise error
            result = compute()
        except Exception as e:
            failure = e

            def fail() -> Any:
                raise failure

            return self.server.later(fail)
        return self.server.later(lambda: copy.deepcopy(result))

    def _check_unique(self, candidate: dict[str, Any]) -> None:
        for other in self.docs:
            if other is not candidate and other["_id"] == candidate["_id"]:
                raise DuplicateKeyError("E11000 duplicate key _id", 11000)
        for keys, unique in self.indexes.values():
            if not unique:
                continue
            key = [field(candidate, name) for name, _ in keys]
            for other in self.docs:
                if other is not candidate and [field(other, n) for n, _ in keys] == key:
                    raise DuplicateKeyError(f"E11000 duplicate key {key}", 11000)

    def _sorted(self, docs: list[dict[str, Any]], sort: Any) -> list[dict[str, Any]]:
        if sort is None:
            return list(docs)
        keys = sort["orderby"]

        def order(a: dict[str, Any], b: dict[str, Any]) -> int:
            for name, direction in keys:
                c = compare(field(a, name), field(b, name)) * direction
                if c:
                    return c
            return 0

        return sorted(docs, key=functools.cmp_to_key(order))

    def _store(self, doc: dict[str, Any], replacing: dict[str, Any] | None) -> dict[str, Any]:
        stored = as_bson(doc)
        if replacing is not None:
            position = self.docs.index(replacing)
            self.docs[position] = stored
            try:
                self._check_unique(stored)
            except DuplicateKeyError:
                self.docs[position] = replacing
                raise
        else:
            self.docs.append(stored)
            try:
                self._check_unique(stored)
            except DuplicateKeyError:
                self.docs.pop()
                raise
        return stored

    def _apply(self, doc: dict[str, Any], update: Any, inserting: bool) -> dict[str, Any]:
        new = copy.deepcopy(doc)
        if isinstance(update, list):
            for stage in update:
                ((op, spec),) = stage.items()
                assert op == "$set", op
                for name, expression in spec.items():
                    new[name] = evaluate(new, expression)
            return new
        touched: list[str] = []
        for op, spec in update.items():
            touched += spec
            if op == "$set" or (op == "$setOnInsert" and inserting):
                for name, value in spec.items():
                    set_field(new, name, copy.deepcopy(value))
            elif op == "$inc":
                for name, amount in spec.items():
                    set_field(new, name, (field(new, name) or 0) + amount)
            elif op != "$setOnInsert":
                raise AssertionError(f"FakeMongo does not know {op}")
        for name in touched:  # MongoDB refuses a path in two operators or inside another
            clashes = [t for t in touched if t == name or t.startswith(name + ".")]
            assert len(clashes) == 1, f"conflicting update paths: {clashes}"
        return new

    def _first(self, query: dict[str, Any], sort: Any = None) -> dict[str, Any] | None:
        found = self._sorted([d for d in self.docs if matches(d, query)], sort)
        return found[0] if found else None

    # -- the txmongo Collection API the backend uses ---------------------------------

    def insert_one(self, document: dict[str, Any], **kwargs: Any) -> Any:
        def insert() -> InsertOneResult:
            document.setdefault("_id", ObjectId())  # txmongo sets it on the caller's dict
            self._store(document, None)
            return InsertOneResult(document["_id"], True)

        return self._reply("insert_one", kwargs, insert)

    def find_one(self, filter: dict[str, Any], sort: Any = None, **kwargs: Any) -> Any:
        return self._reply("find_one", kwargs, lambda: self._first(filter, sort))

    def find(
        self,
        filter: dict[str, Any],
        sort: Any = None,
        skip: int = 0,
        limit: int = 0,
        **kwargs: Any,
    ) -> Any:
        def find() -> list[dict[str, Any]]:
            found = self._sorted([d for d in self.docs if matches(d, filter)], sort)[skip:]
            return found[:limit] if limit else found

        return self._reply("find", kwargs, find)

    def aggregate(
        self, pipeline: list[dict[str, Any]], initial_batch_size: int | None = None, **kwargs: Any
    ) -> Any:
        def aggregate() -> list[dict[str, Any]]:
            docs = list(self.docs)
            for stage in pipeline:
                ((op, spec),) = stage.items()
                if op == "$match":
                    docs = [d for d in docs if matches(d, spec)]
                elif op == "$group":
                    docs = group_stage(docs, spec)
                elif op == "$bucket":
                    docs = bucket_stage(docs, spec)
                elif op == "$sort":
                    docs = self._sorted(docs, {"orderby": list(spec.items())})
                elif op == "$limit":
                    docs = docs[:spec]
                else:
                    raise AssertionError(f"FakeMongo does not know the stage {op}")
            # More than the first batch would need a getMore, which has no deadline.
            assert initial_batch_size is not None and len(docs) <= initial_batch_size
            return docs

        return self._reply("aggregate", kwargs, aggregate)

    def count_documents(self, filter: dict[str, Any], **kwargs: Any) -> Any:
        return self._reply(
            "count_documents", kwargs, lambda: sum(1 for d in self.docs if matches(d, filter))
        )

    def distinct(self, key: str, filter: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        def distinct() -> list[Any]:
            values: list[Any] = []
            for doc in self.docs:
                if matches(doc, filter or {}) and key in doc and doc[key] not in values:
                    values.append(doc[key])
            return values

        return self._reply("distinct", kwargs, distinct)

    def update_one(
        self, filter: dict[str, Any], update: Any, upsert: bool = False, **kwargs: Any
    ) -> Any:
        def update_one() -> UpdateResult:
            doc = self._first(filter)
            if doc is None:
                if not upsert:
                    return UpdateResult({"n": 0, "nModified": 0}, True)
                seed = {k: v for k, v in filter.items() if not isinstance(v, dict)}
                seed["_id"] = ObjectId()
                self._store(self._apply(seed, update, inserting=True), None)
                return UpdateResult({"n": 1, "nModified": 0, "upserted": seed["_id"]}, True)
            self._store(self._apply(doc, update, inserting=False), doc)
            return UpdateResult({"n": 1, "nModified": 1}, True)

        return self._reply("update_one", kwargs, update_one)

    def update_many(self, filter: dict[str, Any], update: Any, **kwargs: Any) -> Any:
        def update_many() -> UpdateResult:
            found = [d for d in self.docs if matches(d, filter)]
            for doc in found:
                self._store(self._apply(doc, update, inserting=False), doc)
            return UpdateResult({"n": len(found), "nModified": len(found)}, True)

        return self._reply("update_many", kwargs, update_many)

    def replace_one(
        self, filter: dict[str, Any], replacement: dict[str, Any], upsert: bool = False, **kw: Any
    ) -> Any:
        def replace() -> UpdateResult:
            assert not any(k.startswith("$") for k in replacement)
            doc = self._first(filter)
            if doc is None:
                if not upsert:
                    return UpdateResult({"n": 0, "nModified": 0}, True)
                new = {"_id": ObjectId(), **replacement}
                self._store(new, None)
                return UpdateResult({"n": 1, "nModified": 0, "upserted": new["_id"]}, True)
            self._store({"_id": doc["_id"], **replacement}, doc)
            return UpdateResult({"n": 1, "nModified": 1}, True)

        return self._reply("replace_one", kw, replace)

    def delete_one(self, filter: dict[str, Any], **kwargs: Any) -> Any:
        def delete() -> DeleteResult:
            doc = self._first(filter)
            if doc is not None:
                self.docs.remove(doc)
            return DeleteResult({"n": int(doc is not None)}, True)

        return self._reply("delete_one", kwargs, delete)

    def delete_many(self, filter: dict[str, Any], **kwargs: Any) -> Any:
        def delete() -> DeleteResult:
            doomed = [d for d in self.docs if matches(d, filter)]
            self.docs = [d for d in self.docs if d not in doomed]
            return DeleteResult({"n": len(doomed)}, True)

        return self._reply("delete_many", kwargs, delete)

    def find_one_and_update(
        self,
        filter: dict[str, Any],
        update: Any,
        upsert: bool = False,
        return_document: bool = False,
        **kwargs: Any,
    ) -> Any:
        def find_and_modify() -> dict[str, Any] | None:
            doc = self._first(filter)
            if doc is not None:
                stored = self._store(self._apply(doc, update, inserting=False), doc)
                return stored if return_document else doc
            if not upsert:
                return None
            seed = {k: v for k, v in filter.items() if not isinstance(v, dict)}
            seed.setdefault("_id", ObjectId())
            stored = self._store(self._apply(seed, update, inserting=True), None)
            return stored if return_document else None

        return self._reply("find_one_and_update", kwargs, find_and_modify)

    def ensure_index(self, sort: Any, name: str, unique: bool = False, **kwargs: Any) -> Any:
        def create() -> str:
            keys = tuple(sort["orderby"])
            if name in self.indexes and self.indexes[name] != (keys, unique):
                raise OperationFailure("IndexOptionsConflict", 85)
            if unique:  # building a unique index fails on documents already in conflict
                seen: list[list[Any]] = []
                for doc in self.docs:
                    key = [field(doc, n) for n, _ in keys]  # a missing field is null
                    if key in seen:
                        raise DuplicateKeyError(f"E11000 duplicate key {key}", 11000)
                    seen.append(key)
            self.indexes[name] = (keys, unique)
            return name

        return self._reply("ensure_index", kwargs, create)

    def drop_index(self, index_identifier: str, **kwargs: Any) -> Any:
        def drop() -> dict[str, Any]:
            if not self.server.has_collection(self):
                # txmongo's drop_index lets "ns not found" pass.
                return {"ok": 0, "errmsg": "ns not found", "code": 26}
            if index_identifier not in self.indexes:
                raise OperationFailure(f"index not found with name [{index_identifier}]", 27)
            del self.indexes[index_identifier]
            return {"ok": 1}

        return self._reply("drop_index", kwargs, drop)


class FakeDatabase:
    def __init__(self, server: FakeMongo, name: str) -> None:
        self.server = server
        self.name = name

    def __getitem__(self, name: str) -> FakeCollection:
        return self.server.collection(self.name, name)

    def command(self, command: str, **kwargs: Any) -> Any:
        assert command == "ping"
        return self["$cmd"]._reply("command", kwargs, lambda: {"ok": 1})


class FakePool:
    def __init__(self, server: FakeMongo) -> None:
        self.server = server

    def disconnect(self) -> defer.Deferred[None]:
        self.server.open_pools -= 1
        return defer.succeed(None)


class FakeMongo:
    """One in-memory MongoDB server; ``connect`` is ``MongoStorage``'s seam."""

    def __init__(self) -> None:
        self.databases: dict[tuple[str, str], FakeCollection] = {}
        self.calls: list[str] = []
        self.settings: list[MongoSettings] = []
        self.open_pools = 0
        self.fail_next: Exception | None = None
        self.held: list[tuple[defer.Deferred[Any], Callable[[], Any]]] | None = None

    def collection(self, database: str, name: str) -> FakeCollection:
        return self.databases.setdefault((database, name), FakeCollection(self, name))

    def has_collection(self, collection: FakeCollection) -> bool:
        """Whether MongoDB would know the collection: it holds documents or indexes."""
        return bool(collection.docs or collection.indexes)

    def later(self, answer: Callable[[], Any]) -> defer.Deferred[Any]:
        """Answer on a later reactor turn (or at ``release()`` while held), so
        that concurrent operations interleave as they do over a network."""
        if self.held is not None:
            waiting: defer.Deferred[Any] = defer.Deferred()
            self.held.append((waiting, answer))
            return waiting
        return task.deferLater(reactor, 0, answer)

    def hold(self) -> None:
        self.held = []

    def release(self) -> None:
        held, self.held = self.held or [], None
        for waiting, answer in held:
            defer.maybeDeferred(answer).chainDeferred(waiting)

    async def connect(self, settings: MongoSettings) -> tuple[FakePool, FakeDatabase]:
        self.settings.append(settings)
        self.open_pools += 1
        return FakePool(self), FakeDatabase(self, settings.database)


@pytest.fixture
def fake() -> FakeMongo:
    return FakeMongo()


@pytest.fixture
def fake_storage(fake: FakeMongo) -> Iterator[NewStorage]:
    made: list[MongoStorage] = []

    def make() -> MongoStorage:
        storage = MongoStorage(StorageConfig(uri="mongodb://fake/bambid"), connect=fake.connect)
        made.append(storage)
        return storage

    yield make
    for storage in made:
        run(storage.close())
    assert fake.open_pools == 0


class TestFakeMongoContract(StorageContract):
    @pytest.fixture
    def new_storage(self, fake_storage: NewStorage) -> NewStorage:
        return fake_storage


@pytest_twisted.ensureDeferred
async def test_open_creates_every_index(fake: FakeMongo) -> None:
    storage = MongoStorage(StorageConfig(uri="mongodb://fake/chat"), connect=fake.connect)
    await storage.open()
    try:
        created = {
            (collection, index_name): spec
            for (database, collection), coll in fake.databases.items()
            for index_name, spec in coll.indexes.items()
            if database == "chat"
        }
        assert created == {(i.collection, i.name): (i.keys, i.unique) for i in INDEXES}, (
            "every index, in the URI's database"
        )
        # Opening again against the same server is idempotent.
        again = MongoStorage(StorageConfig(uri="mongodb://fake/chat"), connect=fake.connect)
        await again.open()
        await again.close()
    finally:
        await storage.close()


@pytest_twisted.ensureDeferred
async def test_a_setting_that_is_not_json_is_a_storage_error(fake: FakeMongo) -> None:
    storage = MongoStorage(StorageConfig(uri="mongodb://fake/bambid"), connect=fake.connect)
    await storage.open()
    try:
        await storage.set_setting("maintenance", {"on": True})
        fake.collection("bambid", "settings").docs[0]["value"] = "{on: yes}"  # by hand
        with pytest.raises(StorageError, match="'maintenance'"):
            await storage.get_setting("maintenance")
    finally:
        await storage.close()


@pytest_twisted.ensureDeferred
async def test_driver_errors_become_storage_errors(fake: FakeMongo) -> None:
    storage = MongoStorage(StorageConfig(uri="mongodb://fake/"), connect=fake.connect)
    await storage.open()
    try:
        fake.fail_next = AutoReconnect("connection refused")
        with pytest.raises(StorageError, match="connection refused") as caught:
            await storage.ping()
        assert type(caught.value) is StorageError
        assert isinstance(caught.value.__cause__, AutoReconnect)
        from txmongo.errors import TimeExceeded

        fake.fail_next = TimeExceeded("TxMongo: run time of 10s exceeded.")
        with pytest.raises(StorageError, match="TimeExceeded"):
            await storage.append_chat_message(new_message("lobby"))
        await storage.ping()  # and it keeps working
    finally:
        await storage.close()


@pytest_twisted.ensureDeferred
async def test_failed_open_disconnects(fake: FakeMongo) -> None:
    storage = MongoStorage(StorageConfig(uri="mongodb://fake/"), connect=fake.connect)
    fake.fail_next = AutoReconnect("no primary")
    with pytest.raises(StorageError, match="no primary"):
        await storage.open()
    assert fake.open_pools == 0
    with pytest.raises(StorageError):
        await storage.ping()


@pytest_twisted.ensureDeferred
async def test_close_waits_for_operations_in_flight(fake: FakeMongo) -> None:
    storage = MongoStorage(StorageConfig(uri="mongodb://fake/"), connect=fake.connect)
    await storage.open()
    fake.hold()
    appending = defer.Deferred.fromCoroutine(storage.append_chat_message(new_message("lobby")))
    closing = defer.Deferred.fromCoroutine(storage.close())
    with pytest.raises(StorageError):
        await storage.last_seq("lobby")  # refused once closing began
    assert not closing.called and fake.open_pools == 1
    fake.release()  # the counter answers; the insert goes out and answers later
    sent = await appending
    await closing
    assert sent.seq == 1 and fake.open_pools == 0
    assert [d["seq"] for d in fake.collection("bambid", "chat_messages").docs] == [1]


@pytest_twisted.ensureDeferred
async def test_open_backfills_session_keys(fake: FakeMongo) -> None:
    """Sessions stored before they had a ``username_key`` (and ``guest``) are
    found by ``list_sessions`` and ``delete_sessions`` after the next start."""
    sessions = fake.collection("bambid", "sessions")
    for token, name in (("t1", "Straße"), ("t2", "STRASSE"), ("t3", "Bob")):
        sessions.docs.append(
            as_bson(
                {
                    "_id": ObjectId(),
                    "token_hash": token,
                    "username": name,
                    "created_at": mongo.to_datetime(T0 + len(sessions.docs)),
                    "expires_at": mongo.to_datetime(T0 + 60),
                }
            )
        )
    storage = MongoStorage(StorageConfig(uri="mongodb://fake/"), connect=fake.connect)
    await storage.open()
    try:
        assert [d["username_key"] for d in sessions.docs] == ["strasse", "strasse", "bob"]
        assert await storage.list_sessions("strasse") == [
            Session("t1", "Straße", T0, T0 + 60),
            Session("t2", "STRASSE", T0 + 1, T0 + 60),
        ]
        assert await storage.delete_sessions("bob") == 1
    finally:
        await storage.close()
    fake.calls.clear()
    again = MongoStorage(StorageConfig(uri="mongodb://fake/"), connect=fake.connect)
    await again.open()  # nothing left to fill in: one distinct, no update
    await again.close()
    assert "sessions.distinct" in fake.calls and "sessions.update_many" not in fake.calls


@pytest_twisted.ensureDeferred
async def test_open_backfills_display_name_keys(fake: FakeMongo) -> None:
    """Profiles stored before the community search (no ``display_name_key``)
    are found by their display name after the next start."""
    profiles = fake.collection("bambid", "profiles")
    for name, display_name in (("Ann", "Straße"), ("Ben", ""), ("Cy", "Straße"), ("Di", "ΨX")):
        doc = mongo.profile_to_document(Profile(name, T0, T0, display_name=display_name))
        del doc["display_name_key"]
        profiles.docs.append(as_bson({"_id": ObjectId(), **doc}))
    storage = MongoStorage(StorageConfig(uri="mongodb://fake/"), connect=fake.connect)
    await storage.open()
    try:
        assert [d["display_name_key"] for d in profiles.docs] == [
            "straße".casefold(),
            "",
            "strasse",
            "ψx",
        ]
        listed = await storage.list_profiles(offset=0, limit=10, sort="name", query="STRASS")
        assert [p.username for p in listed] == ["Ann", "Cy"]
    finally:
        await storage.close()
    fake.calls.clear()
    again = MongoStorage(StorageConfig(uri="mongodb://fake/"), connect=fake.connect)
    await again.open()  # nothing left to fill in: one distinct, no update
    await again.close()
    assert "profiles.distinct" in fake.calls and "profiles.update_many" not in fake.calls


@pytest_twisted.ensureDeferred
async def test_reaction_counts_follow_the_reaction_documents(fake: FakeMongo) -> None:
    """The ``$inc`` on a profile happens only for the call whose own insert or
    delete changed the reaction document."""
    storage = MongoStorage(StorageConfig(uri="mongodb://fake/"), connect=fake.connect)
    await storage.open()
    try:
        await storage.ensure_profile("Star", T0)
        fake.calls.clear()
        assert await storage.set_reaction("Fan", "Star", "like", True) == (True, 1, 0)
        assert fake.calls == [
            "profiles.find_one",
            "reactions.insert_one",
            "profiles.find_one_and_update",
        ]
        fake.calls.clear()
        assert await storage.set_reaction("fan", "star", "like", True) == (False, 1, 0)
        assert fake.calls == ["profiles.find_one", "reactions.insert_one", "profiles.find_one"]
        reactions = fake.collection("bambid", "reactions").docs
        assert [(d["from_key"], d["to_key"], d["kind"], d["from_user"]) for d in reactions] == [
            ("fan", "star", "like", "Fan")
        ]
    finally:
        await storage.close()


@pytest_twisted.ensureDeferred
async def test_reaction_to_a_profile_deleted_meanwhile(fake: FakeMongo) -> None:
    """The profile goes between the check and the ``$inc``: no reaction stays."""
    storage = MongoStorage(StorageConfig(uri="mongodb://fake/"), connect=fake.connect)
    await storage.open()
    try:
        await storage.ensure_profile("Gone", T0)
        profiles = fake.collection("bambid", "profiles")
        reactions = fake.collection("bambid", "reactions")
        original = reactions.insert_one

        def insert_and_vanish(document: dict[str, Any], **kwargs: Any) -> Any:
            profiles.docs.clear()  # delete_user ran in between
            return original(document, **kwargs)

        reactions.insert_one = insert_and_vanish  # type: ignore[method-assign]
        with pytest.raises(NotFoundError):
            await storage.set_reaction("Fan", "Gone", "love", True)
        assert reactions.docs == []
        assert fake.calls[-2:] == ["profiles.find_one_and_update", "reactions.delete_one"]
    finally:
        await storage.close()


def single_conversation_document(owner: str, title: str, updated: float) -> dict[str, Any]:
    """A conversation as bambid stored it when a person had one: no id."""
    doc = mongo.conversation_to_document(Conversation(owner, title, T0, updated))
    del doc["conversation_id"]
    return as_bson({"_id": ObjectId(), **doc})


@pytest_twisted.ensureDeferred
async def test_open_upgrades_single_conversations(fake: FakeMongo) -> None:
    """Conversations stored when each person had one (unique ``owner_key``, no
    ``conversation_id``) get ids, and the old index goes, so that a person can
    have many."""
    conversations = fake.collection("bambid", "conversations")
    conversations.indexes["owner_key_1"] = ((("owner_key", 1),), True)
    conversations.docs += [
        single_conversation_document("Straße", "old chat", T0 + 1),
        single_conversation_document("guest:Bob", "", T0 + 2),
    ]
    storage = MongoStorage(StorageConfig(uri="mongodb://fake/"), connect=fake.connect)
    await storage.open()
    try:
        assert set(conversations.indexes) == {"conversation_id_1", "owner_key_1_updated_at_-1"}
        ids = [d["conversation_id"] for d in conversations.docs]
        assert len(set(ids)) == 2 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
        old = await storage.get_conversation("STRASSE")
        assert old == Conversation("Straße", "old chat", T0, T0 + 1, conversation_id=ids[0])
        assert await storage.get_conversation_by_id(ids[1]) == Conversation(
            "guest:Bob", "", T0, T0 + 2, conversation_id=ids[1]
        )
        new = Conversation("strasse", "new chat", T0 + 5, T0 + 5)
        await storage.save_conversation(new)
        assert await storage.list_conversations("straße", 10) == [new, old]
    finally:
        await storage.close()
    fake.calls.clear()
    again = MongoStorage(StorageConfig(uri="mongodb://fake/"), connect=fake.connect)
    await again.open()  # no old index to drop (tolerated), no conversation without an id
    await again.close()
    assert "conversations.drop_index" in fake.calls
    assert "conversations.distinct" in fake.calls
    assert "conversations.update_one" not in fake.calls
    assert [d["conversation_id"] for d in conversations.docs][:2] == ids


@pytest_twisted.ensureDeferred
async def test_open_fails_on_other_drop_index_errors(fake: FakeMongo) -> None:
    fake.fail_next = OperationFailure("not authorized on bambid", 13)
    storage = MongoStorage(StorageConfig(uri="mongodb://fake/"), connect=fake.connect)
    with pytest.raises(StorageError, match="drop index conversations.owner_key_1"):
        await storage.open()
    assert fake.calls == ["conversations.drop_index"] and fake.open_pools == 0


@pytest_twisted.ensureDeferred
async def test_sequence_numbers_come_from_counters(fake: FakeMongo) -> None:
    storage = MongoStorage(StorageConfig(uri="mongodb://fake/"), connect=fake.connect)
    await storage.open()
    try:
        for _ in range(3):
            await storage.append_chat_message(new_message("lobby"))
        counters = fake.collection("bambid", "counters").docs
        assert [(d["_id"], d["seq"]) for d in counters] == [("lobby", 3)]
    finally:
        await storage.close()


# --- the real txmongo connection, without a server ------------------------------------


def refused_port() -> int:
    """A loopback port where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest_twisted.ensureDeferred
async def test_txmongo_pool_gets_our_write_concern_and_credentials() -> None:
    config = StorageConfig(
        uri=f"mongodb://ann:s%3Acret@127.0.0.1:{refused_port()}/?authSource=users",
        write_concern="2",
        pool_size=3,
    )
    settings = MongoStorage(config).settings
    pool, database = await mongo.connect_txmongo(settings)
    try:
        assert pool.write_concern.document == {"w": 2, "j": True}
        assert database.write_concern.document == {"w": 2, "j": True}
        assert database["profiles"].write_concern.document == {"w": 2, "j": True}
        assert database.codec_options.tz_aware
        assert database.name == "bambid"
        assert len(pool.getprotocols()) == 3
        assert pool.auth_creds == {"users": ("ann", "s:cret", "DEFAULT")}
    finally:
        await pool.disconnect()


@pytest_twisted.ensureDeferred
async def test_unreachable_server_fails_open_with_storage_error() -> None:
    config = StorageConfig(uri=f"mongodb://127.0.0.1:{refused_port()}/x", timeout=0.2)
    storage = MongoStorage(config)
    with pytest.raises(StorageError, match="TimeExceeded"):
        await storage.open()
    with pytest.raises(StorageError):
        await storage.ping()
    await storage.close()


class IndexesAlreadyThere:
    """A real txmongo ``Database``, except that ``ensure_index``, ``drop_index``
    and the backfills' ``distinct`` answer at once: lets a storage open without
    a server, so that each operation reaches txmongo."""

    def __init__(self, database: Any) -> None:
        self.database = database

    def __getitem__(self, name: str) -> Any:
        return _IndexesAlreadyThere(self.database[name])

    def command(self, *args: Any, **kwargs: Any) -> Any:
        return self.database.command(*args, **kwargs)


class _IndexesAlreadyThere:
    def __init__(self, collection: Any) -> None:
        self.collection = collection

    def ensure_index(self, *args: Any, **kwargs: Any) -> defer.Deferred[None]:
        return defer.succeed(None)

    def drop_index(self, *args: Any, **kwargs: Any) -> defer.Deferred[None]:
        return defer.succeed(None)

    def distinct(self, *args: Any, **kwargs: Any) -> defer.Deferred[list[Any]]:
        return defer.succeed([])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.collection, name)


@pytest_twisted.ensureDeferred
async def test_every_operation_reaches_txmongo_with_a_deadline() -> None:
    """Against a port where nothing listens, each operation must fail with
    txmongo's own TimeExceeded (wrapped): proof that every call is accepted by
    txmongo's signatures and carries a timeout."""

    async def connect(settings: MongoSettings) -> tuple[Any, Any]:
        pool, database = await mongo.connect_txmongo(settings)
        return pool, IndexesAlreadyThere(database)

    config = StorageConfig(uri=f"mongodb://127.0.0.1:{refused_port()}/x", timeout=0.3)
    storage = MongoStorage(config, connect=connect)
    await storage.open()
    operations: list[Coroutine[Any, Any, Any]] = [
        storage.ping(),
        storage.create_account(Account("A", "h", "user", T0)),
        storage.get_account("a"),
        storage.set_account_role("a", "admin"),
        storage.create_session(Session("t", "A", T0, T0)),
        storage.get_session("t"),
        storage.delete_session("t"),
        storage.delete_expired_sessions(T0),
        storage.list_sessions("a"),
        storage.delete_sessions("a"),
        storage.list_accounts(0, 10),
        storage.list_accounts(5, 10, "a"),
        storage.count_accounts(),
        storage.count_accounts("a"),
        storage.set_sanction(Sanction("ban", "A", "r", "M", T0)),
        storage.remove_sanction("ban", "a"),
        storage.get_sanction("mute", "a"),
        storage.list_sanctions("ban"),
        storage.ensure_profile("A", T0),
        storage.get_profile("a"),
        storage.update_profile("a", {"bio": "x"}),
        storage.add_xp("a", 1),
        storage.append_chat_message(new_message("lobby")),
        storage.chat_history("lobby", None, 10),
        storage.chat_history("lobby", 5, 10),
        storage.chat_since("lobby", 0, 10),
        storage.last_seq("lobby"),
        storage.get_chat_message("m"),
        storage.delete_chat_message("m"),
        storage.save_conversation(Conversation("A", "t", T0, T0)),
        storage.get_conversation("a"),
        storage.get_conversation_by_id("c"),
        storage.list_conversations("a", 10),
        storage.delete_conversations("a"),
        storage.record(UserInteraction("A", "x", T0)),
        storage.list_records(UserInteraction, "a", 10),
        storage.bump_usage("a", T0, sessions=1),
        storage.set_reaction("a", "b", "like", True),
        storage.set_reaction("a", "b", "love", False),
        storage.reactions_given("a", "b"),
        storage.list_profiles(offset=0, limit=10, sort="xp", query="a%"),
        storage.count_profiles(query="a"),
        storage.export_user("a"),
        storage.delete_user("a", "deleted-user-1"),
        storage.count_active_profiles(T0),
        storage.tally("user_actions", T0, T0 + 1, 10),
        storage.count_per_day("speech", T0, 7),
        storage.profile_histogram("seconds_per_session", [0, 60]),
    ]
    results: list[tuple[bool, Any]] = await defer.DeferredList(
        [defer.Deferred.fromCoroutine(op) for op in operations], consumeErrors=True
    )
    await storage.close()
    for (ok, failure), operation in zip(results, operations, strict=True):
        assert not ok, operation
        assert failure.check(StorageError), (operation, failure)
        assert "TimeExceeded" in str(failure.value), (operation, failure.value)


@pytest_twisted.ensureDeferred
async def test_session_key_backfill_reaches_txmongo_with_a_deadline() -> None:
    """What ``open()`` runs besides ``ensure_index``, against the real txmongo."""
    from txmongo.errors import TimeExceeded

    config = StorageConfig(uri=f"mongodb://127.0.0.1:{refused_port()}/x", timeout=0.3)
    pool, database = await mongo.connect_txmongo(MongoStorage(config).settings)
    try:
        with pytest.raises(TimeExceeded):
            await mongo.backfill_session_keys(database, 0.3)

        class OneName:
            """``distinct`` answers with one name, so that ``update_many`` is sent."""

            def __getitem__(self, name: str) -> Any:
                collection = database[name]

                class Sessions:
                    def distinct(self, *args: Any, **kwargs: Any) -> defer.Deferred[list[str]]:
                        return defer.succeed(["Alice"])

                    def __getattr__(self, attribute: str) -> Any:
                        return getattr(collection, attribute)

                return Sessions()

        with pytest.raises(TimeExceeded):
            await mongo.backfill_session_keys(OneName(), 0.3)
    finally:
        await pool.disconnect()


@pytest_twisted.ensureDeferred
async def test_conversation_upgrade_reaches_txmongo_with_a_deadline() -> None:
    """What ``open()`` runs for conversations besides ``ensure_index``, against
    the real txmongo."""
    from txmongo.errors import TimeExceeded

    config = StorageConfig(uri=f"mongodb://127.0.0.1:{refused_port()}/x", timeout=0.3)
    pool, database = await mongo.connect_txmongo(MongoStorage(config).settings)
    try:
        with pytest.raises(TimeExceeded):
            await mongo.drop_index_if_exists(database, mongo.OBSOLETE_INDEXES[0], 0.3)
        with pytest.raises(TimeExceeded):
            await mongo.backfill_conversation_ids(database, 0.3)

        class OneConversation:
            """``distinct`` answers with one id, so that ``update_one`` is sent."""

            def __getitem__(self, name: str) -> Any:
                collection = database[name]

                class Conversations:
                    def distinct(self, *args: Any, **kwargs: Any) -> defer.Deferred[list[Any]]:
                        return defer.succeed([ObjectId()])

                    def __getattr__(self, attribute: str) -> Any:
                        return getattr(collection, attribute)

                return Conversations()

        with pytest.raises(TimeExceeded):
            await mongo.backfill_conversation_ids(OneConversation(), 0.3)
    finally:
        await pool.disconnect()


# --- offline units ----------------------------------------------------------------------


def test_parse_uri() -> None:
    plain = parse_uri("mongodb://localhost:27017")
    assert (plain.uri_database, plain.database, plain.username) == (None, "bambid", None)
    assert plain.auth_source == "admin"
    full = parse_uri(
        "mongodb://us%40er:p%3Ass@h1:1,h2:2/chat%20db?replicaSet=rs&authSource=users"
        "&authMechanism=SCRAM-SHA-256"
    )
    assert full.uri_database == full.database == "chat db"
    assert (full.username, full.password) == ("us@er", "p:ss")
    assert (full.auth_source, full.auth_mechanism) == ("users", "SCRAM-SHA-256")
    srv = parse_uri("mongodb+srv://u:p@cluster0.example.net/app?retryWrites=true")
    assert (srv.database, srv.auth_source) == ("app", "app")
    for bad in ("http://x", "mongodb://", "mongodb://user:pw@"):
        with pytest.raises(ConfigError, match=r"^storage\.uri: "):
            parse_uri(bad)


def test_write_concern_from_config() -> None:
    assert write_concern_from_config(StorageConfig()).document == {"w": "majority", "j": True}
    assert write_concern_from_config(StorageConfig(write_concern="2")).document == {
        "w": 2,
        "j": True,
    }
    assert write_concern_from_config(
        StorageConfig(write_concern="dc-tags", journal=False)
    ).document == {"w": "dc-tags", "j": False}
    for unacknowledged in ("0", "", "  "):
        with pytest.raises(ConfigError, match=r"^storage\.write_concern: "):
            write_concern_from_config(StorageConfig(write_concern=unacknowledged))


def test_settings_from_config() -> None:
    config = StorageConfig(uri="mongodb://db:27017/chat", pool_size=7, timeout=2.5)
    settings = MongoStorage(config).settings
    assert (settings.database, settings.pool_size, settings.timeout) == ("chat", 7, 2.5)
    assert settings.write_concern.document == {"w": "majority", "j": True}
    assert settings.codec_options.tz_aware
    assert MongoStorage(config, database="other").settings.database == "other"
    assert MongoStorage(StorageConfig(uri="mongodb://db")).settings.database == "bambid"


def test_index_specifications() -> None:
    expected = {
        ("accounts", (("username_key", 1),), True),
        ("sessions", (("token_hash", 1),), True),
        ("sessions", (("expires_at", 1),), False),
        ("sessions", (("username_key", 1),), False),
        ("profiles", (("username_key", 1),), True),
        ("profiles", (("last_active", -1),), False),
        ("chat_messages", (("room", 1), ("seq", 1)), True),
        ("chat_messages", (("timestamp", -1),), False),
        ("chat_messages", (("username", 1),), False),
        ("ai_interactions", (("timestamp", -1),), False),
        ("ai_interactions", (("username", 1),), False),
        ("conversations", (("conversation_id", 1),), True),
        ("conversations", (("owner_key", 1), ("updated_at", -1)), False),
        ("sanctions", (("kind", 1), ("username_key", 1)), True),
        ("profiles", (("xp", -1), ("username_key", 1)), False),
        ("profiles", (("likes", -1), ("username_key", 1)), False),
        ("profiles", (("loves", -1), ("username_key", 1)), False),
        ("profiles", (("created_at", -1), ("username_key", 1)), False),
        ("profiles", (("display_name_key", 1),), False),
        (
            "chat_messages",
            (("username_key", 1), ("timestamp", 1), ("room", 1), ("seq", 1)),
            False,
        ),
        ("reactions", (("from_key", 1), ("to_key", 1), ("kind", 1)), True),
        ("reactions", (("to_key", 1), ("kind", 1)), False),
        ("user_interactions", (("timestamp", 1), ("action", 1)), False),
        ("audio_interactions", (("timestamp", 1), ("kind", 1), ("name", 1)), False),
        ("chat_messages", (("timestamp", 1), ("message_type", 1)), False),
    } | {
        (name, (("username_key", 1), ("timestamp", -1)), False)
        for name in (
            "ai_interactions",
            "audio_interactions",
            "user_interactions",
            "clicked_urls",
            "user_tag_interactions",
        )
    }
    assert {(i.collection, i.keys, i.unique) for i in INDEXES} == expected
    assert len(INDEXES) == len(expected)
    assert IndexSpec("chat_messages", (("room", 1), ("seq", 1))).name == "room_1_seq_1"


def test_times() -> None:
    assert mongo.to_datetime(T0 + 0.125) == dt.datetime(2023, 11, 14, 22, 13, 20, 125000, dt.UTC)
    assert mongo.from_datetime(mongo.to_datetime(T0 + 0.125)) == T0 + 0.125
    assert mongo.from_datetime(dt.datetime(1970, 1, 1, 0, 0, 1)) == 1.0  # naive is UTC
    assert mongo.from_datetime(mongo.to_datetime(1.0004)) == 1.0
    assert mongo.from_datetime(mongo.to_datetime(1.0006)) == 1.001


def round_trip(doc: dict[str, Any]) -> dict[str, Any]:
    return as_bson(doc)


@fast
@given(
    username=texts,
    text=texts,
    timestamp=times,
    mentions=st.lists(st.builds(Mention, texts, st.integers(0, 2**31)), max_size=3),
    links=st.lists(st.builds(LinkRef, texts, st.booleans()), max_size=3),
    reply_to=st.none() | texts,
)
def test_chat_message_documents(
    username: str,
    text: str,
    timestamp: float,
    mentions: list[Mention],
    links: list[LinkRef],
    reply_to: str | None,
) -> None:
    message = ChatMessage(
        uuid.uuid4().hex,
        "lobby",
        7,
        username,
        text,
        timestamp,
        "user",
        True,
        tuple(mentions),
        tuple(links),
        reply_to,
    )
    doc = mongo.chat_message_to_document(message)
    assert isinstance(doc["timestamp"], dt.datetime)
    assert doc["deleted"] is False
    assert mongo.chat_message_from_document(round_trip(doc)) == message
    deleted = attrs.evolve(message, deleted=True, text="", mentions=(), links=())
    marked = {**round_trip(doc), **mongo.chat_message_deletion()}
    assert mongo.chat_message_from_document(round_trip(marked)) == deleted
    old = round_trip(doc)
    del old["deleted"]  # written before messages could be deleted
    assert mongo.chat_message_from_document(old) == message


@fast
@given(
    preferences=plain_dicts,
    bio=texts,
    created=times,
    active=times,
    xp=st.integers(0, 2**62),
    stats=st.builds(
        UsageStats,
        st.integers(0, 2**31),
        st.floats(0, 1e9),
        st.integers(0, 9),
        st.integers(0, 9),
        st.integers(0, 2**31),
    ),
)
def test_profile_documents(
    preferences: dict[str, Any],
    bio: str,
    created: float,
    active: float,
    xp: int,
    stats: UsageStats,
) -> None:
    profile = Profile(
        username="Ünïcode",
        created_at=created,
        last_active=active,
        xp=xp,
        bio=bio,
        social_links=SocialLinks(twitter="@x", custom=bio),
        likes=3,
        loves=4,
        profile_style="neon",
        visibility="private",
        preferences=preferences,
        usage_stats=stats,
    )
    doc = mongo.profile_to_document(profile)
    assert doc["username_key"] == "ünïcode"
    assert doc["display_name_key"] == profile.display_name.casefold()
    assert mongo.profile_from_document(round_trip(doc)) == profile


def test_profile_defaults_for_sparse_documents() -> None:
    doc = {
        "username": "Old",
        "created_at": mongo.to_datetime(T0),
        "last_active": mongo.to_datetime(T0),
    }
    assert mongo.profile_from_document(round_trip(doc)) == Profile("Old", T0, T0)


def test_profile_update_documents() -> None:
    update = mongo.profile_update_document(
        {
            "bio": "b",
            "last_active": T0,
            "social_links": SocialLinks(reddit="r"),
            "usage_stats": UsageStats(messages_posted=2),
            "preferences": {"a": 1},
        }
    )
    assert update["last_active"] == mongo.to_datetime(T0)
    assert update["social_links"]["reddit"] == "r"
    assert update["usage_stats"]["messages_posted"] == 2
    assert update["preferences"] == {"a": 1}
    assert "display_name_key" not in update
    renamed = mongo.profile_update_document({"display_name": "Straße Ψ"})
    assert renamed == {"display_name": "Straße Ψ", "display_name_key": "strasse ψ"}
    bad_fields: list[dict[str, Any]] = [
        {"xp": 1},
        {"bio": 3},
        {"social_links": {}},
        {"last_active": True},
    ]
    for bad in bad_fields:
        with pytest.raises(ValueError):
            mongo.profile_update_document(bad)


@fast
@given(metadata=plain_dicts, title=texts, when=times, content=texts)
def test_conversation_and_account_documents(
    metadata: dict[str, Any], title: str, when: float, content: str
) -> None:
    conversation = Conversation(
        "Owner",
        title,
        when,
        when,
        (ConversationTurn("user", content, when), ConversationTurn("assistant", "ok", when)),
        metadata,
    )
    doc = mongo.conversation_to_document(conversation)
    assert doc["owner_key"] == "owner"
    assert doc["conversation_id"] == conversation.conversation_id
    assert mongo.conversation_from_document(round_trip(doc)) == conversation

    account = Account("Owner", "$argon2id$…", "admin", when)
    assert mongo.account_from_document(round_trip(mongo.account_to_document(account))) == account
    session = Session("f" * 64, "Owner", when, (round(when * 1000) + 60_000) / 1000)
    assert mongo.session_from_document(round_trip(mongo.session_to_document(session))) == session
    guest = attrs.evolve(session, username="Guest-Ü", guest=True)
    doc = mongo.session_to_document(guest)
    assert (doc["username_key"], doc["guest"]) == ("guest-ü", True)
    assert mongo.session_from_document(round_trip(doc)) == guest
    del doc["guest"], doc["username_key"]  # written before guest sessions
    assert mongo.session_from_document(round_trip(doc)) == session.__class__(
        "f" * 64, "Guest-Ü", session.created_at, session.expires_at
    )


@fast
@given(
    kind=st.sampled_from(["ban", "mute"]),
    reason=texts,
    by=texts,
    created=times,
    expires=st.none() | times,
)
def test_sanction_documents(
    kind: str, reason: str, by: str, created: float, expires: float | None
) -> None:
    sanction = Sanction(kind, "ÜBER", reason, by, created, expires)
    doc = mongo.sanction_to_document(sanction)
    assert (doc["kind"], doc["username_key"]) == (kind, "über")
    assert isinstance(doc["created_at"], dt.datetime)
    assert (doc["expires_at"] is None) == (expires is None)
    assert mongo.sanction_from_document(round_trip(doc)) == sanction


@fast
@given(
    text=st.text(
        alphabet=st.sampled_from(list("\\^$.|?*+()[]{}-#\x00 aß")) | st.characters(codec="utf-8")
    )
)
def test_regex_literals_match_only_themselves(text: str) -> None:
    pattern = mongo.regex_literal(text)
    assert "\x00" not in pattern  # a $regex string must hold no NUL
    assert re.fullmatch(pattern, text) is not None
    assert re.search(pattern, f"x{text}y") is not None


def test_profile_filters() -> None:
    assert mongo.profile_filter("", False) == {}
    assert mongo.profile_filter("", True) == {"visibility": {"$ne": "private"}}
    assert mongo.profile_filter("A.ß", False) == {
        "$or": [
            {"username_key": {"$regex": "a\\.ss"}},
            {"display_name_key": {"$regex": "a\\.ss"}},
        ]
    }


def test_key_prefix_queries() -> None:
    assert mongo.key_prefix_query("") == {}
    assert mongo.key_prefix_query("Al") == {"username_key": {"$gte": "al", "$lt": "am"}}
    assert mongo.key_prefix_query("STRAß") == {"username_key": {"$gte": "strass", "$lt": "strast"}}
    # The last character cannot be bumped: bump the one before and drop it.
    assert mongo.key_prefix_query("a\U0010ffff") == {
        "username_key": {"$gte": "a\U0010ffff", "$lt": "b"}
    }
    # No successor at all: everything from the prefix on.
    assert mongo.key_prefix_query("\U0010ffff") == {"username_key": {"$gte": "\U0010ffff"}}
    # Surrogates are skipped: they are no characters of a UTF-8 string.
    assert mongo.key_prefix_query("a\ud7ff") == {
        "username_key": {"$gte": "a\ud7ff", "$lt": "a\ue000"}
    }


@fast
@given(text=texts, details=plain_dicts, when=times, error=st.none() | texts)
def test_log_documents(text: str, details: dict[str, Any], when: float, error: str | None) -> None:
    entries: list[LogRecord] = [
        AIInteraction("Amy", "chat", text, text[::-1], 1.5, when, "conn", error),
        AudioInteraction("Amy", "tts", text, when, details),
        UserInteraction("Amy", "click", when, details),
        ClickedUrl("Amy", text, when, error),
        UserTagInteraction("amy", "Bob", "lobby", text, when),
    ]
    for entry in entries:
        doc = mongo.log_to_document(entry)
        assert doc["username_key"] == "amy"
        codec = mongo.LOG_CODECS[type(entry)]
        assert codec.from_document(round_trip(doc)) == entry
    assert {type(e) for e in entries} == set(mongo.LOG_CODECS)


def test_unknown_log_kind() -> None:
    @attrs.frozen
    class Other:
        collection = "others"

    with pytest.raises(ValueError):
        mongo.log_to_document(Other())  # type: ignore[arg-type]

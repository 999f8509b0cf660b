"""argon2id password hashing on its own bounded thread pool."""

from __future__ import annotations

import threading
from typing import Any, cast

import argon2
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorFromThreads

from bambid.auth.passwords import PasswordHashing, PasswordsUnavailable

REACTOR = cast(IReactorFromThreads, reactor)


def fast_hasher(time_cost: int = 1) -> argon2.PasswordHasher:
    """Cheap parameters: these tests are about where and how hashing runs."""
    return argon2.PasswordHasher(
        time_cost=time_cost, memory_cost=8, parallelism=1, type=argon2.Type.ID
    )


class RecordingHasher(argon2.PasswordHasher):
    """Remembers the thread of every hash and verification."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1, type=argon2.Type.ID)
        self.threads: list[int] = []

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.threads.append(threading.get_ident())
        return super().hash(password, salt=salt)

    def verify(self, hash: str | bytes, password: str | bytes) -> Any:
        self.threads.append(threading.get_ident())
        return super().verify(hash, password)


@pytest.fixture
def hasher() -> RecordingHasher:
    return RecordingHasher()


@pytest_twisted.async_yield_fixture
async def passwords(hasher: RecordingHasher) -> Any:
    hashing = PasswordHashing(REACTOR, threads=2, hasher=hasher)
    hashing.start()
    yield hashing
    await hashing.stop()


def test_the_default_is_argon2id() -> None:
    hashing = PasswordHashing(REACTOR)
    assert hashing.hasher.type is argon2.Type.ID
    assert hashing.pool.max == 2


@pytest_twisted.ensureDeferred
async def test_hash_and_verify_run_off_the_reactor_thread(
    passwords: PasswordHashing, hasher: RecordingHasher
) -> None:
    reactor_thread = threading.get_ident()
    encoded = await passwords.hash("correct horse")
    assert encoded.startswith("$argon2id$")
    assert await passwords.verify(encoded, "correct horse") is True
    assert await passwords.verify(encoded, "wrong horse") is False
    assert len(hasher.threads) == 3
    assert reactor_thread not in hasher.threads


@pytest_twisted.ensureDeferred
async def test_salts_differ(passwords: PasswordHashing) -> None:
    assert await passwords.hash("same") != await passwords.hash("same")


@pytest_twisted.ensureDeferred
async def test_a_malformed_hash_is_a_mismatch(passwords: PasswordHashing) -> None:
    assert await passwords.verify("not a hash", "anything") is False
    assert passwords.needs_rehash("not a hash") is True


@pytest_twisted.ensureDeferred
async def test_rehash_is_needed_when_parameters_change(passwords: PasswordHashing) -> None:
    encoded = await passwords.hash("correct horse")
    assert passwords.needs_rehash(encoded) is False
    stronger = PasswordHashing(REACTOR, hasher=fast_hasher(time_cost=2))
    assert stronger.needs_rehash(encoded) is True


@pytest_twisted.ensureDeferred
async def test_the_pool_is_bounded(passwords: PasswordHashing, hasher: RecordingHasher) -> None:
    pending = [Deferred.fromCoroutine(passwords.hash(f"password {i}")) for i in range(8)]
    assert len(await gatherResults(pending)) == 8
    assert len(set(hasher.threads)) <= 2
    assert passwords.pool.max == 2


@pytest_twisted.ensureDeferred
async def test_stop_waits_for_work_in_flight_then_refuses(hasher: RecordingHasher) -> None:
    hashing = PasswordHashing(REACTOR, threads=1, hasher=hasher)
    with pytest.raises(PasswordsUnavailable):
        await hashing.hash("before start")
    hashing.start()
    in_flight = Deferred.fromCoroutine(hashing.hash("in flight"))
    await hashing.stop()
    assert in_flight.called
    assert (await in_flight).startswith("$argon2id$")
    assert not any(thread.is_alive() for thread in hashing.pool.threads)
    with pytest.raises(PasswordsUnavailable):
        await hashing.hash("after stop")

"""Password hashing with argon2id, off the reactor thread.

argon2id is deliberately slow and memory-hungry (the defaults of argon2-cffi,
RFC 9106's low-memory profile: 64 MiB, 3 passes, 4 lanes), so every hash and
verification runs on a small dedicated thread pool: a burst of logins queues
there instead of stalling the reactor, and at most ``threads`` hashes run at
once whatever the load. The pool is started and stopped with the service.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")

#: Threads hashing at the same time; each uses ``memory_cost`` KiB while it runs.
DEFAULT_THREADS = 2


class PasswordsUnavailable(Exception):
    """The hashing pool is not running (before start or after stop)."""


def default_hasher() -> argon2.PasswordHasher:
    """argon2id with argon2-cffi's default (RFC 9106 low-memory) parameters."""
    return argon2.PasswordHasher(type=argon2.Type.ID)


class PasswordHashing:
    """Hashes and verifies passwords on a bounded thread pool.

    ``start()`` before use; ``stop()`` refuses new work, waits for the work in
    flight, then joins the (by then idle) threads, so it never blocks the
    reactor on a running hash. Calls while stopped raise ``PasswordsUnavailable``.
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        threads: int = DEFAULT_THREADS,
        hasher: argon2.PasswordHasher | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.reactor = reactor
        self.hasher = hasher if hasher is not None else default_hasher()
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name="bambid-passwords")
        self._running = False
        self._in_flight: set[Deferred[Any]] = set()

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        if not self._running:
            self.pool.start()
            self._running = True

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        if self._in_flight:
            await defer.DeferredList(list(self._in_flight), consumeErrors=True)
        self.pool.stop()

    async def hash(self, password: str) -> str:
        """The argon2id encoded hash of ``password`` (with a fresh salt)."""
        return await self._in_pool(self.hasher.hash, password)

    async def verify(self, encoded: str, password: str) -> bool:
        """Whether ``password`` matches ``encoded``. A malformed hash is a
        mismatch, never an exception."""
        return await self._in_pool(self._verify, encoded, password)

    def needs_rehash(self, encoded: str) -> bool:
        """Whether ``encoded`` was made with other parameters than ours (cheap)."""
        try:
            return self.hasher.check_needs_rehash(encoded)
        except InvalidHashError:
            return True

    def _verify(self, encoded: str, password: str) -> bool:
        try:
            return self.hasher.verify(encoded, password)
        except (VerificationError, InvalidHashError):
            return False

    async def _in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._running:
            raise PasswordsUnavailable("password hashing is not running")
        d: Deferred[T] = deferToThreadPool(self.reactor, self.pool, fn, *args)
        self._in_flight.add(d)
        try:
            return await d
        finally:
            self._in_flight.discard(d)

"""The on-disk cache of synthesised clips, addressed by what made them.

A clip's key is the first 32 hex characters of the SHA-256 of the canonical
JSON ``[backend, voice, round(speed, 2), format, text]`` (:meth:`AudioCache.key_for`):
the same sentence spoken the same way is synthesised once and then served from
``<directory>/<key[:2]>/<key>.<format>``. Because the name says everything
about the content, a clip never changes: the HTTP route serves it as immutable.

The cache holds at most ``max_bytes`` of clips, evicting the least recently used
first. Recency lives in memory (an ordered index built at :meth:`~AudioCache.open`)
and on disk as each file's modification time, so it survives a restart: every
store and every hit stamps the file with a strictly increasing time.

All file work happens on the reactor's thread pool, never on the reactor
thread. A clip is written to a temporary name in its own directory and renamed
into place, so a reader never sees half a clip; temporary leftovers of a crash
(and empty files) are deleted by ``open``. Files are not fsynced: a clip lost
in a power cut is simply synthesised again. Recency stamps and deletions are
fire-and-forget (errors logged, never raised; :meth:`~AudioCache.idle` waits for
them). A clip whose file vanished behind the cache's back is dropped from the
index as soon as that is noticed (its recency stamp fails, or :meth:`~AudioCache.forget`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from bambid.voice.backend import MEDIA_TYPES, Audio

__all__ = ["AudioCache"]

T = TypeVar("T")

_KEY = re.compile(r"[0-9a-f]{32}")
_SUBDIRECTORY = re.compile(r"[0-9a-f]{2}")
_CLIP = re.compile(r"([0-9a-f]{32})\.([a-z0-9]+)")
_TEMP_SUFFIX = ".tmp"

_log = Logger()


@attrs.define
class _Entry:
    format: str
    size: int
    #: Tells this version of the entry from a later store of the same key.
    serial: int


@attrs.frozen
class _Found:
    mtime_ns: int
    key: str
    format: str
    size: int


def _scan(directory: Path) -> tuple[list[_Found], int]:
    """(In a thread.) The clips under ``directory``, least recently used first, and
    how many leftovers (temporary or empty files) were deleted."""
    directory.mkdir(parents=True, exist_ok=True)
    clips: dict[str, _Found] = {}
    removed = 0

    def remove(path: str) -> None:
        nonlocal removed
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed += 1

    with os.scandir(directory) as top:
        subdirectories = [
            entry.path
            for entry in top
            if _SUBDIRECTORY.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)
        ]
    for subdirectory in subdirectories:
        prefix = os.path.basename(subdirectory)
        with os.scandir(subdirectory) as files:
            for f in files:
                if not f.is_file(follow_symlinks=False):
                    continue
                if f.name.endswith(_TEMP_SUFFIX):
                    remove(f.path)
                    continue
                m = _CLIP.fullmatch(f.name)
                if m is None or m[2] not in MEDIA_TYPES or m[1][:2] != prefix:
                    continue  # not ours: left alone, not counted
                st = f.stat(follow_symlinks=False)
                if st.st_size == 0:
                    remove(f.path)
                    continue
                found = _Found(st.st_mtime_ns, m[1], m[2], st.st_size)
                other = clips.get(found.key)
                if other is not None:  # the same key in two formats: keep the newer
                    older, found = sorted((other, found), key=lambda c: c.mtime_ns)
                    remove(os.path.join(subdirectory, f"{older.key}.{older.format}"))
                clips[found.key] = found
    return sorted(clips.values(), key=lambda c: (c.mtime_ns, c.key)), removed


def _write(path: Path, data: bytes, mtime_ns: int) -> None:
    """(In a thread.) ``data`` at ``path``, atomically, with that modification time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.utime(temp, ns=(mtime_ns, mtime_ns))
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _done(d: Deferred[Any]) -> Deferred[None]:
    """A Deferred that fires (with None) when ``d`` has, leaving ``d``'s result alone."""
    waiter: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        waiter.callback(None)
        return result

    d.addBoth(fire)
    return waiter


class AudioCache:
    """Clips on disk, by key, within ``max_bytes``, least recently used evicted first.

    :meth:`open` once before use (it creates the directory and indexes what is
    there). The index and counters live on the reactor thread; call every
    method from it.
    """

    def __init__(self, directory: Path, max_bytes: int, reactor: Any) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._reactor = reactor
        self._index: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._serial = 0
        self._last_ns = 0
        self._background: set[Deferred[Any]] = set()
        self._deleting: dict[str, Deferred[None]] = {}

    # --- keys -----------------------------------------------------------------------------

    @staticmethod
    def key_for(backend: str, voice: str, speed: float, format: str, text: str) -> str:
        """The key of ``text`` spoken by ``backend``'s ``voice`` at ``speed`` in
        ``format``: 32 lowercase hex characters. Speeds equal to two decimals
        (``1``, ``1.0``, ``1.001``) share a key. Raises ``ValueError`` for a
        format not in ``MEDIA_TYPES`` or a speed that is not a finite number."""
        _check_format(format)
        if isinstance(speed, bool) or not math.isfinite(speed):
            raise ValueError(f"speed must be a finite number, not {speed!r}")
        canonical = json.dumps(
            [backend, voice, float(round(speed, 2)), format, text],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]

    @staticmethod
    def is_key(name: str) -> bool:
        """Whether ``name`` is a key (32 lowercase hex characters): anything else,
        such as ``../x``, is never looked up on disk."""
        return isinstance(name, str) and _KEY.fullmatch(name) is not None

    # --- use ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the directory, index the clips in it (recency from their
        modification times), delete temporary leftovers and empty files, and
        evict down to ``max_bytes`` if the cap shrank. Raises ``OSError`` when
        the directory cannot be created or read."""
        found, removed = await self._in_thread(_scan, self.directory)
        self._index.clear()
        self._bytes = 0
        for clip in found:
            self._index[clip.key] = _Entry(clip.format, clip.size, self._next_serial())
            self._bytes += clip.size
            self._last_ns = max(self._last_ns, clip.mtime_ns)
        evicted = self._evict(keep=None)
        _log.info(
            "audio cache {directory}: {entries} clips, {bytes} bytes"
            " ({removed} leftovers deleted, {evicted} evicted)",
            directory=str(self.directory),
            entries=len(self._index),
            bytes=self._bytes,
            removed=removed,
            evicted=evicted,
        )

    def lookup(self, key: str, format: str) -> Path | None:
        """The file of the clip ``key`` in ``format``, or None when it is not
        cached. A hit makes it the most recently used. The path is normally
        there; if the file was deleted behind the cache's back the entry is
        dropped when the recency stamp fails (see :meth:`forget`). Raises
        ``ValueError`` for a name that is not a key or an unknown format."""
        _check_key(key)
        _check_format(format)
        entry = self._index.get(key)
        if entry is None or entry.format != format:
            self._misses += 1
            return None
        self._hits += 1
        self._index.move_to_end(key)
        path = self._path(key, format)
        mtime_ns = self._next_ns()
        serial = entry.serial
        d = self._in_thread(os.utime, path, ns=(mtime_ns, mtime_ns))
        d.addErrback(self._touch_failed, key, serial)
        self._track(d, "could not mark audio clip {key} as used", key)
        return path

    async def store(self, key: str, audio: Audio) -> Path:
        """Write ``audio`` as the clip ``key`` (in a thread, atomically) and make it
        the most recently used, then evict least recently used clips until the
        total is within ``max_bytes``, never this one (a single clip larger than
        the cap stays until the next store). Returns its path. Raises
        ``ValueError`` for a bad key or format, ``OSError`` when writing fails."""
        _check_key(key)
        _check_format(audio.format)
        self._drop(key)  # not evicted (deleted) while it is rewritten
        pending = self._deleting.get(key)
        if pending is not None:  # an older copy is being deleted: let it finish first
            await _done(pending)
        path = self._path(key, audio.format)
        await self._in_thread(_write, path, audio.data, self._next_ns())
        self._drop(key)
        self._index[key] = _Entry(audio.format, len(audio.data), self._next_serial())
        self._bytes += len(audio.data)
        self._evict(keep=key)
        return path

    def forget(self, key: str) -> None:
        """Drop ``key`` from the index without touching the disk: for a caller
        that found its file missing."""
        if self._drop(key):
            _log.warn("audio clip {key} vanished from the cache directory", key=key)

    def stats(self) -> dict[str, int]:
        """``entries``, ``bytes``, ``max_bytes``, and since the start ``hits``,
        ``misses``, ``evictions``."""
        return {
            "entries": len(self._index),
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "hits": self._hits,
            "misses": self._misses,
            "evictions": self._evictions,
        }

    async def idle(self) -> None:
        """Wait until no background work (recency stamps, deletions) is in
        flight: before shutting down, and in tests."""
        while self._background:
            await defer.DeferredList([_done(d) for d in list(self._background)])

    # --- internals --------------------------------------------------------------------------

    def _path(self, key: str, format: str) -> Path:
        return self.directory / key[:2] / f"{key}.{format}"

    def _in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        pool = self._reactor.getThreadPool()
        d: Deferred[T] = deferToThreadPool(self._reactor, pool, fn, *args, **kwargs)
        return d

    def _track(self, d: Deferred[Any], message: str, key: str) -> None:
        """Fire and forget ``d``: log its failure, let :meth:`idle` wait for it."""
        self._background.add(d)

        def failed(failure: Failure) -> None:
            _log.failure(message, failure, key=key)

        def finished(_: object) -> None:
            self._background.discard(d)

        d.addErrback(failed)
        d.addBoth(finished)

    def _touch_failed(self, failure: Failure, key: str, serial: int) -> Failure | None:
        if not failure.check(FileNotFoundError):
            return failure
        entry = self._index.get(key)
        if entry is not None and entry.serial == serial:  # not stored again since
            self.forget(key)
        return None

    def _drop(self, key: str) -> bool:
        entry = self._index.pop(key, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        return True

    def _evict(self, keep: str | None) -> int:
        """Evict the least recently used clips until within the cap, keeping
        ``keep`` (or, at open, the most recent clip). Returns how many."""
        evicted = 0
        while self._bytes > self.max_bytes and len(self._index) > 1:
            key = next(iter(self._index))
            if key == keep:
                break
            entry = self._index.pop(key)
            self._bytes -= entry.size
            self._evictions += 1
            evicted += 1
            d = self._in_thread(_unlink, self._path(key, entry.format))
            self._deleting[key] = d
            d.addBoth(self._deleted, key, d)
            self._track(d, "could not delete evicted audio clip {key}", key)
        return evicted

    def _deleted(self, result: object, key: str, d: Deferred[None]) -> object:
        if self._deleting.get(key) is d:
            del self._deleting[key]
        return result

    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def _next_ns(self) -> int:
        """A modification time for a file just used: the reactor's clock, but
        always later than the previous one, so recency order survives a restart
        even for uses within the same clock tick."""
        ns = max(int(self._reactor.seconds() * 1e9), self._last_ns + 1)
        self._last_ns = ns
        return ns


def _check_key(key: str) -> None:
    if not AudioCache.is_key(key):
        raise ValueError(f"not an audio cache key: {key!r}")


def _check_format(format: str) -> None:
    if format not in MEDIA_TYPES:
        raise ValueError(f"unknown audio format {format!r}")

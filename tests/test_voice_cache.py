"""The on-disk audio cache: keys, atomic stores, LRU eviction, restarts, leftovers.

Real files in ``tmp_path``, the real reactor and its thread pool.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from bambid.voice.backend import Audio
from bambid.voice.cache import AudioCache


def key(text: str, format: str = "mp3") -> str:
    return AudioCache.key_for("kokoro", "af_heart", 1.0, format, text)


def clip(size: int, format: str = "mp3", fill: bytes = b"a") -> Audio:
    return Audio(fill * size, format)


def files(directory: Path) -> set[str]:
    """The names of every file under ``directory``."""
    return {p.name for p in directory.rglob("*") if p.is_file()}


async def opened(directory: Path, max_bytes: int) -> AudioCache:
    cache = AudioCache(directory, max_bytes, reactor)
    await cache.open()
    return cache


# --- keys ----------------------------------------------------------------------------------------


def test_the_key_is_a_hash_of_the_canonical_description() -> None:
    canonical = '["kokoro","af_heart",1.0,"mp3","Breathe in. ☺"]'
    expected = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    assert AudioCache.key_for("kokoro", "af_heart", 1.0, "mp3", "Breathe in. ☺") == expected
    assert AudioCache.is_key(expected)


def test_the_key_is_stable_and_sensitive_to_every_field() -> None:
    base = ("kokoro", "af_heart", 1.0, "mp3", "Breathe in.")
    k = AudioCache.key_for(*base)
    assert AudioCache.key_for(*base) == k
    # speeds equal to two decimals share a key
    assert AudioCache.key_for("kokoro", "af_heart", 1, "mp3", "Breathe in.") == k
    assert AudioCache.key_for("kokoro", "af_heart", 1.004, "mp3", "Breathe in.") == k
    others = [
        ("espeak", "af_heart", 1.0, "mp3", "Breathe in."),
        ("kokoro", "bf_emma", 1.0, "mp3", "Breathe in."),
        ("kokoro", "af_heart", 1.25, "mp3", "Breathe in."),
        ("kokoro", "af_heart", 1.01, "mp3", "Breathe in."),
        ("kokoro", "af_heart", 1.0, "wav", "Breathe in."),
        ("kokoro", "af_heart", 1.0, "mp3", "Breathe in"),
        ("kokoro", "af_heart", 1.0, "mp3", "breathe in."),
        # no ambiguity from joining fields
        ("kokoro", "af_heart,", 1.0, "mp3", "Breathe in."),
    ]
    keys = {AudioCache.key_for(*other) for other in others}
    assert len(keys) == len(others) and k not in keys


def test_key_for_refuses_unknown_formats_and_odd_speeds() -> None:
    with pytest.raises(ValueError):
        AudioCache.key_for("kokoro", "af_heart", 1.0, "pcm", "x")
    with pytest.raises(ValueError):
        AudioCache.key_for("kokoro", "af_heart", float("nan"), "mp3", "x")
    with pytest.raises(ValueError):
        AudioCache.key_for("kokoro", "af_heart", float("inf"), "mp3", "x")


def test_is_key_refuses_anything_but_32_lowercase_hex_characters() -> None:
    good = key("Relax.")
    assert AudioCache.is_key(good)
    for bad in (
        "../x",
        "../" + good[3:],
        good.upper(),
        good[:31],
        good + "0",
        good[:31] + "g",
        good + "\n",
        good[:16] + "/" + good[17:],
        "",
    ):
        assert not AudioCache.is_key(bad), bad


# --- store and lookup ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_store_then_lookup(tmp_path: Path) -> None:
    cache = await opened(tmp_path / "tts", 1000)
    k = key("Breathe in.")
    assert cache.lookup(k, "mp3") is None
    path = await cache.store(k, Audio(b"ID3 clip bytes", "mp3"))
    assert path == tmp_path / "tts" / k[:2] / f"{k}.mp3"
    assert path.read_bytes() == b"ID3 clip bytes"
    assert cache.lookup(k, "mp3") == path
    assert cache.lookup(k, "wav") is None  # the same name in another format is not this clip
    assert cache.lookup(key("Other."), "mp3") is None
    await cache.idle()
    assert files(tmp_path / "tts") == {f"{k}.mp3"}  # no temporary file left behind
    assert cache.stats() == {
        "entries": 1,
        "bytes": 14,
        "max_bytes": 1000,
        "hits": 1,
        "misses": 3,
        "evictions": 0,
    }


@pytest_twisted.ensureDeferred
async def test_bad_keys_and_formats_are_refused(tmp_path: Path) -> None:
    cache = await opened(tmp_path, 1000)
    with pytest.raises(ValueError):
        cache.lookup("../etc/passwd", "mp3")
    with pytest.raises(ValueError):
        cache.lookup(key("x"), "exe")
    with pytest.raises(ValueError):
        await cache.store("../x", clip(3))
    with pytest.raises(ValueError):
        await cache.store(key("x"), clip(3, "pcm"))
    assert files(tmp_path) == set()


@pytest_twisted.ensureDeferred
async def test_storing_again_replaces_the_clip(tmp_path: Path) -> None:
    cache = await opened(tmp_path, 1000)
    k = key("Again.")
    await cache.store(k, clip(10))
    path = await cache.store(k, clip(4, fill=b"b"))
    assert path.read_bytes() == b"bbbb"
    assert cache.stats()["entries"] == 1 and cache.stats()["bytes"] == 4


# --- eviction ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_least_recently_used_clip_is_evicted_first(tmp_path: Path) -> None:
    cache = await opened(tmp_path, 30)
    a, b, c, d, e = (key(t) for t in "ABCDE")
    for k in (a, b, c):
        await cache.store(k, clip(10))
    assert cache.lookup(a, "mp3") is not None  # a is now the most recently used
    await cache.store(d, clip(10))  # 40 > 30: b goes
    assert cache.lookup(b, "mp3") is None
    assert [cache.lookup(k, "mp3") is not None for k in (a, c, d)] == [True, True, True]
    await cache.store(e, clip(10))  # order now a, c, d, e: a goes
    assert cache.lookup(a, "mp3") is None
    await cache.idle()
    assert files(tmp_path) == {f"{k}.mp3" for k in (c, d, e)}
    stats = cache.stats()
    assert (stats["entries"], stats["bytes"], stats["evictions"]) == (3, 30, 2)


@pytest_twisted.ensureDeferred
async def test_the_cap_is_respected(tmp_path: Path) -> None:
    cache = await opened(tmp_path, 100)
    for i in range(30):
        await cache.store(key(f"Sentence {i}."), clip(7 + i % 5))
        assert cache.stats()["bytes"] <= 100
    await cache.idle()
    on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert on_disk == cache.stats()["bytes"] <= 100
    assert len(files(tmp_path)) == cache.stats()["entries"]


@pytest_twisted.ensureDeferred
async def test_a_clip_larger_than_the_cap_stays_until_the_next_store(tmp_path: Path) -> None:
    cache = await opened(tmp_path, 10)
    small, big, other = key("small"), key("big"), key("other")
    await cache.store(small, clip(5))
    await cache.store(big, clip(50))
    assert cache.lookup(big, "mp3") is not None
    assert cache.lookup(small, "mp3") is None
    assert cache.stats()["bytes"] == 50
    await cache.store(other, clip(5))
    assert cache.lookup(big, "mp3") is None
    assert cache.lookup(other, "mp3") is not None
    await cache.idle()
    assert files(tmp_path) == {f"{other}.mp3"}


@pytest_twisted.ensureDeferred
async def test_a_clip_stored_again_right_after_its_eviction_survives(tmp_path: Path) -> None:
    cache = await opened(tmp_path, 10)
    a, b = key("a"), key("b")
    await cache.store(a, clip(10))
    await cache.store(b, clip(10))  # evicts a: its file is being deleted in a thread
    await cache.store(a, clip(10, fill=b"z"))  # evicts b
    await cache.idle()
    assert files(tmp_path) == {f"{a}.mp3"}
    assert (tmp_path / a[:2] / f"{a}.mp3").read_bytes() == b"z" * 10


# --- restarts ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_restart_keeps_the_clips_and_their_recency(tmp_path: Path) -> None:
    first = await opened(tmp_path, 30)
    a, b, c, d = (key(t) for t in "ABCD")
    for k in (a, b, c):
        await first.store(k, clip(10))
    first.lookup(a, "mp3")  # a after c
    await first.idle()

    second = await opened(tmp_path, 30)
    assert second.stats()["entries"] == 3 and second.stats()["bytes"] == 30
    await second.store(d, clip(10))  # b is the least recently used
    assert second.lookup(b, "mp3") is None
    assert all(second.lookup(k, "mp3") is not None for k in (a, c, d))
    await second.idle()
    assert files(tmp_path) == {f"{k}.mp3" for k in (a, c, d)}


@pytest_twisted.ensureDeferred
async def test_opening_with_a_smaller_cap_evicts_the_oldest(tmp_path: Path) -> None:
    first = await opened(tmp_path, 100)
    a, b, c = (key(t) for t in "ABC")
    for k in (a, b, c):
        await first.store(k, clip(10))
    second = await opened(tmp_path, 15)
    assert second.lookup(c, "mp3") is not None
    assert second.lookup(a, "mp3") is None and second.lookup(b, "mp3") is None
    await second.idle()
    assert files(tmp_path) == {f"{c}.mp3"}
    assert second.stats()["evictions"] == 2


@pytest_twisted.ensureDeferred
async def test_open_deletes_leftovers_and_ignores_foreign_files(tmp_path: Path) -> None:
    k, empty = key("kept"), key("empty")
    (tmp_path / k[:2]).mkdir()
    (tmp_path / k[:2] / f"{k}.wav").write_bytes(b"RIFF....")
    (tmp_path / k[:2] / f".{k}.wav.x1y2z3.tmp").write_bytes(b"half a cl")
    (tmp_path / empty[:2]).mkdir(exist_ok=True)
    (tmp_path / empty[:2] / f"{empty}.mp3").write_bytes(b"")
    (tmp_path / "README").write_text("mine")
    (tmp_path / k[:2] / "notes.txt").write_text("mine too")
    cache = await opened(tmp_path, 1000)
    assert files(tmp_path) == {f"{k}.wav", "README", "notes.txt"}
    assert cache.stats()["entries"] == 1 and cache.stats()["bytes"] == 8
    assert cache.lookup(k, "wav") == tmp_path / k[:2] / f"{k}.wav"
    assert cache.lookup(empty, "mp3") is None
    await cache.idle()


@pytest_twisted.ensureDeferred
async def test_open_creates_the_directory(tmp_path: Path) -> None:
    cache = await opened(tmp_path / "var" / "tts-cache", 1000)
    assert (tmp_path / "var" / "tts-cache").is_dir()
    assert cache.stats()["entries"] == 0


# --- files that vanish ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_vanished_file_is_dropped_when_noticed(tmp_path: Path) -> None:
    cache = await opened(tmp_path, 1000)
    k = key("Gone.")
    path = await cache.store(k, clip(10))
    os.unlink(path)
    cache.lookup(k, "mp3")  # its recency stamp fails in the thread
    await cache.idle()
    assert cache.lookup(k, "mp3") is None
    assert cache.stats()["entries"] == 0 and cache.stats()["bytes"] == 0
    # and it can be made again
    await cache.store(k, clip(3))
    assert cache.lookup(k, "mp3") == path and path.read_bytes() == b"aaa"
    await cache.idle()


@pytest_twisted.ensureDeferred
async def test_forget_drops_an_entry(tmp_path: Path) -> None:
    cache = await opened(tmp_path, 1000)
    k = key("Forget me.")
    await cache.store(k, clip(10))
    cache.forget(k)
    cache.forget(k)  # twice is harmless
    assert cache.lookup(k, "mp3") is None
    assert cache.stats()["bytes"] == 0

"""Choose and build the storage backend that ``storage.uri`` names."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from twisted.internet.interfaces import IReactorFromThreads

from bambid.config import ConfigError, StorageConfig
from bambid.storage.interface import Storage
from bambid.storage.mongo import MongoStorage
from bambid.storage.sqlite import SQLiteStorage

SQLITE_PREFIX = "sqlite:///"
MONGODB_PREFIXES = ("mongodb://", "mongodb+srv://")


def sqlite_path(uri: str, base_dir: Path) -> Path:
    """The file a ``sqlite:///`` URI names: ``sqlite:///var/db.sqlite3`` is
    relative to ``base_dir``, ``sqlite:////srv/db.sqlite3`` is absolute."""
    if not uri.startswith(SQLITE_PREFIX):
        raise ConfigError("storage.uri", f"not an SQLite URI: {uri!r}")
    rest = uri[len(SQLITE_PREFIX) :]
    if "?" in rest or "#" in rest:
        raise ConfigError("storage.uri", "an SQLite URI takes no query or fragment")
    path = unquote(rest)
    if not path or path.endswith("/"):
        raise ConfigError("storage.uri", f"an SQLite URI must name a file, got {uri!r}")
    if path.startswith("/"):
        return Path(path)
    return base_dir / path


def make_storage(config: StorageConfig, reactor: IReactorFromThreads, base_dir: Path) -> Storage:
    """The (unopened) backend for ``config.uri``. For SQLite, the database file's
    directory is created. ``ConfigError`` names a URI or option that cannot work.

    ``reactor`` delivers SQLite results (``callFromThread``); txmongo always
    runs on Twisted's global reactor."""
    if config.uri.startswith(SQLITE_PREFIX):
        path = sqlite_path(config.uri, base_dir)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError("storage.uri", f"cannot create {path.parent}: {e}") from None
        return SQLiteStorage(path, reactor, batch_max=config.batch_max, timeout=config.timeout)
    if config.uri.startswith(MONGODB_PREFIXES):
        return MongoStorage(config)
    raise ConfigError("storage.uri", "must start with sqlite:/// or mongodb://")

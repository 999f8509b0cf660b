"""Storage: one interface, an SQLite and a MongoDB backend."""

from bambid.storage.interface import DuplicateError, NotFoundError, Storage, StorageError

__all__ = ["DuplicateError", "NotFoundError", "Storage", "StorageError"]

"""``CodedError``: the shape of a refusal that the services raise and the web
and WebSocket layers turn into answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class CodedError(Exception):
    """A refused request: ``code`` (stable, for programs), ``message`` (one
    line for people) and ``extra`` details for the client (e.g. ``field``).

    ``status`` is the HTTP status of ``code`` in the class's ``STATUS``
    mapping, which each subclass fills with the codes it raises (a code
    missing from it is a bug: ``KeyError``)."""

    #: The HTTP status of each code.
    STATUS: ClassVar[Mapping[str, int]] = {}

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra

    @property
    def status(self) -> int:
        return self.STATUS[self.code]

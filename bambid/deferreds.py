"""Small helpers for Twisted Deferreds shared by several modules."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred


def when_fired(d: Deferred[Any]) -> Deferred[None]:
    """A new Deferred that fires (with None, never failing) when ``d`` fires,
    success or failure; ``d`` keeps its result for its other callbacks."""
    waiter: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        if not waiter.called:
            waiter.callback(None)
        return result

    d.addBoth(fire)
    return waiter

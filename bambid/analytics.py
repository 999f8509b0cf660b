"""The admin numbers: who is active, what is used, how much, how well.

``Analytics.report(days)`` computes one report from what storage holds (the
``Storage`` analytics queries) and who is connected now (``live``). The page
``/admin/analytics`` and ``GET /api/admin/analytics`` show the same report
(docs/api.md lists its fields). Days are UTC days: the report covers
``days`` days ending with today (the current day so far).

- ``active``: ``now`` is the distinct people (accounts and guests) with an open,
  greeted WebSocket connection and ``connections`` those connections;
  ``today`` / ``week`` / ``period`` count the profiles whose ``last_active``
  is today, within the last 7 days (today included), or within the report's
  days. Guests have no profile and only count in ``now``.
- ``chat``, ``companion``, ``speech``: per day, people's public chat
  messages, companion replies (``ai_interactions``; failed: an error other
  than a stop or a cancellation was stored) and spoken sentences
  (``audio_interactions`` of kind ``tts``), each with totals and an error
  rate (failed / total, None without any).
- ``features``: the report's records counted by user action, audio kind,
  trigger fired and companion interaction type (at most ``TOP`` of each).
- ``sessions``: every profile's average session length (time online over
  sessions, from usage stats, so all time rather than the report's days)
  in ``SESSION_BUCKETS``.
- ``levels``: how many profiles are at each level of the XP table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from bambid.identity import Identity
from bambid.profiles.xp import XpTable
from bambid.storage import Storage
from bambid.storage.interface import DAY_SECONDS, TALLIES

DEFAULT_DAYS = 7
MAX_DAYS = 90
#: How many of each feature tally the report lists (most used first).
TOP = 20
WEEK_DAYS = 7

#: Average session lengths: each bucket's lower bound in seconds and its label.
SESSION_BUCKETS: tuple[tuple[float, str], ...] = (
    (0, "under 1 min"),
    (60, "1–5 min"),
    (300, "5–15 min"),
    (900, "15–30 min"),
    (1800, "30–60 min"),
    (3600, "1–2 h"),
    (7200, "2 h or more"),
)


def day_start(timestamp: float) -> float:
    """The start (00:00 UTC) of the UTC day holding ``timestamp``."""
    return math.floor(timestamp / DAY_SECONDS) * DAY_SECONDS


def iso_date(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(timestamp))


def rate(failed: int, total: int) -> float | None:
    """``failed / total`` rounded to 4 places; None when nothing happened."""
    return round(failed / total, 4) if total else None


def check_days(days: int) -> int:
    """``days`` if it is an int from 1 to ``MAX_DAYS``, else ``ValueError``."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be a whole number from 1 to {MAX_DAYS}")
    return days


@attrs.frozen
class Analytics:
    """Computes reports. ``live`` gives the identities of the open, greeted
    connections now (None for an anonymous one)."""

    storage: Storage
    clock: IReactorTime
    xp_table: XpTable
    live: Callable[[], Iterable[Identity | None]]

    async def report(self, days: int = DEFAULT_DAYS) -> dict[str, Any]:
        """The report for the ``days`` days ending today (see the module doc);
        ``ValueError`` for days outside 1 to ``MAX_DAYS``."""
        days = check_days(days)
        now = self.clock.seconds()
        today = day_start(now)
        start = today - (days - 1) * DAY_SECONDS
        end = today + DAY_SECONDS
        storage = self.storage
        level_bounds = [0, *self.xp_table.levels]
        (
            active_today,
            active_week,
            active_period,
            chat,
            companion,
            speech,
            sessions,
            levels,
            *tallies,
        ) = await _gather(
            storage.count_active_profiles(today),
            storage.count_active_profiles(today - (WEEK_DAYS - 1) * DAY_SECONDS),
            storage.count_active_profiles(start),
            storage.count_per_day("chat_messages", start, days),
            storage.count_per_day("companion_replies", start, days),
            storage.count_per_day("speech", start, days),
            storage.profile_histogram("seconds_per_session", [b for b, _ in SESSION_BUCKETS]),
            storage.profile_histogram("xp", level_bounds),
            *(storage.tally(name, start, end, TOP) for name in TALLIES),
        )
        connections = list(self.live())
        people = {identity.key for identity in connections if identity is not None}
        return {
            "days": days,
            "generated_at": now,
            "start": start,
            "end": end,
            "dates": [iso_date(start + i * DAY_SECONDS) for i in range(days)],
            "active": {
                "now": len(people),
                "connections": len(connections),
                "today": active_today,
                "week": active_week,
                "period": active_period,
            },
            "chat": _series(chat, with_errors=False),
            "companion": _series(companion),
            "speech": _series(speech),
            "features": {
                name: [{"name": value, "count": count} for value, count in tally]
                for name, tally in zip(TALLIES, tallies, strict=True)
            },
            "sessions": [
                {"label": label, "from": bound, "to": upper, "count": count}
                for (bound, label), upper, count in zip(
                    SESSION_BUCKETS,
                    [b for b, _ in SESSION_BUCKETS[1:]] + [None],
                    sessions,
                    strict=True,
                )
            ],
            "levels": [
                {
                    "level": level,
                    "from": bound,
                    "to": upper,
                    "unlocks": self.xp_table.unlocks[level - 1] if level else None,
                    "count": count,
                }
                for level, (bound, upper, count) in enumerate(
                    zip(level_bounds, [*level_bounds[1:], None], levels, strict=True)
                )
            ],
        }


def _series(per_day: Sequence[tuple[int, int]], with_errors: bool = True) -> dict[str, Any]:
    counts = [count for count, _ in per_day]
    series: dict[str, Any] = {"per_day": counts, "total": sum(counts)}
    if with_errors:
        failed = [errors for _, errors in per_day]
        series["errors_per_day"] = failed
        series["errors"] = sum(failed)
        series["error_rate"] = rate(sum(failed), sum(counts))
    return series


async def _gather(*coroutines: Coroutine[Any, Any, Any]) -> list[Any]:
    """Await the storage queries together (MongoDB runs them at once); the
    first failure is raised as itself."""
    deferreds = [defer.Deferred.fromCoroutine(c) for c in coroutines]
    try:
        results: list[Any] = await defer.gatherResults(deferreds, consumeErrors=True)
    except defer.FirstError as e:
        e.subFailure.raiseException()
    return results

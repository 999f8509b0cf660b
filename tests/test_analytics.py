"""Admin analytics: ``/admin/analytics`` and ``GET /api/admin/analytics`` over a
real loopback port (who may see them, exact numbers for events made here,
the same numbers on the page), ``Analytics.report`` on a fixed clock, and the
chart geometry of ``bambid.web.charts``."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.interfaces import IReactorFromThreads

from bambid.analytics import SESSION_BUCKETS, Analytics, day_start
from bambid.auth.sessions import SESSION_COOKIE
from bambid.identity import Identity
from bambid.models import (
    AIInteraction,
    AudioInteraction,
    NewChatMessage,
    UserInteraction,
)
from bambid.profiles.xp import XpTable
from bambid.storage import Storage
from bambid.storage.sqlite import SQLiteStorage
from bambid.web.charts import bar_chart, column_chart, format_value, nice_ceiling, value_axis
from tests import wsclient
from tests.chatsupport import add_person, join
from tests.conftest import Running
from tests.test_admin_page import signed_in
from tests.test_auth import Browser, service

DAY = 86400.0
API = "/api/admin/analytics"
PAGE = "/admin/analytics"


@pytest_twisted.async_yield_fixture
async def site(tmp_path: Path) -> AsyncIterator[Running]:
    """bambid whose admin is Root; Ann, Bob and Cyd registered, Moe a
    moderator. Chat earns no XP here: XP comes from the test alone."""
    async with service(
        tmp_path,
        auth={"admins": ["root"]},
        xp={"chat_message": 0},
        voice={"speak_replies": False},
    ) as running:
        for name in ("Root", "Ann", "Bob", "Cyd", "Moe"):
            await Browser(running.http).register(name)
        await running.service.storage.set_account_role("Moe", "moderator")
        yield running


# --- helpers ----------------------------------------------------------------------------


async def greeted(running: Running, token: str | None) -> wsclient.TestClientProtocol:
    client = await wsclient.connect(running.ws, cookie=token)
    welcome = await client.request({"type": "hello", "protocol": 1})
    assert welcome["type"] == "welcome", welcome
    return client


async def say(client: wsclient.TestClientProtocol, text: str) -> None:
    """Post in the lobby and wait for the ack (skipping broadcasts)."""
    client.send_json({"type": "chat.send", "id": text, "room": "lobby", "text": text})
    while True:
        answer = await client.next()
        if answer.get("id") == text:
            assert answer["type"] == "ack", answer
            return


async def eventually(check: Any, timeout: float = 10.0) -> None:
    """Wait (polling) until ``await check()`` is true."""
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("condition not met in time")


def per_day(timestamps: list[float], start: float, days: int) -> list[int]:
    """The oracle: how many of ``timestamps`` fall on each day from ``start``."""
    counts = [0] * days
    for t in timestamps:
        if start <= t < start + days * DAY:
            counts[int((t - start) // DAY)] += 1
    return counts


def session_bucket(seconds: float) -> int:
    return max(i for i, (bound, _) in enumerate(SESSION_BUCKETS) if seconds >= bound)


class PageNumbers(HTMLParser):
    """The numbers an analytics page shows: each stat (``id`` → text) and the
    rows of each chart's table (figure ``id`` → ``[[header, cells...]]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stats: dict[str, str] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.svgs: dict[str, int] = {}
        self._figure: str | None = None
        self._stat: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_tbody = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "figure":
            self._figure = attributes["id"]
            self.tables[self._figure or ""] = []
        elif tag == "svg" and self._figure:
            self.svgs[self._figure] = self.svgs.get(self._figure, 0) + 1
        elif tag == "div" and (attributes.get("id") or "").startswith("stat-"):
            self._stat = attributes["id"]
            self.stats[self._stat or ""] = ""
        elif tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody:
            self._row = []
        elif tag in ("th", "td") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None
        elif tag == "div":
            self._stat = None
        elif tag == "tbody":
            self._in_tbody = False
        elif tag in ("th", "td") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._figure:
            self.tables[self._figure].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._stat is not None:
            self.stats[self._stat] += data.strip()


def page_numbers(html: bytes) -> PageNumbers:
    parser = PageNumbers()
    parser.feed(html.decode("utf-8"))
    return parser


def rows(report_rows: list[dict[str, Any]]) -> list[list[str]]:
    return [[row["name"], str(row["count"])] for row in report_rows]


# --- over HTTP ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_numbers_match_what_happened(site: Running) -> None:
    storage = site.service.storage
    now = float(reactor.seconds())
    today = day_start(now)

    # Live: Ann in two tabs, Bob, a guest and an anonymous reader.
    root = await signed_in(site, "Root")
    ann = await signed_in(site, "Ann")
    bob = await signed_in(site, "Bob")
    ann_tabs = [await greeted(site, ann.cookie(SESSION_COOKIE)) for _ in range(2)]
    bob_client = await greeted(site, bob.cookie(SESSION_COOKIE))
    wanderer = await greeted(site, await add_person(storage, "Wanderer", guest=True))
    anonymous = await greeted(site, None)
    for client in (ann_tabs[0], bob_client):
        await join(client)
    for client, text in (
        (ann_tabs[0], "hello all"),
        (ann_tabs[0], "a calm day"),
        (bob_client, "hi"),
    ):
        await say(client, text)
    await storage.append_chat_message(
        NewChatMessage("archive", "Cyd", "from yesterday", today - 3600)
    )

    # Companion replies, speech, triggers and actions, stored as the services do.
    companion = [
        (today + 1, None, "chat"),
        (today + 2, "timeout", "chat"),
        (today + 3, None, "greeting"),
        (today - 3600, "boom", "chat"),  # yesterday
        (today - 10 * DAY, None, "chat"),  # before the 7 days
    ]
    for stamp, error, kind in companion:
        await storage.record(AIInteraction("Ann", kind, "q", "a", 1.0, stamp, "c", error))
    speech = [(today + 5, None), (today + 6, "espeak failed"), (today - 7200, None)]
    for stamp, error in speech:
        await storage.record(AudioInteraction("Bob", "tts", "af", stamp, {"error": error}))
    for stamp, trigger in ((today + 7, "relax"), (today + 8, "relax"), (today + 9, "focus")):
        await storage.record(AudioInteraction("Ann", "trigger", trigger, stamp))
    for stamp in (today + 10, today + 11, today - 30 * DAY):
        await storage.record(UserInteraction("Ann", "analytics.test", stamp))

    # XP and levels; usage for session lengths; an old profile.
    await storage.add_xp("Ann", 1200)  # level 1
    await storage.add_xp("Bob", 2600)  # level 2
    await storage.ensure_profile("Old", today - 10 * DAY)
    await storage.add_xp("Old", 40000)  # level 6
    await storage.bump_usage("Root", now, sessions=1, seconds=4000)
    await storage.bump_usage("Cyd", now, sessions=2, seconds=1000)

    async def visits_written() -> bool:  # the usage tracker writes in the background
        profiles = [await storage.get_profile(n) for n in ("Ann", "Bob")]
        return all(p is not None and p.usage_stats.sessions_count >= 1 for p in profiles)

    await eventually(visits_written)

    response = await root.get(API)
    assert response.code == 200
    assert response.header("cache-control") == "no-store"
    report = response.json()
    start, end = report["start"], report["end"]
    assert report["days"] == 7 and end - start == 7 * DAY and len(report["dates"]) == 7
    assert start <= now < end

    assert report["active"] == {
        "now": 3,  # Ann, Bob, the guest
        "connections": 5,
        "today": 5,  # Root, Ann, Bob, Cyd, Moe (the guest has no profile)
        "week": 5,
        "period": 5,
    }
    messages = [m.timestamp for m in await storage.chat_history("lobby", None, 10)]
    assert len(messages) == 3
    chat_days = per_day([*messages, today - 3600], start, 7)
    assert report["chat"] == {"per_day": chat_days, "total": 4}

    assert report["companion"] == {
        "per_day": per_day([t for t, _, _ in companion], start, 7),
        "errors_per_day": per_day([t for t, e, _ in companion if e], start, 7),
        "total": 4,
        "errors": 2,
        "error_rate": 0.5,
    }
    assert report["speech"] == {
        "per_day": per_day([t for t, _ in speech], start, 7),
        "errors_per_day": per_day([t for t, e in speech if e], start, 7),
        "total": 3,
        "errors": 1,
        "error_rate": 0.3333,
    }
    features = report["features"]
    assert features["audio_kinds"] == [
        {"name": "trigger", "count": 3},
        {"name": "tts", "count": 3},
    ]
    assert features["triggers_fired"] == [
        {"name": "relax", "count": 2},
        {"name": "focus", "count": 1},
    ]
    assert features["companion_kinds"] == [
        {"name": "chat", "count": 3},
        {"name": "greeting", "count": 1},
    ]
    actions = {row["name"]: row["count"] for row in features["user_actions"]}
    assert actions["analytics.test"] == 2
    assert actions["register"] == 5

    expected_sessions = [0] * len(SESSION_BUCKETS)
    for name in ("Root", "Ann", "Bob", "Cyd", "Moe", "Old"):
        profile = await storage.get_profile(name)
        assert profile is not None
        stats = profile.usage_stats
        if stats.sessions_count:
            expected_sessions[session_bucket(stats.total_time_spent / stats.sessions_count)] += 1
    assert [row["count"] for row in report["sessions"]] == expected_sessions
    assert expected_sessions[5] == 1 and expected_sessions[2] == 1  # Root 4000 s, Cyd 500 s
    assert report["sessions"][0] == {"label": "under 1 min", "from": 0, "to": 60, "count": 2}
    assert report["sessions"][-1]["to"] is None

    assert [row["count"] for row in report["levels"]] == [3, 1, 1, 0, 0, 0, 1, 0, 0]
    assert report["levels"][1] == {
        "level": 1,
        "from": 1000,
        "to": 2500,
        "unlocks": "triggers",
        "count": 1,
    }
    assert report["levels"][0]["unlocks"] is None

    # The page shows the same numbers: the stats, and each chart's table.
    page = await root.get(PAGE)
    assert page.code == 200
    shown = page_numbers(page.body)
    assert shown.stats["stat-active-now"] == "3"
    assert shown.stats["stat-active-today"] == "5"
    assert shown.stats["stat-chat-total"] == "4"
    assert shown.stats["stat-companion-total"] == "4"
    assert shown.stats["stat-companion-error-rate"] == "50.0 %"
    assert shown.stats["stat-speech-error-rate"] == "33.3 %"
    assert shown.tables["chart-chat"] == [
        [date, str(count)] for date, count in zip(report["dates"], chat_days, strict=True)
    ]
    assert shown.tables["chart-companion"] == [
        [date, str(count), str(failed)]
        for date, count, failed in zip(
            report["dates"],
            report["companion"]["per_day"],
            report["companion"]["errors_per_day"],
            strict=True,
        )
    ]
    assert shown.tables["chart-triggers"] == rows(features["triggers_fired"])
    assert shown.tables["chart-audio"] == rows(features["audio_kinds"])
    assert shown.tables["chart-user-actions"] == rows(features["user_actions"])
    levels = [row[1] for row in shown.tables["chart-levels"]]
    assert levels == ["3", "1", "1", "0", "0", "0", "1", "0", "0"]
    assert shown.tables["chart-levels"][2][0] == "Level 2 (2500 XP, unlocks collar)"
    assert [row[1] for row in shown.tables["chart-sessions"]] == [str(n) for n in expected_sessions]
    assert all(shown.svgs.get(figure) == 1 for figure in shown.tables), shown.svgs
    assert len(shown.tables) == 9
    assert 'style="' not in page.text  # the CSP allows no inline styles

    # One day: only today.
    one = (await root.get(API + "?days=1")).json()
    assert one["dates"] == report["dates"][-1:]
    assert one["companion"]["total"] == 3 and one["companion"]["errors"] == 1
    assert one["active"]["period"] == 5
    month = (await root.get(API + "?days=30")).json()
    assert month["active"]["period"] == 6  # Old joined 10 days ago
    assert month["companion"]["total"] == 5

    for client in (*ann_tabs, bob_client, wanderer, anonymous):
        client.sendClose()
        await client.closed


@pytest_twisted.ensureDeferred
async def test_only_admins_see_analytics(site: Running) -> None:
    nobody = Browser(site.http)
    response = await nobody.get(PAGE)
    assert (response.code, response.header("location")) == (303, "/login?next=/admin/analytics")
    response = await nobody.get(API)
    assert (response.code, response.json()["error"]) == (401, "unauthenticated")
    for name in ("Moe", "Bob"):
        person = await signed_in(site, name)
        response = await person.get(PAGE)
        assert response.code == 403
        assert b"Analytics are for admins." in response.body
        assert b'id="analytics-link"' not in response.body
        response = await person.get(API)
        assert (response.code, response.json()["error"]) == (403, "forbidden")
    guest = Browser(site.http)
    assert (await guest.api("/api/auth/guest", {"name": "Wanderer"})).code == 201
    assert (await guest.get(API)).code == 403

    root = await signed_in(site, "Root")
    admin_page = await root.get("/admin")
    assert b'href="/admin/analytics"' in admin_page.body
    moe = await signed_in(site, "Moe")
    assert b'href="/admin/analytics"' not in (await moe.get("/admin")).body


@pytest_twisted.ensureDeferred
async def test_days_must_be_1_to_90(site: Running) -> None:
    root = await signed_in(site, "Root")
    for days in ("0", "91", "x", "-1", "7.5", "0007000"):
        response = await root.get(f"{API}?days={days}")
        assert response.code == 400, days
        assert response.json()["field"] == "days"
        assert (await root.get(f"{PAGE}?days={days}")).code == 400
    for days in ("1", "90", "030"):
        report = (await root.get(f"{API}?days={days}")).json()
        assert report["days"] == int(days) == len(report["dates"])
        assert len(report["chat"]["per_day"]) == int(days)
    page = await root.get(f"{PAGE}?days=30")
    assert re.search(rb'class="btn btn-primary" href="/admin/analytics\?days=30"', page.body)


# --- Analytics.report on a fixed clock --------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_report_on_a_fixed_clock(tmp_path: Path) -> None:
    storage: Storage = SQLiteStorage(tmp_path / "db.sqlite3", IReactorFromThreads(reactor))
    await storage.open()
    try:
        clock = task.Clock()
        today = 1_700_006_400.0  # a midnight (UTC)
        assert day_start(today) == today
        clock.advance(today + 13 * 3600)
        live = [Identity("Ann"), Identity("ann"), None, Identity("Bo", guest=True)]
        table = XpTable((10, 20), ("triggers", "collar"))
        analytics = Analytics(storage, clock, table, live=lambda: live)

        empty = await analytics.report(3)
        assert empty["active"] == {"now": 2, "connections": 4, "today": 0, "week": 0, "period": 0}
        assert empty["dates"] == ["2023-11-13", "2023-11-14", "2023-11-15"]
        assert (empty["start"], empty["end"]) == (today - 2 * DAY, today + DAY)
        assert empty["companion"]["error_rate"] is None
        assert empty["chat"] == {"per_day": [0, 0, 0], "total": 0}
        assert [row["to"] for row in empty["levels"]] == [10, 20, None]

        await storage.ensure_profile("Ann", today - 6 * DAY)  # 7 days ago counts as this week
        await storage.ensure_profile("Bo", today - 7 * DAY)
        await storage.add_xp("Ann", 25)
        await storage.record(AIInteraction("Ann", "chat", "q", "a", 1.0, today, "c", None))
        await storage.record(AIInteraction("Ann", "chat", "q", "a", 1.0, today - 1, "c", "x"))
        report = await analytics.report(3)
        assert report["active"]["week"] == 1 and report["active"]["today"] == 0
        assert report["companion"]["per_day"] == [0, 1, 1]
        assert report["companion"]["errors_per_day"] == [0, 1, 0]
        assert [row["count"] for row in report["levels"]] == [1, 0, 1]
        for days in (0, 91, True):
            with pytest.raises(ValueError):
                await analytics.report(days)
    finally:
        await storage.close()


# --- charts -----------------------------------------------------------------------------------


def test_nice_ceiling_and_values() -> None:
    assert [nice_ceiling(v) for v in (0, 1, 2, 3, 7, 10, 11, 99, 101, 4999)] == [
        1,
        1,
        2,
        5,
        10,
        10,
        20,
        100,
        200,
        5000,
    ]
    assert [format_value(v) for v in (0, 3, 1234, 2.5, 0.125)] == ["0", "3", "1,234", "2.5", "0.12"]
    for largest, top, ticks in (
        (0, 1, [0, 1]),
        (1, 1, [0, 1]),
        (3, 3, [0, 1, 2, 3]),
        (8, 8, [0, 2, 4, 6, 8]),
        (12, 15, [0, 5, 10, 15]),
        (101, 150, [0, 50, 100, 150]),
    ):
        assert value_axis(largest) == (top, [(t, str(t)) for t in ticks]), largest


def test_column_chart_geometry() -> None:
    chart = column_chart(
        "c", "Per day", ["a", "b", "c"], [0, 5, 10], x_label="Day", y_label="N", line=[1, 0, 2]
    )
    plot = chart.plot
    assert [bar.height for bar in chart.bars] == [0, plot.height / 2, plot.height]
    assert all(math.isclose(bar.y + bar.height, plot.bottom) for bar in chart.bars)
    assert chart.bars[2].y == plot.top
    assert [tick.label for tick in chart.ticks] == ["0", "5", "10"]
    assert math.isclose(chart.line[2].y, plot.bottom - plot.height * 0.2)
    assert chart.line_points.count(",") == 3
    assert not chart.empty
    assert (chart.category_label, chart.value_label) == ("Day", "N")
    many = column_chart("m", "t", [str(i) for i in range(90)], [1] * 90, x_label="", y_label="")
    shown = [bar.label for bar in many.bars if bar.show_label]
    assert 1 < len(shown) <= 12 and shown[0] == "0"
    assert not any(bar.show_value for bar in many.bars)
    assert column_chart("e", "t", ["a"], [0], x_label="", y_label="").empty
    with pytest.raises(ValueError):
        column_chart("x", "t", ["a"], [1, 2], x_label="", y_label="")


def test_bar_chart_geometry() -> None:
    long = "a very long trigger name indeed"
    chart = bar_chart("b", "Triggers", [long, "b"], [4, 2], x_label="Count", y_label="Trigger")
    first, second = chart.bars
    assert math.isclose(first.width, 2 * second.width) and first.x == chart.plot.left
    assert first.short_label.endswith("…") and len(first.short_label) <= 22
    assert first.label == long
    assert chart.height > chart.plot.bottom
    assert (chart.category_label, chart.value_label) == ("Trigger", "Count")
    assert bar_chart("e", "t", [], [], x_label="", y_label="").empty

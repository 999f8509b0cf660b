"""``/admin/analytics`` (a page of charts) and ``GET /api/admin/analytics``
(the same report as JSON), for admins only.

Both take ``?days=N`` (1 to 90, default 7; anything else is a 400). Nobody
signed in: the page redirects to ``/login``, the API answers 401; moderators
and everyone else: a 403 page / ``{"error": "forbidden"}``. Both only read.
The numbers come from ``bambid.analytics.Analytics.report``; the page draws
them as SVG charts (``bambid.web.charts``) each with a table for screen
readers, so the page and the JSON always show the same numbers.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from bambid.analytics import DEFAULT_DAYS, MAX_DAYS, Analytics, check_days
from bambid.auth.accounts import AccountError
from bambid.identity import Identity
from bambid.web.app import ApiError, WebApp, json_response
from bambid.web.auth_routes import AuthRoutes, Notice, api_error, form_value, redirect
from bambid.web.charts import Chart, bar_chart, column_chart

PAGE = "/admin/analytics"
#: The periods the page offers (any 1 to 90 works in the URL).
DAY_CHOICES = (1, 7, 30, 90)
FORBIDDEN = "Analytics are for admins."


def parse_days(request: IRequest) -> int:
    """``?days=`` as a number of days, or ``ApiError`` 400 naming the field."""
    text = form_value(request, "days").strip()
    if not text:
        return DEFAULT_DAYS
    try:
        return check_days(int(text) if text.isdigit() and len(text) <= 3 else -1)
    except ValueError as e:
        raise ApiError(400, "bad_request", str(e), field="days") from None


class AnalyticsRoutes:
    """The page and the API over one ``Analytics``."""

    def __init__(self, web: WebApp, auth: AuthRoutes, analytics: Analytics) -> None:
        self.web = web
        self.auth = auth
        self.analytics = analytics

    async def page(self, request: IRequest) -> bytes:
        try:
            actor = await self.auth.identify(request)
        except AccountError as e:
            return await self._refusal(request, e.status, e.message)
        if actor is None:
            return redirect(request, f"/login?next={PAGE}")
        if not actor.is_admin:
            return await self._refusal(request, 403, FORBIDDEN)
        days = parse_days(request)
        report = await self.analytics.report(days)
        return await self.web.page(
            request,
            "analytics.html",
            title="Analytics",
            report=report,
            charts=charts_of(report),
            day_choices=DAY_CHOICES,
            max_days=MAX_DAYS,
        )

    async def api(self, request: IRequest) -> bytes:
        await self._api_admin(request)
        report = await self.analytics.report(parse_days(request))
        return json_response(request, 200, report)

    async def _api_admin(self, request: IRequest) -> Identity:
        try:
            identity = await self.auth.identify(request)
        except AccountError as e:
            raise api_error(e) from None
        if identity is None:
            raise ApiError(401, "unauthenticated", "sign in first")
        if not identity.is_admin:
            raise ApiError(403, "forbidden", FORBIDDEN)
        return identity

    async def _refusal(self, request: IRequest, status: int, message: str) -> bytes:
        return await self.web.page(
            request,
            "error.html",
            status=status,
            title="Forbidden" if status == 403 else "Sorry",
            error=Notice(message),
        )


def charts_of(report: dict[str, Any]) -> dict[str, Chart]:
    """The page's charts, drawn from ``report`` (``Analytics.report``)."""
    dates = report["dates"]
    chat, companion, speech = report["chat"], report["companion"], report["speech"]
    features = report["features"]

    def per_day(
        id: str, title: str, series: dict[str, Any], y_label: str, failed: bool = True
    ) -> Chart:
        return column_chart(
            id,
            title,
            dates,
            series["per_day"],
            x_label="Day (UTC)",
            y_label=y_label,
            line=series["errors_per_day"] if failed else None,
            line_label="Failed" if failed else "",
            short_labels=[date[5:] for date in dates],  # "MM-DD"
        )

    def ranking(id: str, title: str, rows: list[dict[str, Any]], y_label: str) -> Chart:
        return bar_chart(
            id,
            title,
            [row["name"] for row in rows],
            [row["count"] for row in rows],
            x_label="Count",
            y_label=y_label,
        )

    return {
        "chat": per_day("chart-chat", "Chat messages per day", chat, "Messages", failed=False),
        "companion": per_day("chart-companion", "Companion replies per day", companion, "Replies"),
        "speech": per_day("chart-speech", "Spoken sentences per day", speech, "Sentences"),
        "user_actions": ranking(
            "chart-user-actions", "What people did", features["user_actions"], "Action"
        ),
        "triggers_fired": ranking(
            "chart-triggers", "Triggers fired", features["triggers_fired"], "Trigger"
        ),
        "audio_kinds": ranking("chart-audio", "Audio by kind", features["audio_kinds"], "Kind"),
        "companion_kinds": ranking(
            "chart-companion-kinds",
            "Companion requests by type",
            features["companion_kinds"],
            "Type",
        ),
        "sessions": column_chart(
            "chart-sessions",
            "Average session length per person",
            [row["label"] for row in report["sessions"]],
            [row["count"] for row in report["sessions"]],
            x_label="Average session",
            y_label="People",
        ),
        "levels": column_chart(
            "chart-levels",
            "People per level",
            [_level_label(row) for row in report["levels"]],
            [row["count"] for row in report["levels"]],
            x_label="Level",
            y_label="People",
            short_labels=[f"Level {row['level']}" for row in report["levels"]],
        ),
    }


def _level_label(row: dict[str, Any]) -> str:
    """``Level 2 (2500 XP, unlocks collar)``."""
    unlocks = f", unlocks {row['unlocks']}" if row["unlocks"] else ""
    return f"Level {row['level']} ({row['from']} XP{unlocks})"


def install_analytics_routes(
    web: WebApp, auth: AuthRoutes, analytics: Analytics
) -> AnalyticsRoutes:
    """Add ``/admin/analytics`` and ``/api/admin/analytics`` to ``web.app``."""
    routes = AnalyticsRoutes(web, auth, analytics)
    web.app.route(PAGE, methods=["GET", "HEAD"], endpoint="analytics_page")(routes.page)
    web.app.route("/api/admin/analytics", methods=["GET", "HEAD"], endpoint="analytics_api")(
        routes.api
    )
    return routes

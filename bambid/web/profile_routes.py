"""HTTP routes for profiles: the JSON API under ``/api/profiles`` and
``/api/leaderboard``, the pages ``/profile/<name>``, ``/profile/<name>/edit``
(and its form) and ``/profiles`` (the community), and the themes' stylesheet
``/profile-styles.css``.

Thin adapters over ``ProfileService``: read the request, check CSRF
(``check_origin`` for the JSON API, ``check_form`` for the form), call the
service, encode the answer. ``docs/api.md`` is the contract. A ``GET`` of a
profile, page or JSON, that shows the whole profile is recorded as
``profile.view`` (with the viewer's consent; ``HEAD`` is not).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from twisted.web.iweb import IRequest

from bambid.auth.accounts import AccountError
from bambid.identity import Identity
from bambid.models import Profile, username_key
from bambid.profiles.service import (
    COMMUNITY_SORTS,
    EditRefused,
    Problem,
    ProfileError,
    ProfileService,
    may_edit,
    may_view,
)
from bambid.profiles.social import SOCIAL_FIELDS, link_label, social_href
from bambid.profiles.styles import PROFILE_STYLES, style_for, stylesheet
from bambid.web.app import ApiError, WebApp, json_response, read_json
from bambid.web.args import request_arg
from bambid.web.auth_routes import AuthRoutes, Notice, api_error, form_value, redirect

#: HTTP status of each ``ProfileError`` code.
STATUS = {
    "bad_request": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "invalid": 422,
}

#: How each social link field is called on the pages.
PLATFORMS = {
    "twitter": "X (Twitter)",
    "instagram": "Instagram",
    "discord": "Discord",
    "reddit": "Reddit",
    "custom": "Website",
}
#: How the edit form names each field in its list of problems.
FIELD_LABELS = {
    "display_name": "Display name",
    "bio": "Bio",
    **{f"social_links.{field}": label for field, label in PLATFORMS.items()},
    "profile_style": "Style",
    "visibility": "Who can see this profile",
}
#: The community page's sort links, in order, with their labels.
SORT_LABELS = {
    "xp": "XP",
    "level": "Level",
    "likes": "Likes",
    "loves": "Loves",
    "joined": "Newest",
    "name": "Name",
}
#: The edit form's fields (besides the social links, ``social_<platform>``).
FORM_FIELDS = ("display_name", "bio", "profile_style", "visibility")
LINK_REL = "nofollow noopener ugc"


def profile_api_error(error: ProfileError) -> ApiError:
    extra: dict[str, Any] = {}
    if error.field is not None:
        extra["field"] = error.field
    if isinstance(error, EditRefused):
        extra["problems"] = error.by_field()
    return ApiError(STATUS.get(error.code, 400), error.code, error.message, **extra)


def duration_text(seconds: float) -> str:
    """``3 h 12 min``, ``45 min``, ``0 min``: time online, to the minute."""
    minutes = int(max(0.0, seconds) // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def date_text(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(timestamp))


def datetime_text(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def iso_text(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


class ProfileRoutes:
    """The profile routes (see the module doc)."""

    def __init__(self, web: WebApp, auth: AuthRoutes, profiles: ProfileService) -> None:
        self.web = web
        self.auth = auth
        self.profiles = profiles

    # -- who is asking ----------------------------------------------------------------

    async def _reader(self, request: IRequest) -> Identity | None:
        """The person reading (a banned one reads as nobody)."""
        try:
            return await self.auth.identify(request)
        except AccountError:
            return None

    async def _writer(self, request: IRequest) -> Identity | None:
        """The person writing; a banned one is refused (403 ``banned``)."""
        try:
            return await self.auth.identify(request)
        except AccountError as e:
            raise api_error(e) from None

    # -- JSON API ------------------------------------------------------------------------

    async def api_profile(self, request: IRequest, name: str) -> bytes:
        viewer = await self._reader(request)
        try:
            body = await self.profiles.view(viewer, name)
        except ProfileError as e:
            raise profile_api_error(e) from None
        if request.method == b"GET" and "you" in body:  # the whole profile was shown
            await self.profiles.record_view(viewer, body["name"])
        return json_response(request, 200, body)

    async def api_edit(self, request: IRequest, name: str) -> bytes:
        self.auth.check_origin(request)
        actor = await self._writer(request)
        if actor is None:
            raise ApiError(401, "unauthenticated", "sign in to edit your profile")
        body = read_json(request)
        try:
            answer = await self.profiles.edit(actor, name, body)
        except ProfileError as e:
            raise profile_api_error(e) from None
        return json_response(request, 200, answer)

    async def api_react(self, request: IRequest, name: str, kind: str) -> bytes:
        if kind not in ("like", "love"):
            raise ApiError(404, "not_found", "there is no such profile address")
        self.auth.check_origin(request)
        actor = await self._writer(request)
        _optional_json(request)
        on = request.method == b"POST"
        try:
            answer = await self.profiles.react(actor, name, kind, on)
        except ProfileError as e:
            raise profile_api_error(e) from None
        return json_response(request, 200, answer)

    async def api_community(self, request: IRequest) -> bytes:
        try:
            sort, query, page = self.profiles.community_request(
                request_arg(request, "sort"),
                request_arg(request, "q"),
                request_arg(request, "page"),
            )
        except ProfileError as e:
            raise profile_api_error(e) from None
        return json_response(request, 200, await self.profiles.community(sort, query, page))

    async def api_leaderboard(self, request: IRequest) -> bytes:
        return json_response(request, 200, await self.profiles.leaderboard())

    def styles_css(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", b"text/css; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        return stylesheet().encode("utf-8")

    # -- pages ----------------------------------------------------------------------------

    async def profile_page(self, request: IRequest, name: str) -> bytes:
        viewer = await self._reader(request)
        profile = await self.profiles.find(name)
        if profile is None:
            return await self._not_found(request, name)
        if not may_view(viewer, profile):
            return await self.web.page(
                request,
                "profile.html",
                title=profile.username,
                private=True,
                profile={"name": profile.username, "visibility": "private"},
                style=style_for(""),
            )
        data = await self.profiles.describe(viewer, profile)
        if request.method == b"GET":
            await self.profiles.record_view(viewer, profile.username)
        own = viewer is not None and viewer.key == username_key(profile.username)
        return await self.web.page(
            request,
            "profile.html",
            title=data["display_name"] or data["name"],
            private=False,
            own=own,
            **self._page_context(viewer, data),
        )

    def _page_context(self, viewer: Identity | None, data: dict[str, Any]) -> dict[str, Any]:
        level = data["level"]
        start = self.profiles.level_start(level)
        following = data["next_level_xp"]
        links = []
        for field in SOCIAL_FIELDS:
            value = data["social_links"][field]
            if value:
                links.append(
                    {
                        "field": field,
                        "platform": PLATFORMS[field],
                        "href": social_href(field, value),
                        "label": link_label(field, value),
                    }
                )
        if viewer is None:
            hint = "Log in or register to like or love profiles."
        elif viewer.guest:
            hint = "Sign up to like or love profiles: guests cannot."
        else:
            hint = ""
        stats = data["stats"]
        return {
            "profile": data,
            "style": style_for(data["profile_style"]),
            "shown_name": data["display_name"] or data["name"],
            "bio_html": data["bio_html"],
            "level_start": start,
            "bar_value": data["xp"] - start,
            "bar_max": None if following is None else following - start,
            "links": links,
            "link_rel": LINK_REL,
            "time_spent": duration_text(stats["time_spent_seconds"]),
            "joined_text": date_text(data["joined"]),
            "joined_iso": iso_text(data["joined"]),
            "last_active_text": datetime_text(data["last_active"]),
            "last_active_iso": iso_text(data["last_active"]),
            "can_react": viewer is not None and not viewer.guest,
            "react_hint": hint,
            "edit_path": f"/profile/{quote(data['name'])}/edit",
        }

    async def edit_page(self, request: IRequest, name: str) -> bytes:
        editing = await self._editing(request, name)
        if isinstance(editing, bytes):
            return editing
        actor, profile = editing
        data = await self.profiles.describe(actor, profile)
        values = {
            "display_name": data["display_name"],
            "bio": data["bio"],
            "profile_style": data["profile_style"],
            "visibility": data["visibility"],
            **{f"social_{f}": data["social_links"][f] for f in SOCIAL_FIELDS},
        }
        return await self._edit_form(request, 200, data, values, {})

    async def edit_form(self, request: IRequest, name: str) -> bytes:
        self.auth.check_form(request)
        editing = await self._editing(request, name)
        if isinstance(editing, bytes):
            return editing
        actor, profile = editing
        body, values, missing = _form_body(request)
        try:
            if missing:
                raise EditRefused([*missing, *self.profiles.check_changes(body)[1]])
            await self.profiles.edit(actor, profile.username, body)
        except EditRefused as e:
            data = await self.profiles.describe(actor, profile)
            status = 400 if any(p.code == "bad_request" for p in e.problems) else 422
            return await self._edit_form(request, status, data, values, e.by_field())
        except ProfileError as e:
            return await self._refusal(request, STATUS.get(e.code, 400), e.message)
        return redirect(request, f"/profile/{quote(profile.username)}")

    async def _editing(self, request: IRequest, name: str) -> tuple[Identity, Profile] | bytes:
        """``(actor, profile)`` when someone who may edit ``name`` asks and
        the profile exists, else the answer: a redirect to log in, or a 403
        or 404 page."""
        try:
            actor = await self.auth.identify(request)
        except AccountError as e:
            return await self._refusal(request, e.status, e.message)
        if actor is None:
            return redirect(request, f"/login?next=/profile/{quote(name[:32])}/edit")
        if not may_edit(actor, name):
            message = (
                "Guests have no profile: sign up to have one."
                if actor.guest
                else "You can only edit your own profile."
            )
            return await self._refusal(request, 403, message)
        profile = await self.profiles.find(name)
        if profile is None:
            return await self._not_found(request, name)
        return actor, profile

    async def _edit_form(
        self,
        request: IRequest,
        status: int,
        data: dict[str, Any],
        values: dict[str, str],
        errors: dict[str, str],
    ) -> bytes:
        return await self.web.page(
            request,
            "profile_edit.html",
            status=status,
            title="Edit profile",
            profile=data,
            values=values,
            errors=errors,
            styles=list(PROFILE_STYLES.values()),
            platforms=PLATFORMS,
            labels=FIELD_LABELS,
            action=f"/profile/{quote(data['name'])}/edit",
        )

    async def community_page(self, request: IRequest) -> bytes:
        """Forgiving where the API is strict: an unknown sort shows the
        default, a bad page number the first page, one past the end the last."""
        sort = request_arg(request, "sort")
        sort = sort if sort in COMMUNITY_SORTS else None
        try:
            sort, query, page = self.profiles.community_request(
                sort, request_arg(request, "q"), request_arg(request, "page")
            )
        except ProfileError:
            query_text = request_arg(request, "q")
            sort, query, page = self.profiles.community_request(sort, query_text, None)
        listing = await self.profiles.community(sort, query, page)
        if page > listing["pages"]:
            listing = await self.profiles.community(sort, query, listing["pages"])
        leaders = (await self.profiles.leaderboard())["leaders"]
        for entry in [*listing["profiles"], *leaders]:
            entry["joined_text"] = date_text(entry["joined"])
        return await self.web.page(
            request,
            "profiles.html",
            title="People",
            listing=listing,
            leaders=leaders,
            sorts=SORT_LABELS,
        )

    async def _not_found(self, request: IRequest, name: str) -> bytes:
        return await self._refusal(request, 404, f"There is no profile called {name[:32]}.")

    async def _refusal(self, request: IRequest, status: int, message: str) -> bytes:
        titles = {403: "Forbidden", 404: "Not found"}
        return await self.web.page(
            request,
            "error.html",
            status=status,
            title=titles.get(status, "Sorry"),
            error=Notice(message),
        )


def install_profile_routes(
    web: WebApp, auth: AuthRoutes, profiles: ProfileService
) -> ProfileRoutes:
    """Add the profile routes to ``web.app``."""
    routes = ProfileRoutes(web, auth, profiles)
    app = web.app
    get = ["GET", "HEAD"]
    app.route("/api/profiles", methods=get, endpoint="profiles_api_list")(routes.api_community)
    app.route("/api/leaderboard", methods=get, endpoint="profiles_api_leaderboard")(
        routes.api_leaderboard
    )
    app.route("/api/profiles/<string:name>", methods=get, endpoint="profiles_api_get")(
        routes.api_profile
    )
    app.route("/api/profiles/<string:name>", methods=["PATCH"], endpoint="profiles_api_edit")(
        routes.api_edit
    )
    app.route(
        "/api/profiles/<string:name>/<string:kind>",
        methods=["POST", "DELETE"],
        endpoint="profiles_api_react",
    )(routes.api_react)
    app.route("/profiles", methods=get, endpoint="profiles_page")(routes.community_page)
    app.route("/profile/<string:name>", methods=get, endpoint="profile_page")(routes.profile_page)
    app.route("/profile/<string:name>/edit", methods=get, endpoint="profile_edit_page")(
        routes.edit_page
    )
    app.route("/profile/<string:name>/edit", methods=["POST"], endpoint="profile_edit_form")(
        routes.edit_form
    )
    app.route("/profile-styles.css", methods=get, endpoint="profile_styles")(routes.styles_css)
    return routes


def _optional_json(request: IRequest) -> None:
    """A body is optional; when there is one it must be a JSON object."""
    if request.content is None:
        return
    data = request.content.read()
    request.content.seek(0)
    if data.strip():
        read_json(request)


def _form_body(request: IRequest) -> tuple[dict[str, Any], dict[str, str], list[Problem]]:
    """The edit form as an edit body, the values to show again, and a
    ``bad_request`` problem for each field missing from the post."""
    body: dict[str, Any] = {}
    values: dict[str, str] = {}
    missing: list[Problem] = []
    args = request.args or {}
    for field in FORM_FIELDS:
        values[field] = form_value(request, field)
        if field.encode("ascii") in args:
            body[field] = values[field]
        else:
            missing.append(Problem(field, "bad_request", "missing from the form"))
    links: dict[str, str] = {}
    for platform in SOCIAL_FIELDS:
        name = f"social_{platform}"
        values[name] = form_value(request, name)
        if name.encode("ascii") in args:
            links[platform] = values[name]
        else:
            missing.append(
                Problem(f"social_links.{platform}", "bad_request", "missing from the form")
            )
    body["social_links"] = links
    return body, values, missing

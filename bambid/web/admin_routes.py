"""The admin page: accounts, active bans and mutes, and moderation forms.

``GET /admin`` is for moderators and admins (others get a 403 page; nobody
signed in is sent to ``/login``). Its forms post to ``/admin/ban``,
``/admin/unban``, ``/admin/mute``, ``/admin/unmute`` — carried out by the
moderation object (the same one behind the WebSocket ``admin.command``) — and,
for admins only, ``/admin/role``, which sets an account's stored role through
``AccountService.set_role``. Every form is CSRF-checked; success redirects
back to ``/admin`` (303) with a notice, a refusal re-renders the page with
the reason and the matching status. ``/admin/maintenance`` (admins only:
``on`` "1" or "0", ``message``) switches maintenance mode (``bambid.maintenance``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from twisted.web.iweb import IRequest

from bambid.auth.accounts import ASSIGNABLE_ROLES, AccountError
from bambid.auth.sessions import role_for
from bambid.identity import Identity
from bambid.models import Sanction
from bambid.storage import StorageError
from bambid.web.app import ApiError, WebApp
from bambid.web.auth_routes import AuthRoutes, Notice, form_value, redirect
from bambid.ws.dispatch import ClientError

if TYPE_CHECKING:
    from bambid.maintenance import Maintenance

PAGE_SIZE = 25
MODERATION_COMMANDS = ("ban", "unban", "mute", "unmute")
ACTIONS = (*MODERATION_COMMANDS, "role", "maintenance")
#: HTTP status for a ``ClientError.code`` from the moderation object.
MODERATION_STATUS = {"forbidden": 403, "not_found": 404, "bad_request": 400}
#: What the page says after each successful action (``user`` is appended).
DONE = {
    "ban": "Banned",
    "unban": "Lifted the ban of",
    "mute": "Muted",
    "unmute": "Lifted the mute of",
    "role": "Changed the role of",
    "maintenance": "Maintenance mode is now",
}
_SEARCH = re.compile(r"[A-Za-z0-9_-]{0,32}")


class Moderation(Protocol):
    """What the admin forms need from ``bambid.chat.moderation``: run one
    moderation command (``ban``, ``unban``, ``mute``, ``unmute``; args as in
    docs/protocol.md ``admin.command``: ``user``, ``duration``?, ``reason``?)
    as ``actor``, or raise ``ClientError`` (``forbidden``, ``not_found``,
    ``bad_request``, ...)."""

    async def execute(self, actor: Identity, cmd: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """The command's result; ``ClientError`` on refusal."""
        ...


class AdminRoutes:
    """``/admin`` and its forms. ``moderation`` None answers the moderation
    forms 503 (role changes still work)."""

    def __init__(self, web: WebApp, auth: AuthRoutes, moderation: Moderation | None) -> None:
        self.web = web
        self.auth = auth
        self.accounts = auth.accounts
        self.moderation = moderation
        #: Set by the service: the maintenance switch (None: no form).
        self.maintenance: Maintenance | None = None

    async def admin_page(self, request: IRequest) -> bytes:
        try:
            actor = await self._moderator(request)
        except AccountError as e:
            return await self._refusal(request, e)
        if actor is None:
            return redirect(request, "/login?next=/admin")
        done = form_value(request, "done")
        notice = None
        if done in DONE:
            notice = f"{DONE[done]} {form_value(request, 'user')[:32]}."
        return await self._render(request, actor, 200, notice=notice)

    async def admin_action(self, request: IRequest, action: str) -> bytes:
        if action not in ACTIONS:
            raise ApiError(404, "not_found", "There is no such admin action.")
        self.auth.check_form(request)
        try:
            actor = await self._moderator(request)
        except AccountError as e:
            return await self._refusal(request, e)
        if actor is None:
            return redirect(request, "/login?next=/admin")
        user = form_value(request, "user").strip()
        try:
            if action == "role":
                await self.accounts.set_role(actor, user, form_value(request, "role"))
            elif action == "maintenance":
                user = await self._switch_maintenance(actor, request)
            else:
                await self._moderate(actor, action, user, request)
        except AccountError as e:
            return await self._render(request, actor, e.status, error=e.message)
        except ClientError as e:
            status = MODERATION_STATUS.get(e.code, 400)
            return await self._render(request, actor, status, error=e.message)
        return redirect(request, f"/admin?done={action}&user={_query_text(user)}")

    async def _moderate(self, actor: Identity, cmd: str, user: str, request: IRequest) -> None:
        if self.moderation is None:
            raise AccountError("unavailable", "moderation unavailable")
        args: dict[str, Any] = {"user": user}
        if cmd in ("ban", "mute"):
            for field in ("duration", "reason"):
                value = form_value(request, field).strip()
                if value:
                    args[field] = value
        await self.moderation.execute(actor, cmd, args)

    async def _switch_maintenance(self, actor: Identity, request: IRequest) -> str:
        """The maintenance form, for admins only; "on" or "off" once switched."""
        if not actor.is_admin:
            raise AccountError("forbidden", "Only admins can switch maintenance mode.")
        if self.maintenance is None:
            raise AccountError("unavailable", "Maintenance mode is unavailable.")
        on = form_value(request, "on")
        if on not in ("0", "1"):
            raise AccountError("bad_request", "Choose whether maintenance mode is on or off.")
        message = form_value(request, "message")
        try:
            await self.maintenance.set(on == "1", actor.name, message, via="web")
        except ValueError as e:
            raise AccountError("bad_request", str(e)) from None
        except StorageError:
            raise AccountError("unavailable", "The switch could not be saved; try again.") from None
        return "on" if on == "1" else "off"

    async def _moderator(self, request: IRequest) -> Identity | None:
        """The signed-in moderator or admin; None when nobody is signed in;
        ``AccountError`` (a 403 page) for anyone else."""
        identity = await self.auth.identify(request)
        if identity is None:
            return None
        if not identity.is_moderator:
            raise AccountError("forbidden", "This page is for moderators and admins.")
        return identity

    async def _refusal(self, request: IRequest, error: AccountError) -> bytes:
        return await self.web.page(
            request,
            "error.html",
            status=error.status,
            title="Forbidden" if error.status == 403 else "Sorry",
            error=Notice(error.message),
        )

    async def _render(
        self,
        request: IRequest,
        actor: Identity,
        status: int,
        notice: str | None = None,
        error: str | None = None,
    ) -> bytes:
        storage = self.accounts.storage
        now = self.accounts.clock.seconds()
        query = form_value(request, "q") if request.method in (b"GET", b"HEAD") else ""
        query = query.strip() if _SEARCH.fullmatch(query.strip()) else ""
        try:
            page = max(1, int(form_value(request, "page") or "1"))
        except ValueError:
            page = 1
        total = await storage.count_accounts(query)
        pages = max(1, -(-total // PAGE_SIZE))
        page = min(page, pages)
        accounts = await storage.list_accounts((page - 1) * PAGE_SIZE, PAGE_SIZE, query)
        rows = [
            {
                "name": account.username,
                "role": role_for(account.username, account.role, self.accounts.admins),
                "configured_admin": role_for(account.username, "user", self.accounts.admins)
                == "admin",
                "joined": _date(account.created_at),
            }
            for account in accounts
        ]
        bans = [_sanction_row(s) for s in await storage.list_sanctions("ban") if s.active_at(now)]
        mutes = [_sanction_row(s) for s in await storage.list_sanctions("mute") if s.active_at(now)]
        return await self.web.page(
            request,
            "admin.html",
            status=status,
            title="Admin",
            actor=actor,
            accounts=rows,
            total=total,
            page=page,
            pages=pages,
            query=query,
            bans=bans,
            mutes=mutes,
            roles=ASSIGNABLE_ROLES,
            moderation_available=self.moderation is not None,
            maintenance=self.maintenance.state if self.maintenance is not None else None,
            maintenance_since=_maintenance_since(self.maintenance),
            maintenance_default=self.maintenance.config.message if self.maintenance else "",
            notice=notice,
            error=error,
        )


def install_admin_routes(
    web: WebApp, auth: AuthRoutes, moderation: Moderation | None
) -> AdminRoutes:
    """Add ``/admin`` and its form routes to ``web.app``."""
    routes = AdminRoutes(web, auth, moderation)
    web.app.route("/admin", methods=["GET", "HEAD"], endpoint="admin_page")(routes.admin_page)
    web.app.route("/admin/<string:action>", methods=["POST"], endpoint="admin_action")(
        routes.admin_action
    )
    return routes


def _date(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(timestamp))


def _datetime(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def _sanction_row(sanction: Sanction) -> dict[str, str]:
    return {
        "name": sanction.username,
        "reason": sanction.reason,
        "by": sanction.by,
        "since": _datetime(sanction.created_at),
        "until": "until lifted" if sanction.expires_at is None else _datetime(sanction.expires_at),
    }


def _maintenance_since(maintenance: Maintenance | None) -> str:
    since = maintenance.state.since if maintenance is not None else None
    return _datetime(since) if since is not None else ""


def _query_text(user: str) -> str:
    return quote(user[:32], safe="")

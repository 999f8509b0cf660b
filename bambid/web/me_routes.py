"""Your data: preferences, the export, account deletion and the settings page.

JSON API (docs/api.md, "Your data"):

- ``GET /api/me/preferences`` (signed in; 401 otherwise): the whole
  preferences object (``bambid.profiles.preferences``); guests get their
  defaults and the voice choices of their session.
- ``PATCH /api/me/preferences`` (CSRF ``check_origin``; accounts only, guests
  403 ``forbidden``): a partial object, checked whole; 400/422 naming the
  ``field``, 403 ``level_required``; 200 with the object afterwards.
- ``GET /api/me/export`` (accounts only): everything stored about the person
  (``Storage.export_user``) plus ``exported_at``, as an attachment
  ``bambid-<name>-<YYYY-MM-DD>.json``, never cached. Encoded in a thread.
- ``DELETE /api/me`` ``{password}`` (CSRF; accounts only): the password is
  checked like a login (throttled in the same buckets: 429 and
  ``Retry-After``; wrong: 403 ``invalid_credentials``); then
  ``delete_account`` removes the account (its doc has the order of steps),
  their chat messages staying in the rooms under ``deleted-<8 hex>``; the
  session cookie is cleared; 200 ``{deleted: counts}``.

Pages: ``GET /settings`` (signed-out visitors go to ``/login``; guests read
that they are never recorded for analytics, but that their chat messages and
companion conversations are kept and a guest can neither export nor delete
them) with the privacy choice, the notification switches, speech on/off and
volume (``web/static/js/settings.js`` sends them to ``PATCH
/api/me/preferences``), the export link and the deletion form,
which posts to ``POST /settings/delete`` (CSRF token, ``password``,
``confirm`` checkbox): 303 to ``/`` with the cookie cleared, or the page again
with the reason.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs
from twisted.internet import task, threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from bambid.auth.accounts import RESERVED_PREFIX, AccountError
from bambid.deferreds import when_fired
from bambid.identity import Identity
from bambid.jsonutil import dumps
from bambid.profiles.preferences import Preferences, PreferencesError
from bambid.profiles.usage import UsageTracker
from bambid.storage import Storage
from bambid.web.app import ApiError, WebApp, json_response, read_json
from bambid.web.auth_routes import (
    AuthRoutes,
    Notice,
    api_error,
    client_address,
    form_value,
    redirect,
)
from bambid.ws.dispatch import Connection

#: The close code and reason of the connections of a deleted account.
CLOSE_POLICY = 1008
CLOSE_REASON = "account deleted"
#: How long deletion waits for the closed connections to be gone (the
#: WebSocket closing handshake gives up after 5 s and drops the connection).
CLOSE_WAIT_SECONDS = 10.0


class People(Protocol):
    """What deletion needs of the chat hub."""

    after_forget: list[Callable[[Connection, Identity | None], object]]

    def connections_of(self, username: str) -> list[Connection]: ...

    def close_person(self, username: str, code: int, reason: str) -> int: ...


class Replies(Protocol):
    """What deletion needs of the companion: the person's running reply."""

    def current_reply(self, identity: Identity) -> Any: ...

    def stop(self, reply: Any, why: str) -> None: ...


class Counts(Protocol):
    """What deletion needs of the profiles: to tell the watchers of the
    profiles the person liked or loved their new counts."""

    async def recount(self, names: Iterable[str]) -> None: ...


@attrs.define(eq=False)
class MeRoutes:
    """The routes of the module doc, with what they need (``install_me_routes``
    adds them to ``web.app``)."""

    _log = Logger()

    web: WebApp
    auth: AuthRoutes
    preferences: Preferences
    storage: Storage
    reactor: Any
    people: People
    replies: Replies
    usage: UsageTracker
    counts: Counts

    # -- who --------------------------------------------------------------------------

    async def _signed_in(self, request: IRequest) -> Identity:
        try:
            identity = await self.auth.identify(request)
        except AccountError as e:
            raise api_error(e) from None
        if identity is None:
            raise ApiError(401, "unauthenticated", "not signed in")
        return identity

    async def _account(self, request: IRequest) -> Identity:
        identity = await self._signed_in(request)
        if identity.guest:
            raise ApiError(
                403,
                "forbidden",
                "guests have no account: a guest's data cannot be exported or deleted",
            )
        return identity

    # -- preferences --------------------------------------------------------------------

    async def get_preferences(self, request: IRequest) -> bytes:
        identity = await self._signed_in(request)
        return json_response(request, 200, await self.preferences.read(identity))

    async def patch_preferences(self, request: IRequest) -> bytes:
        self.auth.check_origin(request)
        identity = await self._signed_in(request)
        patch = read_json(request)
        try:
            state = await self.preferences.apply(identity, patch)
        except PreferencesError as e:
            raise ApiError(e.status, e.code, e.message, **e.extra) from None
        return json_response(request, 200, state)

    # -- the export -----------------------------------------------------------------------

    async def export(self, request: IRequest) -> bytes:
        identity = await self._account(request)
        data = await self.storage.export_user(identity.name)
        now = self.reactor.seconds()
        document = {"exported_at": now, **data}
        body: str = await threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), dumps, document
        )
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        name = data.get("username") or identity.name
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(
            b"Content-Disposition",
            f'attachment; filename="bambid-{name}-{day}.json"'.encode("ascii", "replace"),
        )
        return body.encode("utf-8")

    # -- deletion ---------------------------------------------------------------------------

    async def delete_api(self, request: IRequest) -> bytes:
        self.auth.check_origin(request)
        identity = await self._account(request)
        body = read_json(request)
        try:
            counts = await self.delete_account(
                identity, body.get("password"), client_address(request)
            )
        except AccountError as e:
            raise _refusal(e) from None
        self.auth.clear_session_cookie(request)
        return json_response(request, 200, {"deleted": counts})

    async def delete_form(self, request: IRequest) -> bytes:
        self.auth.check_form(request)
        identity = await self._page_identity(request)
        if identity is None:
            return redirect(request, "/login?next=/settings")
        if identity.guest:
            return await self._page(request, identity, 403)
        if form_value(request, "confirm") != "yes":
            error = AccountError(
                "invalid", "Tick the box to confirm that you want your account deleted."
            )
            return await self._page(request, identity, 422, error=error)
        try:
            await self.delete_account(
                identity, form_value(request, "password"), client_address(request)
            )
        except AccountError as e:
            refusal = _refusal(e)
            if "retry_after" in e.extra:
                request.setHeader(b"Retry-After", str(e.extra["retry_after"]).encode("ascii"))
            return await self._page(request, identity, refusal.status, error=e)
        self.auth.clear_session_cookie(request)
        return redirect(request, "/")

    async def delete_account(
        self, identity: Identity, password: Any, address: str
    ) -> dict[str, int]:
        """Check the password (``AccountError`` if wrong or throttled), then
        delete the account; how many of each kind were deleted (the sessions
        deleted first included).

        In this order: the person's sessions are deleted (no new connection
        can be greeted as them); their visit in the usage stats ends
        unwritten (the tracker ignores their events from then on); their
        connections are closed (1008 "account deleted"); a companion reply of
        theirs still running is stopped and stored; then deletion waits for
        the closed connections to be gone (at most ``CLOSE_WAIT_SECONDS``)
        and for the usage writes in flight, reads whom they liked and loved,
        and ``Storage.delete_user`` removes their data. After it, a
        connection greeted meanwhile (a ``hello`` that read the session before
        it was deleted) is closed too, and if work still in flight (e.g. an
        XP award for a chat message) created a profile row again for the name,
        which has no account, ``delete_user`` runs once more (it is
        idempotent) and removes it with anything else written meanwhile.
        Last, the profiles they liked or loved have their new counts
        published."""
        await self.auth.accounts.confirm_password(identity, password, address)
        name = identity.name
        sessions = await self.storage.delete_sessions(name)
        self.usage.forget_person(name)
        closing = self.people.connections_of(name)
        closed = self.people.close_person(name, CLOSE_POLICY, CLOSE_REASON)
        reply = self.replies.current_reply(identity)
        if reply is not None:
            stored = when_fired(reply.finished)
            self.replies.stop(reply, CLOSE_REASON)
            await stored  # the turn is stored: delete_user removes it with the rest
            # The companion records the exchange right after ``finished`` fires,
            # in the same reactor turn: one turn later that write is queued
            # ahead of the deletion, which then removes it too.
            await task.deferLater(self.reactor, 0, lambda: None)
        await self._forgotten(name, closing)
        await self.usage.idle()
        liked = await self._liked(name)
        replacement = RESERVED_PREFIX + secrets.token_hex(4)
        counts = await self.storage.delete_user(name, replacement)
        counts["sessions"] = counts.get("sessions", 0) + sessions
        self.usage.forget_person(name)
        closed += self.people.close_person(name, CLOSE_POLICY, CLOSE_REASON)
        await self.usage.idle()
        if (
            await self.storage.get_profile(name) is not None
            and await self.storage.get_account(name) is None
        ):
            late = await self.storage.delete_user(name, replacement)
            if any(late.values()):
                self._log.info(
                    "deleted what was written for {person} during their deletion: {counts}",
                    person=name,
                    counts={kind: n for kind, n in late.items() if n},
                )
        self._log.info(
            "deleted the account {person} ({connections} connections closed); "
            "their chat messages are now {replacement}'s: {counts}",
            person=name,
            connections=closed,
            replacement=replacement,
            counts=counts,
        )
        await self.counts.recount(liked)
        return counts

    async def _forgotten(self, username: str, closing: list[Connection]) -> None:
        """Wait until the hub has forgotten each of ``closing`` (closed
        connections of ``username``; at most ``CLOSE_WAIT_SECONDS``): none of
        them can post any more (it left its rooms)."""
        waiting = set(closing)

        def left() -> bool:
            return not waiting.intersection(self.people.connections_of(username))

        if left():
            return
        gone: Deferred[None] = Deferred()

        def forgotten(connection: Connection, identity: Identity | None) -> None:
            if not gone.called and left():
                gone.callback(None)

        self.people.after_forget.append(forgotten)
        try:
            gone.addTimeout(CLOSE_WAIT_SECONDS, self.reactor, onTimeoutCancel=lambda r, t: None)
            await gone
        finally:
            self.people.after_forget.remove(forgotten)

    async def _liked(self, username: str) -> list[str]:
        """The profiles ``username`` gave a like or a love."""
        data = await self.storage.export_user(username)
        return [r["to_user"] for r in data.get("reactions_given", ())]

    # -- the page ----------------------------------------------------------------------------

    async def settings_page(self, request: IRequest) -> bytes:
        identity = await self._page_identity(request)
        if identity is None:
            return redirect(request, "/login?next=/settings")
        return await self._page(request, identity, 200)

    async def _page_identity(self, request: IRequest) -> Identity | None:
        try:
            return await self.auth.identify(request)
        except AccountError as e:
            raise ApiError(e.status, e.code, e.message) from None

    async def _page(
        self,
        request: IRequest,
        identity: Identity,
        status: int,
        error: AccountError | None = None,
    ) -> bytes:
        state = await self.preferences.read(identity)
        return await self.web.page(
            request,
            "settings.html",
            status=status,
            title="Settings",
            account=identity,
            prefs=state,
            volume_percent=round(state["voice"]["volume"] * 100),
            decided_at=_when(state["privacy"]["decided_at"]),
            delete_error=Notice(error.message) if error is not None else None,
        )


def _refusal(error: AccountError) -> ApiError:
    """Deletion's answer to a refused password: 403, not login's 401 (the
    person is signed in; they only failed to confirm)."""
    if error.code == "invalid_credentials":
        return ApiError(403, error.code, error.message, **error.extra)
    return api_error(error)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def install_me_routes(routes: MeRoutes) -> MeRoutes:
    """Add ``routes`` (the routes of the module doc) to ``routes.web.app``."""
    app = routes.web.app
    get = ["GET", "HEAD"]
    app.route("/api/me/preferences", methods=get, endpoint="me_preferences")(routes.get_preferences)
    app.route("/api/me/preferences", methods=["PATCH"], endpoint="me_preferences_patch")(
        routes.patch_preferences
    )
    app.route("/api/me/export", methods=get, endpoint="me_export")(routes.export)
    app.route("/api/me", methods=["DELETE"], endpoint="me_delete")(routes.delete_api)
    app.route("/settings", methods=get, endpoint="me_settings")(routes.settings_page)
    app.route("/settings/delete", methods=["POST"], endpoint="me_settings_delete")(
        routes.delete_form
    )
    return routes

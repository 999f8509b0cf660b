"""The /admin page over a real loopback port: who may see it, what it lists,
role changes, and the moderation forms (with a recording moderation object)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest_twisted
from twisted.internet import reactor

from bambid.identity import Identity
from bambid.models import Account, Sanction, UserInteraction
from bambid.ws.dispatch import ClientError
from tests.conftest import Running
from tests.test_auth import PASSWORD, Browser, service


@attrs.define
class RecordingModeration:
    """Stands in for bambid.chat.moderation: records each call; refuses
    people named in ``refusals`` with that ``ClientError`` code."""

    calls: list[tuple[Identity, str, dict[str, Any]]] = attrs.Factory(list)
    refusals: dict[str, str] = attrs.Factory(dict)

    async def execute(self, actor: Identity, cmd: str, args: Mapping[str, Any]) -> dict[str, Any]:
        code = self.refusals.get(str(args.get("user", "")).casefold())
        if code is not None:
            raise ClientError(code, f"refused: {code}")
        self.calls.append((actor, cmd, dict(args)))
        return {"ok": True}


@asynccontextmanager
async def staffed(tmp_path: Path, **sections: dict[str, Any]) -> AsyncIterator[Running]:
    """bambid (``test_auth.service``, with ``sections``) whose ``auth.admins``
    is Root, with Root, Moe (a moderator) and Bob (a user) registered."""
    async with service(tmp_path, auth={"admins": ["root"]}, **sections) as running:
        for name in ("Root", "Moe", "Bob"):
            await Browser(running.http).register(name)
        await running.service.storage.set_account_role("Moe", "moderator")
        yield running


@pytest_twisted.async_yield_fixture
async def site(tmp_path: Path) -> AsyncIterator[Running]:
    async with staffed(tmp_path) as running:
        yield running


async def signed_in(running: Running, name: str) -> Browser:
    """A browser logged in as ``name`` (password ``test_auth.PASSWORD``)."""
    browser = Browser(running.http)
    response = await browser.api("/api/auth/login", {"username": name, "password": PASSWORD})
    assert response.code == 200, response.body
    return browser


async def post(browser: Browser, action: str, fields: dict[str, str]) -> Any:
    token = await browser.csrf_token("/admin")
    return await browser.request("POST", f"/admin/{action}", data={**fields, "csrf_token": token})


@pytest_twisted.ensureDeferred
async def test_nobody_is_sent_to_login(site: Running) -> None:
    response = await Browser(site.http).get("/admin")
    assert (response.code, response.header("location")) == (303, "/login?next=/admin")


@pytest_twisted.ensureDeferred
async def test_users_and_guests_are_forbidden(site: Running) -> None:
    bob = await signed_in(site, "Bob")
    response = await bob.get("/admin")
    assert response.code == 403
    assert (response.header("content-type") or "").startswith("text/html")
    assert b"for moderators and admins" in response.body
    assert b"Bob" in response.body  # the nav still knows who this is
    assert b'href="/admin"' not in response.body
    response = await post(bob, "ban", {"user": "Moe", "reason": "x"})
    assert response.code == 403
    guest = Browser(site.http)
    assert (await guest.api("/api/auth/guest", {"name": "Wanderer"})).code == 201
    assert (await guest.get("/admin")).code == 403


@pytest_twisted.ensureDeferred
async def test_admins_see_accounts_and_sanctions(site: Running) -> None:
    now = reactor.seconds()
    storage = site.service.storage
    await storage.set_sanction(Sanction("ban", "Bob", "spamming <links>", "Root", now, None))
    await storage.set_sanction(Sanction("mute", "Moe", "shouting", "Root", now, now + 600))
    await storage.set_sanction(Sanction("mute", "Old", "expired", "Root", now - 20, now - 10))
    root = await signed_in(site, "root")
    assert (await root.get("/api/me")).json()["user"]["role"] == "admin"
    page = await root.get("/admin")
    assert page.code == 200
    text = page.text
    assert 'href="/admin"' in text  # nav link
    accounts = text[text.index('id="admin-accounts"') : text.index("</table>")]
    assert re.search(r"<td>Bob</td>\s*<td><span[^>]*>user</span>", accounts)
    assert re.search(r"<td>Moe</td>\s*<td><span[^>]*>moderator</span>", accounts)
    assert re.search(r"<td>Root</td>\s*<td><span[^>]*>admin</span>", accounts)
    assert re.search(r"<td>\d{4}-\d{2}-\d{2}</td>", accounts)
    bans = text[text.index('id="active-bans"') : text.index('id="active-mutes"')]
    assert "Bob" in bans and "spamming &lt;links&gt;" in bans and "until lifted" in bans
    mutes = text[text.index('id="active-mutes"') :]
    assert "shouting" in mutes
    assert "expired" not in mutes
    assert 'action="/admin/role"' in text


@pytest_twisted.ensureDeferred
async def test_moderators_see_the_page_without_role_forms(site: Running) -> None:
    moe = await signed_in(site, "Moe")
    page = await moe.get("/admin")
    assert page.code == 200
    assert b'action="/admin/ban"' in page.body
    assert b'action="/admin/role"' not in page.body
    response = await post(moe, "role", {"user": "Bob", "role": "moderator"})
    assert response.code == 403
    account = await site.service.storage.get_account("Bob")
    assert account is not None and account.role == "user"


@pytest_twisted.ensureDeferred
async def test_search_and_paging(site: Running) -> None:
    storage = site.service.storage
    for i in range(30):
        await storage.create_account(Account(f"zed{i:02d}", "x", "user", reactor.seconds()))
    root = await signed_in(site, "Root")
    page = await root.get("/admin?q=ZED")
    assert "zed00" in page.text and "zed24" in page.text and "zed25" not in page.text
    assert "Bob" not in page.text.split('id="admin-accounts"')[1].split("</table>")[0]
    assert "Page 1 of 2" in page.text
    page = await root.get("/admin?q=zed&page=2")
    assert "zed25" in page.text and "zed29" in page.text and "zed24" not in page.text
    page = await root.get("/admin?q=nobody")
    assert "No accounts starting with nobody" in page.text
    # Nonsense input is ignored, not an error.
    assert (await root.get("/admin?q=%3Cx%3E&page=-3")).code == 200
    assert (await root.get("/admin?page=abc")).code == 200


@pytest_twisted.ensureDeferred
async def test_admins_change_roles(site: Running) -> None:
    root = await signed_in(site, "Root")
    bob = await signed_in(site, "Bob")
    assert (await bob.get("/admin")).code == 403
    response = await post(root, "role", {"user": "bob", "role": "moderator"})
    assert (response.code, response.header("location")) == (303, "/admin?done=role&user=bob")
    account = await site.service.storage.get_account("Bob")
    assert account is not None and account.role == "moderator"
    # Effective at once, for the person's existing session too.
    assert (await bob.get("/api/me")).json()["user"]["role"] == "moderator"
    assert (await bob.get("/admin")).code == 200
    records = await site.service.storage.list_records(UserInteraction, "Bob", 10)
    (record,) = [r for r in records if r.action == "role_change"]
    assert (record.action, record.details) == (
        "role_change",
        {"by": "Root", "from": "user", "to": "moderator"},
    )
    page = await root.get(response.header("location") or "")
    assert "Changed the role of bob." in page.text


@pytest_twisted.ensureDeferred
async def test_bad_role_changes_are_refused(site: Running) -> None:
    root = await signed_in(site, "Root")
    cases = [
        ({"user": "Bob", "role": "admin"}, 422, "role must be one of"),
        ({"user": "Nobody", "role": "moderator"}, 404, "no account"),
        ({"user": "Root", "role": "user"}, 422, "admin by configuration"),
    ]
    for fields, status, message in cases:
        response = await post(root, "role", fields)
        assert response.code == status, fields
        assert message in response.text
        assert 'id="admin-error"' in response.text
    account = await site.service.storage.get_account("Bob")
    assert account is not None and account.role == "user"


@pytest_twisted.ensureDeferred
async def test_admin_forms_need_the_csrf_token(site: Running) -> None:
    root = await signed_in(site, "Root")
    response = await root.request("POST", "/admin/role", data={"user": "Bob", "role": "moderator"})
    assert response.code == 403
    token = await root.csrf_token("/admin")
    response = await root.request(
        "POST",
        "/admin/role",
        data={"user": "Bob", "role": "moderator", "csrf_token": token},
        headers={"Origin": "https://evil.example"},
    )
    assert response.code == 403
    account = await site.service.storage.get_account("Bob")
    assert account is not None and account.role == "user"


@pytest_twisted.ensureDeferred
async def test_moderation_forms_without_moderation_are_503(site: Running) -> None:
    site.service.admin_routes.moderation = None
    root = await signed_in(site, "Root")
    page = await root.get("/admin")
    assert "Moderation is unavailable" in page.text
    response = await post(root, "ban", {"user": "Bob", "reason": "spam"})
    assert response.code == 503
    assert "moderation unavailable" in response.text


@pytest_twisted.ensureDeferred
async def test_moderation_forms_call_the_moderation_object(site: Running) -> None:
    moderation = RecordingModeration()
    site.service.admin_routes.moderation = moderation
    moe = await signed_in(site, "Moe")
    response = await post(moe, "ban", {"user": "Bob", "duration": "1d", "reason": "spam"})
    assert (response.code, response.header("location")) == (303, "/admin?done=ban&user=Bob")
    response = await post(moe, "mute", {"user": "Bob", "duration": "", "reason": ""})
    assert response.code == 303
    assert (await post(moe, "unmute", {"user": "Bob"})).code == 303
    assert (await post(moe, "unban", {"user": "Bob", "reason": "ignored"})).code == 303
    actor = Identity("Moe", "moderator")
    assert moderation.calls == [
        (actor, "ban", {"user": "Bob", "duration": "1d", "reason": "spam"}),
        (actor, "mute", {"user": "Bob"}),
        (actor, "unmute", {"user": "Bob"}),
        (actor, "unban", {"user": "Bob"}),
    ]


@pytest_twisted.ensureDeferred
async def test_moderation_refusals_become_statuses(site: Running) -> None:
    site.service.admin_routes.moderation = RecordingModeration(
        refusals={"root": "forbidden", "ghost": "not_found", "bad": "bad_request"}
    )
    moe = await signed_in(site, "Moe")
    for user, status in (("Root", 403), ("Ghost", 404), ("Bad", 400)):
        response = await post(moe, "ban", {"user": user, "reason": "x"})
        assert response.code == status
        assert "refused:" in response.text
    response = await post(moe, "explode", {"user": "Bob"})
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_a_ban_from_the_admin_page_keeps_them_out(site: Running) -> None:
    """With the service's own moderation object: ban, refused login, unban."""
    bob = await signed_in(site, "Bob")
    moe = await signed_in(site, "Moe")
    response = await post(moe, "ban", {"user": "Bob", "reason": "spam", "duration": "1d"})
    assert response.code == 303, response.text
    page = await moe.get("/admin")
    bans = page.text[page.text.index('id="active-bans"') : page.text.index('id="active-mutes"')]
    assert "Bob" in bans and "spam" in bans
    assert (await bob.get("/api/me")).code in (401, 403)
    response = await Browser(site.http).api(
        "/api/auth/login", {"username": "Bob", "password": PASSWORD}
    )
    assert (response.code, response.json()["error"], response.json()["reason"]) == (
        403,
        "banned",
        "spam",
    )
    assert (await post(moe, "unban", {"user": "Bob"})).code == 303
    await signed_in(site, "Bob")
    # Moderators cannot act on admins.
    response = await post(moe, "ban", {"user": "Root", "reason": "coup"})
    assert response.code == 403

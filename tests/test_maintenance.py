"""Maintenance mode over real loopback ports: HTTP answers 503 except what stays
open (health, static files, log in, admins), WebSocket connections are told
and closed 1013 (admins stay), a new ``hello`` is refused; switched from the
admin page (CSRF, admins only), from storage by "another instance" (the poll),
and kept across a restart. Then the switch itself with a fake storage and a
``task.Clock``: a read that fails keeps the state, a stale read loses to a
newer switch."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorFromThreads,
    IStreamServerEndpoint,
)
from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import implementer, provider

from bambid.config import MaintenanceConfig
from bambid.identity import Identity
from bambid.maintenance import Maintenance, MaintenanceState
from bambid.models import UserInteraction
from bambid.service import BambidService
from bambid.storage import StorageError
from bambid.storage.sqlite import SQLiteStorage
from tests import wsclient
from tests.chatsupport import FakeConnection, add_person, connect, next_of, prepare
from tests.conftest import Running, make_config
from tests.test_admin_page import signed_in, staffed
from tests.test_auth import PASSWORD, Browser, Response, service

MAINTENANCE = {"close_grace_seconds": 0.3, "poll_seconds": 0.5, "retry_after_seconds": 120}


@pytest_twisted.async_yield_fixture
async def site(tmp_path: Path) -> AsyncIterator[Running]:
    """bambid with Root an admin (``auth.admins``), Moe a moderator, Bob a user."""
    async with staffed(tmp_path, maintenance=MAINTENANCE) as running:
        yield running


async def eventually(condition: Any, timeout: float = 10.0) -> None:
    """Wait (polling the reactor) until ``condition()`` is true."""
    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, "timed out waiting"
        await task.deferLater(reactor, 0.05, lambda: None)


def assert_refused_json(response: Any, message: str) -> None:
    assert response.code == 503, response.body
    assert response.header("retry-after") == "120"
    assert response.json() == {"error": "maintenance", "message": message, "retry_after": 120}


# --- HTTP -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_http_answers_503_except_for_what_stays_open(site: Running) -> None:
    bob = await signed_in(site, "Bob")
    root = await signed_in(site, "Root")
    anyone = Browser(site.http)
    assert (await bob.get("/api/me")).code == 200

    await site.service.maintenance.set(True, "Root", "Back at <five>", via="test")

    assert_refused_json(await anyone.get("/api/me"), "Back at <five>")
    assert_refused_json(await bob.get("/api/me"), "Back at <five>")
    assert_refused_json(await bob.api("/api/auth/logout"), "Back at <five>")
    page = await bob.get("/")
    assert page.code == 503
    assert page.header("retry-after") == "120"
    assert (page.header("content-type") or "").startswith("text/html")
    assert "Back at &lt;five&gt;" in page.text  # escaped
    assert "Down for maintenance" in page.text
    assert (await anyone.request("HEAD", "/")).code == 503
    assert (await anyone.get("/register")).code == 503

    health = await anyone.get("/health/api")
    assert health.code in (200, 503) and "storage" in health.json()  # the report, not us
    assert (await anyone.get("/health")).header("retry-after") is None
    assert (await anyone.get("/static/css/bambid.css")).code == 200
    assert (await anyone.get("/vendor/bootstrap/css/bootstrap.min.css")).code == 200
    assert (await anyone.get("/login")).code == 200

    # Admins keep everything, and an admin can still sign in with the form.
    assert (await root.get("/api/me")).json()["user"]["name"] == "Root"
    assert (await root.get("/")).code == 200
    assert (await root.get("/admin")).code == 200
    fresh = Browser(site.http)
    response = await fresh.form("/login", {"username": "root", "password": PASSWORD})
    assert response.code == 303
    assert (await fresh.get("/admin")).code == 200
    # Signing in does not let anyone else through.
    moe = Browser(site.http)
    assert (await moe.form("/login", {"username": "moe", "password": PASSWORD})).code == 303
    assert (await moe.get("/admin")).code == 503

    await site.service.maintenance.set(False, "Root")
    assert (await bob.get("/api/me")).code == 200
    assert (await anyone.get("/")).code == 200
    assert (await moe.get("/admin")).code == 200


# --- WebSocket -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_websocket_clients_are_told_and_closed_but_admins_stay(site: Running) -> None:
    storage = site.service.storage
    root_token = await add_person(storage, "Root")
    bob_token = await add_person(storage, "Bob")
    root, welcome = await connect(site, root_token)
    assert welcome["type"] == "welcome"
    bob, welcome = await connect(site, bob_token)
    assert welcome["type"] == "welcome"
    anonymous, _ = await connect(site)

    await site.service.maintenance.set(True, "Root", "Tea break", via="test")

    for client in (root, bob, anonymous):
        notice = await next_of(client, "system")
        assert notice == {"type": "system", "message": "Tea break", "level": "warning"}
    assert await bob.closed == (1013, "maintenance")
    assert await anonymous.closed == (1013, "maintenance")
    assert not root.closed.called
    ack = await root.request({"type": "room.join", "id": "j", "room": "lobby"})
    assert ack["type"] == "ack"

    # New connections: everyone but admins is refused at hello.
    again = await wsclient.connect(site.ws, cookie=bob_token)
    error = await again.request({"type": "hello", "id": 7})
    assert error == {
        "type": "error",
        "id": 7,
        "code": "maintenance",
        "message": "Tea break",
        "retry_after": 120,
    }
    assert await again.closed == (1013, "maintenance")
    admin_again, welcome = await connect(site, root_token)
    assert welcome["type"] == "welcome"

    await site.service.maintenance.set(False, "Root")
    over = await next_of(root, "system")
    assert over["level"] == "info" and "over" in over["message"]
    bob, welcome = await connect(site, bob_token)
    assert welcome["type"] == "welcome"
    for client in (root, admin_again, bob):
        client.dropConnection(abort=True)


# --- switching -----------------------------------------------------------------------------


async def post_form(browser: Browser, fields: dict[str, str], token: bool = True) -> Any:
    data = dict(fields)
    if token:
        data["csrf_token"] = await browser.csrf_token("/admin")
    return await browser.request("POST", "/admin/maintenance", data=data)


@pytest_twisted.ensureDeferred
async def test_admins_switch_it_from_the_admin_page(site: Running) -> None:
    switch = site.service.maintenance
    storage = site.service.storage
    root = await signed_in(site, "Root")
    moe = await signed_in(site, "Moe")
    page = await root.get("/admin")
    assert 'action="/admin/maintenance"' in page.text and "Switch on" in page.text
    moderator_page = await moe.get("/admin")
    assert 'id="maintenance-state"' in moderator_page.text
    assert 'action="/admin/maintenance"' not in moderator_page.text

    assert (await post_form(root, {"on": "1"}, token=False)).code == 403  # CSRF
    assert (await post_form(moe, {"on": "1"})).code == 403  # moderators may not
    assert (await post_form(root, {"on": "maybe"})).code == 400
    assert (await post_form(root, {"on": "1", "message": "x" * 501})).code == 400
    assert not switch.on and await storage.get_setting("maintenance") is None

    response = await post_form(root, {"on": "1", "message": "  Upgrading  "})
    assert (response.code, response.header("location")) == (
        303,
        "/admin?done=maintenance&user=on",
    )
    assert switch.on and switch.state.message == "Upgrading" and switch.state.by == "Root"
    stored = await storage.get_setting("maintenance")
    assert stored["on"] is True and stored["message"] == "Upgrading" and stored["by"] == "Root"
    page = await root.get("/admin?done=maintenance&user=on")
    assert "Maintenance mode is now on." in page.text and "Switch off" in page.text
    assert "Upgrading" in page.text

    assert (await post_form(root, {"on": "0"})).code == 303
    assert not switch.on
    assert (await storage.get_setting("maintenance"))["on"] is False
    records = await storage.list_records(UserInteraction, "Root", 10)
    switches = [r.details for r in records if r.action == "moderation.maintenance"]
    assert switches == [
        {"on": False, "message": switch.config.message, "via": "web"},
        {"on": True, "message": "Upgrading", "via": "web"},
    ]


@pytest_twisted.ensureDeferred
async def test_another_instance_switches_it_through_storage(site: Running, tmp_path: Path) -> None:
    bob_token = await add_person(site.service.storage, "Bob")
    bob, _ = await connect(site, bob_token)
    # Another daemon, or bambidctl, on the same database.
    other = SQLiteStorage(tmp_path / "bambid.sqlite3", IReactorFromThreads(reactor))
    await other.open()
    try:
        await other.set_setting("maintenance", {"on": True, "message": "From elsewhere"})
        await eventually(lambda: site.service.maintenance.on)
        assert_refused_json(await Browser(site.http).get("/api/me"), "From elsewhere")
        notice = await next_of(bob, "system")
        assert notice["message"] == "From elsewhere"
        assert await bob.closed == (1013, "maintenance")

        await other.set_setting("maintenance", None)
        await eventually(lambda: not site.service.maintenance.on)
        assert (await Browser(site.http).get("/")).code == 200
    finally:
        await other.close()


@pytest_twisted.ensureDeferred
async def test_a_restarted_daemon_starts_in_maintenance(tmp_path: Path) -> None:
    async with service(tmp_path, maintenance=MAINTENANCE) as running:
        await running.service.maintenance.set(True, "ops", "Moving house")
    async with service(tmp_path, maintenance=MAINTENANCE) as running:
        assert running.service.maintenance.on
        assert_refused_json(await Browser(running.http).get("/api/me"), "Moving house")


@implementer(IStreamServerEndpoint)
class AskFirst:
    """A listening endpoint that, the moment it listens and before start-up
    goes on, makes one HTTP request and one WebSocket ``hello`` itself: what
    connections queued on a socket-activated port meet first."""

    def __init__(self, inner: IStreamServerEndpoint) -> None:
        self.inner = inner
        self.page: Response | None = None
        self.hello: dict[str, Any] | None = None

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        return Deferred.fromCoroutine(self._listen(factory))

    async def _listen(self, factory: IProtocolFactory) -> IListeningPort:
        port: IListeningPort = await self.inner.listen(factory)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        self.page = await Browser(f"http://127.0.0.1:{address.port}").get("/api/me")
        client = await wsclient.connect(f"ws://127.0.0.1:{address.port}/ws")
        self.hello = await client.request({"type": "hello", "id": 1})
        client.dropConnection(abort=True)
        return port


@pytest_twisted.ensureDeferred
async def test_the_very_first_request_after_a_start_meets_maintenance(tmp_path: Path) -> None:
    stored = SQLiteStorage(tmp_path / "bambid.sqlite3", IReactorFromThreads(reactor))
    await stored.open()
    await stored.set_setting("maintenance", {"on": True, "message": "Still moving"})
    await stored.close()
    config = make_config(tmp_path)
    config = attrs.evolve(
        config, maintenance=attrs.evolve(config.maintenance, retry_after_seconds=120)
    )
    svc = BambidService(config, reactor, base_dir=tmp_path)
    first = svc.endpoint = AskFirst(svc.endpoint)
    svc.startService()
    await svc.started
    try:
        assert_refused_json(first.page, "Still moving")
        assert first.hello is not None
        assert first.hello["code"] == "maintenance"
        assert first.hello["message"] == "Still moving"
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_an_unreadable_switch_does_not_stop_start_up(tmp_path: Path) -> None:
    stored = SQLiteStorage(tmp_path / "bambid.sqlite3", IReactorFromThreads(reactor))
    await stored.open()
    await stored.close()
    with sqlite3.connect(tmp_path / "bambid.sqlite3") as conn:
        conn.execute("INSERT INTO settings (key, value) VALUES ('maintenance', 'not JSON')")
    conn.close()
    async with service(tmp_path, maintenance=MAINTENANCE) as running:
        assert not running.service.maintenance.on  # documented: it starts off
        assert (await Browser(running.http).get("/")).code == 200


# --- the switch, with a fake storage --------------------------------------------------------


class FakeStorage:
    """``get_setting`` answers what the test decides; writes are kept."""

    def __init__(self) -> None:
        self.value: Any = None
        self.failing = False
        self.held: Deferred[Any] | None = None
        self.records: list[UserInteraction] = []
        self.records_failing = False

    async def get_setting(self, key: str) -> Any:
        assert key == "maintenance"
        if self.held is not None:
            return await self.held
        if self.failing:
            raise StorageError("database is down")
        return self.value

    async def set_setting(self, key: str, value: Any) -> None:
        self.value = json.loads(json.dumps(value))

    async def record(self, entry: UserInteraction) -> None:
        if self.records_failing:
            raise StorageError("the records are full")
        self.records.append(entry)


def switch_with(storage: FakeStorage, clock: task.Clock) -> Maintenance:
    config = MaintenanceConfig(poll_seconds=5.0, close_grace_seconds=2.0)
    return Maintenance(config, storage, clock, lambda: [], prepare)  # type: ignore[arg-type]


@pytest.fixture
def warnings() -> Any:
    """The bambid.maintenance log events emitted during the test."""
    events: list[dict[str, Any]] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("bambid.maintenance"):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_a_failing_read_keeps_the_state_and_is_logged_once(warnings: Any) -> None:
    storage, clock = FakeStorage(), task.Clock()
    storage.value = {"on": True, "message": "m"}
    switch = switch_with(storage, clock)
    await switch.start()
    assert switch.on
    storage.failing = True
    for _ in range(5):
        clock.advance(5.0)
    assert switch.on
    failing = [e for e in warnings if "cannot read" in e["log_format"]]
    assert len(failing) == 1
    storage.failing = False
    storage.value = {"on": False}
    clock.advance(5.0)
    assert not switch.on
    assert any("works again" in e["log_format"] for e in warnings)
    storage.value = "nonsense"
    clock.advance(5.0)
    clock.advance(5.0)
    assert not switch.on
    assert len([e for e in warnings if "ignoring" in e["log_format"]]) == 1
    await switch.stop()


@pytest_twisted.ensureDeferred
async def test_a_read_older_than_a_switch_does_not_undo_it() -> None:
    storage, clock = FakeStorage(), task.Clock()
    switch = switch_with(storage, clock)
    await switch.start()
    storage.held = Deferred()
    clock.advance(5.0)  # a poll starts and waits for its read
    storage_said_off = storage.held
    storage.held = None
    await switch.set(True, "Root")
    storage_said_off.callback(None)  # the stale read answers "off"
    assert switch.on
    clock.advance(5.0)  # the next poll reads the new value
    assert switch.on
    await switch.stop()


@pytest_twisted.ensureDeferred
async def test_connections_are_closed_after_the_grace_unless_switched_off() -> None:
    storage, clock = FakeStorage(), task.Clock()
    admin = FakeConnection(identity=Identity("Root", "admin"), greeted=True)
    user = FakeConnection(identity=Identity("Bob", "user"), greeted=True)
    config = MaintenanceConfig(poll_seconds=5.0, close_grace_seconds=2.0)
    switch = Maintenance(config, storage, clock, lambda: [admin, user], prepare)  # type: ignore[arg-type]
    await switch.set(True, "Root", "brb")
    await switch.set(False, "Root")
    clock.advance(3.0)
    assert user.closed is None  # switched off within the grace: nobody closed
    await switch.set(True, "Root", "brb")
    clock.advance(1.9)
    assert user.closed is None
    clock.advance(0.2)
    assert user.closed == (1013, "maintenance") and admin.closed is None
    assert [m["level"] for m in admin.sent] == ["warning", "info", "warning"]
    assert [r.details["on"] for r in storage.records] == [True, False, True]
    await switch.stop()


@pytest_twisted.ensureDeferred
async def test_a_switch_stands_when_only_its_record_fails(warnings: Any) -> None:
    storage, clock = FakeStorage(), task.Clock()
    switch = switch_with(storage, clock)
    storage.records_failing = True
    state = await switch.set(True, "Root", "brb", via="test")
    assert state.on and switch.on
    assert storage.value["on"] is True
    failures = [e for e in warnings if "log_failure" in e]
    assert len(failures) == 1
    assert "record was not stored" in failures[0]["log_format"]
    assert failures[0]["log_failure"].check(StorageError)
    await switch.stop()


def test_state_documents() -> None:
    default = "Default message"
    assert MaintenanceState.from_document(None, default) == MaintenanceState()
    state = MaintenanceState.from_document({"on": True}, default)
    assert state == MaintenanceState(True, default, None, "")
    full = MaintenanceState(True, "m", 12.5, "ops")
    assert MaintenanceState.from_document(full.to_document(), default) == full
    odd = {"on": False, "message": " ", "since": 10**400, "by": 7}  # JSON allows it all
    assert MaintenanceState.from_document(odd, default) == MaintenanceState(False, default)
    bad_values: list[Any] = ["on", [], {"on": "yes"}, {"message": "x"}]
    for bad in bad_values:
        with pytest.raises(ValueError):
            MaintenanceState.from_document(bad, default)

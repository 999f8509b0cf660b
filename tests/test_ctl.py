"""``bambidctl`` as the operator runs it: the installed console script, as a
subprocess, with the configuration of a real daemon running beside it
(``tests/daemon.py``) on a SQLite file in ``tmp_path``."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue

from bambid.auth.sessions import SESSION_COOKIE
from tests import wsclient
from tests.chatsupport import join
from tests.daemon import Daemon, daemon_environment
from tests.test_analytics import eventually, say
from tests.test_auth import Browser, Response

BAMBIDCTL = Path(sys.executable).parent / "bambidctl"
PASSWORD = "correct horse battery"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A configuration for the daemon and bambidctl alike."""
    path = tmp_path / "bambid.toml"
    path.write_text(
        f"""
[storage]
uri = "sqlite:///{tmp_path}/data/bambid.sqlite3"

[auth]
admins = ["root"]

[limits]
chat_burst = 100000
chat_per_second = 100000
connection_burst = 1000
connection_per_second = 1000

[xp]
chat_message = 0

[maintenance]
poll_seconds = 0.5
close_grace_seconds = 0
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def daemon(tmp_path: Path, config: Path) -> Iterator[Daemon]:
    workdir = tmp_path / "daemon"
    workdir.mkdir()
    with Daemon.start(workdir, ("--config", str(config))) as running:
        yield running


def database(config: Path) -> Path:
    return config.parent / "data" / "bambid.sqlite3"


def ctl(
    config: Path | None, *args: str, input: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``bambidctl [--config CONFIG] ARGS`` with ``input`` on standard input."""
    command = [str(BAMBIDCTL), *(["--config", str(config)] if config else []), *args]
    return subprocess.run(
        command,
        input=input,
        capture_output=True,
        text=True,
        env=daemon_environment(env),
        cwd=config.parent if config else None,
        timeout=120,
    )


def query(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the database as another program would (read-only, beside the daemon)."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def ctl_records(config: Path) -> list[tuple[str, dict[str, Any]]]:
    rows = query(
        database(config),
        "SELECT action, details FROM user_interactions WHERE username = 'bambidctl' ORDER BY id",
    )
    return [(action, json.loads(details)) for action, details in rows]


async def login(daemon: Daemon, name: str, password: str = PASSWORD) -> tuple[Browser, Response]:
    browser = Browser(daemon.http)
    response = await browser.api("/api/auth/login", {"username": name, "password": password})
    return browser, response


# --- without a daemon ----------------------------------------------------------------------


def test_the_console_script_is_installed() -> None:
    assert BAMBIDCTL.exists(), "pip install -e . puts bambidctl next to python"
    result = ctl(None, "--help")
    assert result.returncode == 0
    for command in ("user", "backup", "restore", "config", "maintenance"):
        assert command in result.stdout
    assert ctl(None).returncode == 2  # a command is required
    assert ctl(None, "user", "promote", "x").returncode == 2


def test_configuration_errors_name_the_key(tmp_path: Path) -> None:
    result = ctl(None, "config", "show", env={"BAMBID_SERVER_MAX_BODY_SIZE": "big"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "server.max_body_size" in result.stderr and "Traceback" not in result.stderr
    missing = ctl(tmp_path / "missing.toml", "config", "show")
    assert missing.returncode == 2
    assert "--config: no such file" in missing.stderr


def test_config_show_masks_secrets(config: Path) -> None:
    secrets = {
        "BAMBID_AI_API_KEY": "sk-very-secret",
        "BAMBID_METRICS_TOKEN": "scrape-token-123",
    }
    result = ctl(config, "config", "show", env=secrets)
    assert result.returncode == 0, result.stderr
    shown = tomllib.loads(result.stdout)
    assert shown["ai"]["api_key"] == "***"
    assert shown["metrics"]["token"] == "***"
    assert shown["voice"]["api_key"] == ""  # not set
    assert shown["auth"]["admins"] == ["root"]
    assert shown["maintenance"]["poll_seconds"] == 0.5
    assert shown["storage"]["uri"] == f"sqlite:///{config.parent}/data/bambid.sqlite3"
    for secret in secrets.values():
        assert secret not in result.stdout
    mongo = ctl(
        None,
        "config",
        "show",
        env={"BAMBID_STORAGE_URI": "mongodb://bambid:hunter2@db.example:27017/bambid"},
    )
    assert "hunter2" not in mongo.stdout
    assert tomllib.loads(mongo.stdout)["storage"]["uri"] == (
        "mongodb://***@db.example:27017/bambid"
    )
    # Every URL setting: the userinfo and the query may hold credentials.
    in_urls = {
        "BAMBID_AI_URL": "https://llm-user:llm-pass@llm.example/v1?key=llm-key",
        "BAMBID_AI_FALLBACK_URLS": "http://fb-token@fallback.example:8080/v1,"
        "http://127.0.0.1:1234/v1?api_key=fb-key",
        "BAMBID_VOICE_URL": "http://tts-user:tts-pass@tts.example:8880/v1?token=tts-key",
        "BAMBID_STORAGE_URI": "mongodb://u:db-pass@db.example/bambid?authSource=admin",
    }
    urls = ctl(None, "config", "show", env=in_urls)
    assert urls.returncode == 0, urls.stderr
    for secret in ("llm-user", "llm-pass", "llm-key", "fb-token", "fb-key", "tts-pass", "tts-key"):
        assert secret not in urls.stdout, secret
    assert "db-pass" not in urls.stdout
    shown = tomllib.loads(urls.stdout)
    assert shown["ai"]["url"] == "https://***@llm.example/v1?***"
    assert shown["ai"]["fallback_urls"] == [
        "http://***@fallback.example:8080/v1",
        "http://127.0.0.1:1234/v1?***",
    ]
    assert shown["voice"]["url"] == "http://***@tts.example:8880/v1?***"
    assert shown["storage"]["uri"] == "mongodb://***@db.example/bambid?***"
    assert shown["server"]["public_url"] == ""  # not set, shown as it is


def test_backup_and_restore_on_mongodb_name_the_tools(tmp_path: Path) -> None:
    env = {"BAMBID_STORAGE_URI": "mongodb://127.0.0.1:9/bambid"}
    backup = ctl(None, "backup", str(tmp_path / "b.sqlite3"), env=env)
    assert (backup.returncode, "mongodump" in backup.stderr) == (1, True)
    restore = ctl(None, "restore", str(tmp_path / "b.sqlite3"), env=env)
    assert (restore.returncode, "mongorestore" in restore.stderr) == (1, True)


def test_a_missing_data_directory_is_not_created(tmp_path: Path) -> None:
    env = {"BAMBID_STORAGE_URI": f"sqlite:///{tmp_path}/nowhere/db.sqlite3"}
    result = ctl(None, "user", "unban", "Ann", env=env)
    assert result.returncode == 1
    assert "no directory" in result.stderr
    assert not (tmp_path / "nowhere").exists()


# --- beside a running daemon -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_users_beside_a_running_daemon(daemon: Daemon, config: Path, tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n", encoding="utf-8")

    # Create: from a file, from standard input; the daemon's rules apply.
    created = ctl(config, "user", "create", "Ann", "--password-file", str(password_file))
    assert created.returncode == 0, created.stderr
    assert created.stdout == "created the account Ann (role: user)\n"
    ann, response = await login(daemon, "Ann")
    assert response.code == 200, response.body
    piped = ctl(config, "user", "create", "Bea", input="another fine password\n")
    assert piped.returncode == 0, piped.stderr
    assert (await login(daemon, "Bea", "another fine password"))[1].code == 200
    for args, refusal in (
        (("ann",), "taken"),
        (("Al",), "3 to 32 characters"),
        (("Bad name",), "3 to 32 characters"),
    ):
        result = ctl(config, "user", "create", *args, "--password-file", str(password_file))
        assert (result.returncode, refusal in result.stderr) == (1, True), result.stderr
    short = ctl(config, "user", "create", "Cat", input="short\n")
    assert (short.returncode, "passwords are 8" in short.stderr) == (1, True)
    moderator = ctl(config, "user", "create", "Mod", "--role", "moderator", input=PASSWORD)
    assert moderator.stdout == "created the account Mod (role: moderator)\n"
    assert ctl(config, "user", "create", "Boss", "--role", "admin", input=PASSWORD).returncode == 2

    # Roles: stored, and read by the daemon on the next request.
    assert ctl(config, "user", "role", "Ann", "moderator").returncode == 0
    me = await ann.get("/api/me")
    assert me.json()["user"]["role"] == "moderator"
    assert ctl(config, "user", "role", "Ann", "admin").returncode == 2
    nobody = ctl(config, "user", "role", "Nobody", "user")
    assert (nobody.returncode, "no account" in nobody.stderr) == (1, True)

    # Ann says something (her message outlives her account).
    token = ann.cookie(SESSION_COOKIE)
    client = await greeted_as(daemon, token)
    await join(client)
    await say(client, "hello from Ann")
    client.sendClose()
    await client.closed

    # Ban: no login, no hello; recorded as the web's moderation is.
    banned = ctl(config, "user", "ban", "ann", "--duration", "1h", "--reason", "too loud")
    assert banned.returncode == 0, banned.stderr
    assert "banned Ann for 1 hour: too loud" in banned.stdout
    assert "until they reconnect" in banned.stdout
    refused = (await login(daemon, "Ann"))[1]
    assert (refused.code, refused.json()["error"]) == (403, "banned")
    hello = await wsclient.connect(daemon.ws, cookie=token)
    answer = await hello.request({"type": "hello", "protocol": 1})
    assert (answer["type"], answer["code"], answer["reason"]) == ("error", "banned", "too loud")
    await hello.closed
    assert ctl_records(config)[-1] == (
        "moderation.ban",
        {"target": "Ann", "reason": "too loud", "seconds": 3600.0, "by": "bambidctl"},
    )
    assert ctl(config, "user", "ban", "Nobody").returncode == 1
    assert ctl(config, "user", "ban", "Bea", "--duration", "2x").returncode == 2

    # Unban: in again.
    lifted = ctl(config, "user", "unban", "Ann")
    assert (lifted.returncode, lifted.stdout) == (0, "lifted the ban of Ann\n")
    ann, response = await login(daemon, "Ann")
    assert response.code == 200
    assert "was not banned" in ctl(config, "user", "unban", "Ann").stdout
    assert ctl_records(config)[-1] == ("moderation.unban", {"target": "Ann", "by": "bambidctl"})

    # Export: the storage's export, to a private file or standard output.
    out = tmp_path / "ann.json"
    exported = ctl(config, "user", "export", "Ann", "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["account"]["username"] == "Ann"
    assert document["account"]["role"] == "moderator"
    assert "password_hash" not in document["account"]
    assert [m["text"] for m in document["chat_messages"]] == ["hello from Ann"]
    printed = ctl(config, "user", "export", "ann")
    assert json.loads(printed.stdout) == document
    assert ctl(config, "user", "export", "Nobody").returncode == 1

    # Delete: asked for (or --yes), then gone; her message stays, renamed.
    assert ctl(config, "user", "delete", "Ann").returncode == 2  # nobody to ask
    deleted = ctl(config, "user", "delete", "Ann", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert "until they reconnect" in deleted.stdout
    ((author,),) = query(database(config), "SELECT username FROM chat_messages")
    assert author.startswith("deleted-") and len(author) == len("deleted-") + 8
    assert author in deleted.stdout
    assert (await login(daemon, "Ann"))[1].code == 401
    assert (await ann.get("/api/me")).code == 401  # her session went with her
    assert ctl(config, "user", "export", "Ann").returncode == 1
    assert ctl(config, "user", "delete", "Ann", "--yes").returncode == 1
    assert ctl_records(config)[-1] == (
        "moderation.delete_account",
        {"replacement": author, "by": "bambidctl"},
    )


async def greeted_as(daemon: Daemon, token: str | None) -> wsclient.TestClientProtocol:
    client = await wsclient.connect(daemon.ws, cookie=token)
    welcome = await client.request({"type": "hello", "protocol": 1})
    assert welcome["type"] == "welcome", welcome
    return client


@pytest_twisted.ensureDeferred
async def test_backup_while_writing_then_restore(tmp_path: Path, config: Path) -> None:
    workdir = tmp_path / "daemon"
    workdir.mkdir()
    # The first account, before the daemon ever ran: bambidctl makes the database.
    database(config).parent.mkdir()
    assert ctl(config, "user", "create", "Bea", input=PASSWORD).returncode == 0
    backup_file = tmp_path / "backups" / "bambid-backup.sqlite3"
    backup_file.parent.mkdir()
    with Daemon.start(workdir, ("--config", str(config))) as daemon:
        bea, _ = await login(daemon, "Bea")
        client = await greeted_as(daemon, bea.cookie(SESSION_COOKIE))
        await join(client)
        acked: list[int] = []
        writing = True

        async def write() -> None:
            while writing:
                await say(client, f"message {len(acked) + 1}")
                acked.append(len(acked) + 1)

        writer = Deferred.fromCoroutine(write())

        async def some_written() -> bool:
            return len(acked) >= 20

        await eventually(some_written)
        before = len(acked)
        out, err, code = await getProcessOutputAndValue(
            str(BAMBIDCTL),
            ("--config", str(config), "backup", str(backup_file)),
            env=daemon_environment(),
            path=str(tmp_path),
        )
        during = len(acked)
        writing = False
        await writer
        total = len(acked)
        assert code == 0, err
        assert during > before, "the daemon kept writing during the backup"
        assert b"integrity check ok" in out

        # The backup: sound, one consistent snapshot holding what was acknowledged.
        assert query(backup_file, "PRAGMA integrity_check") == [("ok",)]
        assert query(backup_file, "PRAGMA journal_mode") == [("delete",)]
        assert stat.S_IMODE(backup_file.stat().st_mode) == 0o600  # it holds password hashes
        ((count, first, last),) = query(
            backup_file, "SELECT COUNT(*), MIN(seq), MAX(seq) FROM chat_messages"
        )
        assert before <= count <= total and (first, last) == (1, count)
        assert query(backup_file, "SELECT username FROM accounts") == [("Bea",)]
        assert ctl(config, "backup", str(backup_file)).returncode == 1  # never overwritten

        # Restore: refused while the daemon has the database open.
        refused = ctl(config, "restore", str(backup_file))
        assert refused.returncode == 1
        assert "in use" in refused.stderr and "stop the daemon" in refused.stderr
        assert not database(config).with_name("bambid.sqlite3.before-restore").exists()
        await say(client, "after the backup")  # the daemon still works
        assert ctl(config, "user", "create", "Cid", input=PASSWORD).returncode == 0
        client.sendClose()
        await client.closed
        assert daemon.terminate() == 0

    broken = tmp_path / "broken.sqlite3"
    broken.write_bytes(b"not a database at all" * 100)
    bad = ctl(config, "restore", str(broken))
    assert (bad.returncode, "not a usable backup" in bad.stderr) == (1, True)
    restored = ctl(config, "restore", str(backup_file))
    assert restored.returncode == 0, restored.stderr
    kept = database(config).with_name("bambid.sqlite3.before-restore")
    assert kept.exists() and str(kept) in restored.stdout
    assert query(kept, "SELECT COUNT(*) FROM chat_messages") == [(total + 1,)]
    again = ctl(config, "restore", str(backup_file))
    assert (again.returncode, "move it away" in again.stderr) == (1, True)

    # The daemon starts on the restored data: the backup's, nothing newer.
    with Daemon.start(workdir, ("--config", str(config))) as daemon:
        bea, response = await login(daemon, "Bea")
        assert response.code == 200
        assert (await login(daemon, "Cid"))[1].code == 401
        client = await greeted_as(daemon, bea.cookie(SESSION_COOKIE))
        history = await join(client)
        assert history["messages"][-1]["seq"] == count
        assert history["messages"][-1]["text"] == f"message {count}"
        client.sendClose()
        await client.closed


@pytest_twisted.ensureDeferred
async def test_maintenance_switch_reaches_the_daemon(daemon: Daemon, config: Path) -> None:
    status = ctl(config, "maintenance", "status")
    assert (status.returncode, status.stdout) == (0, "maintenance mode is off\n")

    switched = ctl(config, "maintenance", "on", "--message", "Back at noon")
    assert switched.returncode == 0, switched.stderr
    assert "maintenance mode is ON" in switched.stdout
    ((value,),) = query(database(config), "SELECT value FROM settings WHERE key = 'maintenance'")
    setting = json.loads(value)
    assert (setting["on"], setting["message"], setting["by"]) == (True, "Back at noon", "bambidctl")
    assert isinstance(setting["since"], float)

    async def answering(code: int) -> bool:
        response = await treq.get(daemon.http + "/")
        body = await response.content()
        return bool(response.code == code and (code != 503 or b"Back at noon" in body))

    await eventually(lambda: answering(503))
    status = ctl(config, "maintenance", "status")
    assert status.stdout.startswith("maintenance mode is ON since ")
    assert status.stdout.endswith(" by bambidctl: Back at noon\n")
    assert ctl(config, "maintenance", "off", "--message", "x").returncode == 2
    assert ctl(config, "maintenance", "on", "--message", "x" * 501).returncode == 2

    assert ctl(config, "maintenance", "off").returncode == 0
    await eventually(lambda: answering(200))
    ((value,),) = query(database(config), "SELECT value FROM settings WHERE key = 'maintenance'")
    assert json.loads(value)["on"] is False
    records = [r for r in ctl_records(config) if r[0] == "moderation.maintenance"]
    assert [details["on"] for _, details in records] == [True, False]
    assert all(details["via"] == "bambidctl" for _, details in records)


def test_files_it_writes_are_private(tmp_path: Path) -> None:
    """Exports hold personal data: only their owner may read them."""
    from bambid.ctl import _write_private

    target = tmp_path / "export.json"
    old = os.umask(0)
    try:
        _write_private(target, "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["export.json"]

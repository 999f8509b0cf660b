"""``bambidctl``: the operator's command line, beside a running daemon or without one.

It reads the configuration as the daemon does (``--config FILE``, then the
environment; a bad key is one line naming it and exit status 2) and works on
the same storage through the same ``Storage`` classes, on SQLite and MongoDB
alike. SQLite is safe to share: every process writes in its own short
transaction and waits up to ``storage.timeout`` for another's lock (WAL mode:
readers never wait). Relative SQLite paths start from ``--dir`` (default: the
current directory), which must be the daemon's working directory. A new
database is made only where its directory exists already (a first admin can
be created before the daemon ever ran, in ``var/``), so a wrong directory does
not quietly make a new, empty database.

Exit status: 0 done, 1 failed (refused by the rules, storage error, nothing
to act on), 2 usage or configuration error. A failure is one line on standard
error (``bambidctl: ...``); everything else goes to standard output.

The rules are the daemon's own: accounts are created through
``AccountService`` (names, password length, argon2id), roles set through
``AccountService.set_role``, durations parsed by ``chat.moderation``,
maintenance switched through ``bambid.maintenance.Maintenance``. What changes
people is recorded as a ``UserInteraction`` of ``bambidctl`` (bans, unbans,
deletions, maintenance; role changes are recorded by ``set_role`` with
``by: "bambidctl"``). A running daemon notices: sessions, roles and bans are
read from storage on every request and ``hello``, maintenance is polled. What
it cannot see from another process are the WebSocket connections already
open: a banned or deleted person keeps theirs until they reconnect (ban from
the admin page or with ``/ban`` to close them at once).

``backup`` and ``restore`` are for SQLite (MongoDB has ``mongodump`` and
``mongorestore``); docs/operations.md describes both.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import sqlite3
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn

import attrs
from twisted.internet import task
from twisted.internet.threads import deferToThread
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from bambid import config as configuration
from bambid.auth.accounts import (
    ASSIGNABLE_ROLES,
    PASSWORD_MAX_LENGTH,
    AccountError,
    AccountService,
)
from bambid.auth.passwords import PasswordHashing
from bambid.auth.sessions import hash_token, role_for
from bambid.chat.moderation import MAX_REASON, describe_duration, parse_duration
from bambid.identity import Identity
from bambid.maintenance import SETTING_KEY, Maintenance, MaintenanceState
from bambid.models import Sanction, UserInteraction, username_key
from bambid.storage import Storage, StorageError
from bambid.storage.factory import SQLITE_PREFIX, make_storage, sqlite_path
from bambid.storage.sqlite import MIGRATIONS_DIR, load_migrations
from bambid.ws.dispatch import ClientError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: Who bambidctl acts as: an admin of no account, named in records and sanctions.
ACTOR = "bambidctl"
ACTOR_IDENTITY = Identity(name=ACTOR, role="admin")
DEFAULT_BAN_REASON = "banned by the operator"
#: Where the replaced database goes (``DATABASE + BEFORE_RESTORE``).
BEFORE_RESTORE = ".before-restore"
#: How long ``restore`` waits for the database's lock before saying it is in use.
RESTORE_LOCK_TIMEOUT = 0.5


class CtlError(Exception):
    """A refusal to report in one line, with the exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@attrs.define
class Context:
    """What every command gets: the configuration, the reactor, where
    relative paths start, and the storage once ``storage()`` opened it."""

    config: configuration.Config
    reactor: Any
    base_dir: Path
    opened: Storage | None = None

    def say(self, message: str) -> None:
        """A line for the operator."""
        sys.stdout.write(message + "\n")
        sys.stdout.flush()

    def sqlite_file(self) -> Path | None:
        """The SQLite database file, or None on MongoDB."""
        uri = self.config.storage.uri
        return sqlite_path(uri, self.base_dir) if uri.startswith(SQLITE_PREFIX) else None

    async def storage(self) -> Storage:
        """The storage, opened (migrations included) on first use."""
        if self.opened is None:
            database = self.sqlite_file()
            if database is not None and not database.parent.is_dir():
                raise CtlError(
                    f"there is no directory {database.parent} for the database: run "
                    "bambidctl in the daemon's working directory (or pass --dir), or give "
                    "storage.uri an absolute path"
                )
            storage = make_storage(self.config.storage, self.reactor, self.base_dir)
            await storage.open()
            self.opened = storage
        return self.opened

    async def close(self) -> None:
        if self.opened is not None:
            await self.opened.close()

    async def record(self, action: str, details: dict[str, Any]) -> None:
        """Record what bambidctl changed, as the web's moderation does."""
        storage = await self.storage()
        await storage.record(
            UserInteraction(
                username=ACTOR,
                action=action,
                timestamp=self.reactor.seconds(),
                details={**details, "by": ACTOR},
            )
        )


Command = Callable[[Context, argparse.Namespace], Coroutine[Any, Any, None]]


# --- users -------------------------------------------------------------------------------


def _accounts(ctx: Context, storage: Storage) -> AccountService:
    config = ctx.config
    hashing = PasswordHashing(ctx.reactor, threads=1)
    return AccountService(storage, ctx.reactor, hashing, config.auth, config.chat, config.xp)


async def user_create(ctx: Context, args: argparse.Namespace) -> None:
    storage = await ctx.storage()
    accounts = _accounts(ctx, storage)
    accounts.passwords.start()
    try:
        signed_in = await accounts.register(args.name, args.password)
        # register() signs the new account in; nobody is using that session.
        await storage.delete_session(hash_token(signed_in.token))
        name = signed_in.identity.name
        if args.role != "user":
            await accounts.set_role(ACTOR_IDENTITY, name, args.role)
    finally:
        await accounts.passwords.stop()
    role = role_for(name, args.role, ctx.config.auth.admin_keys)
    ctx.say(f"created the account {name} (role: {role})")


async def user_role(ctx: Context, args: argparse.Namespace) -> None:
    storage = await ctx.storage()
    changed = await _accounts(ctx, storage).set_role(ACTOR_IDENTITY, args.name, args.role)
    ctx.say(
        f"{changed['username']} is now a {changed['role']}; open connections of theirs keep "
        "the old role until they reconnect"
    )


async def _existing_person(storage: Storage, name: str) -> str:
    """The stored spelling of ``name``: an account, else a guest with a session."""
    account = await storage.get_account(name)
    if account is not None:
        return account.username
    for session in await storage.list_sessions(name):
        if session.guest:
            return session.username
    raise CtlError(f"there is no account or guest called {name}")


async def user_ban(ctx: Context, args: argparse.Namespace) -> None:
    try:
        seconds = parse_duration(args.duration) if args.duration else None
    except ClientError as e:
        raise CtlError(f"--duration: {e.message}", EXIT_USAGE) from None
    storage = await ctx.storage()
    name = await _existing_person(storage, args.name)
    now = ctx.reactor.seconds()
    until = now + seconds if seconds is not None else None
    await storage.set_sanction(Sanction("ban", name, args.reason, ACTOR, now, until))
    await ctx.record("moderation.ban", {"target": name, "reason": args.reason, "seconds": seconds})
    how_long = f"for {describe_duration(seconds)}" if seconds is not None else "until lifted"
    ctx.say(
        f"banned {name} {how_long}: {args.reason}. They cannot log in, and every page and "
        "connection they open is refused; connections already open to a running daemon "
        "stay until they reconnect"
    )


async def user_unban(ctx: Context, args: argparse.Namespace) -> None:
    storage = await ctx.storage()
    if await storage.remove_sanction("ban", args.name):
        await ctx.record("moderation.unban", {"target": args.name})
        ctx.say(f"lifted the ban of {args.name}")
    else:
        ctx.say(f"{args.name} was not banned; nothing changed")


async def user_export(ctx: Context, args: argparse.Namespace) -> None:
    storage = await ctx.storage()
    document = await storage.export_user(args.name)
    if not any(value for key, value in document.items() if key != "username"):
        raise CtlError(f"nothing is stored about {args.name}")
    text = json.dumps(document, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    if args.output in (None, "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = Path(args.output)
    try:
        await deferToThread(_write_private, target, text)
    except OSError as e:
        raise CtlError(f"cannot write {target}: {e.strerror or e}") from None
    ctx.say(f"exported {document['username']} to {target}")


def _write_private(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` readable by its owner only (it is personal
    data), replacing it at once or not at all."""
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


async def user_delete(ctx: Context, args: argparse.Namespace) -> None:
    storage = await ctx.storage()
    account = await storage.get_account(args.name)
    profile = await storage.get_profile(args.name)
    sessions = await storage.list_sessions(args.name)
    if account is None and profile is None and not sessions:
        raise CtlError(f"there is no account, profile or session of {args.name}")
    replacement = await _replacement_name(storage)
    counts = await storage.delete_user(args.name, replacement)
    await ctx.record("moderation.delete_account", {"replacement": replacement})
    kept = counts.get("chat_messages", 0)
    removed = sum(
        n for kind, n in counts.items() if kind not in ("chat_messages", "user_tags_made")
    )
    ctx.say(
        f"deleted {args.name}: {removed} records removed; {kept} chat messages stay in the "
        f"rooms' history as {replacement}. A running daemon keeps the connections they have "
        "open until they reconnect (then they are nobody)"
    )


async def _replacement_name(storage: Storage) -> str:
    """``deleted-`` and 8 random hex digits, taken by no account."""
    while True:
        name = f"deleted-{secrets.token_hex(4)}"
        if await storage.get_account(name) is None:
            return name


# --- backup and restore (SQLite) -------------------------------------------------------------


def _sqlite_only(ctx: Context, what: str, tool: str) -> Path:
    database = ctx.sqlite_file()
    if database is None:
        raise CtlError(
            f"{what} works on SQLite; this configuration uses MongoDB: use {tool} "
            "(see docs/operations.md)"
        )
    return database


async def backup(ctx: Context, args: argparse.Namespace) -> None:
    database = _sqlite_only(ctx, "backup", "mongodump")
    if not database.exists():
        raise CtlError(f"there is no database at {database}")
    target = Path(args.path)
    if target.is_dir():
        target = target / f"bambid-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.sqlite3"
    if target.exists():
        raise CtlError(f"{target} exists already; choose another name")
    timeout = ctx.config.storage.timeout
    try:
        size = await deferToThread(sqlite_backup, database, target, timeout)
    except (OSError, sqlite3.Error) as e:
        raise CtlError(f"backup failed: {e}") from None
    ctx.say(f"backed up {database} to {target} ({size} bytes, integrity check ok)")


def sqlite_backup(database: Path, target: Path, timeout: float) -> int:
    """Copy ``database`` to ``target`` with SQLite's online backup, safe while
    other processes write: one step, so one consistent snapshot (in WAL mode
    the writers go on meanwhile). The copy is one self-contained file
    (rollback journal, not WAL), checked with ``PRAGMA integrity_check``,
    written under a temporary name (mode 0600) and renamed at the end.
    Returns its size.
    Blocking: run it in a thread."""
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    # Readable by its owner only, like the database: it holds password hashes.
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        source = sqlite3.connect(database, timeout=timeout)
        try:
            copy = sqlite3.connect(partial, isolation_level=None)
            try:
                source.backup(copy)
                copy.execute("PRAGMA journal_mode=DELETE")
                _check_integrity(copy, partial)
            finally:
                copy.close()
        finally:
            source.close()
        _fsync(partial)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target.stat().st_size


async def restore(ctx: Context, args: argparse.Namespace) -> None:
    database = _sqlite_only(ctx, "restore", "mongorestore")
    source = Path(args.path)
    if not source.is_file():
        raise CtlError(f"there is no backup file {source}")
    kept = database.with_name(database.name + BEFORE_RESTORE)
    if kept.exists():
        raise CtlError(f"{kept} exists (from an earlier restore): move it away first")
    try:
        await deferToThread(sqlite_restore, source, database, kept)
    except DatabaseInUse:
        raise CtlError(
            f"{database} is in use: stop the daemon (e.g. systemctl stop bambid) and every "
            "other program using it, then restore"
        ) from None
    except BadBackup as e:
        raise CtlError(f"{source} is not a usable backup: {e}") from None
    except (OSError, sqlite3.Error) as e:
        raise CtlError(f"restore failed: {e}") from None
    replaced = f"; the replaced database is {kept}" if kept.exists() else ""
    ctx.say(f"restored {database} from {source}{replaced}")


class DatabaseInUse(Exception):
    """Another process has the database open."""


class BadBackup(Exception):
    """The file to restore is not a sound bambid database."""


def sqlite_restore(source: Path, database: Path, kept: Path) -> None:
    """Replace ``database`` with the backup ``source``. Blocking: run it in a
    thread.

    1. ``source`` must pass ``PRAGMA integrity_check`` and be a bambid
       database this version can open (``BadBackup`` otherwise).
    2. ``database`` is locked exclusively for the whole restore
       (``locking_mode=EXCLUSIVE``, ``BEGIN EXCLUSIVE``): in WAL mode that
       lock is refused while any other process has the database open, a
       daemon idling included (``DatabaseInUse``), and while it is held a
       daemon cannot start.
    3. The current content (WAL included) is copied to ``kept``, then the
       backup is copied over it with SQLite's backup API: the database file
       and its WAL stay consistent, whatever state the daemon left them in.
    """
    _verify_backup(source)
    target = sqlite3.connect(database, timeout=RESTORE_LOCK_TIMEOUT, isolation_level=None)
    try:
        try:
            target.execute("PRAGMA locking_mode=EXCLUSIVE")
            target.execute("BEGIN EXCLUSIVE")
            target.execute("COMMIT")  # the lock stays: locking_mode=EXCLUSIVE
        except sqlite3.OperationalError as e:
            raise DatabaseInUse(str(e)) from e
        (pages,) = target.execute("PRAGMA page_count").fetchone()
        if pages:
            partial = kept.with_name(f".{kept.name}.partial")
            saved = sqlite3.connect(partial, isolation_level=None)
            try:
                target.backup(saved)
                saved.execute("PRAGMA journal_mode=DELETE")
            finally:
                saved.close()
            _fsync(partial)
            os.replace(partial, kept)
        backup = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
        try:
            backup.backup(target)
        finally:
            backup.close()
        _check_integrity(target, database)
    finally:
        target.close()


def _verify_backup(source: Path) -> None:
    latest = len(load_migrations(MIGRATIONS_DIR))
    try:
        conn = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise BadBackup(str(e)) from e
    try:
        _check_integrity(conn, source)
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error as e:
        raise BadBackup(str(e)) from e
    finally:
        conn.close()
    if not 1 <= version <= latest or "accounts" not in tables:
        raise BadBackup(f"not a bambid database of schema 1 to {latest} (found {version})")


def _check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    rows = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    if rows != ["ok"]:
        raise BadBackup(f"{path} fails the integrity check: {'; '.join(rows[:3])}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- configuration and maintenance -----------------------------------------------------------


async def config_show(ctx: Context, args: argparse.Namespace) -> None:
    sys.stdout.write(render_config(ctx.config))
    sys.stdout.flush()


def render_config(config: configuration.Config) -> str:
    """The effective configuration as TOML text, secrets masked
    (``configuration.effective``: a secret is ``"***"``, a URL setting keeps
    all but its userinfo, query and fragment, which are ``***``; an empty
    secret is shown empty: not set)."""
    lines: list[str] = []
    for section, values in configuration.effective(config).items():
        lines.append(f"[{section}]")
        lines += [
            f"{key} = {json.dumps(value, ensure_ascii=False)}" for key, value in values.items()
        ]
        lines.append("")
    return "\n".join(lines)


@attrs.frozen
class _Unsent:
    """A frame for nobody: bambidctl has no WebSocket connections. Running
    daemons learn of a switch by polling storage."""

    size: int = 0


async def maintenance(ctx: Context, args: argparse.Namespace) -> None:
    storage = await ctx.storage()
    if args.state == "status":
        if args.message is not None:
            raise CtlError("--message goes with 'on'", EXIT_USAGE)
        value = await storage.get_setting(SETTING_KEY)
        try:
            state = MaintenanceState.from_document(value, ctx.config.maintenance.message)
        except ValueError as e:
            raise CtlError(f"the stored maintenance setting is broken: {e}") from None
        sys.stdout.write(_describe_maintenance(state) + "\n")
        return
    if args.state == "off" and args.message is not None:
        raise CtlError("--message goes with 'on'", EXIT_USAGE)
    switch = Maintenance(
        ctx.config.maintenance, storage, ctx.reactor, connections=tuple, prepare=_unsent
    )
    try:
        state = await switch.set(args.state == "on", ACTOR, args.message, via=ACTOR)
    except ValueError as e:
        raise CtlError(f"--message: {e}", EXIT_USAGE) from None
    finally:
        await switch.stop()
    ctx.say(
        _describe_maintenance(state)
        + f"; running daemons follow within {ctx.config.maintenance.poll_seconds:g} s"
    )


def _unsent(type: str, **fields: Any) -> _Unsent:
    return _Unsent()


def _describe_maintenance(state: MaintenanceState) -> str:
    since = ""
    if state.since is not None:
        since = " since " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(state.since))
    by = f" by {state.by}" if state.by else ""
    if state.on:
        return f"maintenance mode is ON{since}{by}: {state.message}"
    return f"maintenance mode is off{since}{by}"


# --- the command line --------------------------------------------------------------------------


def _reason(text: str) -> str:
    text = text.strip()
    if not text or len(text) > MAX_REASON:
        raise argparse.ArgumentTypeError(f"a reason is 1 to {MAX_REASON} characters")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bambidctl",
        description="Administer bambid from the command line, beside the daemon or without it.",
        epilog="Exit status: 0 done, 1 failed, 2 usage or configuration error.",
    )
    parser.add_argument("--config", "-c", metavar="FILE", help="TOML configuration file")
    parser.add_argument(
        "--dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="the daemon's working directory: relative SQLite paths start there "
        "(default: the current directory)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    user = commands.add_parser("user", help="accounts: create, role, ban, unban, export, delete")
    users = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    create = users.add_parser("create", help="create an account (password from a file or stdin)")
    create.add_argument("name")
    create.add_argument("--role", choices=ASSIGNABLE_ROLES, default="user")
    create.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the password from the first line of FILE (else from standard input; "
        "asked twice, without echo, on a terminal)",
    )
    create.set_defaults(run=user_create)
    role = users.add_parser(
        "role", help="set a stored role (admins come from auth.admins in the configuration)"
    )
    role.add_argument("name")
    role.add_argument("role", choices=ASSIGNABLE_ROLES)
    role.set_defaults(run=user_role)
    ban = users.add_parser("ban", help="ban an account or guest name")
    ban.add_argument("name")
    ban.add_argument(
        "--duration", metavar="N[smhd]", help="e.g. 30m, 2h, 7d (default: until lifted)"
    )
    ban.add_argument("--reason", type=_reason, default=DEFAULT_BAN_REASON)
    ban.set_defaults(run=user_ban)
    unban = users.add_parser("unban", help="lift a ban")
    unban.add_argument("name")
    unban.set_defaults(run=user_unban)
    export = users.add_parser("export", help="everything stored about a person, as JSON")
    export.add_argument("name")
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE (mode 600)")
    export.set_defaults(run=user_export)
    delete = users.add_parser("delete", help="delete a person's account and personal data")
    delete.add_argument("name")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(run=user_delete)

    backup_parser = commands.add_parser("backup", help="copy the SQLite database, safely online")
    backup_parser.add_argument("path", help="the backup file to create (or a directory)")
    backup_parser.set_defaults(run=backup)
    restore_parser = commands.add_parser(
        "restore", help="replace the SQLite database with a backup (daemon stopped)"
    )
    restore_parser.add_argument("path", help="the backup file")
    restore_parser.set_defaults(run=restore)

    config_parser = commands.add_parser("config", help="the effective configuration")
    config_commands = config_parser.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print it as TOML, secrets masked")
    show.set_defaults(run=config_show)

    maintenance_parser = commands.add_parser("maintenance", help="maintenance mode")
    maintenance_parser.add_argument("state", choices=("on", "off", "status"))
    maintenance_parser.add_argument("--message", help="what people are shown (with 'on')")
    maintenance_parser.set_defaults(run=maintenance)
    return parser


def read_password(args: argparse.Namespace) -> str:
    """The new account's password: the first line of ``--password-file``, or
    standard input (asked twice without echo when it is a terminal)."""
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as source:
                line = source.readline(PASSWORD_MAX_LENGTH + 2)
        except (OSError, UnicodeDecodeError) as e:
            raise CtlError(f"cannot read {args.password_file}: {e}", EXIT_USAGE) from None
        return line.rstrip("\r\n")
    if sys.stdin.isatty():
        first = getpass.getpass(f"Password for {args.name}: ")
        if getpass.getpass("Again: ") != first:
            raise CtlError("the passwords differ", EXIT_USAGE)
        return first
    return sys.stdin.readline(PASSWORD_MAX_LENGTH + 2).rstrip("\r\n")


def confirm_deletion(args: argparse.Namespace) -> None:
    """Ask before ``user delete`` unless ``--yes``; refuse when nobody can answer."""
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CtlError("add --yes to delete without being asked", EXIT_USAGE)
    answer = input(f"Delete {args.name} and everything stored about them? Type the name: ")
    if username_key(answer.strip()) != username_key(args.name):
        raise CtlError("not confirmed; nothing deleted")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``bambidctl`` console script."""
    args = build_parser().parse_args(argv)
    try:
        config = configuration.load(args.config, os.environ)
    except configuration.ConfigError as e:
        _fail(f"configuration error: {e}", EXIT_USAGE)
    try:
        # Questions come first: nothing reads the terminal once the reactor runs.
        if args.run is user_create:
            args.password = read_password(args)
        elif args.run is user_delete:
            confirm_deletion(args)
    except CtlError as e:
        _fail(e.message, e.status)
    except (EOFError, KeyboardInterrupt):
        _fail("cancelled", EXIT_FAILED)
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.error)],
            )
        ],
        redirectStandardIO=False,
    )
    base_dir = (args.dir or Path.cwd()).resolve()
    task.react(_run, (args, config, base_dir))
    raise AssertionError("react() exits")


async def _run(reactor: Any, args: argparse.Namespace, config: Any, base_dir: Path) -> None:
    ctx = Context(config, reactor, base_dir)
    try:
        run: Command = args.run
        await run(ctx, args)
    except CtlError as e:
        _report(e.message)
        raise SystemExit(e.status) from None
    except AccountError as e:
        _report(e.message)
        raise SystemExit(EXIT_FAILED) from None
    except configuration.ConfigError as e:
        _report(f"configuration error: {e}")
        raise SystemExit(EXIT_USAGE) from None
    except StorageError as e:
        _report(f"storage error: {e}")
        raise SystemExit(EXIT_FAILED) from None
    finally:
        await ctx.close()


def _report(message: str) -> None:
    sys.stderr.write(f"bambidctl: {message}\n")


def _fail(message: str, status: int) -> NoReturn:
    _report(message)
    raise SystemExit(status)


if __name__ == "__main__":
    main()

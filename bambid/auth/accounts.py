"""Registration, login, guests, logout and roles: the account rules, free of HTTP.

``AccountService`` is what the web routes (``bambid.web.auth_routes``,
``bambid.web.admin_routes``) call. It raises ``AccountError`` with a stable
``code`` (the routes turn it into a status, see ``AccountError.STATUS``) and returns
``SignedIn`` (the new session's token) when someone signs in.

Rules:

- Usernames (accounts and guests alike) are 3-32 of ``A-Z a-z 0-9 _ -``,
  unique regardless of case (``models.username_key``) across registered
  accounts *and* the unexpired sessions of guests; names starting with
  ``deleted-`` are reserved (deleted accounts' messages keep such names). Passwords are 8-1024
  characters, compared exactly, stored as argon2id hashes (``PasswordHashing``).
- Failed logins are throttled per account and per client address with token
  buckets (``auth.login_burst`` failures, refilled at ``auth.login_per_minute``):
  an attempt reserves a token from both buckets before the password is checked
  (so parallel guesses count too) and a successful one gives them back (the
  account's bucket is refilled). The
  answer to a failed login never says whether the username exists, and an
  unknown username costs one argon2 verification like a known one.
- A banned person (an active "ban" sanction) cannot log in, register or take a
  guest name; the refusal says why and until when.
- Signing in (register, login, guest) replaces the browser's current session.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from bambid.auth.passwords import PasswordHashing, PasswordsUnavailable
from bambid.auth.sessions import (
    MAX_TOKEN_LENGTH,
    active_ban,
    hash_token,
    identify,
    new_session,
    role_for,
)
from bambid.config import AuthConfig, ChatConfig, XPConfig
from bambid.errors import CodedError
from bambid.identity import Identity
from bambid.models import Account, Sanction, UserInteraction, username_key
from bambid.profiles.xp import XpTable
from bambid.ratelimit import TokenBucket
from bambid.storage import Storage
from bambid.storage.interface import DuplicateError, NotFoundError

USERNAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{3,32}")
#: Names no account or guest can take: a deleted account's chat messages
#: stay in the rooms under ``deleted-<8 hex digits>`` (``bambid.web.me_routes``).
RESERVED_PREFIX = "deleted-"
PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 1024
#: Roles an admin may give from the admin page; "admin" comes from ``auth.admins``.
ASSIGNABLE_ROLES = ("user", "moderator")
DAY = 86400.0
#: How often expired sessions are deleted from storage.
SWEEP_INTERVAL = 3600.0


class AccountError(CodedError):
    """A refused request. ``code`` is a key of ``STATUS``; ``extra`` holds
    details for the client (``field``, ``retry_after``, ``reason``, ``until``)."""

    STATUS = {
        "bad_request": 400,
        "invalid": 422,
        "invalid_credentials": 401,
        "unauthenticated": 401,
        "forbidden": 403,
        "banned": 403,
        "guests_disabled": 403,
        "not_found": 404,
        "name_taken": 409,
        "rate_limited": 429,
        "unavailable": 503,
    }


@attrs.frozen
class SignedIn:
    """A new session: give ``token`` to the browser for ``max_age`` seconds."""

    identity: Identity
    token: str
    max_age: int


def check_username(name: Any, field: str = "username") -> str:
    """``name`` if it is a valid username, else ``AccountError`` naming ``field``."""
    if not isinstance(name, str):
        raise AccountError("bad_request", f"'{field}' must be a string", field=field)
    if not USERNAME_PATTERN.fullmatch(name):
        raise AccountError(
            "invalid",
            "names are 3 to 32 characters: letters, digits, _ and -",
            field=field,
        )
    if username_key(name).startswith(RESERVED_PREFIX):
        # The chat messages of deleted accounts are kept under such names.
        raise AccountError(
            "invalid", f"names starting with {RESERVED_PREFIX!r} are reserved", field=field
        )
    return name


def check_password(password: Any, field: str = "password") -> str:
    """``password`` if its length is acceptable, else ``AccountError``."""
    if not isinstance(password, str):
        raise AccountError("bad_request", f"'{field}' must be a string", field=field)
    if not PASSWORD_MIN_LENGTH <= len(password) <= PASSWORD_MAX_LENGTH:
        raise AccountError(
            "invalid",
            f"passwords are {PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters",
            field=field,
        )
    return password


class FailureThrottle:
    """Token buckets, one per key, counting failed attempts.

    ``reserve(keys)`` lets an attempt proceed only when every key's bucket holds
    a whole token, and takes one from each; ``refund(keys)`` gives them back
    when the attempt succeeded. Buckets that have refilled are forgotten.
    """

    def __init__(self, clock: IReactorTime, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._next_sweep = 0.0

    def reserve(self, keys: Iterable[str]) -> float:
        """0.0 and one token taken from each key's bucket, or the seconds until
        every bucket has a token again (nothing taken)."""
        now = self.clock.seconds()
        self._sweep(now)
        buckets = [self._bucket(key, now) for key in keys]
        wait = 0.0
        for bucket in buckets:
            bucket.take(now, 0.0)  # refill
            if bucket.tokens < 1.0:
                wait = max(wait, (1.0 - bucket.tokens) / bucket.rate)
        if wait > 0:
            return wait
        for bucket in buckets:
            bucket.tokens -= 1.0
        return 0.0

    def refund(self, keys: Iterable[str]) -> None:
        now = self.clock.seconds()
        for key in keys:
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.take(now, 0.0)
                bucket.tokens = min(bucket.burst, bucket.tokens + 1.0)

    def reset(self, key: str) -> None:
        """Forget ``key``'s failures (its bucket is full again)."""
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self.burst, now)
        return bucket

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.burst / self.rate
        for key in [k for k, b in self._buckets.items() if b.full_at() <= now]:
            del self._buckets[key]


class AccountService:
    """Accounts and sessions for the web routes. ``start()`` before use (it
    starts the password thread pool and the expired-session sweep);
    ``stop()`` waits for hashing in flight and the sweep, then stops both."""

    _log = Logger()

    def __init__(
        self,
        storage: Storage,
        clock: IReactorTime,
        passwords: PasswordHashing,
        auth: AuthConfig,
        chat: ChatConfig,
        xp: XPConfig,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.passwords = passwords
        self.auth = auth
        self.allow_guests = chat.allow_guests
        self.xp_table = XpTable.from_config(xp)
        self.admins = auth.admin_keys
        self.session_lifetime = auth.session_days * DAY
        self.guest_lifetime = auth.guest_session_days * DAY
        self.throttle = FailureThrottle(clock, auth.login_per_minute / 60.0, auth.login_burst)
        #: Username keys being claimed right now (register/guest), so that two
        #: concurrent claims of one name cannot both pass the checks.
        self._claims: set[str] = set()
        self._dummy_hash: str | None = None
        self._sweeper = task.LoopingCall(self._sweep)
        self._sweeper.clock = clock
        self._sweeping: Deferred[None] | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        self.passwords.start()
        if not self._sweeper.running:
            self._sweeper.start(SWEEP_INTERVAL, now=True)

    async def stop(self) -> None:
        if self._sweeper.running:
            self._sweeper.stop()
        if self._sweeping is not None:
            await self._sweeping
        await self.passwords.stop()

    def _sweep(self) -> Deferred[None]:
        self._sweeping = Deferred.fromCoroutine(self._delete_expired())
        return self._sweeping

    async def _delete_expired(self) -> None:
        try:
            deleted = await self.storage.delete_expired_sessions(self.clock.seconds())
        except Exception:
            self._log.failure("could not delete expired sessions")
            return
        finally:
            self._sweeping = None
        if deleted:
            self._log.info("deleted {count} expired sessions", count=deleted)

    # -- who is this ----------------------------------------------------------------

    async def identify(self, token: str | None) -> Identity | None:
        """Who ``token`` (a session cookie) belongs to; None when nobody.
        Raises ``sessions.Banned`` for a banned person."""
        return await identify(self.storage, self.clock, self.admins, token)

    async def me(self, identity: Identity) -> dict[str, Any]:
        """``{"name", "role", "guest", "xp", "level", "next"}`` for ``identity``."""
        xp = 0
        if not identity.guest:  # guests have no profile and earn nothing
            # Read first: ensure_profile is a (durable) write.
            profile = await self.storage.get_profile(identity.name)
            if profile is None:
                profile = await self.storage.ensure_profile(identity.name, self.clock.seconds())
            xp = profile.xp
        return {**identity.public(), **self.xp_table.progress(xp).to_json()}

    # -- signing in and out ---------------------------------------------------------

    async def register(
        self, username: Any, password: Any, current_token: str | None = None
    ) -> SignedIn:
        """Create an account and sign it in. ``current_token`` is the
        browser's session cookie, replaced by the new session (a guest may
        register the name of their own guest session)."""
        username = check_username(username)
        password = check_password(password)
        current = _token_hash(current_token)
        await self._refuse_banned(username)
        await self._check_name_free(username, current)
        encoded = await self._hash(password)
        now = self.clock.seconds()
        with self._claim(username):
            await self._check_name_free(username, current)
            try:
                await self.storage.create_account(
                    Account(username=username, password_hash=encoded, role="user", created_at=now)
                )
            except DuplicateError:
                raise _name_taken() from None
        await self.storage.ensure_profile(username, now)
        await self._record(username, "register", {})
        identity = Identity(name=username, role=role_for(username, "user", self.admins))
        return await self._sign_in(identity, current, self.session_lifetime)

    async def login(
        self, username: Any, password: Any, address: str, current_token: str | None = None
    ) -> SignedIn:
        """Check a username and password, then sign in; see the module's
        throttling rules. ``address`` is the client's IP address."""
        if not isinstance(username, str):
            raise AccountError("bad_request", "'username' must be a string", field="username")
        if not isinstance(password, str):
            raise AccountError("bad_request", "'password' must be a string", field="password")
        account = await self._password_matches(username, password, address)
        if account is None:
            raise AccountError("invalid_credentials", "wrong username or password")
        await self._refuse_banned(account.username)
        await self._record(account.username, "login", {"address": address})
        identity = Identity(
            name=account.username, role=role_for(account.username, account.role, self.admins)
        )
        return await self._sign_in(identity, _token_hash(current_token), self.session_lifetime)

    async def confirm_password(self, identity: Identity, password: Any, address: str) -> Account:
        """Check that the signed-in account ``identity`` knows its password,
        before an action that cannot be undone (deleting the account). It is
        throttled like ``login``, in the same buckets (so guesses here and at
        the login form count together); a wrong password is
        ``invalid_credentials``, a guest ``forbidden``."""
        if identity.guest:
            raise AccountError("forbidden", "guests have no password")
        if not isinstance(password, str):
            raise AccountError("bad_request", "'password' must be a string", field="password")
        account = await self._password_matches(identity.name, password, address)
        if account is None:
            raise AccountError("invalid_credentials", "wrong password", field="password")
        return account

    async def _password_matches(self, username: str, password: str, address: str) -> Account | None:
        """The account if ``password`` is its password, else None; throttled
        (see the module doc): ``rate_limited`` when the buckets are empty."""
        keys = (f"user:{username_key(username[:64])}", f"addr:{address}")
        wait = self.throttle.reserve(keys)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise AccountError(
                "rate_limited",
                f"too many failed logins; try again in {retry_after} s",
                retry_after=retry_after,
            )
        account = (
            await self.storage.get_account(username)
            if USERNAME_PATTERN.fullmatch(username)
            else None
        )
        encoded = account.password_hash if account is not None else await self._dummy()
        matches = len(password) <= PASSWORD_MAX_LENGTH and await self._verify(encoded, password)
        if account is None or not matches:
            return None
        # Only failures count. The account's own bucket is refilled: whoever
        # knows the password may start afresh; the address's is not, or logging
        # in to one's own account between guesses would reset it.
        self.throttle.refund(keys[1:])
        self.throttle.reset(keys[0])
        return account

    async def guest(self, name: Any, current_token: str | None = None) -> SignedIn:
        """A guest session under ``name`` (``auth.guest_session_days`` long).
        The name must be free: no account, no other unexpired session."""
        if not self.allow_guests:
            raise AccountError("guests_disabled", "guest access is switched off on this server")
        name = check_username(name, field="name")
        current = _token_hash(current_token)
        await self._refuse_banned(name)
        with self._claim(name, field="name"):
            continuing = await self._check_name_free(name, current, field="name")
            if not continuing:
                # A new guest under a name an earlier guest used: what that guest
                # said to their companion is theirs, never the newcomer's.
                await self.storage.delete_conversations(f"guest:{name}")
            identity = Identity(name=name, role="user", guest=True)
            signed_in = await self._sign_in(identity, current, self.guest_lifetime)
        await self._record(name, "guest", {})
        return signed_in

    async def logout(self, token: str | None) -> None:
        """End the session of ``token``; nothing happens without one."""
        token_hash = _token_hash(token)
        if token_hash is None:
            return
        session = await self.storage.get_session(token_hash)
        if session is None:
            return
        await self.storage.delete_session(token_hash)
        await self._record(session.username, "logout", {"guest": session.guest})

    # -- roles ------------------------------------------------------------------------

    async def set_role(self, actor: Identity, username: Any, role: Any) -> dict[str, str]:
        """Set the stored role of account ``username`` (admins only; roles
        from ``ASSIGNABLE_ROLES``). Recorded as a ``role_change`` interaction
        of the target. Returns ``{"username", "role"}``."""
        if not actor.is_admin:
            raise AccountError("forbidden", "only admins can change roles")
        if not isinstance(username, str) or not username:
            raise AccountError("bad_request", "'user' must be a username", field="user")
        if role not in ASSIGNABLE_ROLES:
            raise AccountError(
                "invalid", f"role must be one of {', '.join(ASSIGNABLE_ROLES)}", field="role"
            )
        account = await self.storage.get_account(username)
        if account is None:
            raise AccountError("not_found", f"there is no account {username!r}", field="user")
        if username_key(account.username) in self.admins:
            raise AccountError(
                "invalid",
                f"{account.username} is an admin by configuration (auth.admins)",
                field="user",
            )
        try:
            await self.storage.set_account_role(account.username, role)
        except NotFoundError:
            raise AccountError(
                "not_found", f"there is no account {username!r}", field="user"
            ) from None
        await self._record(
            account.username,
            "role_change",
            {"by": actor.name, "from": account.role, "to": role},
        )
        return {"username": account.username, "role": role}

    # -- helpers ------------------------------------------------------------------------

    async def _sign_in(self, identity: Identity, current: str | None, lifetime: float) -> SignedIn:
        if current is not None:
            await self.storage.delete_session(current)
        token, session = new_session(
            identity.name, self.clock.seconds(), lifetime, guest=identity.guest
        )
        await self.storage.create_session(session)
        return SignedIn(identity=identity, token=token, max_age=int(lifetime))

    @contextmanager
    def _claim(self, name: str, field: str = "username") -> Iterator[None]:
        key = username_key(name)
        if key in self._claims:
            raise _name_taken(field)
        self._claims.add(key)
        try:
            yield
        finally:
            self._claims.discard(key)

    async def _check_name_free(
        self, name: str, current: str | None, field: str = "username"
    ) -> bool:
        """``name_taken`` unless no account and no unexpired session (other
        than the browser's own, ``current``) uses ``name``. True when the
        browser's own unexpired session already holds the name."""
        if await self.storage.get_account(name) is not None:
            raise _name_taken(field)
        now = self.clock.seconds()
        held = False
        for session in await self.storage.list_sessions(name):
            if session.expires_at <= now:
                continue
            if session.token_hash != current:
                raise _name_taken(field)
            held = True
        return held

    async def _refuse_banned(self, name: str) -> None:
        ban = await active_ban(self.storage, self.clock, name)
        if ban is not None:
            raise banned_error(ban)

    async def _hash(self, password: str) -> str:
        try:
            return await self.passwords.hash(password)
        except PasswordsUnavailable:
            raise AccountError("unavailable", "the server is shutting down") from None

    async def _verify(self, encoded: str, password: str) -> bool:
        try:
            return await self.passwords.verify(encoded, password)
        except PasswordsUnavailable:
            raise AccountError("unavailable", "the server is shutting down") from None

    async def _dummy(self) -> str:
        """A real hash of a random password, so that an unknown username takes
        as long to refuse as a wrong password."""
        if self._dummy_hash is None:
            self._dummy_hash = await self._hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    async def _record(self, username: str, action: str, details: dict[str, Any]) -> None:
        await self.storage.record(
            UserInteraction(
                username=username, action=action, timestamp=self.clock.seconds(), details=details
            )
        )


def banned_error(ban: Sanction) -> AccountError:
    """The refusal for a banned person: ``reason`` and ``until`` (None: until lifted)."""
    return AccountError(
        "banned", f"you are banned: {ban.reason}", reason=ban.reason, until=ban.expires_at
    )


def _name_taken(field: str = "username") -> AccountError:
    return AccountError("name_taken", "that name is already taken", field=field)


def _token_hash(token: str | None) -> str | None:
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    return hash_token(token)

"""Session tokens and turning one into an ``Identity``.

A session token is 32 random bytes, URL-safe base64, given to the browser in the
``bambid_session`` cookie (HttpOnly, SameSite=Lax). Storage keeps only its
SHA-256 (``hash_token``), so a leaked database does not leak live sessions.
"""

from __future__ import annotations

import hashlib
import secrets

from twisted.internet.interfaces import IReactorTime

from bambid.identity import Identity
from bambid.models import Sanction, Session, username_key
from bambid.storage import Storage

SESSION_COOKIE = "bambid_session"
MAX_TOKEN_LENGTH = 128


class Banned(Exception):
    """The person behind a valid session is banned."""

    def __init__(self, sanction: Sanction) -> None:
        super().__init__(sanction.reason)
        self.sanction = sanction


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_session(
    username: str, now: float, lifetime: float, guest: bool = False
) -> tuple[str, Session]:
    """A fresh token and the session to store for it (which holds only the
    token's hash), valid for ``lifetime`` seconds from ``now``."""
    token = new_token()
    session = Session(
        token_hash=hash_token(token),
        username=username,
        created_at=now,
        expires_at=now + lifetime,
        guest=guest,
    )
    return token, session


def role_for(username: str, stored_role: str, admins: frozenset[str]) -> str:
    """The effective role: ``auth.admins`` (by username key) are always admins."""
    return "admin" if username_key(username) in admins else stored_role


async def active_ban(storage: Storage, clock: IReactorTime, username: str) -> Sanction | None:
    ban = await storage.get_sanction("ban", username)
    return ban if ban is not None and ban.active_at(clock.seconds()) else None


async def identify(
    storage: Storage, clock: IReactorTime, admins: frozenset[str], token: str | None
) -> Identity | None:
    """Who ``token`` belongs to: None for no token, an unknown or expired one,
    or an account that no longer exists. Raises ``Banned`` for a banned person."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    session = await storage.get_session(hash_token(token))
    if session is None or session.expires_at <= clock.seconds():
        return None
    if session.guest:
        identity = Identity(name=session.username, role="user", guest=True)
    else:
        account = await storage.get_account(session.username)
        if account is None:
            return None
        identity = Identity(
            name=account.username, role=role_for(account.username, account.role, admins)
        )
    ban = await active_ban(storage, clock, identity.name)
    if ban is not None:
        raise Banned(ban)
    return identity

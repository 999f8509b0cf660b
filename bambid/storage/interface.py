"""The storage port: what the rest of bambid may ask of a database.

Two backends implement it (``sqlite.SQLiteStorage``, ``mongo.MongoStorage``) and
one contract suite (``tests/storage_contract.py``) holds both to the same
behaviour. Nothing outside ``bambid.storage`` knows which backend is running.

Contract, for every method:

- It is a coroutine; awaiting it never blocks the reactor thread.
- When it returns, the write is durable: an acknowledged write survives
  ``kill -9`` of the daemon (SQLite: committed with ``synchronous=FULL``;
  MongoDB: the configured write concern, default majority + journal).
- Failures raise ``StorageError`` (or a subclass); backends never leak driver
  exceptions.
- Usernames are matched case-insensitively (``models.username_key``) but stored
  and returned as first written.
- Times come back rounded to the millisecond at worst (MongoDB stores BSON
  datetimes; SQLite keeps the float exactly).
- A ``limit`` of 0 or less gives an empty list.
"""

from __future__ import annotations

import abc
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from bambid.models import (
    LOG_RECORD_TYPES,
    PROFILE_SORTS,
    REACTION_KINDS,
    Account,
    ChatMessage,
    Conversation,
    LogRecord,
    NewChatMessage,
    Profile,
    Reaction,
    Sanction,
    Session,
    UserTagInteraction,
    username_key,
)

R = TypeVar("R", bound=LogRecord)


class StorageError(Exception):
    """A storage operation failed; the message is safe to log, not to show."""


class DuplicateError(StorageError):
    """A unique key (username, token) is already taken."""


class NotFoundError(StorageError):
    """The record to update does not exist."""


# --- profiles and progression: checks and the export, shared by the backends ---

#: The profile counter each reaction kind keeps exact.
REACTION_COUNTERS = {"like": "likes", "love": "loves"}

#: What a ``Profile.preferences`` key may be (``set_preference``): a plain name,
#: safe as a MongoDB field path.
PREFERENCE_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")


def check_preference_key(key: str) -> None:
    """``ValueError`` unless ``key`` is a valid preferences key."""
    if not isinstance(key, str) or not PREFERENCE_KEY.fullmatch(key):
        raise ValueError(f"not a preferences key: {key!r}")


# --- shared settings (``get_setting`` / ``set_setting``) ---------------------

#: What a setting key may be: lowercase, dotted names such as ``maintenance``.
SETTING_KEY = re.compile(r"[a-z][a-z0-9_.]{0,63}")
#: The largest setting value, as compact JSON (UTF-8 bytes).
MAX_SETTING_BYTES = 65536


def check_setting_key(key: str) -> None:
    """``ValueError`` unless ``key`` matches ``SETTING_KEY``."""
    if not isinstance(key, str) or not SETTING_KEY.fullmatch(key):
        raise ValueError(f"not a setting key (a-z, then a-z, 0-9, _ or ., <= 64): {key!r}")


def encode_setting(value: Any) -> str:
    """``value`` as the compact JSON text both backends store; ``ValueError``
    for what JSON cannot hold (other types, NaN, infinities, cycles) or text
    over ``MAX_SETTING_BYTES``. A value reads back as ``json.loads`` of this
    (tuples as lists, non-string keys as strings)."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"a setting value must be JSON-compatible: {e}") from None
    if len(text.encode("utf-8")) > MAX_SETTING_BYTES:
        raise ValueError(f"a setting value must be at most {MAX_SETTING_BYTES} bytes as JSON")
    return text


#: The keys of ``Storage.export_user``'s answer (see docs/storage.md).
EXPORT_KEYS = (
    "username",
    "account",
    "profile",
    "sessions",
    "sanctions",
    "chat_messages",
    "conversations",
    *(kind.collection for kind in LOG_RECORD_TYPES),
    "user_tags_made",
    "reactions_given",
    "reactions_received",
)

#: The keys of ``Storage.delete_user``'s answer: how many of each were deleted,
#: except ``chat_messages`` and ``user_tags_made``, which were anonymised.
DELETED_KINDS = (
    "sessions",
    "chat_messages",
    "user_tags_made",
    "profile",
    "reactions_received",
    "reactions_given",
    "sanctions",
    "conversations",
    *(kind.collection for kind in LOG_RECORD_TYPES),
    "account",
)


def check_usage_amounts(counts: Iterable[int], seconds: float) -> None:
    """``ValueError`` unless every ``bump_usage`` count is an int >= 0 and
    ``seconds`` a finite number >= 0: usage stats count what happened and
    never go down."""
    for count in counts:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"usage counts must be ints >= 0, got {count!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError(f"usage seconds must be a number, got {seconds!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"usage seconds must be finite and >= 0, got {seconds!r}")


def check_reaction(from_user: str, to_user: str, kind: str) -> None:
    """``ValueError`` for an unknown kind or a reaction to oneself."""
    if kind not in REACTION_KINDS:
        raise ValueError(f"unknown reaction kind {kind!r}; expected one of {REACTION_KINDS}")
    if username_key(from_user) == username_key(to_user):
        raise ValueError("nobody can react to their own profile")


def check_profile_listing(offset: int, sort: str) -> None:
    """``ValueError`` for a negative offset or an unknown sort."""
    if offset < 0:
        raise ValueError(f"offset must not be negative, got {offset}")
    if sort not in PROFILE_SORTS:
        raise ValueError(f"unknown profile sort {sort!r}; expected one of {PROFILE_SORTS}")


def check_replacement(username: str, replacement: str) -> None:
    """``ValueError`` unless ``replacement`` is a name of its own: messages
    renamed to the person's own name would not be anonymised."""
    if not username_key(replacement) or username_key(replacement) == username_key(username):
        raise ValueError(f"replacement must be another, non-empty name, got {replacement!r}")


# --- analytics: what the admin numbers are counted from (bambid.analytics) ---

#: ``Storage.tally``: each counts the log records of a time range, grouped by
#: one field: ``user_actions`` (``user_interactions`` by ``action``),
#: ``audio_kinds`` (``audio_interactions`` by ``kind``), ``triggers_fired``
#: (``audio_interactions`` of kind ``"trigger"`` by ``name``) and
#: ``companion_kinds`` (``ai_interactions`` by ``interaction_type``).
TALLIES = ("user_actions", "audio_kinds", "triggers_fired", "companion_kinds")

#: ``Storage.count_per_day``: each counts records per day, and how many of
#: them failed: ``chat_messages`` (people's messages, ``message_type``
#: ``"user"``, deleted ones included; none fail), ``companion_replies``
#: (``ai_interactions``; failed: ``error`` is not None) and ``speech``
#: (``audio_interactions`` of kind ``"tts"``; failed: ``details["error"]`` is
#: present and not None). An error whose code (the text before the first
#: ``:``) is ``stopped`` (a reply someone stopped) or ``cancelled`` (its
#: speech) is not a failure.
DAILY_SERIES = ("chat_messages", "companion_replies", "speech")

#: ``Storage.profile_histogram``: ``xp``, or ``seconds_per_session``
#: (``usage_stats.total_time_spent / usage_stats.sessions_count`` of the
#: profiles with at least one session).
PROFILE_MEASURES = ("xp", "seconds_per_session")

DAY_SECONDS = 86400.0
#: The most days ``count_per_day`` counts, groups ``tally`` returns and
#: bounds ``profile_histogram`` takes: every answer stays small.
MAX_DAYS = 366
MAX_TALLY = 100
MAX_BOUNDS = 64


def _check_time(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


def check_tally(tally: str, since: float, until: float) -> None:
    """``ValueError`` for an unknown tally or a time range that is not two
    finite numbers."""
    if tally not in TALLIES:
        raise ValueError(f"unknown tally {tally!r}; expected one of {TALLIES}")
    _check_time("since", since)
    _check_time("until", until)


def check_daily(series: str, start: float, days: int) -> None:
    """``ValueError`` for an unknown series, a start that is not a finite
    number, or ``days`` not an int from 1 to ``MAX_DAYS``."""
    if series not in DAILY_SERIES:
        raise ValueError(f"unknown daily series {series!r}; expected one of {DAILY_SERIES}")
    _check_time("start", start)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be an int from 1 to {MAX_DAYS}, got {days!r}")


def check_histogram(measure: str, bounds: Sequence[float]) -> list[float]:
    """``bounds`` as floats, or ``ValueError`` for an unknown measure or bounds
    that are not 1 to ``MAX_BOUNDS`` finite, strictly increasing numbers."""
    if measure not in PROFILE_MEASURES:
        raise ValueError(f"unknown profile measure {measure!r}; expected one of {PROFILE_MEASURES}")
    if not 1 <= len(bounds) <= MAX_BOUNDS:
        raise ValueError(f"bounds must hold 1 to {MAX_BOUNDS} numbers, got {len(bounds)}")
    for bound in bounds:
        _check_time("a bound", bound)
    if any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
        raise ValueError(f"bounds must be strictly increasing, got {list(bounds)!r}")
    return [float(bound) for bound in bounds]


def _lists(value: Any) -> Any:
    """``value`` with every tuple turned into a list, as JSON has them."""
    if isinstance(value, (tuple, list)):
        return [_lists(item) for item in value]
    if isinstance(value, dict):
        return {key: _lists(item) for key, item in value.items()}
    return value


def _plain(record: Any, *without: str) -> dict[str, Any]:
    """A record as JSON-serialisable data (tuples become lists), less ``without``."""
    data: dict[str, Any] = _lists(attrs.asdict(record))
    for name in without:
        del data[name]
    return data


def export_document(
    username: str,
    *,
    account: Account | None,
    profile: Profile | None,
    sessions: Iterable[Session],
    sanctions: Iterable[Sanction],
    chat_messages: Iterable[ChatMessage],
    conversations: Iterable[Conversation],
    records: Mapping[str, Sequence[LogRecord]],
    user_tags_made: Iterable[UserTagInteraction],
    reactions_given: Iterable[Reaction],
    reactions_received: Iterable[Reaction],
) -> dict[str, Any]:
    """``Storage.export_user``'s answer, the same from every backend: the
    records as plain data, keyed by ``EXPORT_KEYS``. The password hash and
    the session token hashes are left out: they are secrets, not data about
    the person. ``records`` maps each log collection name to its records."""
    name = account.username if account else profile.username if profile else username
    return {
        "username": name,
        "account": _plain(account, "password_hash") if account else None,
        "profile": _plain(profile) if profile else None,
        "sessions": [_plain(s, "token_hash", "username") for s in sessions],
        "sanctions": [_plain(s, "username") for s in sanctions],
        "chat_messages": [_plain(m) for m in chat_messages],
        "conversations": [_plain(c) for c in conversations],
        **{
            kind.collection: [_plain(r) for r in records.get(kind.collection, ())]
            for kind in LOG_RECORD_TYPES
        },
        "user_tags_made": [_plain(t) for t in user_tags_made],
        "reactions_given": [_plain(r, "from_user") for r in reactions_given],
        "reactions_received": [_plain(r, "to_user") for r in reactions_received],
    }


class Storage(abc.ABC):
    """The database as the application sees it."""

    #: Short name shown by /health/api: "sqlite" or "mongodb".
    backend: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, create indexes, run migrations. Called once before use."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish every queued write, then release connections and threads.
        After close, every method raises ``StorageError``."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Round-trip to the database; raises ``StorageError`` when it is down."""

    # -- accounts and sessions ------------------------------------------------

    @abc.abstractmethod
    async def create_account(self, account: Account) -> None:
        """Store a new account; ``DuplicateError`` if the username key exists."""

    @abc.abstractmethod
    async def get_account(self, username: str) -> Account | None:
        """The account whose username matches case-insensitively, or None."""

    @abc.abstractmethod
    async def set_account_role(self, username: str, role: str) -> None:
        """Change a role; ``NotFoundError`` if there is no such account."""

    @abc.abstractmethod
    async def create_session(self, session: Session) -> None:
        """Store a session; ``DuplicateError`` if the token hash exists."""

    @abc.abstractmethod
    async def get_session(self, token_hash: str) -> Session | None:
        """The session with this token hash, expired or not, or None."""

    @abc.abstractmethod
    async def delete_session(self, token_hash: str) -> None:
        """Forget one session; deleting a missing one is not an error."""

    @abc.abstractmethod
    async def delete_expired_sessions(self, now: float) -> int:
        """Delete sessions with ``expires_at <= now``; return how many."""

    @abc.abstractmethod
    async def list_sessions(self, username: str) -> list[Session]:
        """Every stored session (guest or not, expired or not) whose username
        matches case-insensitively, oldest first."""

    @abc.abstractmethod
    async def delete_sessions(self, username: str) -> int:
        """Delete every session of ``username`` (logout everywhere); how many."""

    @abc.abstractmethod
    async def list_accounts(self, offset: int, limit: int, prefix: str = "") -> list[Account]:
        """Accounts ordered by username key, optionally only those whose key
        starts with ``username_key(prefix)``; paged by offset and limit."""

    @abc.abstractmethod
    async def count_accounts(self, prefix: str = "") -> int:
        """How many accounts ``list_accounts`` would page through."""

    # -- moderation -------------------------------------------------------------

    @abc.abstractmethod
    async def set_sanction(self, sanction: Sanction) -> None:
        """Store a ban or mute, replacing any of the same kind for that user."""

    @abc.abstractmethod
    async def remove_sanction(self, kind: str, username: str) -> bool:
        """Lift a ban or mute; False if there was none."""

    @abc.abstractmethod
    async def get_sanction(self, kind: str, username: str) -> Sanction | None:
        """The stored sanction of ``kind`` for ``username``, expired or not."""

    @abc.abstractmethod
    async def list_sanctions(self, kind: str) -> list[Sanction]:
        """Every stored sanction of ``kind``, newest first, expired ones included."""

    # -- profiles -------------------------------------------------------------

    @abc.abstractmethod
    async def ensure_profile(self, username: str, now: float) -> Profile:
        """The profile for ``username``, created (xp 0, times ``now``) if absent."""

    @abc.abstractmethod
    async def get_profile(self, username: str) -> Profile | None:
        """The profile for ``username`` (case-insensitive), or None."""

    @abc.abstractmethod
    async def update_profile(self, username: str, fields: Mapping[str, Any]) -> Profile:
        """Set the given fields (names from ``models.PROFILE_UPDATABLE``, values
        of the types ``Profile`` declares) and return the new profile.
        ``NotFoundError`` if absent; ``ValueError`` for an unknown field."""

    @abc.abstractmethod
    async def set_preference(self, username: str, key: str, value: Any) -> Profile:
        """Atomically set ``preferences[key] = value`` (a JSON-compatible value),
        leaving every other key as it is, even when other keys are set at the
        same moment; return the new profile. ``key`` matches
        ``PREFERENCE_KEY`` (else ``ValueError``). ``NotFoundError`` if absent."""

    @abc.abstractmethod
    async def add_xp(self, username: str, amount: int) -> Profile:
        """Atomically add ``amount`` XP (may be negative, never below 0) and
        return the new profile. ``NotFoundError`` if absent."""

    # -- profiles: usage, reactions, the community, your data -----------------

    @abc.abstractmethod
    async def bump_usage(
        self,
        username: str,
        now: float,
        *,
        sessions: int = 0,
        seconds: float = 0.0,
        messages: int = 0,
        triggers: int = 0,
        replies: int = 0,
    ) -> None:
        """Atomically add to the person's usage stats (``sessions_count``,
        ``total_time_spent``, ``messages_posted``, ``triggers_activated``,
        ``companion_replies``) and set ``last_active = now``; the profile is
        created (as ``ensure_profile(username, now)`` would) if missing. Never
        loses a concurrent increment. ``ValueError`` for a negative or
        non-finite amount, before anything is stored."""

    @abc.abstractmethod
    async def set_reaction(
        self, from_user: str, to_user: str, kind: str, on: bool
    ) -> tuple[bool, int, int]:
        """Give (``on``) or take back a ``"like"`` or ``"love"`` of ``from_user``
        to ``to_user``'s profile: at most one of each kind per person per
        profile. Returns ``(changed, likes, loves)``: whether this call changed
        anything, and ``to_user``'s counts afterwards. Idempotent: giving twice
        or taking back what was not given changes nothing. The profile's
        ``likes``/``loves`` are kept equal to the number of reactions stored.
        ``ValueError`` for an unknown kind or ``from_user == to_user``
        (case-insensitively); ``NotFoundError`` when ``to_user`` has no profile."""

    @abc.abstractmethod
    async def reactions_given(self, from_user: str, to_user: str) -> frozenset[str]:
        """The kinds ``from_user`` has given ``to_user`` (case-insensitive names)."""

    @abc.abstractmethod
    async def list_profiles(
        self, *, offset: int, limit: int, sort: str, query: str = "", public_only: bool = True
    ) -> list[Profile]:
        """Profiles for the community page, paged. ``sort`` is one of
        ``models.PROFILE_SORTS``: ``"xp"`` (also serves level), ``"likes"``,
        ``"loves"`` (each most first), ``"joined"`` (newest first) or ``"name"``
        (username key order); ties are broken by username key. ``query``, when
        not empty, keeps the profiles whose username or display name contains
        it, case-insensitively (``str.casefold``; ``%``, ``_`` and every other
        character match only themselves). ``public_only`` hides profiles whose
        ``visibility`` is ``"private"``. ``ValueError`` for an unknown sort or
        a negative offset."""

    @abc.abstractmethod
    async def count_profiles(self, *, query: str = "", public_only: bool = True) -> int:
        """How many profiles ``list_profiles`` would page through."""

    @abc.abstractmethod
    async def export_user(self, username: str) -> dict[str, Any]:
        """Everything stored about the person, JSON-serialisable, keyed by
        ``EXPORT_KEYS`` (built by ``export_document``; docs/storage.md lists
        each key): the account (without its password hash), the profile, the
        sessions of that name (created, expires, guest; no token hashes), the
        sanctions against them, the chat messages posted under that name, their
        conversations (owner ``username``, not ``guest:…``), every log record
        of theirs, the user tag records where they mentioned someone, and the
        reactions they gave and received. An unknown person gives ``None`` and
        empty lists."""

    @abc.abstractmethod
    async def delete_user(self, username: str, replacement: str) -> dict[str, int]:
        """Remove the person's personal data: sessions, profile, reactions
        received, reactions given (the other profiles' counts decremented),
        sanctions, conversations, log records, and the account last. Their chat
        messages stay in the rooms' history (room, seq, text, mentions and
        links intact) under the name ``replacement`` (e.g.
        ``"deleted-user-3fa2"``, a name no account can take), and so does their
        name in other people's user tag records. Returns how many of each
        ``DELETED_KINDS`` were deleted or renamed. Idempotent: a second call
        finds nothing and returns zeros. Callers close the person's connections
        first: ``bump_usage`` or ``ensure_profile`` afterwards would create a
        new, empty profile. ``ValueError`` when ``replacement`` is empty or the
        person's own name. SQLite does it in one transaction; MongoDB, without
        transactions, in an order that a crash cannot make unsafe (see
        ``mongo.MongoStorage.delete_user``): running it again completes it."""

    # -- analytics (bambid.analytics: the admin numbers) ----------------------

    @abc.abstractmethod
    async def count_active_profiles(self, since: float) -> int:
        """How many profiles have ``last_active >= since``."""

    @abc.abstractmethod
    async def tally(
        self, tally: str, since: float, until: float, limit: int
    ) -> list[tuple[str, int]]:
        """The records of ``tally`` (one of ``TALLIES``) with ``since <=
        timestamp < until``, counted per value of its field: up to ``limit``
        (at most ``MAX_TALLY``) ``(value, count)`` pairs, most first, ties by
        value (code point order). ``ValueError`` from ``check_tally``."""

    @abc.abstractmethod
    async def count_per_day(self, series: str, start: float, days: int) -> list[tuple[int, int]]:
        """For each of ``days`` days from ``start`` (day ``i`` is ``start + i *
        DAY_SECONDS <= timestamp < start + (i + 1) * DAY_SECONDS``), how many
        records of ``series`` (one of ``DAILY_SERIES``) it holds and how many
        of them failed: ``days`` ``(count, failed)`` pairs, zeros included.
        ``ValueError`` from ``check_daily``."""

    @abc.abstractmethod
    async def profile_histogram(self, measure: str, bounds: Sequence[float]) -> list[int]:
        """How many profiles have ``measure`` (one of ``PROFILE_MEASURES``) in
        each of ``[bounds[0], bounds[1])``, …, ``[bounds[-1], ∞)``: one count
        per bound; values below ``bounds[0]`` are not counted. ``ValueError``
        from ``check_histogram``."""

    # -- public chat ----------------------------------------------------------

    @abc.abstractmethod
    async def append_chat_message(self, message: NewChatMessage) -> ChatMessage:
        """Store a message with its room's next sequence number (1 for the first
        message of a room) and a new unique ``message_id``. Concurrent appends
        to one room get distinct, gap-free sequence numbers."""

    @abc.abstractmethod
    async def chat_history(
        self, room: str, before_seq: int | None, limit: int
    ) -> list[ChatMessage]:
        """Up to ``limit`` messages of ``room`` with ``seq < before_seq`` (all,
        when None): the latest such messages, returned oldest first."""

    @abc.abstractmethod
    async def chat_since(self, room: str, after_seq: int, limit: int) -> list[ChatMessage]:
        """Up to ``limit`` messages of ``room`` with ``seq > after_seq``, oldest first."""

    @abc.abstractmethod
    async def get_chat_message(self, message_id: str) -> ChatMessage | None:
        """The message with this id (deleted or not), or None."""

    @abc.abstractmethod
    async def delete_chat_message(self, message_id: str) -> ChatMessage | None:
        """Mark a message deleted: ``deleted`` set, text emptied, mentions and
        links cleared, seq kept. Returns the updated message, None if there is
        no such message. Deleting twice returns the already-deleted message."""

    @abc.abstractmethod
    async def last_seq(self, room: str) -> int:
        """The highest sequence number in ``room``; 0 when it is empty."""

    # -- companion conversations (session history) ----------------------------

    @abc.abstractmethod
    async def save_conversation(self, conversation: Conversation) -> None:
        """Insert or replace the conversation with ``conversation.conversation_id``."""

    @abc.abstractmethod
    async def get_conversation(self, owner: str) -> Conversation | None:
        """The current conversation of ``owner`` (the one updated last, ties
        broken by id), or None."""

    @abc.abstractmethod
    async def get_conversation_by_id(self, conversation_id: str) -> Conversation | None:
        """The conversation with this id, or None."""

    @abc.abstractmethod
    async def list_conversations(self, owner: str, limit: int) -> list[Conversation]:
        """Up to ``limit`` conversations of ``owner``, updated last first."""

    @abc.abstractmethod
    async def delete_conversations(self, owner: str) -> int:
        """Delete every conversation of ``owner``; how many."""

    @abc.abstractmethod
    async def delete_conversation(self, conversation_id: str) -> bool:
        """Delete the conversation with this id (whoever owns it: callers check
        the owner first); False if there was none."""

    # -- interaction logs -----------------------------------------------------

    @abc.abstractmethod
    async def record(self, entry: LogRecord) -> None:
        """Append an interaction record to its collection (``entry.collection``)."""

    @abc.abstractmethod
    async def list_records(self, kind: type[R], username: str, limit: int) -> list[R]:
        """Up to ``limit`` records of ``kind`` for ``username``, newest first."""

    # -- shared settings ------------------------------------------------------

    @abc.abstractmethod
    async def get_setting(self, key: str) -> Any | None:
        """The value stored under ``key``, or None when there is none. Every
        instance (and ``bambidctl``) using the same database sees the same
        settings. ``ValueError`` for a key not matching ``SETTING_KEY``."""

    @abc.abstractmethod
    async def set_setting(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-compatible, see ``encode_setting``) under
        ``key``, replacing what was there; ``None`` deletes the key (deleting
        a missing key is not an error). ``ValueError`` for a bad key or value,
        before anything is stored."""

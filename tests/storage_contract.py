"""The storage contract: one suite that every backend must pass.

A backend's test module subclasses ``StorageContract`` (as ``Test…``) and
provides a ``new_storage`` fixture: a callable returning a new, unopened
``Storage`` on that test's database (every call the same database, so that a
test can close one and open the next). The ``storage`` fixture here opens one
and closes it after the test.

Times are whole milliseconds: MongoDB keeps no more (see the interface).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import attrs
import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from bambid.models import (
    LOG_RECORD_TYPES,
    PROFILE_UPDATABLE,
    SANCTION_KINDS,
    Account,
    AIInteraction,
    AudioInteraction,
    ChatMessage,
    ClickedUrl,
    Conversation,
    ConversationTurn,
    LinkRef,
    LogRecord,
    Mention,
    NewChatMessage,
    Profile,
    Sanction,
    Session,
    SocialLinks,
    UsageStats,
    UserInteraction,
    UserTagInteraction,
)
from bambid.storage.interface import (
    DELETED_KINDS,
    EXPORT_KEYS,
    DuplicateError,
    NotFoundError,
    Storage,
    StorageError,
)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

NewStorage = Callable[[], Storage]

T0 = 1_700_000_000.0

_unique = itertools.count(1)


def unique(prefix: str) -> str:
    """A name no other example of this run uses (hypothesis shares the storage)."""
    return f"{prefix}{next(_unique)}"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Wait, from a fixture, for a storage coroutine running on the reactor."""
    result: T = pytest_twisted.blockon(defer.Deferred.fromCoroutine(coroutine))
    return result


async def gather(coroutines: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run coroutines concurrently; the first failure fails the whole."""
    deferreds = [defer.Deferred.fromCoroutine(c) for c in coroutines]
    results: list[T] = await defer.gatherResults(deferreds, consumeErrors=True)
    return results


def new_message(room: str, text: str = "hello", **fields: Any) -> NewChatMessage:
    return NewChatMessage(
        room=room, username=fields.pop("username", "Alice"), text=text, timestamp=T0, **fields
    )


#: Text that survives every backend: any Unicode except lone surrogates.
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=200)
#: Whole milliseconds from 1970 to 2100.
times = st.integers(min_value=0, max_value=4_102_444_800_000).map(lambda ms: ms / 1000)
#: JSON- and BSON-friendly values for preferences, metadata and details.
plain_keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(plain_keys, children, max_size=4)
    ),
    max_leaves=12,
)
plain_dicts = st.dictionaries(plain_keys, plain_values, max_size=5)
#: Name fragments: any text without NUL, with a bias to characters whose case
#: folding is special or that sit at the edges of what a range query can bound.
name_parts = st.text(
    alphabet=st.sampled_from(list("aAbBsSßẞİıΣσς\u00e9\u00c9\ud7ff\ue000\uffff\U0010ffff"))
    | st.characters(codec="utf-8", exclude_characters="\x00"),
    max_size=6,
)

fast = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

_PROPERTY = "_contract_strategies"


def for_each_backend(**strategies: st.SearchStrategy[Any]) -> Callable[[F], F]:
    """Mark an async contract test as a hypothesis test with ``strategies``.

    ``StorageContract.__init_subclass__`` wraps it anew for every backend's
    class: pytest-twisted rewrites a hypothesis wrapper's inner test in place,
    so two classes must never share one wrapper."""

    def mark(test: F) -> F:
        setattr(test, _PROPERTY, strategies)
        return test

    return mark


class StorageContract:
    """What every ``Storage`` must do. Subclasses provide ``new_storage``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, test in vars(StorageContract).items():
            strategies = getattr(test, _PROPERTY, None)
            if strategies is not None:
                wrapped = fast(given(**strategies)(pytest_twisted.ensureDeferred(test)))
                setattr(cls, name, wrapped)

    @pytest.fixture
    def storage(self, new_storage: NewStorage) -> Iterator[Storage]:
        storage = new_storage()
        run(storage.open())
        yield storage
        run(storage.close())

    # -- basics ---------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_ping(self, storage: Storage) -> None:
        await storage.ping()
        assert storage.backend in ("sqlite", "mongodb")

    @pytest_twisted.ensureDeferred
    async def test_closed_storage_refuses_work(self, new_storage: NewStorage) -> None:
        storage = new_storage()
        await storage.open()
        await storage.close()
        await storage.close()  # closing twice is harmless
        with pytest.raises(StorageError):
            await storage.get_account("alice")

    @pytest_twisted.ensureDeferred
    async def test_data_survives_reopening(self, new_storage: NewStorage) -> None:
        first = new_storage()
        await first.open()
        await first.create_account(Account("Alice", "hash", "user", T0))
        sent = await first.append_chat_message(new_message("lobby"))
        deleted = await first.delete_chat_message(
            (await first.append_chat_message(new_message("lobby", "oops"))).message_id
        )
        guest = Session("g" * 64, "Guest-1", T0, T0 + 60, guest=True)
        await first.create_session(guest)
        mute = Sanction("mute", "Guest-1", "flood", "Mod", T0, None)
        await first.set_sanction(mute)
        older = Conversation("guest:Guest-1", "old", T0, T0, metadata={"k": [1]})
        current = Conversation("guest:Guest-1", "new", T0, T0 + 1)
        await first.save_conversation(older)
        await first.save_conversation(current)
        await first.close()

        second = new_storage()
        await second.open()
        try:
            assert await second.get_account("alice") == Account("Alice", "hash", "user", T0)
            assert deleted is not None and deleted.deleted
            assert await second.chat_history("lobby", None, 10) == [sent, deleted]
            assert (await second.append_chat_message(new_message("lobby"))).seq == 3
            assert await second.list_sessions("guest-1") == [guest]
            assert await second.get_sanction("mute", "GUEST-1") == mute
            assert await second.list_conversations("guest:guest-1", 5) == [current, older]
            assert await second.get_conversation_by_id(older.conversation_id) == older
        finally:
            await second.close()

    # -- accounts -------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_account_lookup_is_case_insensitive(self, storage: Storage) -> None:
        account = Account("Alice", "$argon2id$v=19$hash", "moderator", T0)
        await storage.create_account(account)
        assert await storage.get_account("Alice") == account
        assert await storage.get_account("alice") == account
        assert await storage.get_account("ALICE") == account
        assert await storage.get_account("bob") is None

    @pytest_twisted.ensureDeferred
    async def test_duplicate_username_differing_in_case(self, storage: Storage) -> None:
        await storage.create_account(Account("Alice", "h1", "user", T0))
        with pytest.raises(DuplicateError):
            await storage.create_account(Account("aLICE", "h2", "admin", T0 + 1))
        assert await storage.get_account("alice") == Account("Alice", "h1", "user", T0)

    @pytest_twisted.ensureDeferred
    async def test_concurrent_registrations_of_one_name(self, storage: Storage) -> None:
        attempts = [storage.create_account(Account("Bob", "h", "user", T0))]
        attempts += [storage.create_account(Account("BOB", "h", "user", T0)) for _ in range(4)]
        outcomes = await defer.DeferredList(
            [defer.Deferred.fromCoroutine(a) for a in attempts], consumeErrors=True
        )
        assert [ok for ok, _ in outcomes].count(True) == 1
        for ok, value in outcomes:
            assert ok or (isinstance(value, Failure) and value.check(DuplicateError))

    @pytest_twisted.ensureDeferred
    async def test_set_account_role(self, storage: Storage) -> None:
        await storage.create_account(Account("Alice", "h", "user", T0))
        await storage.set_account_role("ALICE", "admin")
        assert await storage.get_account("alice") == Account("Alice", "h", "admin", T0)
        with pytest.raises(NotFoundError):
            await storage.set_account_role("nobody", "admin")

    @pytest_twisted.ensureDeferred
    async def test_list_accounts_in_key_order(self, storage: Storage) -> None:
        assert await storage.list_accounts(0, 10) == []
        assert await storage.count_accounts() == 0
        names = ["bob", "Zed", "ALAN", "Ärger", "Alice", "Straße", "Am", "carol"]
        accounts = {name: Account(name, "h", "user", T0) for name in names}
        for account in accounts.values():
            await storage.create_account(account)
        # Keys: alan alice am bob carol strasse zed ärger (code point order).
        ordered = [
            accounts[n] for n in ("ALAN", "Alice", "Am", "bob", "carol", "Straße", "Zed", "Ärger")
        ]
        assert await storage.list_accounts(0, 100) == ordered
        assert await storage.count_accounts() == 8
        assert await storage.list_accounts(0, 3) == ordered[:3]
        assert await storage.list_accounts(3, 3) == ordered[3:6]
        assert await storage.list_accounts(6, 3) == ordered[6:]
        assert await storage.list_accounts(8, 3) == []
        assert await storage.list_accounts(100, 3) == []
        assert await storage.list_accounts(0, 0) == []
        assert await storage.list_accounts(0, -1) == []
        for offset in (-1, -100):
            with pytest.raises(ValueError):
                await storage.list_accounts(offset, 10)
        with pytest.raises(ValueError):
            await storage.list_accounts(-1, 0)

    @pytest_twisted.ensureDeferred
    async def test_list_accounts_by_prefix(self, storage: Storage) -> None:
        names = ["bob", "ALAN", "Alice", "Am", "Straße", "Strasser", "stray", "Al"]
        accounts = {name: Account(name, "h", "user", T0) for name in names}
        for account in accounts.values():
            await storage.create_account(account)

        async def listed(prefix: str, offset: int = 0, limit: int = 100) -> list[str]:
            return [a.username for a in await storage.list_accounts(offset, limit, prefix)]

        assert await listed("al") == ["Al", "ALAN", "Alice"]
        assert await listed("AL") == ["Al", "ALAN", "Alice"]
        assert await storage.count_accounts("aL") == 3
        assert await listed("ali") == ["Alice"]
        assert await listed("alice") == ["Alice"]
        assert await listed("alicex") == []
        assert await listed("a") == ["Al", "ALAN", "Alice", "Am"]
        assert await listed("al", offset=1, limit=1) == ["ALAN"]
        assert await listed("al", offset=3) == []
        # The prefix is folded like a username: "STRASS" and "straß" both match
        # the key "strasse".
        assert await listed("STRASS") == ["Straße", "Strasser"]
        assert await listed("straß") == ["Straße", "Strasser"]
        assert await storage.count_accounts("Straße") == 2
        assert await listed("str") == ["Straße", "Strasser", "stray"]
        assert await listed("x") == [] and await storage.count_accounts("x") == 0
        assert await listed("") == await listed("", limit=100) and len(await listed("")) == 8
        assert await storage.count_accounts("") == 8
        with pytest.raises(ValueError):
            await storage.list_accounts(-1, 10, "al")

    @for_each_backend(
        parts=st.lists(name_parts, min_size=1, max_size=6),
        prefix=name_parts,
        offset=st.integers(0, 4),
        limit=st.integers(-1, 5),
    )
    async def test_any_account_prefix(
        self, storage: Storage, parts: list[str], prefix: str, offset: int, limit: int
    ) -> None:
        # Each example has a namespace of its own: "ns7-" starts no other key.
        namespace = unique("ns") + "-"
        accounts: dict[str, Account] = {}
        for part in parts:
            account = Account(namespace + part, "h", "user", T0)
            accounts.setdefault(account.key, account)
        for account in accounts.values():
            await storage.create_account(account)
        wanted = (namespace + prefix).casefold()
        matching = [accounts[key] for key in sorted(accounts) if key.startswith(wanted)]
        assert await storage.count_accounts(namespace + prefix) == len(matching)
        expected = matching[offset : offset + limit] if limit > 0 else []
        assert await storage.list_accounts(offset, limit, namespace + prefix) == expected

    # -- sessions ---------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_session_lifecycle(self, storage: Storage) -> None:
        session = Session("a" * 64, "Alice", T0, T0 + 3600)
        await storage.create_session(session)
        assert await storage.get_session("a" * 64) == session
        assert await storage.get_session("b" * 64) is None
        with pytest.raises(DuplicateError):
            await storage.create_session(Session("a" * 64, "Bob", T0, T0 + 60))
        await storage.delete_session("a" * 64)
        assert await storage.get_session("a" * 64) is None
        await storage.delete_session("a" * 64)  # deleting a missing session is fine

    @pytest_twisted.ensureDeferred
    async def test_expired_sessions(self, storage: Storage) -> None:
        await storage.create_session(Session("old", "Alice", T0, T0 + 10))
        await storage.create_session(Session("edge", "Alice", T0, T0 + 20))
        await storage.create_session(Session("new", "Bob", T0, T0 + 30))
        # Expired sessions are still returned until deleted.
        assert await storage.get_session("old") == Session("old", "Alice", T0, T0 + 10)
        assert await storage.delete_expired_sessions(T0 + 20) == 2  # expires_at <= now
        assert await storage.get_session("old") is None
        assert await storage.get_session("edge") is None
        assert await storage.get_session("new") == Session("new", "Bob", T0, T0 + 30)
        assert await storage.delete_expired_sessions(T0 + 20) == 0

    @pytest_twisted.ensureDeferred
    async def test_guest_sessions_round_trip(self, storage: Storage) -> None:
        guest = Session("g" * 64, "Guest-Ü7", T0, T0 + 60.125, guest=True)
        member = Session("m" * 64, "Alice", T0, T0 + 60)
        await storage.create_session(guest)
        await storage.create_session(member)
        assert await storage.get_session("g" * 64) == guest
        assert await storage.get_session("m" * 64) == member
        assert member.guest is False
        assert await storage.list_sessions("guest-ü7") == [guest]

    @pytest_twisted.ensureDeferred
    async def test_list_and_delete_sessions_of_a_user(self, storage: Storage) -> None:
        # Created out of order; names differ in case (and in ß against SS, which
        # only str.casefold equates); one is expired, one is a guest's.
        newest = Session("s3", "STRASSE", T0 + 3, T0 + 100)
        oldest = Session("s1", "Straße", T0 + 1, T0 + 2)
        middle = Session("s2", "strasse", T0 + 2, T0 + 100, guest=True)
        other = Session("s4", "Strasser", T0, T0 + 100)
        for session in (newest, oldest, middle, other):
            await storage.create_session(session)
        assert await storage.list_sessions("straSSe") == [oldest, middle, newest]
        assert await storage.list_sessions("strasser") == [other]
        assert await storage.list_sessions("nobody") == []
        assert await storage.delete_sessions("STRAßE") == 3
        assert await storage.list_sessions("strasse") == []
        assert await storage.get_session("s1") is None
        assert await storage.get_session("s4") == other
        assert await storage.delete_sessions("strasse") == 0
        assert await storage.delete_sessions("nobody") == 0

    @pytest_twisted.ensureDeferred
    async def test_sessions_of_a_user_at_the_same_time(self, storage: Storage) -> None:
        sessions = [Session(token, "Alice", T0, T0 + 60) for token in ("c", "a", "b")]
        for session in sessions:
            await storage.create_session(session)
        listed = await storage.list_sessions("alice")
        assert sorted(listed, key=lambda s: s.token_hash) == sorted(
            sessions, key=lambda s: s.token_hash
        )

    # -- moderation -------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_sanction_set_get_replace_remove(self, storage: Storage) -> None:
        assert await storage.get_sanction("ban", "alice") is None
        ban = Sanction("ban", "Alice", "spam ✨", "Mod", T0, T0 + 3600.125)
        await storage.set_sanction(ban)
        assert await storage.get_sanction("ban", "ALICE") == ban
        assert await storage.get_sanction("mute", "alice") is None  # kinds are independent
        mute = Sanction("mute", "alice", "flood", "Mod", T0 + 1)
        await storage.set_sanction(mute)
        stored_mute = await storage.get_sanction("mute", "Alice")
        assert stored_mute == mute and stored_mute.expires_at is None
        assert await storage.get_sanction("ban", "alice") == ban

        # Setting again replaces the sanction of that kind: one per person.
        again = Sanction("ban", "ALICE", "again", "Admin", T0 + 10, None)
        await storage.set_sanction(again)
        assert await storage.get_sanction("ban", "alice") == again
        assert await storage.list_sanctions("ban") == [again]
        shorter = attrs.evolve(again, expires_at=T0 + 20)
        await storage.set_sanction(shorter)
        assert await storage.get_sanction("ban", "alice") == shorter

        assert await storage.remove_sanction("ban", "aLiCe") is True
        assert await storage.remove_sanction("ban", "alice") is False
        assert await storage.get_sanction("ban", "alice") is None
        assert await storage.get_sanction("mute", "alice") == mute  # the mute stays
        assert await storage.remove_sanction("mute", "nobody") is False

    @pytest_twisted.ensureDeferred
    async def test_sanctions_are_listed_newest_first(self, storage: Storage) -> None:
        assert await storage.list_sanctions("ban") == []
        bans = [
            Sanction("ban", "Bob", "b", "Mod", T0 + 2, T0 + 100),
            Sanction("ban", "Carol", "c", "Mod", T0 + 3),
            Sanction("ban", "Alice", "a", "Mod", T0 + 1, T0 + 5),  # expired: still listed
        ]
        for ban in bans:
            await storage.set_sanction(ban)
        mute = Sanction("mute", "Dave", "d", "Mod", T0 + 4)
        await storage.set_sanction(mute)
        assert await storage.list_sanctions("ban") == [bans[1], bans[0], bans[2]]
        assert await storage.list_sanctions("mute") == [mute]
        renewed = Sanction("ban", "alice", "renewed", "Admin", T0 + 9)
        await storage.set_sanction(renewed)
        assert await storage.list_sanctions("ban") == [renewed, bans[1], bans[0]]
        await storage.remove_sanction("ban", "carol")
        assert await storage.list_sanctions("ban") == [renewed, bans[0]]

    @pytest_twisted.ensureDeferred
    async def test_unknown_sanction_kind(self, storage: Storage) -> None:
        assert set(SANCTION_KINDS) == {"ban", "mute"}
        for kind in ("kick", "", "BAN"):
            with pytest.raises(ValueError):
                await storage.set_sanction(Sanction(kind, "Alice", "r", "Mod", T0))
            with pytest.raises(ValueError):
                await storage.get_sanction(kind, "alice")
            with pytest.raises(ValueError):
                await storage.remove_sanction(kind, "alice")
            with pytest.raises(ValueError):
                await storage.list_sanctions(kind)
        assert await storage.list_sanctions("ban") == []

    @for_each_backend(
        kind=st.sampled_from(SANCTION_KINDS),
        reason=texts,
        by=texts,
        created=times,
        expires=st.none() | times,
    )
    async def test_any_sanction_round_trips(
        self,
        storage: Storage,
        kind: str,
        reason: str,
        by: str,
        created: float,
        expires: float | None,
    ) -> None:
        sanction = Sanction(kind, unique("Sänctioned"), reason, by, created, expires)
        await storage.set_sanction(sanction)
        assert await storage.get_sanction(kind, sanction.username.upper()) == sanction
        assert sanction in await storage.list_sanctions(kind)

    # -- profiles ---------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_ensure_profile_creates_once(self, storage: Storage) -> None:
        assert await storage.get_profile("alice") is None
        created = await storage.ensure_profile("Alice", T0)
        assert created.username == "Alice"
        assert (created.xp, created.created_at, created.last_active) == (0, T0, T0)
        assert created.social_links == SocialLinks()
        assert created.usage_stats == UsageStats()
        assert created.preferences == {}
        again = await storage.ensure_profile("ALICE", T0 + 100)
        assert again == created
        assert await storage.get_profile("aLiCe") == created

    @pytest_twisted.ensureDeferred
    async def test_concurrent_ensure_profile(self, storage: Storage) -> None:
        profiles = await gather([storage.ensure_profile("Carol", T0 + i) for i in range(10)])
        assert len({(p.username, p.created_at) for p in profiles}) == 1

    @pytest_twisted.ensureDeferred
    async def test_update_every_field(self, storage: Storage) -> None:
        await storage.ensure_profile("Alice", T0)
        values: dict[str, Any] = {
            "display_name": "Alice Ü",
            "bio": "line one\nline two ✨",
            "social_links": SocialLinks(twitter="@a", discord="a#1", custom="https://a.example"),
            "profile_style": "neon",
            "visibility": "private",
            "preferences": {"theme": "dark", "volume": 0.5, "triggers": ["a", "b"], "n": {"x": 1}},
            "last_active": T0 + 42.125,
            "usage_stats": UsageStats(
                sessions_count=3, total_time_spent=12.5, triggers_activated=7, messages_posted=9
            ),
        }
        assert set(values) == PROFILE_UPDATABLE
        for name, value in values.items():
            before = await storage.get_profile("alice")
            assert before is not None
            updated = await storage.update_profile("ALICE", {name: value})
            assert updated == attrs.evolve(before, **{name: value})
            assert await storage.get_profile("alice") == updated

    @pytest_twisted.ensureDeferred
    async def test_update_several_fields_at_once(self, storage: Storage) -> None:
        created = await storage.ensure_profile("Alice", T0)
        fields: dict[str, Any] = {"bio": "hi", "visibility": "a", "preferences": {"a": [1, None]}}
        updated = await storage.update_profile("alice", fields)
        assert updated == attrs.evolve(created, **fields)
        assert await storage.update_profile("alice", {}) == updated

    @pytest_twisted.ensureDeferred
    async def test_update_profile_refusals(self, storage: Storage) -> None:
        created = await storage.ensure_profile("Alice", T0)
        for field in ("xp", "username", "likes", "created_at", "no_such_field"):
            with pytest.raises(ValueError):
                await storage.update_profile("alice", {field: 1})
        with pytest.raises(ValueError):
            await storage.update_profile("alice", {"bio": "ok", "xp": 10**6})
        assert await storage.get_profile("alice") == created
        with pytest.raises(NotFoundError):
            await storage.update_profile("nobody", {"bio": "x"})
        with pytest.raises(NotFoundError):
            await storage.update_profile("nobody", {})

    @pytest_twisted.ensureDeferred
    async def test_set_preference_keeps_the_other_keys(self, storage: Storage) -> None:
        await storage.ensure_profile("Alice", T0)
        await storage.update_profile("alice", {"preferences": {"theme": "dark"}})
        # Several features save their own key at the same moment: none is lost.
        keys = [f"feature_{n}" for n in range(12)]
        await defer.gatherResults(
            [
                Deferred.fromCoroutine(storage.set_preference("ALICE", key, {"n": n}))
                for n, key in enumerate(keys)
            ]
        )
        profile = await storage.get_profile("alice")
        assert profile is not None
        assert profile.preferences == {"theme": "dark"} | {k: {"n": n} for n, k in enumerate(keys)}
        updated = await storage.set_preference("alice", "theme", ["light", 2])
        assert updated.preferences["theme"] == ["light", 2]
        assert updated.preferences["feature_0"] == {"n": 0}
        for bad in ("", "Theme", "a.b", "$set", "x" * 40):
            with pytest.raises(ValueError):
                await storage.set_preference("alice", bad, 1)
        with pytest.raises((TypeError, ValueError)):
            await storage.set_preference("alice", "odd", object())
        with pytest.raises(NotFoundError):
            await storage.set_preference("nobody", "theme", 1)

    # -- shared settings --------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_settings_set_replace_delete(self, storage: Storage) -> None:
        assert await storage.get_setting("maintenance") is None
        state = {"on": True, "message": "back at 5", "since": T0, "by": "Root"}
        await storage.set_setting("maintenance", state)
        assert await storage.get_setting("maintenance") == state
        await storage.set_setting("maintenance", {"on": False})
        assert await storage.get_setting("maintenance") == {"on": False}
        await storage.set_setting("other.key_2", [1, "two", None, 3.5])
        await storage.set_setting("maintenance", None)
        assert await storage.get_setting("maintenance") is None
        await storage.set_setting("maintenance", None)  # deleting a missing key is fine
        assert await storage.get_setting("other.key_2") == [1, "two", None, 3.5]
        # JSON's view of a value: tuples come back as lists.
        await storage.set_setting("x", (1, {"a.b": "$c", "big": 2**70}))
        assert await storage.get_setting("x") == [1, {"a.b": "$c", "big": 2**70}]

    @pytest_twisted.ensureDeferred
    async def test_settings_are_shared_by_every_instance(
        self, storage: Storage, new_storage: NewStorage
    ) -> None:
        other = new_storage()  # another daemon (or bambidctl) on the same database
        await other.open()
        try:
            await other.set_setting("maintenance", {"on": True})
            assert await storage.get_setting("maintenance") == {"on": True}
            await storage.set_setting("maintenance", None)
            assert await other.get_setting("maintenance") is None
        finally:
            await other.close()

    @pytest_twisted.ensureDeferred
    async def test_bad_settings_are_refused_and_store_nothing(self, storage: Storage) -> None:
        await storage.set_setting("kept", "as it was")
        for bad_key in ("", "Maintenance", "1st", "_x", "a-b", "a b", "x" * 65, "$set", 7):
            with pytest.raises(ValueError):
                await storage.set_setting(bad_key, 1)  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                await storage.get_setting(bad_key)  # type: ignore[arg-type]
        assert await storage.get_setting("x" * 64) is None  # the longest key is fine
        for bad_value in (float("nan"), float("inf"), object(), {1, 2}, "x" * 70_000):
            with pytest.raises(ValueError):
                await storage.set_setting("kept", bad_value)
        assert await storage.get_setting("kept") == "as it was"

    @for_each_backend(value=plain_values.filter(lambda v: v is not None))
    async def test_any_setting_round_trips(self, storage: Storage, value: Any) -> None:
        key = unique("any.value_")
        await storage.set_setting(key, value)
        assert await storage.get_setting(key) == value

    @pytest_twisted.ensureDeferred
    async def test_add_xp_floors_at_zero(self, storage: Storage) -> None:
        await storage.ensure_profile("Alice", T0)
        assert (await storage.add_xp("alice", 10)).xp == 10
        assert (await storage.add_xp("ALICE", -3)).xp == 7
        assert (await storage.add_xp("Alice", -100)).xp == 0
        assert (await storage.add_xp("Alice", 0)).xp == 0
        profile = await storage.get_profile("alice")
        assert profile is not None and profile.xp == 0
        with pytest.raises(NotFoundError):
            await storage.add_xp("nobody", 5)

    @pytest_twisted.ensureDeferred
    async def test_add_xp_is_atomic(self, storage: Storage) -> None:
        await storage.ensure_profile("Alice", T0)
        profiles = await gather([storage.add_xp("alice", 1) for _ in range(50)])
        assert sorted(p.xp for p in profiles) == list(range(1, 51))
        final = await storage.get_profile("alice")
        assert final is not None and final.xp == 50

    @for_each_backend(
        display_name=texts,
        bio=texts,
        preferences=plain_dicts,
        last_active=times,
        links=st.builds(SocialLinks, texts, texts, texts, texts, texts),
        stats=st.builds(
            UsageStats,
            st.integers(0, 2**31),
            st.floats(0, 1e9),
            st.integers(0, 2**31),
            st.integers(0, 2**31),
        ),
    )
    async def test_profile_fields_round_trip(
        self,
        storage: Storage,
        display_name: str,
        bio: str,
        preferences: dict[str, Any],
        last_active: float,
        links: SocialLinks,
        stats: UsageStats,
    ) -> None:
        name = unique("Üser")
        await storage.ensure_profile(name, T0)
        fields = {
            "display_name": display_name,
            "bio": bio,
            "preferences": preferences,
            "last_active": last_active,
            "social_links": links,
            "usage_stats": stats,
        }
        updated = await storage.update_profile(name, fields)
        assert await storage.get_profile(name.upper()) == updated
        for field, value in fields.items():
            assert getattr(updated, field) == value

    # -- profiles: usage stats ------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_bump_usage_creates_the_profile_and_adds(self, storage: Storage) -> None:
        await storage.bump_usage("Alice", T0 + 5, sessions=1, seconds=2.5)
        created = await storage.get_profile("alice")
        assert created is not None
        assert (created.username, created.created_at, created.last_active) == (
            "Alice",
            T0 + 5,
            T0 + 5,
        )
        assert created.usage_stats == UsageStats(sessions_count=1, total_time_spent=2.5)
        await storage.add_xp("alice", 7)
        await storage.update_profile("alice", {"bio": "kept"})
        await storage.bump_usage("ALICE", T0 + 9, messages=2, triggers=3, replies=4)
        await storage.bump_usage("aLiCe", T0 + 10, seconds=0.125)
        after = await storage.get_profile("alice")
        assert after == attrs.evolve(
            created,
            xp=7,
            bio="kept",
            last_active=T0 + 10,
            usage_stats=UsageStats(
                sessions_count=1,
                total_time_spent=2.625,
                triggers_activated=3,
                messages_posted=2,
                companion_replies=4,
            ),
        )
        # A bump of nothing still says the person was active.
        await storage.bump_usage("alice", T0 + 11)
        assert (await storage.get_profile("alice")) == attrs.evolve(after, last_active=T0 + 11)

    @pytest_twisted.ensureDeferred
    async def test_concurrent_bump_usage_counts_every_increment(self, storage: Storage) -> None:
        # Forty at once on a profile that does not exist yet: they race to create it too.
        await gather(
            [
                storage.bump_usage(
                    "Dora", T0 + n, sessions=1, seconds=0.25, messages=2, triggers=1, replies=3
                )
                for n in range(40)
            ]
        )
        profile = await storage.get_profile("dora")
        assert profile is not None
        assert profile.usage_stats == UsageStats(
            sessions_count=40,
            total_time_spent=10.0,
            triggers_activated=40,
            messages_posted=80,
            companion_replies=120,
        )
        assert T0 <= profile.created_at < T0 + 40 and T0 <= profile.last_active < T0 + 40

    @pytest_twisted.ensureDeferred
    async def test_bump_usage_refuses_bad_amounts(self, storage: Storage) -> None:
        bad: list[dict[str, Any]] = [
            {"sessions": -1},
            {"messages": -5},
            {"triggers": 1.5},
            {"replies": True},
            {"seconds": -0.5},
            {"seconds": float("nan")},
            {"seconds": float("inf")},
        ]
        for amounts in bad:
            with pytest.raises(ValueError):
                await storage.bump_usage("Alice", T0, **amounts)
        assert await storage.get_profile("alice") is None

    # -- profiles: likes and loves ------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_reactions_are_idempotent_and_counted(self, storage: Storage) -> None:
        await storage.ensure_profile("Alice", T0)
        await storage.ensure_profile("Bob", T0)
        assert await storage.reactions_given("bob", "alice") == frozenset()
        assert await storage.set_reaction("Bob", "Alice", "like", True) == (True, 1, 0)
        assert await storage.set_reaction("BOB", "alice", "like", True) == (False, 1, 0)
        assert await storage.set_reaction("bob", "ALICE", "love", True) == (True, 1, 1)
        assert await storage.set_reaction("Carol", "alice", "like", True) == (True, 2, 1)
        assert await storage.reactions_given("BOB", "Alice") == frozenset({"like", "love"})
        assert await storage.reactions_given("carol", "alice") == frozenset({"like"})
        assert await storage.reactions_given("alice", "bob") == frozenset()
        profile = await storage.get_profile("alice")
        assert profile is not None and (profile.likes, profile.loves) == (2, 1)

        assert await storage.set_reaction("Bob", "Alice", "like", False) == (True, 1, 1)
        assert await storage.set_reaction("Bob", "Alice", "like", False) == (False, 1, 1)
        assert await storage.set_reaction("Dave", "Alice", "love", False) == (False, 1, 1)
        assert await storage.reactions_given("bob", "alice") == frozenset({"love"})
        # Given back again after taking it back: counted again, once.
        assert await storage.set_reaction("Bob", "Alice", "like", True) == (True, 2, 1)
        bob = await storage.get_profile("bob")
        assert bob is not None and (bob.likes, bob.loves) == (0, 0)
        # Other profile fields are left alone.
        alice = await storage.get_profile("alice")
        assert alice == attrs.evolve(Profile("Alice", T0, T0), likes=2, loves=1)

    @pytest_twisted.ensureDeferred
    async def test_reaction_refusals(self, storage: Storage) -> None:
        await storage.ensure_profile("Alice", T0)
        for on in (True, False):
            for to_user in ("Alice", "ALICE", "alice"):
                with pytest.raises(ValueError):
                    await storage.set_reaction("Alice", to_user, "like", on)
            for kind in ("heart", "Like", "LOVE", ""):
                with pytest.raises(ValueError):
                    await storage.set_reaction("Bob", "Alice", kind, on)
            with pytest.raises(NotFoundError):
                await storage.set_reaction("Bob", "nobody", "like", on)
        # Straße and STRASSE are one person: no reacting to oneself that way either.
        await storage.ensure_profile("Straße", T0)
        with pytest.raises(ValueError):
            await storage.set_reaction("STRASSE", "straße", "love", True)
        profile = await storage.get_profile("alice")
        assert profile is not None and (profile.likes, profile.loves) == (0, 0)
        assert await storage.reactions_given("bob", "alice") == frozenset()
        assert await storage.get_profile("nobody") is None

    @pytest_twisted.ensureDeferred
    async def test_concurrent_reactions_stay_exact(self, storage: Storage) -> None:
        await storage.ensure_profile("Star", T0)
        fans = [f"fan{n}" for n in range(12)]
        # Each fan gives a like three times at once: one of the three counts.
        outcomes = await gather(
            [storage.set_reaction(fan, "star", "like", True) for fan in fans for _ in range(3)]
        )
        assert sum(changed for changed, _, _ in outcomes) == 12
        star = await storage.get_profile("star")
        assert star is not None and star.likes == 12
        # Gives and take-backs of one person racing: the count follows the row.
        mixed = await gather(
            [
                storage.set_reaction(fan, "Star", kind, n % 2 == 0)
                for fan in fans[:6]
                for kind in ("like", "love")
                for n in range(4)
            ]
        )
        assert len(mixed) == 48
        star = await storage.get_profile("star")
        assert star is not None
        given = [await storage.reactions_given(fan, "star") for fan in fans]
        assert star.likes == sum("like" in kinds for kinds in given)
        assert star.loves == sum("love" in kinds for kinds in given)
        # Everyone takes everything back, twice at once: down to zero exactly.
        await gather(
            [
                storage.set_reaction(fan, "star", kind, False)
                for fan in fans
                for kind in ("like", "love")
                for _ in range(2)
            ]
        )
        star = await storage.get_profile("star")
        assert star is not None and (star.likes, star.loves) == (0, 0)

    # -- profiles: the community list ----------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_list_profiles_sorting_and_paging(self, storage: Storage) -> None:
        assert await storage.list_profiles(offset=0, limit=10, sort="xp") == []
        assert await storage.count_profiles() == 0
        # name: (joined, xp, likes, loves)
        people = {
            "Ann": (T0 + 1, 50, 2, 0),
            "bob": (T0 + 3, 50, 1, 3),
            "Cat": (T0 + 2, 10, 2, 1),
            "dan": (T0 + 3, 0, 0, 0),
            "Eve": (T0, 99, 0, 1),
        }
        for name, (joined, xp, likes, loves) in people.items():
            await storage.ensure_profile(name, joined)
            await storage.add_xp(name, xp)
            for n in range(likes):
                await storage.set_reaction(f"liker{n}", name, "like", True)
            for n in range(loves):
                await storage.set_reaction(f"lover{n}", name, "love", True)

        async def names(sort: str, offset: int = 0, limit: int = 100) -> list[str]:
            listed = await storage.list_profiles(offset=offset, limit=limit, sort=sort)
            return [p.username for p in listed]

        # Ties are broken by name (username key): "ann" < "bob" < "cat" < "dan" < "eve".
        assert await names("xp") == ["Eve", "Ann", "bob", "Cat", "dan"]
        assert await names("likes") == ["Ann", "Cat", "bob", "dan", "Eve"]
        assert await names("loves") == ["bob", "Cat", "Eve", "Ann", "dan"]
        assert await names("joined") == ["bob", "dan", "Cat", "Ann", "Eve"]
        assert await names("name") == ["Ann", "bob", "Cat", "dan", "Eve"]
        assert await names("xp", offset=1, limit=2) == ["Ann", "bob"]
        assert await names("xp", offset=4, limit=2) == ["dan"]
        assert await names("xp", offset=5) == []
        assert await names("xp", limit=0) == [] and await names("xp", limit=-1) == []
        assert await storage.count_profiles() == 5
        # The profiles listed are the stored ones, whole.
        listed = await storage.list_profiles(offset=0, limit=1, sort="loves")
        assert listed == [await storage.get_profile("bob")]
        with pytest.raises(ValueError):
            await storage.list_profiles(offset=-1, limit=10, sort="xp")
        for sort in ("level", "XP", "", "username"):
            with pytest.raises(ValueError):
                await storage.list_profiles(offset=0, limit=10, sort=sort)

    @pytest_twisted.ensureDeferred
    async def test_list_profiles_search(self, storage: Storage) -> None:
        display = {
            "Straße": "",
            "alice": "Wonder_Land",
            "a_b": "",
            "axb": "100% real",
            "Bob": "Big BOB",
            "Zed": "back\\slash [x]",
            "Ümit": "Ψ",
        }
        for name, display_name in display.items():
            await storage.ensure_profile(name, T0)
            if display_name:
                await storage.update_profile(name, {"display_name": display_name})

        async def found(query: str) -> list[str]:
            listed = await storage.list_profiles(offset=0, limit=100, sort="name", query=query)
            assert await storage.count_profiles(query=query) == len(listed)
            return [p.username for p in listed]

        assert await found("") == ["a_b", "alice", "axb", "Bob", "Straße", "Zed", "Ümit"]
        assert await found("STRASS") == ["Straße"]  # casefold: ß is ss
        assert await found("ß") == ["Straße"]
        assert await found("wonder_l") == ["alice"]  # by display name
        assert await found("bob") == ["Bob"]
        assert await found("big b") == ["Bob"]
        assert await found("üm") == ["Ümit"] and await found("ψ") == ["Ümit"]
        # Wildcards of LIKE and regular expressions match only themselves.
        assert await found("_") == ["a_b", "alice"]
        assert await found("a_b") == ["a_b"]
        assert await found("%") == ["axb"]
        assert await found("a%b") == []
        assert await found("a.b") == []
        assert await found(".*") == []
        assert await found("\\") == ["Zed"]
        assert await found("[x]") == ["Zed"]
        assert await found("[") == ["Zed"]
        assert await found("x") == ["axb", "Zed"]
        assert await found("nobody") == []
        # The search pages and sorts like the rest.
        await storage.add_xp("axb", 5)
        listed = await storage.list_profiles(offset=0, limit=1, sort="xp", query="a")
        assert [p.username for p in listed] == ["axb"]
        listed = await storage.list_profiles(offset=1, limit=1, sort="xp", query="a")
        assert [p.username for p in listed] == ["a_b"]

    @pytest_twisted.ensureDeferred
    async def test_private_profiles_are_hidden(self, storage: Storage) -> None:
        for name in ("Ann", "Ben", "Cy"):
            await storage.ensure_profile(name, T0)
        await storage.update_profile("ben", {"visibility": "private", "display_name": "Benny"})

        async def names(**options: Any) -> list[str]:
            listed = await storage.list_profiles(offset=0, limit=10, sort="name", **options)
            return [p.username for p in listed]

        assert await names() == ["Ann", "Cy"]
        assert await storage.count_profiles() == 2
        assert await names(query="benny") == [] and await storage.count_profiles(query="ben") == 0
        assert await names(public_only=False) == ["Ann", "Ben", "Cy"]
        assert await storage.count_profiles(public_only=False) == 3
        assert await names(query="BENNY", public_only=False) == ["Ben"]
        await storage.update_profile("ben", {"visibility": "public"})
        assert await names() == ["Ann", "Ben", "Cy"]

    @for_each_backend(
        parts=st.lists(name_parts, min_size=1, max_size=5),
        displays=st.lists(texts, min_size=5, max_size=5),
        query=st.text(
            alphabet=st.sampled_from(list("aAsSß_%\\.*[](){}^$|?+\x00 "))
            | st.characters(codec="utf-8"),
            max_size=3,
        ),
    )
    async def test_any_profile_search(
        self, storage: Storage, parts: list[str], displays: list[str], query: str
    ) -> None:
        namespace = unique("srch") + "-"
        profiles: dict[str, tuple[str, str]] = {}
        for part, display_name in zip(parts, displays, strict=False):
            name = namespace + part
            if name.casefold() not in profiles:
                await storage.ensure_profile(name, T0)
                await storage.update_profile(name, {"display_name": display_name})
                profiles[name.casefold()] = (name, display_name)
        wanted = query.casefold()
        expected = sorted(
            name
            for key, (name, display_name) in profiles.items()
            if wanted in key or wanted in display_name.casefold()
        )
        listed = await storage.list_profiles(
            offset=0, limit=10_000, sort="name", query=query, public_only=False
        )
        ours = [p.username for p in listed if p.username.casefold() in profiles]
        assert sorted(ours) == expected

    # -- your data: export and deletion ---------------------------------------------

    async def everything_of(self, storage: Storage, name: str, other: str) -> dict[str, Any]:
        """One of every kind of record about ``name`` (and some of ``other``'s
        beside them); what was stored, by kind."""
        stored: dict[str, Any] = {}
        stored["account"] = Account(name, f"$argon2id$SECRET-HASH-OF-{name}", "user", T0)
        await storage.create_account(stored["account"])
        stored["sessions"] = [
            Session(f"TOKEN-HASH-{name}-1", name, T0 + 1, T0 + 100),
            Session(f"TOKEN-HASH-{name}-2", name.lower(), T0 + 2, T0 + 200, guest=True),
        ]
        for session in stored["sessions"]:
            await storage.create_session(session)
        await storage.ensure_profile(name, T0)
        await storage.update_profile(name, {"bio": f"bio of {name}", "preferences": {"v": 1}})
        await storage.bump_usage(name, T0 + 3, sessions=1, seconds=5.5, messages=2)
        stored["sanctions"] = [
            Sanction("ban", name, "spam", "Mod", T0 + 4, T0 + 5),
            Sanction("mute", name.upper(), "flood", "Mod", T0 + 6),
        ]
        for sanction in stored["sanctions"]:
            await storage.set_sanction(sanction)
        first = await storage.append_chat_message(new_message("lobby", "hi", username=name))
        tagged = await storage.append_chat_message(
            new_message(
                "lobby",
                f"hey @{other} https://example.com",
                username=name,
                mentions=(Mention(other, 4),),
                links=(LinkRef("https://example.com", True),),
                reply_to=first.message_id,
            )
        )
        stored["chat_messages"] = [first, tagged]
        stored["conversations"] = [
            self.conversation(name, T0 + 9, "newer", turns=(ConversationTurn("user", "q", T0),)),
            self.conversation(name.upper(), T0 + 8, "older", metadata={"m": [1, 2]}),
        ]
        for conversation in stored["conversations"]:
            await storage.save_conversation(conversation)
        stored["records"] = {}
        for n, kind in enumerate(LOG_RECORD_TYPES):
            entry = self.log_entry(kind, name, T0 + 10 + n, n + 1)
            await storage.record(entry)
            stored["records"][kind.collection] = [entry]
        # Who they mentioned: the record belongs to the other person's log;
        # mentioning oneself is a record of one's own.
        stored["tag_made"] = UserTagInteraction(other, name.upper(), "lobby", tagged.message_id, T0)
        await storage.record(stored["tag_made"])
        myself = UserTagInteraction(name, name.lower(), "lobby", first.message_id, T0 + 20)
        await storage.record(myself)
        stored["records"][UserTagInteraction.collection].insert(0, myself)
        return stored

    async def everything_of_other(self, storage: Storage, other: str) -> None:
        await storage.create_account(Account(other, "$argon2id$OTHER", "user", T0))
        await storage.create_session(Session(f"TOKEN-HASH-{other}", other, T0, T0 + 9))
        await storage.ensure_profile(other, T0)
        await storage.set_sanction(Sanction("mute", other, "r", "Mod", T0))
        await storage.append_chat_message(new_message("lobby", "other's", username=other))
        await storage.save_conversation(self.conversation(other, T0 + 1))
        await storage.save_conversation(self.conversation(f"guest:{other}", T0 + 1))
        for n, kind in enumerate(LOG_RECORD_TYPES):
            await storage.record(self.log_entry(kind, other, T0 + n, n + 7))

    @staticmethod
    def as_json(record: Any) -> Any:
        """A record as it reads back from JSON."""
        return json.loads(json.dumps(attrs.asdict(record)))

    @pytest_twisted.ensureDeferred
    async def test_export_user_is_complete(self, storage: Storage) -> None:
        await self.everything_of_other(storage, "Bob")
        stored = await self.everything_of(storage, "Alice", "Bob")
        await storage.save_conversation(self.conversation("guest:Alice", T0 + 1))  # a guest's
        await storage.set_reaction("Alice", "Bob", "like", True)
        await storage.set_reaction("Bob", "alice", "love", True)
        await storage.set_reaction("Carol", "ALICE", "like", True)

        exported = await storage.export_user("ALICE")
        assert tuple(exported) == EXPORT_KEYS
        text = json.dumps(exported, ensure_ascii=False)
        assert json.loads(text) == exported  # plain JSON: no tuples, no datetimes
        assert "SECRET-HASH" not in text and "TOKEN-HASH" not in text
        assert "password_hash" not in text and "token_hash" not in text

        profile = await storage.get_profile("alice")
        assert profile is not None and profile.usage_stats.messages_posted == 2
        assert exported["username"] == "Alice"
        assert exported["account"] == {"username": "Alice", "role": "user", "created_at": T0}
        assert exported["profile"] == self.as_json(profile)
        assert exported["sessions"] == [
            {"created_at": T0 + 1, "expires_at": T0 + 100, "guest": False},
            {"created_at": T0 + 2, "expires_at": T0 + 200, "guest": True},
        ]
        assert exported["sanctions"] == [
            {
                "kind": s.kind,
                "reason": s.reason,
                "by": s.by,
                "created_at": s.created_at,
                "expires_at": s.expires_at,
            }
            for s in stored["sanctions"]
        ]
        assert exported["chat_messages"] == [self.as_json(m) for m in stored["chat_messages"]]
        assert exported["conversations"] == [self.as_json(c) for c in stored["conversations"]]
        for collection, entries in stored["records"].items():
            assert exported[collection] == [self.as_json(e) for e in entries], collection
        assert exported["user_tags_made"] == [self.as_json(stored["tag_made"])]
        assert exported["reactions_given"] == [{"to_user": "Bob", "kind": "like"}]
        assert sorted(exported["reactions_received"], key=lambda r: r["from_user"]) == [
            {"from_user": "Bob", "kind": "love"},
            {"from_user": "Carol", "kind": "like"},
        ]
        assert "other's" not in text and "$argon2id$OTHER" not in text

        nobody = await storage.export_user("nobody")
        assert nobody["username"] == "nobody"
        assert nobody["account"] is None and nobody["profile"] is None
        assert all(nobody[key] == [] for key in EXPORT_KEYS[3:])

    @pytest_twisted.ensureDeferred
    async def test_delete_user_removes_personal_data(self, storage: Storage) -> None:
        await self.everything_of_other(storage, "Bob")
        stored = await self.everything_of(storage, "Alice", "Bob")
        await storage.ensure_profile("Carol", T0)
        await storage.save_conversation(guest := self.conversation("guest:Alice", T0 + 1))
        for giver, to_user, kind in (
            ("Alice", "Bob", "like"),
            ("alice", "bob", "love"),
            ("ALICE", "Carol", "like"),
            ("Bob", "Alice", "like"),
            ("Carol", "Alice", "love"),
            ("Dan", "Bob", "like"),
        ):
            await storage.set_reaction(giver, to_user, kind, True)
        bob_messages = await storage.chat_history("lobby", None, 100)

        counts = await storage.delete_user("ALICE", "deleted-user-3fa2")
        assert tuple(counts) == DELETED_KINDS
        assert counts == {
            "sessions": 2,
            "chat_messages": 2,
            "user_tags_made": 1,
            "profile": 1,
            "reactions_received": 2,
            "reactions_given": 3,
            "sanctions": 2,
            "conversations": 2,
            "ai_interactions": 1,
            "audio_interactions": 1,
            "user_interactions": 1,
            "clicked_urls": 1,
            "user_tag_interactions": 2,
            "account": 1,
        }
        assert await storage.get_account("alice") is None
        assert await storage.list_sessions("alice") == []
        for session in stored["sessions"]:
            assert await storage.get_session(session.token_hash) is None
        assert await storage.get_profile("alice") is None
        assert await storage.get_sanction("ban", "alice") is None
        assert await storage.get_sanction("mute", "alice") is None
        assert await storage.list_conversations("alice", 10) == []
        for log_kind in LOG_RECORD_TYPES:
            assert await storage.list_records(log_kind, "alice", 10) == []
        assert await storage.reactions_given("alice", "bob") == frozenset()
        assert await storage.reactions_given("bob", "alice") == frozenset()
        with pytest.raises(NotFoundError):
            await storage.set_reaction("Bob", "Alice", "like", True)
        # Other profiles' counts lost Alice's reactions, kept the rest.
        bob = await storage.get_profile("bob")
        carol = await storage.get_profile("carol")
        assert bob is not None and (bob.likes, bob.loves) == (1, 0)
        assert carol is not None and (carol.likes, carol.loves) == (0, 0)
        assert await storage.reactions_given("dan", "bob") == frozenset({"like"})
        # The messages stay where they were, under the replacement name.
        renamed = {
            m.message_id: attrs.evolve(m, username="deleted-user-3fa2")
            for m in stored["chat_messages"]
        }
        after = await storage.chat_history("lobby", None, 100)
        assert after == [renamed.get(m.message_id, m) for m in bob_messages]
        assert [m.seq for m in after] == [m.seq for m in bob_messages]
        second = await storage.get_chat_message(stored["chat_messages"][1].message_id)
        assert second is not None and second.mentions == (Mention("Bob", 4),)
        assert second.links == (LinkRef("https://example.com", True),) and not second.deleted
        # Bob's tag record now names the replacement as who mentioned him.
        bob_tags = await storage.list_records(UserTagInteraction, "bob", 10)
        assert attrs.evolve(stored["tag_made"], by="deleted-user-3fa2") in bob_tags
        # Bob's data and a guest's conversation of the same name are not Alice's.
        assert await storage.get_account("bob") is not None
        assert len(await storage.list_sessions("bob")) == 1
        assert await storage.get_sanction("mute", "bob") is not None
        assert len(await storage.list_conversations("bob", 10)) == 1
        assert await storage.list_conversations("guest:alice", 10) == [guest]
        assert len(await storage.list_records(AIInteraction, "bob", 10)) == 1
        # Nothing about her is left to export.
        exported = await storage.export_user("alice")
        assert exported["account"] is None and exported["profile"] is None
        assert all(exported[key] == [] for key in EXPORT_KEYS[3:])
        # Idempotent: the second time finds nothing.
        again = await storage.delete_user("alice", "deleted-user-77aa")
        assert again == dict.fromkeys(DELETED_KINDS, 0)
        assert await storage.chat_history("lobby", None, 100) == after
        # The name is free again.
        await storage.create_account(Account("alice", "h", "user", T0 + 50))

    @pytest_twisted.ensureDeferred
    async def test_delete_user_refuses_a_non_replacement(self, storage: Storage) -> None:
        await storage.create_account(Account("Alice", "h", "user", T0))
        await storage.append_chat_message(new_message("lobby", username="Alice"))
        for replacement in ("", "Alice", "ALICE"):
            with pytest.raises(ValueError):
                await storage.delete_user("alice", replacement)
        assert await storage.get_account("alice") is not None
        assert [m.username for m in await storage.chat_history("lobby", None, 5)] == ["Alice"]

    # -- chat -------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_sequence_numbers_per_room(self, storage: Storage) -> None:
        assert await storage.last_seq("lobby") == 0
        lobby = [await storage.append_chat_message(new_message("lobby")) for _ in range(3)]
        other = [await storage.append_chat_message(new_message("other")) for _ in range(2)]
        lobby.append(await storage.append_chat_message(new_message("lobby")))
        assert [m.seq for m in lobby] == [1, 2, 3, 4]
        assert [m.seq for m in other] == [1, 2]
        assert await storage.last_seq("lobby") == 4
        assert await storage.last_seq("other") == 2
        assert await storage.last_seq("empty") == 0
        ids = {m.message_id for m in lobby + other}
        assert len(ids) == 6 and all(isinstance(i, str) and i for i in ids)

    @pytest_twisted.ensureDeferred
    async def test_concurrent_appends_get_distinct_gap_free_numbers(self, storage: Storage) -> None:
        messages = await gather(
            [storage.append_chat_message(new_message("busy", f"m{i}")) for i in range(120)]
            + [storage.append_chat_message(new_message("quiet", f"q{i}")) for i in range(5)]
        )
        busy = [m for m in messages if m.room == "busy"]
        assert sorted(m.seq for m in busy) == list(range(1, 121))
        assert sorted(m.seq for m in messages if m.room == "quiet") == [1, 2, 3, 4, 5]
        assert len({m.message_id for m in messages}) == 125
        assert await storage.last_seq("busy") == 120
        history = await storage.chat_history("busy", None, 200)
        assert [m.seq for m in history] == list(range(1, 121))
        assert {m.text: m.seq for m in history} == {m.text: m.seq for m in busy}

    @pytest_twisted.ensureDeferred
    async def test_history_paging(self, storage: Storage) -> None:
        for i in range(1, 26):
            await storage.append_chat_message(new_message("lobby", f"message {i}"))
        await storage.append_chat_message(new_message("elsewhere"))

        async def seqs(before: int | None, limit: int) -> list[int]:
            return [m.seq for m in await storage.chat_history("lobby", before, limit)]

        assert await seqs(None, 10) == list(range(16, 26))
        assert await seqs(16, 10) == list(range(6, 16))
        assert await seqs(6, 10) == [1, 2, 3, 4, 5]
        assert await seqs(1, 10) == []
        assert await seqs(None, 100) == list(range(1, 26))
        assert await seqs(1000, 2) == [24, 25]
        assert await seqs(None, 0) == []
        assert await storage.chat_history("nowhere", None, 10) == []
        page = await storage.chat_history("lobby", 3, 5)
        assert [m.text for m in page] == ["message 1", "message 2"]

    @pytest_twisted.ensureDeferred
    async def test_chat_since(self, storage: Storage) -> None:
        for i in range(1, 11):
            await storage.append_chat_message(new_message("lobby", f"message {i}"))
        assert [m.seq for m in await storage.chat_since("lobby", 0, 3)] == [1, 2, 3]
        assert [m.seq for m in await storage.chat_since("lobby", 7, 10)] == [8, 9, 10]
        assert await storage.chat_since("lobby", 10, 10) == []
        assert await storage.chat_since("lobby", 0, 0) == []
        assert await storage.chat_since("nowhere", 0, 10) == []

    @pytest_twisted.ensureDeferred
    async def test_get_and_delete_chat_message(self, storage: Storage) -> None:
        first = await storage.append_chat_message(new_message("lobby", "first"))
        target = await storage.append_chat_message(
            new_message(
                "lobby",
                "hi @Bob https://example.com",
                guest=True,
                mentions=(Mention("Bob", 3),),
                links=(LinkRef("https://example.com", True),),
                reply_to=first.message_id,
            )
        )
        last = await storage.append_chat_message(new_message("lobby", "last"))
        elsewhere = await storage.append_chat_message(new_message("other", "x"))
        assert await storage.get_chat_message(target.message_id) == target
        assert await storage.get_chat_message(elsewhere.message_id) == elsewhere
        assert await storage.get_chat_message("no-such-id") is None
        assert await storage.delete_chat_message("no-such-id") is None
        assert target.deleted is False

        deleted = await storage.delete_chat_message(target.message_id)
        # Same place, author, time, type and reply; text, mentions and links gone.
        assert deleted == attrs.evolve(target, deleted=True, text="", mentions=(), links=())
        assert await storage.get_chat_message(target.message_id) == deleted
        assert await storage.delete_chat_message(target.message_id) == deleted  # twice
        assert await storage.chat_history("lobby", None, 10) == [first, deleted, last]
        assert await storage.chat_history("lobby", 3, 1) == [deleted]
        assert await storage.chat_since("lobby", 1, 10) == [deleted, last]
        assert await storage.last_seq("lobby") == 3
        assert (await storage.append_chat_message(new_message("lobby"))).seq == 4
        assert await storage.get_chat_message(first.message_id) == first
        assert await storage.get_chat_message(elsewhere.message_id) == elsewhere

        # A moderator's record of the deletion is an ordinary message.
        record = await storage.append_chat_message(
            new_message("lobby", "", message_type="deletion", reply_to=target.message_id)
        )
        assert await storage.get_chat_message(record.message_id) == record
        assert (record.message_type, record.reply_to, record.seq) == (
            "deletion",
            target.message_id,
            5,
        )

    @pytest_twisted.ensureDeferred
    async def test_message_fields_round_trip(self, storage: Storage) -> None:
        first = await storage.append_chat_message(new_message("lobby", "plain"))
        sent = await storage.append_chat_message(
            NewChatMessage(
                room="lobby",
                username="Guest-42",
                text="hi @Alice and @bob, see https://example.com/x?y=1",
                timestamp=T0 + 0.125,
                message_type="system",
                guest=True,
                mentions=(Mention("Alice", 3), Mention("bob", 13)),
                links=(LinkRef("https://example.com/x?y=1", True), LinkRef("http://bad", False)),
                reply_to=first.message_id,
            )
        )
        assert sent == ChatMessage(
            message_id=sent.message_id,
            room="lobby",
            seq=2,
            username="Guest-42",
            text="hi @Alice and @bob, see https://example.com/x?y=1",
            timestamp=T0 + 0.125,
            message_type="system",
            guest=True,
            mentions=(Mention("Alice", 3), Mention("bob", 13)),
            links=(LinkRef("https://example.com/x?y=1", True), LinkRef("http://bad", False)),
            reply_to=first.message_id,
        )
        assert await storage.chat_history("lobby", None, 10) == [first, sent]
        assert await storage.chat_since("lobby", 1, 10) == [sent]
        assert first.mentions == () and first.links == () and first.reply_to is None
        assert first.message_type == "user" and first.guest is False
        assert first.deleted is False and sent.deleted is False
        assert await storage.get_chat_message(sent.message_id) == sent

    @for_each_backend(
        room=texts,
        username=texts,
        text=texts,
        timestamp=times,
        mentions=st.lists(st.builds(Mention, texts, st.integers(0, 10_000)), max_size=3),
        links=st.lists(st.builds(LinkRef, texts, st.booleans()), max_size=3),
    )
    async def test_any_message_round_trips(
        self,
        storage: Storage,
        room: str,
        username: str,
        text: str,
        timestamp: float,
        mentions: list[Mention],
        links: list[LinkRef],
    ) -> None:
        room = unique(room)
        message = NewChatMessage(
            room, username, text, timestamp, mentions=tuple(mentions), links=tuple(links)
        )
        sent = await storage.append_chat_message(message)
        assert (sent.room, sent.seq, sent.username, sent.text) == (room, 1, username, text)
        assert (sent.timestamp, sent.mentions, sent.links) == (
            timestamp,
            tuple(mentions),
            tuple(links),
        )
        assert await storage.chat_history(room, None, 5) == [sent]

    # -- conversations ------------------------------------------------------------

    @staticmethod
    def conversation(owner: str, updated: float, title: str = "", **fields: Any) -> Conversation:
        return Conversation(owner, title, fields.pop("created_at", T0), updated, **fields)

    @pytest_twisted.ensureDeferred
    async def test_conversation_save_and_replace(self, storage: Storage) -> None:
        assert await storage.get_conversation("alice") is None
        assert await storage.list_conversations("alice", 10) == []
        first = Conversation(
            owner="Alice",
            title="First chat",
            created_at=T0,
            updated_at=T0 + 5,
            turns=(
                ConversationTurn("system", "You are kind.", T0),
                ConversationTurn("user", "Hello 👋", T0 + 1),
                ConversationTurn("assistant", "Hi!", T0 + 2.5),
            ),
            metadata={"model": "x", "tokens": [1, 2], "nested": {"ok": True}},
        )
        await storage.save_conversation(first)
        assert await storage.get_conversation("ALICE") == first
        assert await storage.get_conversation_by_id(first.conversation_id) == first
        # Saving the same id again replaces it, whatever changed.
        second = attrs.evolve(
            first,
            title="Renamed",
            updated_at=T0 + 9,
            turns=(ConversationTurn("user", "only this", T0 + 9),),
            metadata={},
        )
        await storage.save_conversation(second)
        assert await storage.get_conversation("alice") == second
        assert await storage.get_conversation_by_id(first.conversation_id) == second
        assert await storage.list_conversations("alice", 10) == [second]
        other = Conversation("Bob", "", T0, T0)
        await storage.save_conversation(other)
        assert await storage.get_conversation("bob") == other
        assert await storage.get_conversation("alice") == second
        assert await storage.get_conversation_by_id("no-such-id") is None

    @pytest_twisted.ensureDeferred
    async def test_many_conversations_per_owner(self, storage: Storage) -> None:
        conversations = [
            self.conversation("Alice", T0 + n, f"chat {n}") for n in (3.5, 1, 7.25, 2, 5)
        ]
        for conversation in conversations:
            await storage.save_conversation(conversation)
        newest_first = sorted(conversations, key=lambda c: c.updated_at, reverse=True)
        assert await storage.list_conversations("alice", 10) == newest_first
        assert await storage.list_conversations("ALICE", 5) == newest_first
        assert await storage.list_conversations("Alice", 2) == newest_first[:2]
        assert await storage.list_conversations("alice", 1) == newest_first[:1]
        assert await storage.list_conversations("alice", 0) == []
        assert await storage.list_conversations("alice", -1) == []
        assert await storage.get_conversation("alice") == newest_first[0]
        for conversation in conversations:
            assert await storage.get_conversation_by_id(conversation.conversation_id) == (
                conversation
            )

        # Updating an old conversation makes it current; the others stay.
        revived = attrs.evolve(
            newest_first[-1],
            updated_at=T0 + 8,
            turns=(ConversationTurn("user", "back again", T0 + 8),),
        )
        await storage.save_conversation(revived)
        assert await storage.get_conversation("alice") == revived
        assert await storage.list_conversations("alice", 10) == [revived, *newest_first[:-1]]

        # A new conversation (the one ai.reset starts) becomes current.
        fresh = self.conversation("alice", T0 + 9)
        await storage.save_conversation(fresh)
        assert fresh.conversation_id not in {c.conversation_id for c in conversations}
        assert await storage.get_conversation("Alice") == fresh
        assert len(await storage.list_conversations("alice", 100)) == 6

    @pytest_twisted.ensureDeferred
    async def test_current_conversation_ties_broken_by_id(self, storage: Storage) -> None:
        ids = ["5" * 32, "f" * 32, "0" * 32, "a" * 32]
        tied = [self.conversation("Alice", T0 + 2, conversation_id=i) for i in ids]
        older = self.conversation("Alice", T0 + 1, conversation_id="f" * 33)
        for conversation in (tied[0], older, *tied[1:]):
            await storage.save_conversation(conversation)
        # Updated last first; among equal times, the greatest id first.
        by_id = sorted(tied, key=lambda c: c.conversation_id, reverse=True)
        assert await storage.list_conversations("alice", 10) == [*by_id, older]
        assert await storage.get_conversation("alice") == by_id[0]
        assert by_id[0].conversation_id == "f" * 32
        assert await storage.list_conversations("alice", 2) == by_id[:2]

    @pytest_twisted.ensureDeferred
    async def test_save_replaces_by_id_not_by_owner(self, storage: Storage) -> None:
        one = self.conversation("Alice", T0 + 1, "one")
        two = self.conversation("Alice", T0 + 2, "two")
        await storage.save_conversation(one)
        await storage.save_conversation(two)
        # Same owner, same times, another id: a conversation of its own.
        twin = attrs.evolve(two, conversation_id=unique("twin-"))
        await storage.save_conversation(twin)
        assert len(await storage.list_conversations("alice", 10)) == 3
        # Replacing by id replaces everything, the owner included.
        moved = attrs.evolve(one, owner="Bob", title="moved", updated_at=T0 + 3)
        await storage.save_conversation(moved)
        assert await storage.get_conversation_by_id(one.conversation_id) == moved
        assert await storage.list_conversations("bob", 10) == [moved]
        listed = await storage.list_conversations("alice", 10)
        assert sorted(listed, key=lambda c: c.conversation_id) == sorted(
            [two, twin], key=lambda c: c.conversation_id
        )

    @pytest_twisted.ensureDeferred
    async def test_concurrent_saves_of_one_conversation(self, storage: Storage) -> None:
        base = self.conversation("Alice", T0)
        versions = [attrs.evolve(base, title=f"v{n}", updated_at=T0 + n) for n in range(6)]
        await gather([storage.save_conversation(v) for v in versions])
        stored = await storage.list_conversations("alice", 10)
        assert len(stored) == 1 and stored[0] in versions
        assert await storage.get_conversation_by_id(base.conversation_id) == stored[0]

    @pytest_twisted.ensureDeferred
    async def test_conversation_owners_independent_and_case_insensitive(
        self, storage: Storage
    ) -> None:
        street = self.conversation("Straße", T0 + 1)
        shouting = self.conversation("STRASSE", T0 + 2)
        guest = self.conversation("guest:Straße", T0 + 3)
        guest_too = self.conversation("GUEST:strasse", T0 + 4)
        bob = self.conversation("Bob", T0 + 5)
        for conversation in (street, shouting, guest, guest_too, bob):
            await storage.save_conversation(conversation)
        # Owners are matched by casefold and returned as each was written.
        assert await storage.list_conversations("strasse", 10) == [shouting, street]
        assert await storage.list_conversations("straße", 10) == [shouting, street]
        assert await storage.get_conversation("Strasse") == shouting
        # A guest's conversations are not the account's of the same name.
        assert await storage.list_conversations("guest:STRASSE", 10) == [guest_too, guest]
        assert await storage.get_conversation("Guest:Straße") == guest_too
        assert await storage.list_conversations("bob", 10) == [bob]
        assert await storage.list_conversations("carol", 10) == []
        assert await storage.get_conversation("carol") is None
        assert await storage.get_conversation("guest:bob") is None

    @pytest_twisted.ensureDeferred
    async def test_delete_conversations(self, storage: Storage) -> None:
        assert await storage.delete_conversations("alice") == 0
        alice = [
            self.conversation(name, T0 + n) for n, name in enumerate(["Alice", "ALICE", "alice"])
        ]
        guest = self.conversation("guest:Alice", T0 + 5)
        bob = self.conversation("Bob", T0 + 6)
        for conversation in (*alice, guest, bob):
            await storage.save_conversation(conversation)
        assert await storage.delete_conversations("aLiCe") == 3
        assert await storage.get_conversation("alice") is None
        assert await storage.list_conversations("alice", 10) == []
        for conversation in alice:
            assert await storage.get_conversation_by_id(conversation.conversation_id) is None
        assert await storage.delete_conversations("alice") == 0
        assert await storage.get_conversation("guest:alice") == guest
        assert await storage.get_conversation_by_id(bob.conversation_id) == bob
        # The owner can start again.
        again = self.conversation("Alice", T0 + 7)
        await storage.save_conversation(again)
        assert await storage.list_conversations("alice", 10) == [again]

    @pytest_twisted.ensureDeferred
    async def test_delete_one_conversation(self, storage: Storage) -> None:
        assert await storage.delete_conversation("no-such-id") is False
        older = self.conversation("Alice", T0 + 1, "older")
        current = self.conversation("alice", T0 + 2, "current")
        bob = self.conversation("Bob", T0 + 3, "bob's")
        for conversation in (older, current, bob):
            await storage.save_conversation(conversation)
        # Deleting the current one makes the next most recent current.
        assert await storage.delete_conversation(current.conversation_id) is True
        assert await storage.get_conversation_by_id(current.conversation_id) is None
        assert await storage.get_conversation("ALICE") == older
        assert await storage.list_conversations("alice", 10) == [older]
        assert await storage.delete_conversation(current.conversation_id) is False
        # Other owners' conversations are untouched; the last one can go too.
        assert await storage.list_conversations("bob", 10) == [bob]
        assert await storage.delete_conversation(older.conversation_id) is True
        assert await storage.get_conversation("alice") is None
        assert await storage.list_conversations("alice", 10) == []
        # Saving a deleted conversation again stores it anew.
        await storage.save_conversation(current)
        assert await storage.list_conversations("alice", 10) == [current]

    @for_each_backend(
        title=texts,
        turns=st.lists(
            st.builds(
                ConversationTurn, st.sampled_from(["system", "user", "assistant"]), texts, times
            ),
            max_size=5,
        ).map(tuple),
        metadata=plain_dicts,
        created=times,
        updated=times,
        conversation_id=texts,
    )
    async def test_any_conversation_round_trips(
        self,
        storage: Storage,
        title: str,
        turns: tuple[ConversationTurn, ...],
        metadata: dict[str, Any],
        created: float,
        updated: float,
        conversation_id: str,
    ) -> None:
        conversation = Conversation(
            unique("Owner"), title, created, updated, turns, metadata, unique(conversation_id)
        )
        await storage.save_conversation(conversation)
        assert await storage.get_conversation(conversation.owner) == conversation
        assert await storage.get_conversation_by_id(conversation.conversation_id) == conversation
        assert await storage.list_conversations(conversation.owner, 3) == [conversation]
        replaced = attrs.evolve(conversation, turns=turns[::-1], metadata={"m": metadata})
        await storage.save_conversation(replaced)
        assert await storage.list_conversations(conversation.owner.upper(), 3) == [replaced]

    # -- analytics ----------------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_count_active_profiles(self, storage: Storage) -> None:
        for name, joined in (("Ann", T0), ("Bob", T0 + 10), ("Cy", T0 + 20.5)):
            await storage.ensure_profile(name, joined)
        await storage.bump_usage("ann", T0 + 30, sessions=1)
        assert await storage.count_active_profiles(T0 - 1) == 3
        assert await storage.count_active_profiles(T0 + 10) == 3  # inclusive
        assert await storage.count_active_profiles(T0 + 10.001) == 2
        assert await storage.count_active_profiles(T0 + 30) == 1
        assert await storage.count_active_profiles(T0 + 30.001) == 0

    @pytest_twisted.ensureDeferred
    async def test_tally_counts_a_time_range_by_value(self, storage: Storage) -> None:
        until = T0 + 100
        entries: list[LogRecord] = [
            UserInteraction("Ann", "login", T0),
            UserInteraction("bob", "login", T0 + 1),
            UserInteraction("Cy", "register", T0 + 2),
            UserInteraction("Ann", "profile.view", T0 + 3),
            UserInteraction("Ann", "login", until),  # the end is excluded
            UserInteraction("Ann", "login", T0 - 0.001),
            AudioInteraction("Ann", "trigger", "relax", T0),
            AudioInteraction("Ann", "trigger", "focus", T0 + 1),
            AudioInteraction("guest:Bo", "trigger", "relax", T0 + 2),
            AudioInteraction("Bob", "tts", "af_sky", T0 + 3, {"error": None}),
            AudioInteraction("Bob", "trigger", "breathe", until + 1),
        ]
        for kind, n in (("chat", 1), ("chat", 2), ("greeting", 3)):
            entries.append(AIInteraction("Ann", kind, "q", "a", 1.0, T0 + n, "c", None))
        for entry in entries:
            await storage.record(entry)

        actions = await storage.tally("user_actions", T0, until, 10)
        assert actions == [("login", 2), ("profile.view", 1), ("register", 1)]
        assert await storage.tally("user_actions", T0, until, 2) == actions[:2]
        assert await storage.tally("user_actions", T0, until, 0) == []
        assert await storage.tally("audio_kinds", T0, until, 10) == [("trigger", 3), ("tts", 1)]
        fired = await storage.tally("triggers_fired", T0, until, 10)
        assert fired == [("relax", 2), ("focus", 1)]
        kinds = await storage.tally("companion_kinds", T0, until, 10)
        assert kinds == [("chat", 2), ("greeting", 1)]
        assert await storage.tally("user_actions", until + 5, until + 10, 10) == []

    @pytest_twisted.ensureDeferred
    async def test_count_per_day(self, storage: Storage) -> None:
        day = 86400.0
        for offset, message_type in (
            (0.0, "user"),
            (day - 0.001, "user"),
            (1.0, "notice"),  # not a person's message
            (day, "user"),
            (2 * day + 5, "user"),
            (3 * day, "user"),  # after the last day
            (-0.001, "user"),  # before the first
        ):
            await storage.append_chat_message(
                NewChatMessage("lobby", "Ann", "hi", T0 + offset, message_type=message_type)
            )
        deleted = await storage.append_chat_message(
            NewChatMessage(room="lobby", username="Bob", text="oops", timestamp=T0 + 2)
        )
        await storage.delete_chat_message(deleted.message_id)
        assert await storage.count_per_day("chat_messages", T0, 3) == [(3, 0), (1, 0), (1, 0)]
        assert await storage.count_per_day("chat_messages", T0 + day, 1) == [(1, 0)]

        for offset, error in ((0.0, None), (1.0, "timeout"), (day + 1, "boom"), (2 * day, None)):
            reply = AIInteraction("Ann", "chat", "q", "a", 1.0, T0 + offset, "c", error)
            await storage.record(reply)
        replies = await storage.count_per_day("companion_replies", T0, 3)
        assert replies == [(2, 1), (1, 1), (1, 0)]

        await storage.record(AudioInteraction("Ann", "tts", "v", T0, {"error": None}))
        await storage.record(AudioInteraction("Ann", "tts", "v", T0 + 1, {"error": "failed"}))
        await storage.record(AudioInteraction("Ann", "tts", "v", T0 + 2, {"chars": 3}))
        await storage.record(AudioInteraction("Ann", "trigger", "relax", T0 + 3))
        assert await storage.count_per_day("speech", T0, 2) == [(3, 1), (0, 0)]

    @pytest_twisted.ensureDeferred
    async def test_stopped_replies_and_cancelled_speech_are_not_failures(
        self, storage: Storage
    ) -> None:
        """What bambid.ai.companion and bambid.voice.speech store when someone
        presses stop: counted, but not as failed."""
        for offset, error in (
            (0.0, "stopped: stop"),
            (1.0, "stopped: shutdown"),
            (2.0, "timeout: the LLM did not answer"),
            (3.0, None),
            (4.0, "unavailable: stopped: no backend"),  # a failure that mentions it
        ):
            reply = AIInteraction("Ann", "chat", "q", "a", 1.0, T0 + offset, "c", error)
            await storage.record(reply)
        assert await storage.count_per_day("companion_replies", T0, 1) == [(5, 2)]

        for offset, error in (
            (0.0, "cancelled"),
            (1.0, "cancelled: the reply was stopped"),
            (2.0, "unavailable: Kokoro did not answer"),
            (3.0, None),
            (4.0, "cancelledish"),
        ):
            details = {"error": error, "chars": 12}
            await storage.record(AudioInteraction("Ann", "tts", "v", T0 + offset, details))
        assert await storage.count_per_day("speech", T0, 1) == [(5, 2)]

    @pytest_twisted.ensureDeferred
    async def test_profile_histograms(self, storage: Storage) -> None:
        for name, xp in (("Ann", 0), ("Bob", 999), ("Cy", 1000), ("Dee", 2500), ("Eve", 40000)):
            await storage.ensure_profile(name, T0)
            await storage.add_xp(name, xp)
        assert await storage.profile_histogram("xp", [0, 1000, 2500]) == [2, 1, 2]
        assert await storage.profile_histogram("xp", [1000, 2500]) == [1, 2]

        await storage.bump_usage("Ann", T0, sessions=2, seconds=100)  # 50 s each
        await storage.bump_usage("Bob", T0, sessions=1, seconds=600)
        await storage.bump_usage("Cy", T0, sessions=4)  # 0 s each
        await storage.bump_usage("Eve", T0, sessions=2, seconds=119)  # 59.5 s each
        # Dee has no session: not measured.
        histogram = await storage.profile_histogram("seconds_per_session", [0, 60, 300])
        assert histogram == [3, 0, 1]
        assert await storage.profile_histogram("seconds_per_session", [60]) == [1]

    @pytest_twisted.ensureDeferred
    async def test_analytics_refusals(self, storage: Storage) -> None:
        for call in (
            lambda: storage.tally("likes", T0, T0 + 1, 10),
            lambda: storage.tally("user_actions", float("nan"), T0, 10),
            lambda: storage.count_per_day("logins", T0, 3),
            lambda: storage.count_per_day("speech", T0, 0),
            lambda: storage.count_per_day("speech", T0, 367),
            lambda: storage.count_per_day("speech", float("inf"), 3),
            lambda: storage.profile_histogram("likes", [0]),
            lambda: storage.profile_histogram("xp", []),
            lambda: storage.profile_histogram("xp", [0, 10, 10]),
            lambda: storage.profile_histogram("xp", [0, float("inf")]),
        ):
            with pytest.raises(ValueError):
                await call()

    # -- interaction logs -----------------------------------------------------------

    @staticmethod
    def log_entry(kind: type[LogRecord], username: str, timestamp: float, n: int) -> LogRecord:
        if kind is AIInteraction:
            return AIInteraction(
                username=username,
                interaction_type="chat",
                input_data=f"question {n}",
                output_data=f"answer {n}",
                duration=0.25 * n,
                timestamp=timestamp,
                connection_id=f"conn-{n}",
                error=None if n % 2 else f"error {n}",
                model=f"model-{n}",
                backend=f"http://backend-{n}.example/v1",
                prompt_tokens=10 * n,
                completion_tokens=n,
            )
        if kind is AudioInteraction:
            return AudioInteraction(username, "trigger", f"sound {n}", timestamp, {"n": n})
        if kind is UserInteraction:
            return UserInteraction(username, f"action {n}", timestamp, {"path": ["a", n]})
        if kind is ClickedUrl:
            return ClickedUrl(
                username, f"https://example.com/{n}", timestamp, f"m{n}" if n % 2 else None
            )
        if kind is UserTagInteraction:
            return UserTagInteraction(username, f"by{n}", "lobby", f"message-{n}", timestamp)
        raise AssertionError(kind)

    @pytest.mark.parametrize(
        "kind",
        [AIInteraction, AudioInteraction, UserInteraction, ClickedUrl, UserTagInteraction],
    )
    @pytest_twisted.ensureDeferred
    async def test_records_newest_first(self, storage: Storage, kind: type[LogRecord]) -> None:
        entries = [self.log_entry(kind, "Alice", T0 + n, n) for n in (2, 1, 4, 3)]
        for entry in entries:
            await storage.record(entry)
        await storage.record(self.log_entry(kind, "Bob", T0 + 10, 10))

        by_time = sorted(entries, key=lambda e: e.timestamp, reverse=True)
        assert await storage.list_records(kind, "alice", 10) == by_time
        assert await storage.list_records(kind, "ALICE", 2) == by_time[:2]
        assert await storage.list_records(kind, "Alice", 0) == []
        assert await storage.list_records(kind, "bob", 10) == [
            self.log_entry(kind, "Bob", T0 + 10, 10)
        ]
        assert await storage.list_records(kind, "carol", 10) == []
        for other in (AIInteraction, AudioInteraction, UserInteraction, ClickedUrl):
            if other is not kind:
                assert await storage.list_records(other, "alice", 10) == []

    @pytest_twisted.ensureDeferred
    async def test_records_at_the_same_time_newest_written_first(self, storage: Storage) -> None:
        for n in range(5):
            await storage.record(UserInteraction("Alice", f"action {n}", T0))
        listed = await storage.list_records(UserInteraction, "alice", 3)
        assert [e.action for e in listed] == ["action 4", "action 3", "action 2"]

    @for_each_backend(
        input_data=texts,
        output_data=texts,
        details=plain_dicts,
        timestamp=times,
        duration=st.floats(0, 1e6),
    )
    async def test_any_record_round_trips(
        self,
        storage: Storage,
        input_data: str,
        output_data: str,
        details: dict[str, Any],
        timestamp: float,
        duration: float,
    ) -> None:
        user = unique("Logger")
        ai = AIInteraction(user, "chat", input_data, output_data, duration, timestamp, "c", None)
        audio = AudioInteraction(user, "tts", output_data, timestamp, details)
        await storage.record(ai)
        await storage.record(audio)
        assert await storage.list_records(AIInteraction, user, 5) == [ai]
        assert await storage.list_records(AudioInteraction, user, 5) == [audio]

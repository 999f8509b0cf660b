"""Profiles as people see and change them: viewing, editing, likes and loves,
the community list and the leaderboard. No HTTP and no WebSocket here: the
routes (``bambid.web.profile_routes``) and the watchers
(``bambid.profiles.watchers``) are thin adapters over ``ProfileService``.

Rules (docs/profiles.md is the long form; docs/api.md the contract):

- A person exists when they have an account or a profile row. An account
  without a row yet is shown with the defaults (joined = the account's
  creation) and nothing is written until they are edited or reacted to.
- ``public`` profiles are seen by everybody, signed in or not; a ``private``
  one only by its owner and admins. Anyone else gets ``{name, visibility}``;
  likes and loves, the WebSocket watch and the community list treat a private
  profile they may not see as unknown, so its existence is not revealed
  beyond the name the person already typed.
- Only the owner (an account, never a guest) and admins edit a profile. Every
  field of an edit is checked before anything is stored: one bad field and
  nothing changes (not even the profile row of an account that had none).
  Edits of one profile run one at a time (a ``DeferredLock`` per username
  key), so two partial edits, e.g. of two social links, both stay.
  ``social_links`` is partial: only the platforms sent change.
- A like and a love are given once per person per profile, never to oneself,
  never by guests; giving twice or taking back what was not given changes
  nothing. When counts change, ``reaction_listeners`` are told (the watchers
  fan the new counts out).
- ``profile.view``, ``profile.edit`` and ``profile.react`` are analytics
  records (``InteractionRecorder``): stored only for people who consented.

Errors are ``ProfileError`` with a code (``bad_request``, ``unauthenticated``,
``forbidden``, ``not_found``, ``invalid``) and, for input, the ``field``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
from markupsafe import Markup
from twisted.internet.defer import DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from bambid.auth.accounts import USERNAME_PATTERN
from bambid.chat.links import LinkChecker
from bambid.chat.text import remove_control_characters
from bambid.config import ProfilesConfig
from bambid.identity import Identity
from bambid.models import REACTION_KINDS, Profile, username_key
from bambid.profiles.bio import BioRenderer, normalise_bio, validate_bio
from bambid.profiles.interactions import InteractionRecorder
from bambid.profiles.social import SOCIAL_FIELDS, validate_social_links
from bambid.profiles.styles import style_for, validate_style
from bambid.profiles.xp import XpTable
from bambid.storage import Storage
from bambid.storage.interface import NotFoundError, StorageError

#: The analytics actions recorded here.
VIEW_ACTION = "profile.view"
EDIT_ACTION = "profile.edit"
REACT_ACTION = "profile.react"

DISPLAY_NAME_MAX = 40
VISIBILITIES = ("public", "private")
#: What ``PATCH /api/profiles/<name>`` may change, in the order problems are reported.
EDITABLE = ("display_name", "bio", "social_links", "profile_style", "visibility")
#: Community search text is cut to this many characters.
QUERY_MAX = 32
#: Community sorts as the API names them -> ``Storage.list_profiles`` sorts.
COMMUNITY_SORTS = {
    "xp": "xp",
    "level": "xp",
    "likes": "likes",
    "loves": "loves",
    "joined": "joined",
    "name": "name",
}
DEFAULT_SORT = "xp"


class ProfileError(Exception):
    """A refused request: ``code`` (see the module doc), a message for
    people, and the input ``field`` it is about (None when none)."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@attrs.frozen
class Problem:
    """What is wrong with one field of an edit: ``bad_request`` (unknown
    field, wrong JSON type) or ``invalid`` (a value breaking a rule)."""

    field: str
    code: str
    message: str


class EditRefused(ProfileError):
    """An edit with bad fields; nothing was stored. ``problems`` lists every
    bad field; ``code``/``field``/``message`` are the first one's, a
    ``bad_request`` one preferred over an ``invalid`` one."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        first = sorted(problems, key=lambda p: p.code != "bad_request")[0]
        super().__init__(first.code, f"{first.field}: {first.message}", first.field)
        self.problems = tuple(problems)

    def by_field(self) -> dict[str, str]:
        """Each bad field's message (the first one for a field)."""
        found: dict[str, str] = {}
        for problem in self.problems:
            found.setdefault(problem.field, problem.message)
        return found


@attrs.frozen
class ReactionCounts:
    """A profile's counts after a change, for the watchers. ``private``: only
    the owner (``owner_key``) and admins may be told."""

    name: str
    likes: int
    loves: int
    private: bool
    owner_key: str

    def may_see(self, viewer: Identity | None) -> bool:
        return not self.private or (
            viewer is not None and (viewer.key == self.owner_key or viewer.is_admin)
        )


ReactionListener = Callable[[ReactionCounts], object]


def may_view(viewer: Identity | None, profile: Profile) -> bool:
    """Whether ``viewer`` sees all of ``profile``."""
    if profile.visibility != "private":
        return True
    return viewer is not None and (
        viewer.is_admin or (not viewer.guest and viewer.key == username_key(profile.username))
    )


def may_edit(viewer: Identity | None, name: str) -> bool:
    """Whether ``viewer`` may edit the profile called ``name``."""
    if viewer is None or viewer.guest:
        return False
    return viewer.is_admin or viewer.key == username_key(name)


class ProfileService:
    """See the module doc. ``bios`` renders bios; ``links`` checks custom
    social links (the chat's ``LinkChecker``, with its denylist)."""

    _log = Logger()

    def __init__(
        self,
        storage: Storage,
        clock: IReactorTime,
        table: XpTable,
        config: ProfilesConfig,
        recorder: InteractionRecorder,
        bios: BioRenderer,
        links: LinkChecker,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.table = table
        self.config = config
        self.recorder = recorder
        self.bios = bios
        self.links = links
        #: Called with the new counts whenever a like or love changed them.
        self.reaction_listeners: list[ReactionListener] = []
        #: One lock per profile being edited (by username key), dropped when idle.
        self._edit_locks: dict[str, DeferredLock] = {}

    # -- finding ----------------------------------------------------------------------

    async def find(self, name: str) -> Profile | None:
        """The profile called ``name`` (any case); for an account without a
        profile row, the defaults, not stored. None when nobody has it."""
        if not USERNAME_PATTERN.fullmatch(name):
            return None
        profile = await self.storage.get_profile(name)
        if profile is not None:
            return profile
        account = await self.storage.get_account(name)
        if account is None:
            return None
        return Profile(account.username, account.created_at, account.created_at)

    async def _stored(self, name: str) -> Profile | None:
        """Like ``find``, but a missing row of an existing account is created
        (joined = the account's creation), for a write to follow."""
        profile = await self.find(name)
        if profile is None or await self.storage.get_profile(profile.username) is not None:
            return profile
        return await self.storage.ensure_profile(profile.username, profile.created_at)

    async def _visible(self, viewer: Identity | None, name: str) -> Profile:
        profile = await self.find(name)
        if profile is None or not may_view(viewer, profile):
            raise ProfileError("not_found", f"there is no profile called {name[:32]!r}")
        return profile

    # -- viewing ----------------------------------------------------------------------

    async def view(self, viewer: Identity | None, name: str) -> dict[str, Any]:
        """The profile as ``viewer`` may see it (docs/api.md), or
        ``ProfileError("not_found")``. A private profile seen by someone else
        is ``{"name", "visibility": "private"}``."""
        profile = await self.find(name)
        if profile is None:
            raise ProfileError("not_found", f"there is no profile called {name[:32]!r}")
        if not may_view(viewer, profile):
            return {"name": profile.username, "visibility": "private"}
        return await self.describe(viewer, profile)

    async def describe(self, viewer: Identity | None, profile: Profile) -> dict[str, Any]:
        """The full JSON of ``profile`` for ``viewer`` (who may see it)."""
        given: frozenset[str] = frozenset()
        if viewer is not None and not viewer.guest and viewer.key != username_key(profile.username):
            given = await self.storage.reactions_given(viewer.name, profile.username)
        progress = self.table.progress(profile.xp)
        links = profile.social_links
        stats = profile.usage_stats
        return {
            "name": profile.username,
            "display_name": profile.display_name,
            "bio": profile.bio,
            "bio_html": self.render_bio(profile.bio),
            "social_links": {field: getattr(links, field) for field in SOCIAL_FIELDS},
            "profile_style": style_for(profile.profile_style).name,
            "visibility": profile.visibility,
            "level": progress.level,
            "xp": profile.xp,
            "next_level_xp": progress.next,
            "likes": profile.likes,
            "loves": profile.loves,
            "stats": {
                "sessions": stats.sessions_count,
                "time_spent_seconds": round(stats.total_time_spent),
                "triggers_activated": stats.triggers_activated,
                "messages_posted": stats.messages_posted,
                "companion_replies": stats.companion_replies,
            },
            "joined": profile.created_at,
            "last_active": profile.last_active,
            "you": {
                "liked": "like" in given,
                "loved": "love" in given,
                "can_edit": may_edit(viewer, profile.username),
            },
        }

    def render_bio(self, bio: str) -> Markup:
        return self.bios.render(bio)

    def level_start(self, level: int) -> int:
        """The XP at which ``level`` starts (0 for level 0)."""
        return self.table.levels[level - 1] if level > 0 else 0

    async def record_view(self, viewer: Identity | None, name: str) -> None:
        """Record that ``viewer`` looked at ``name``'s profile (if they consented)."""
        await self._record(viewer, VIEW_ACTION, {"profile": name})

    # -- editing ----------------------------------------------------------------------

    def check_changes(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
        """``(changes, problems)`` for an edit ``body``: each valid field in
        its stored form (``social_links``: the cleaned platforms sent), and
        what is wrong with the others."""
        changes: dict[str, Any] = {}
        problems: list[Problem] = []
        for field in body:
            if field not in EDITABLE:
                known = ", ".join(EDITABLE)
                problems.append(
                    Problem(str(field)[:40], "bad_request", f"unknown field; known: {known}")
                )
        for field in EDITABLE:
            if field in body:
                checked = _CHECKS[field](self, body[field])
                if isinstance(checked, _Bad):
                    problems.extend(checked.problems)
                else:
                    changes[field] = checked
        return changes, problems

    def _display_name(self, value: Any) -> Any:
        if not isinstance(value, str):
            return _Bad.one("display_name", "bad_request", "must be a string")
        name = value.strip()
        if len(name) > DISPLAY_NAME_MAX:
            return _Bad.one(
                "display_name",
                "invalid",
                f"must be at most {DISPLAY_NAME_MAX} characters, got {len(name)}",
            )
        if "\n" in name or "\t" in name or remove_control_characters(name) != name:
            return _Bad.one(
                "display_name",
                "invalid",
                "must not contain line breaks, tabs, control or text-direction characters",
            )
        return name

    def _bio(self, value: Any) -> Any:
        if not isinstance(value, str):
            return _Bad.one("bio", "bad_request", "must be a string")
        bio = normalise_bio(value)
        problem = validate_bio(bio)
        return bio if problem is None else _Bad.one("bio", "invalid", problem)

    def _social_links(self, value: Any) -> Any:
        if not isinstance(value, dict):
            return _Bad.one(
                "social_links", "bad_request", "must be an object of platform to link or name"
            )
        cleaned, problems = validate_social_links(value, links=self.links)
        if not problems:
            return cleaned
        bad = []
        for platform, message in problems.items():
            raw = value.get(platform)
            wrong_type = platform not in SOCIAL_FIELDS or not (raw is None or isinstance(raw, str))
            code = "bad_request" if wrong_type else "invalid"
            bad.append(Problem(f"social_links.{platform[:40]}", code, message))
        return _Bad(tuple(bad))

    def _style(self, value: Any) -> Any:
        if not isinstance(value, str):
            return _Bad.one("profile_style", "bad_request", "must be a string")
        problem = validate_style(value)
        return value if problem is None else _Bad.one("profile_style", "invalid", problem)

    def _visibility(self, value: Any) -> Any:
        if not isinstance(value, str):
            return _Bad.one("visibility", "bad_request", "must be a string")
        if value not in VISIBILITIES:
            return _Bad.one("visibility", "invalid", "must be public or private")
        return value

    async def edit(
        self, actor: Identity | None, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Apply the edit ``body`` (see ``check_changes``) to ``name``'s
        profile as ``actor``; the new profile JSON. ``ProfileError``:
        ``unauthenticated``, ``forbidden`` (a guest, someone else),
        ``not_found``, or ``EditRefused`` (nothing stored)."""
        if actor is None:
            raise ProfileError("unauthenticated", "sign in to edit your profile")
        if not may_edit(actor, name):
            if actor.guest:
                raise ProfileError("forbidden", "guests have no profile: sign up to have one")
            raise ProfileError("forbidden", "you can only edit your own profile")
        changes, problems = self.check_changes(body)
        found = await self.find(name)
        if found is None:
            raise ProfileError("not_found", f"there is no profile called {name[:32]!r}")
        if problems:
            raise EditRefused(problems)
        if not changes:
            return await self.describe(actor, found)
        key = username_key(found.username)
        lock = self._edit_locks.setdefault(key, DeferredLock())
        try:
            async with lock:
                # Read, merge and write under the lock: two edits of the same
                # profile (e.g. of two social links) never undo each other.
                profile = await self._stored(found.username)
                if profile is None:
                    raise ProfileError("not_found", "that profile was just deleted")
                fields = dict(changes)
                if "social_links" in fields:
                    fields["social_links"] = attrs.evolve(
                        profile.social_links, **fields["social_links"]
                    )
                try:
                    profile = await self.storage.update_profile(profile.username, fields)
                except NotFoundError:
                    raise ProfileError("not_found", "that profile was just deleted") from None
        finally:
            if not lock.locked and not lock.waiting:
                self._edit_locks.pop(key, None)
        await self._record(
            actor, EDIT_ACTION, {"profile": profile.username, "fields": sorted(fields)}
        )
        return await self.describe(actor, profile)

    # -- likes and loves ------------------------------------------------------------------

    async def react(self, actor: Identity | None, name: str, kind: str, on: bool) -> dict[str, Any]:
        """Give (``on``) or take back ``actor``'s ``kind`` (like, love) on
        ``name``'s profile; ``{liked, loved, likes, loves}`` afterwards.
        ``ProfileError``: ``unauthenticated``, ``forbidden`` (guests),
        ``bad_request`` (oneself), ``not_found`` (unknown, or private and not
        visible to ``actor``)."""
        if kind not in REACTION_KINDS:
            raise ProfileError("not_found", f"unknown reaction {kind[:16]!r}")
        if actor is None:
            raise ProfileError("unauthenticated", "sign in to like or love profiles")
        if actor.guest:
            raise ProfileError("forbidden", "sign up to like or love profiles")
        if actor.key == username_key(name):
            raise ProfileError("bad_request", "you cannot like or love your own profile")
        await self._visible(actor, name)
        profile = await self._stored(name)
        if profile is None:
            raise ProfileError("not_found", f"there is no profile called {name[:32]!r}")
        try:
            changed, likes, loves = await self.storage.set_reaction(
                actor.name, profile.username, kind, on
            )
        except NotFoundError:
            raise ProfileError("not_found", "that profile was just deleted") from None
        given = await self.storage.reactions_given(actor.name, profile.username)
        if changed:
            self._tell(
                ReactionCounts(
                    profile.username,
                    likes,
                    loves,
                    profile.visibility == "private",
                    username_key(profile.username),
                )
            )
            await self._record(
                actor, REACT_ACTION, {"profile": profile.username, "kind": kind, "on": on}
            )
        return {"liked": "like" in given, "loved": "love" in given, "likes": likes, "loves": loves}

    async def recount(self, names: Iterable[str]) -> None:
        """Tell ``reaction_listeners`` the current counts of each profile
        named (after the counts changed elsewhere, e.g. an account deletion
        took the person's likes back). Unknown names are skipped."""
        for name in dict.fromkeys(username_key(n) for n in names):
            profile = await self.storage.get_profile(name)
            if profile is not None:
                self._tell(
                    ReactionCounts(
                        profile.username,
                        profile.likes,
                        profile.loves,
                        profile.visibility == "private",
                        username_key(profile.username),
                    )
                )

    def _tell(self, counts: ReactionCounts) -> None:
        for listener in self.reaction_listeners:
            try:
                listener(counts)
            except Exception:
                self._log.failure("reaction listener failed")

    async def counts_for(self, viewer: Identity | None, name: str) -> ReactionCounts:
        """The likes and loves of ``name``'s profile for a watcher;
        ``ProfileError("not_found")`` when unknown or not visible."""
        profile = await self._visible(viewer, name)
        return ReactionCounts(
            profile.username,
            profile.likes,
            profile.loves,
            profile.visibility == "private",
            username_key(profile.username),
        )

    # -- the community --------------------------------------------------------------------

    def community_request(
        self, sort: str | None, query: str | None, page: str | int | None
    ) -> tuple[str, str, int]:
        """``(sort, query, page)`` from a request's values (None: the
        default); ``ProfileError("bad_request", field=...)`` for a sort not in
        ``COMMUNITY_SORTS`` or a page that is not a whole number >= 1. The
        query is trimmed and cut to ``QUERY_MAX`` characters."""
        sort = DEFAULT_SORT if sort is None or sort == "" else sort
        if sort not in COMMUNITY_SORTS:
            raise ProfileError(
                "bad_request", f"must be one of {', '.join(COMMUNITY_SORTS)}", field="sort"
            )
        number = 1
        if isinstance(page, int) and not isinstance(page, bool):
            number = page
        elif isinstance(page, str) and page != "":
            if not page.isascii() or not page.isdigit() or len(page) > 9:
                raise ProfileError("bad_request", "must be a whole number from 1", field="page")
            number = int(page)
        elif page is not None and page != "":
            raise ProfileError("bad_request", "must be a whole number from 1", field="page")
        if number < 1:
            raise ProfileError("bad_request", "must be a whole number from 1", field="page")
        return sort, (query or "").strip()[:QUERY_MAX], number

    async def community(self, sort: str, query: str, page: int) -> dict[str, Any]:
        """One page of public profiles (arguments from ``community_request``):
        ``{profiles, page, pages, total, sort, q}``. A page past the last is
        empty."""
        size = self.config.page_size
        total = await self.storage.count_profiles(query=query)
        pages = max(1, -(-total // size))
        found = await self.storage.list_profiles(
            offset=(page - 1) * size, limit=size, sort=COMMUNITY_SORTS[sort], query=query
        )
        return {
            "profiles": [self.summary(p) for p in found],
            "page": page,
            "pages": pages,
            "total": total,
            "sort": sort,
            "q": query,
        }

    async def leaderboard(self) -> dict[str, Any]:
        """``{leaders}``: the ``leaderboard_size`` public profiles with the most XP."""
        found = await self.storage.list_profiles(
            offset=0, limit=self.config.leaderboard_size, sort="xp"
        )
        return {"leaders": [self.summary(p) for p in found]}

    def summary(self, profile: Profile) -> dict[str, Any]:
        return {
            "name": profile.username,
            "display_name": profile.display_name,
            "level": self.table.level_for(profile.xp),
            "xp": profile.xp,
            "likes": profile.likes,
            "loves": profile.loves,
            "joined": profile.created_at,
            "profile_style": style_for(profile.profile_style).name,
        }

    # -- analytics ------------------------------------------------------------------------

    async def _record(self, actor: Identity | None, action: str, details: dict[str, Any]) -> None:
        try:
            await self.recorder.record(actor, action, details)
        except StorageError:
            self._log.failure("could not record {action}", action=action)


@attrs.frozen
class _Bad:
    """What a field check returns instead of a value."""

    problems: tuple[Problem, ...]

    @classmethod
    def one(cls, field: str, code: str, message: str) -> _Bad:
        return cls((Problem(field, code, message),))


_CHECKS: dict[str, Callable[[ProfileService, Any], Any]] = {
    "display_name": ProfileService._display_name,
    "bio": ProfileService._bio,
    "social_links": ProfileService._social_links,
    "profile_style": ProfileService._style,
    "visibility": ProfileService._visibility,
}

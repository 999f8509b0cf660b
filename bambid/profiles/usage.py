"""Usage stats: what the server itself saw of each account's use.

The counters of ``models.UsageStats`` are kept by the server alone (clients
never send them), for accounts only (guests have no profile), through
``Storage.bump_usage``, which also sets ``last_active``:

- ``sessions_count``: visits. A person's first greeted connection (``hello``)
  starts one; a reconnect within ``profiles.session_grace_seconds`` of their
  last connection closing continues it, a later one starts the next.
- ``total_time_spent``: the wall time during which the person had at least
  one greeted connection (two tabs open at once count once). The time since
  the last write is written when their last connection closes, every
  ``profiles.usage_flush_seconds`` while they stay (``flush``, a
  ``LoopingCall`` on the injected clock) and when the service stops.
- ``messages_posted``: public chat messages of kind ``message`` they posted
  (a hub ``after_publish`` listener).
- ``triggers_activated``: triggers fired for them (an ``after_fire``
  listener of the trigger engine).
- ``companion_replies``: companion replies that finished with text: the
  reply completed (no error, not stopped) and some text arrived. A
  ``ReplyObserverFactory`` (``begin``) sees the text; when a reply is
  finished, the outcome the companion stored with the turn
  (``Conversation.metadata["replies"]``, ``error`` None and ``stopped``
  false) decides. A stopped reply, one that broke off (``interrupted``,
  ``timeout``, ``too_long``, ``internal``) or one whose turn could not be
  stored does not count.

Only people with a session going count: an event (a message, a trigger, a
reply) for someone with no current visit (``forget_person`` ended it, or it
ran out) writes nothing. Posting needs a greeted connection, so this loses
nothing real; it keeps a deleted account's last in-flight events from
creating a new, empty profile.

Where the events come from: the hub's ``after_register`` / ``after_forget``
(``greeted`` / ``forgotten``), ``after_publish`` (``published``), the trigger
engine's ``after_fire`` (``fired``) and the companion's observers (``begin``,
with ``replies``, the companion, to find the reply); ``bambid.service`` wires
them. Writes run in the background: a storage failure is logged and never
reaches chat. ``idle()`` waits for the writes started so far. ``stop()``
writes the time of everyone still online and waits for the writes in flight;
after it the tracker ignores every event.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from bambid.config import ProfilesConfig
from bambid.deferreds import when_fired
from bambid.identity import Identity
from bambid.models import ChatMessage, username_key
from bambid.storage import Storage
from bambid.triggers.actions import FireContext
from bambid.ws.dispatch import Connection


class Replies(Protocol):
    """What the tracker needs of the companion (``bambid.ai.companion``): the
    reply it has just accepted for a person, with its ``reply_id``,
    ``conversation_id`` and ``finished`` (a Deferred fired once the turn is
    stored)."""

    def current_reply(self, identity: Identity) -> Any: ...


@attrs.define(eq=False)
class _Visit:
    """One person's current session. ``online_since`` is when the time not
    yet written began (None while none of their connections is open, during
    the grace period); ``grace`` ends the session unless they come back."""

    name: str
    connections: set[Connection] = attrs.Factory(set)
    online_since: float | None = None
    grace: IDelayedCall | None = None


class UsageTracker:
    """Counts sessions, time online, messages, triggers and replies (see the
    module doc). ``clock`` gives the time and runs the timers."""

    _log = Logger()

    def __init__(
        self,
        storage: Storage,
        clock: IReactorTime,
        config: ProfilesConfig,
        replies: Replies | None = None,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.config = config
        #: The companion; without it no companion reply is counted.
        self.replies = replies
        self._visits: dict[str, _Visit] = {}
        self._writes: set[Deferred[None]] = set()
        self._loop: LoopingCall | None = None
        self._stopped = False

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start writing the time of people online every ``usage_flush_seconds``
        on ``self.clock`` (started again, on the clock of now, if running)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = LoopingCall(self.flush)
        self._loop.clock = self.clock
        looping = self._loop.start(self.config.usage_flush_seconds, now=False)
        looping.addErrback(lambda f: self._log.failure("usage flushes stopped", f))

    async def stop(self) -> None:
        """Write everyone's time so far, end every session, wait for the
        writes; from now on every event is ignored."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.flush()
        self._stopped = True
        for visit in self._visits.values():
            _cancel(visit.grace)
        self._visits.clear()
        await self.idle()

    async def idle(self) -> None:
        """Wait until the writes started so far are done (not for replies
        still running: their count is written when they finish)."""
        while self._writes:
            await defer.DeferredList(list(self._writes), consumeErrors=True)

    def online(self, username: str) -> bool:
        """Whether ``username`` has a session going (connected, or within the grace)."""
        return username_key(username) in self._visits

    # -- connections: sessions and time -------------------------------------------------------

    def greeted(self, connection: Connection, identity: Identity | None) -> None:
        """A hub ``after_register`` listener."""
        if self._stopped or identity is None or identity.guest:
            return
        now = self.clock.seconds()
        visit = self._visits.get(identity.key)
        if visit is None:
            visit = self._visits[identity.key] = _Visit(identity.name)
            self._write(identity.name, now, sessions=1)
        _cancel(visit.grace)
        visit.grace = None
        if visit.online_since is None:
            visit.online_since = now
        visit.connections.add(connection)

    def forgotten(self, connection: Connection, identity: Identity | None) -> None:
        """A hub ``after_forget`` listener."""
        if self._stopped or identity is None or identity.guest:
            return
        visit = self._visits.get(identity.key)
        if visit is None or connection not in visit.connections:
            return
        visit.connections.discard(connection)
        if visit.connections:
            return
        now = self.clock.seconds()
        self._write_time(visit, now)
        visit.online_since = None
        visit.grace = self.clock.callLater(
            self.config.session_grace_seconds, self._session_over, identity.key, visit
        )

    def _session_over(self, key: str, visit: _Visit) -> None:
        visit.grace = None
        if self._visits.get(key) is visit and not visit.connections:
            del self._visits[key]

    def flush(self) -> None:
        """Write the time of everyone online since the last write."""
        now = self.clock.seconds()
        for visit in self._visits.values():
            if visit.online_since is not None:
                self._write_time(visit, now)
                visit.online_since = now

    def forget_person(self, username: str) -> None:
        """End the person's session without writing anything (their account
        is being deleted: a write now would create a new profile)."""
        visit = self._visits.pop(username_key(username), None)
        if visit is not None:
            _cancel(visit.grace)

    def _write_time(self, visit: _Visit, now: float) -> None:
        if visit.online_since is not None and now > visit.online_since:
            self._write(visit.name, now, seconds=now - visit.online_since)

    # -- what people do ---------------------------------------------------------------------------

    def published(self, message: ChatMessage) -> None:
        """A hub ``after_publish`` listener: a public chat message of an account."""
        if self._stopped or message.message_type != "user" or message.guest or message.deleted:
            return
        self._count(message.username, messages=1)

    def fired(self, context: FireContext) -> None:
        """A trigger engine ``after_fire`` listener."""
        if self._stopped or context.identity.guest:
            return
        self._count(context.identity.name, triggers=1)

    async def begin(self, identity: Identity, reply_id: str) -> _ReplyCount | None:
        """A companion ``ReplyObserverFactory``: counts the reply if it
        completes with text (see the module doc)."""
        if self._stopped or identity.guest or self.replies is None:
            return None
        reply = self.replies.current_reply(identity)
        if reply is None or getattr(reply, "reply_id", None) != reply_id:
            return None
        return _ReplyCount(self, identity.name, reply)

    def reply_finished(self, username: str) -> None:
        """A companion reply completed with text for ``username``."""
        self._count(username, replies=1)

    def _count(self, username: str, **amounts: Any) -> None:
        """Write ``amounts`` for a person with a session going; nothing otherwise."""
        if username_key(username) in self._visits:
            self._write(username, self.clock.seconds(), **amounts)

    def _check_reply(self, username: str, reply: Any) -> None:
        """Once ``reply`` is stored, count it if it completed (module doc)."""
        checking = Deferred.fromCoroutine(self._completed(reply))

        def counted(completed: bool) -> None:
            if completed:
                self.reply_finished(username)

        checking.addCallback(counted)
        checking.addErrback(
            lambda f: self._log.failure(
                "could not tell how reply {id} of {person} ended",
                f,
                id=getattr(reply, "reply_id", "?"),
                person=username,
            )
        )

    async def _completed(self, reply: Any) -> bool:
        await when_fired(reply.finished)
        if self._stopped:
            return False
        conversation = await self.storage.get_conversation_by_id(reply.conversation_id)
        if conversation is None:
            return False
        outcomes = conversation.metadata.get("replies", {})
        for outcome in outcomes.values() if isinstance(outcomes, dict) else ():
            if isinstance(outcome, dict) and outcome.get("reply_id") == reply.reply_id:
                return outcome.get("error") is None and not outcome.get("stopped")
        return False

    # -- writing --------------------------------------------------------------------------------

    def _write(self, username: str, now: float, **amounts: Any) -> None:
        if self._stopped:
            return
        writing = Deferred.fromCoroutine(self.storage.bump_usage(username, now, **amounts))
        writing.addErrback(
            lambda f: self._log.failure(
                "could not update the usage stats of {person} ({amounts})",
                f,
                person=username,
                amounts=amounts,
            )
        )
        if not writing.called:
            self._writes.add(writing)
            writing.addBoth(self._written, writing)

    def _written(self, result: object, writing: Deferred[None]) -> None:
        self._writes.discard(writing)


class _ReplyCount:
    """Follows one companion reply: one that had text and ended without a
    stop is checked once stored (``UsageTracker._check_reply``)."""

    def __init__(self, tracker: UsageTracker, username: str, reply: Any) -> None:
        self.tracker = tracker
        self.username = username
        self.reply = reply
        self.spoke = False

    def feed(self, text: str) -> None:
        if text:
            self.spoke = True

    def finish(self) -> None:
        # Called for a completed reply and for one that broke off alike.
        if self.spoke:
            self.tracker._check_reply(self.username, self.reply)

    def cancel(self) -> None:
        self.spoke = False


def _cancel(call: IDelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()

"""The private AI companion: one conversation and one reply at a time per person.

A person is an account, or a guest for the life of their guest name; their
conversations are stored with ``owner`` = the account name, or
``guest:<name>``. Nothing here belongs to a connection: every frame about a
reply goes to all of the person's connections (``send_to_person``), and a
page loaded in the middle of a reply catches up with ``history`` (docs/
protocol.md, "The AI companion", is the contract).

State is kept per person (``_Person``) while they are connected or a reply of
theirs runs; their current conversation is loaded lazily from storage (the one
updated last), so conversations survive restarts. One ``DeferredLock`` per
person orders the changes to their conversation.

A reply (``send`` / ``regenerate``):

1. the prompt is cleaned with the chat word filter and capped at
   ``ai.max_prompt_length`` (``bad_request``); a reply already running is
   ``in_progress``; the router must admit it (``busy``, ``unavailable``);
2. the user turn is appended and the conversation saved; then ``ack``;
3. the system prompt (the persona rendered for the person) and the history,
   trimmed to ``ai.context_tokens - ai.max_tokens`` (``bambid.ai.context``),
   go to the router: ``ai.queued`` while waiting, ``ai.start`` (with
   ``trimmed``, the stored turns left out), ``ai.delta``s;
4. at the end the assistant turn is saved (``stopped`` / ``error`` in the
   conversation's metadata, below), then ``ai.done`` or ``ai.error`` is sent,
   the exchange is recorded as an ``AIInteraction`` and a completed reply
   earns ``ceil(words / 10)`` XP (accounts only).

Every reply that ends stores an assistant turn, even an empty one (stopped
while queued, or no backend reachable), so the stored conversation alternates
prompt and reply and a reload shows what happened. What happened is kept in
``Conversation.metadata["replies"][str(turn_index)]``: ``reply_id``,
``finish_reason`` (``stop``, ``length``, ``stopped``, or the error code),
``stopped`` (bool), ``error`` (None or ``unavailable``, ``interrupted``,
``timeout``, ``too_long``, ``internal``), ``backend``, ``model``, ``usage``.

Stopping cancels the router's Deferred: a queued reply leaves the queue, a
streaming one has its upstream HTTP connection closed. ``ai.stop``, the grace
period (the person's last connection gone for ``ai.grace_seconds``, clock
injected) and shutdown stop a reply the same way; the partial text is kept,
marked stopped.

Reply observers (``observers``: ``ReplyObserverFactory``s, in order; the
service gives the voice pipeline, ``bambid.voice.pipeline``, and the trigger
engine, ``bambid.triggers.engine``): once a reply is accepted, each factory's
``begin(identity, reply_id)`` gives its ``ReplyObserver`` for that reply, or
None (speech off, no trigger switched on; a failure there is logged and the
reply goes on without that observer). Every delta is fed to each observer
after its ``ai.delta`` is sent. A stop cancels them at once (pending speech
dropped, ``voice.done`` stopped); any other end finishes them (the last
sentence is spoken, the last trigger phrase found) as soon as the generation
is over, before the turn is stored, so their frames may reach the tabs before
or after ``ai.done``. Observers never change the reply's text or outcome: an
exception from one is logged and that observer is dropped.

The persona hooks ``triggers_of`` and ``collar_of`` are async: the switched-on
triggers and the collar of the person, read when a reply is accepted (a
failure is logged and the reply goes on without them).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, DeferredLock
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from bambid.ai.context import fit
from bambid.ai.llm import BackendError
from bambid.ai.persona import Persona, PersonaError, PersonaTrigger
from bambid.ai.queue import (
    Admission,
    AllBackendsFailed,
    Busy,
    Generated,
    NoBackends,
    Router,
)
from bambid.chat.text import TextCleaner, TextRejected
from bambid.config import AIConfig
from bambid.deferreds import when_fired
from bambid.identity import Identity
from bambid.models import AIInteraction, Conversation, ConversationTurn, username_key
from bambid.profiles.xp import XpService
from bambid.storage import Storage
from bambid.ws.dispatch import ClientError, Connection

#: ``ai.conversations`` lists at most this many.
CONVERSATIONS_LIMIT = 50
TITLE_LENGTH = 60
WORDS_PER_XP = 10
#: ``ai.error`` codes a failure after the first token keeps; others become ``interrupted``.
_MID_REPLY_CODES = frozenset({"timeout", "too_long"})
#: What a person is told when a reply breaks off (details go to the log).
_BROKE_OFF = {
    "interrupted": "the AI server failed in the middle of the reply; what arrived is kept",
    "timeout": "the AI server took too long; what arrived is kept",
    "too_long": "the reply grew past the size limit; what arrived is kept",
}


class People(Protocol):
    """What the companion needs of the chat hub."""

    def connections_of(self, username: str) -> list[Connection]: ...

    def send_to_person(self, username: str, type: str, **fields: Any) -> int: ...


class ReplyObserver(Protocol):
    """Follows one reply's text as it streams (``VoicePipeline``'s
    ``ReplyVoice``, the trigger engine's ``ReplyTriggers``)."""

    def feed(self, text: str) -> None:
        """The next delta's text."""

    def finish(self) -> None:
        """The reply ended (completed, or failed with what arrived)."""

    def cancel(self) -> None:
        """The reply was stopped."""


class ReplyObserverFactory(Protocol):
    """Gives a reply its observer, or None when it has nothing to do."""

    async def begin(self, identity: Identity, reply_id: str) -> ReplyObserver | None: ...


#: ``triggers_of(identity)``: the person's switched-on triggers for the persona.
TriggersOf = Callable[[Identity], Awaitable[list[PersonaTrigger]]]
#: ``collar_of(identity)``: the person's collar text ("" when none or off).
CollarOf = Callable[[Identity], Awaitable[str]]


async def no_triggers(identity: Identity) -> list[PersonaTrigger]:
    return []


async def no_collar(identity: Identity) -> str:
    return ""


def owner_of(identity: Identity) -> str:
    """The ``Conversation.owner`` of a person: the account name, or ``guest:<name>``."""
    return f"guest:{identity.name}" if identity.guest else identity.name


def title_for(prompt: str) -> str:
    """A conversation's title: its first prompt on one line, cut at a word
    near ``TITLE_LENGTH`` characters with an ellipsis."""
    line = " ".join(prompt.split())
    if len(line) <= TITLE_LENGTH:
        return line
    cut = line[: TITLE_LENGTH - 1]
    space = cut.rfind(" ")
    if space >= TITLE_LENGTH // 2:
        cut = cut[:space]
    return cut.rstrip(" ,.;:") + "…"


def xp_for(text: str) -> int:
    """XP earned by a completed reply: one per ten words, rounded up."""
    return math.ceil(len(text.split()) / WORDS_PER_XP)


@attrs.define(eq=False)
class _Person:
    key: str
    identity: Identity
    owner: str
    lock: DeferredLock = attrs.Factory(DeferredLock)
    conversation: Conversation | None = None
    reply: _Reply | None = None
    grace: IDelayedCall | None = None


@attrs.define(eq=False)
class _Outcome:
    """How a reply ended: ``finish_reason`` and, for failures, ``error`` and ``message``."""

    finish_reason: str
    text: str
    error: str | None = None
    message: str = ""
    generated: Generated | None = None

    @property
    def stopped(self) -> bool:
        return self.finish_reason == "stopped"


@attrs.define(eq=False)
class _Reply:
    reply_id: str
    person: _Person
    identity: Identity
    conversation_id: str
    prompt: str
    kind: str  # "reply" | "regenerate"
    connection_id: str
    accepted_at: float
    trimmed: int
    messages: list[dict[str, str]]
    parts: list[str] = attrs.Factory(list)
    queued: int | None = None
    start: dict[str, Any] | None = None
    backend: str = ""
    model: str = ""
    admission: Admission | None = None
    generation: Deferred[Generated] | None = None
    stop_reason: str | None = None
    finished: Deferred[None] = attrs.Factory(Deferred)
    observers: list[ReplyObserver] = attrs.Factory(list)

    @property
    def index(self) -> int:
        return len(self.parts)


class _ReplyListener:
    """Turns the router's progress reports into frames for every tab."""

    def __init__(self, companion: Companion, reply: _Reply) -> None:
        self.companion = companion
        self.reply = reply

    def queued(self, position: int) -> None:
        self.reply.queued = position
        self.companion._to_person(
            self.reply.person, "ai.queued", reply_id=self.reply.reply_id, position=position
        )

    def started(self, backend: str, model: str) -> None:
        reply = self.reply
        reply.queued = None
        reply.backend, reply.model = backend, model
        reply.start = {
            "reply_id": reply.reply_id,
            "conversation_id": reply.conversation_id,
            "prompt": reply.prompt,
            "backend": backend,
            "model": model,
            "trimmed": reply.trimmed,
        }
        self.companion._to_person(reply.person, "ai.start", **reply.start)

    def delta(self, text: str) -> None:
        reply = self.reply
        reply.parts.append(text)
        self.companion._to_person(
            reply.person, "ai.delta", reply_id=reply.reply_id, index=reply.index, text=text
        )
        self.companion._observe(reply, "feed", text)


class Companion:
    """Per-person conversations and replies (see the module doc). Methods
    raise ``ClientError`` for what the client should be told."""

    _log = Logger()

    def __init__(
        self,
        config: AIConfig,
        storage: Storage,
        clock: IReactorTime,
        people: People,
        xp: XpService,
        cleaner: TextCleaner,
        persona: Persona,
        router: Router,
        triggers_of: TriggersOf | None = None,
        collar_of: CollarOf | None = None,
        *,
        observers: Sequence[ReplyObserverFactory] = (),
    ) -> None:
        self.config = config
        self.storage = storage
        self.clock = clock
        self.people = people
        self.xp = xp
        self.cleaner = cleaner
        self.persona = persona
        self.router = router
        self.triggers_of: TriggersOf = triggers_of or no_triggers
        self.collar_of: CollarOf = collar_of or no_collar
        self.observers = list(observers)
        #: Called with (outcome, seconds) as each reply ends, after its record
        #: and XP: "completed", "stopped" or the error code (metrics).
        self.outcome_listeners: list[Callable[[str, float], object]] = []
        self._people: dict[str, _Person] = {}
        self._tasks: set[Deferred[None]] = set()
        self._stopping = False

    # -- people and their current conversation ------------------------------------------

    @staticmethod
    def _key(identity: Identity) -> str:
        return username_key(owner_of(identity))

    async def _person(self, identity: Identity) -> _Person:
        """The person's state, their current conversation loaded."""
        key = self._key(identity)
        person = self._people.get(key)
        if person is None:
            person = self._people[key] = _Person(key, identity, owner_of(identity))
        person.identity = identity
        if person.conversation is None:
            async with person.lock:
                if person.conversation is None:
                    stored = await self.storage.get_conversation(person.owner)
                    person.conversation = stored or self._new_conversation(person)
        return person

    def _new_conversation(self, person: _Person) -> Conversation:
        now = self.clock.seconds()
        return Conversation(owner=person.owner, title="", created_at=now, updated_at=now)

    def _forget_if_idle(self, person: _Person) -> None:
        """Drop the state of a person with no connection, reply or pending change."""
        if (
            person.reply is None
            and not person.lock.locked
            and not self.people.connections_of(person.identity.name)
            and self._people.get(person.key) is person
        ):
            del self._people[person.key]

    def _to_person(self, person: _Person, type: str, **fields: Any) -> None:
        self.people.send_to_person(person.identity.name, type, **fields)

    # -- what is shown -----------------------------------------------------------------------

    @staticmethod
    def turns_payload(conversation: Conversation) -> list[dict[str, Any]]:
        """The turns as ``ai.conversation`` shows them."""
        replies = conversation.metadata.get("replies", {})
        turns: list[dict[str, Any]] = []
        for index, turn in enumerate(conversation.turns):
            payload: dict[str, Any] = {
                "role": turn.role,
                "content": turn.content,
                "ts": turn.timestamp,
            }
            if turn.role == "assistant":
                meta = replies.get(str(index), {})
                payload["stopped"] = bool(meta.get("stopped", False))
                payload["error"] = meta.get("error")
            turns.append(payload)
        return turns

    def _conversation_frame(self, conversation: Conversation) -> dict[str, Any]:
        return {
            "conversation_id": conversation.conversation_id,
            "title": conversation.title,
            "turns": self.turns_payload(conversation),
        }

    async def history(self, identity: Identity, connection: Connection, correlation: Any) -> None:
        """``ai.history``: the current conversation to ``connection``, then the
        catch-up of a reply in progress (``ai.start`` and one ``ai.delta``
        with all the text so far, or ``ai.queued`` while it waits)."""
        person = await self._person(identity)
        assert person.conversation is not None
        frame = self._conversation_frame(person.conversation)
        if correlation is not None:
            frame["id"] = correlation
        # From here to the end nothing awaits: no delta can slip in between.
        connection.send("ai.conversation", **frame)
        reply = person.reply
        if reply is None:
            return
        if reply.start is not None:
            connection.send("ai.start", **reply.start)
            if reply.parts:
                connection.send(
                    "ai.delta",
                    reply_id=reply.reply_id,
                    index=reply.index,
                    text="".join(reply.parts),
                )
        elif reply.queued is not None:
            connection.send("ai.queued", reply_id=reply.reply_id, position=reply.queued)

    async def conversations(self, identity: Identity) -> list[dict[str, Any]]:
        """``ai.conversations``: the latest ``CONVERSATIONS_LIMIT``, current first."""
        person = await self._person(identity)
        assert person.conversation is not None
        current = person.conversation
        stored = await self.storage.list_conversations(person.owner, CONVERSATIONS_LIMIT)
        listed = [current] + [c for c in stored if c.conversation_id != current.conversation_id]
        return [
            {
                "conversation_id": c.conversation_id,
                "title": c.title,
                "updated_at": c.updated_at,
                "turns": len(c.turns),
            }
            for c in listed[:CONVERSATIONS_LIMIT]
        ]

    # -- replies ---------------------------------------------------------------------------

    async def send(self, identity: Identity, connection: Connection, text: Any) -> _Reply:
        """``ai.send``: accept a prompt (see the module doc). Returns the reply
        once its user turn is stored; the caller acks, then calls ``run``."""
        if not isinstance(text, str):
            raise ClientError("bad_request", "'text' must be a string")
        try:
            prompt = self.cleaner.clean(text)
        except TextRejected as e:
            raise ClientError("bad_request", str(e)) from None
        return await self._accept(identity, connection, prompt, regenerate=False)

    async def regenerate(self, identity: Identity, connection: Connection) -> _Reply:
        """``ai.regenerate``: drop the last companion reply and answer the last
        prompt again. ``bad_request`` when there is no prompt to answer."""
        return await self._accept(identity, connection, None, regenerate=True)

    async def _accept(
        self, identity: Identity, connection: Connection, prompt: str | None, regenerate: bool
    ) -> _Reply:
        if self._stopping:
            raise ClientError("unavailable", "the server is shutting down")
        person = await self._person(identity)
        level = (await self.xp.progress_of(identity)).level
        triggers, collar = await self._persona_inputs(identity)
        async with person.lock:
            if person.reply is not None:
                raise ClientError("in_progress", "a reply is already being generated")
            conversation = person.conversation
            assert conversation is not None
            now = self.clock.seconds()
            if regenerate:
                conversation = _without_last_reply(conversation)
                if not conversation.turns or conversation.turns[-1].role != "user":
                    raise ClientError("bad_request", "there is no prompt to answer again")
                prompt = conversation.turns[-1].content
                conversation = attrs.evolve(conversation, updated_at=now)
            else:
                assert prompt is not None
                conversation = attrs.evolve(
                    conversation,
                    title=conversation.title or title_for(prompt),
                    turns=(*conversation.turns, ConversationTurn("user", prompt, now)),
                    updated_at=now,
                )
            try:
                system = self.persona.render(identity.name, level, triggers, collar)
            except PersonaError as e:
                self._log.error("the persona template failed: {error}", error=str(e))
                raise ClientError(
                    "internal", "the companion is misconfigured; the operator can see why"
                ) from None
            turns = [{"role": t.role, "content": t.content} for t in conversation.turns]
            fitted = fit(system, turns, self.config.context_tokens - self.config.max_tokens)
            admission = self._admit()
            reply = _Reply(
                reply_id="r" + secrets.token_hex(8),
                person=person,
                identity=identity,
                conversation_id=conversation.conversation_id,
                prompt=prompt,
                kind="regenerate" if regenerate else "reply",
                connection_id=connection.connection_id,
                accepted_at=now,
                trimmed=fitted.dropped,
                messages=fitted.messages,
            )
            person.reply = reply
            try:
                await self.storage.save_conversation(conversation)
            except BaseException:
                person.reply = None
                admission.release()
                raise
            person.conversation = conversation
        self._cancel_grace(person)
        reply.admission = admission
        for factory in self.observers:
            try:
                observer = await factory.begin(identity, reply.reply_id)
            except Exception:
                self._log.failure(
                    "reply {id} goes on without {observer}",
                    id=reply.reply_id,
                    observer=type(factory).__name__,
                )
                continue
            if observer is not None:
                reply.observers.append(observer)
        return reply

    async def _persona_inputs(self, identity: Identity) -> tuple[list[PersonaTrigger], str]:
        """The person's triggers and collar for the persona (none when a hook fails)."""
        try:
            triggers = list(await self.triggers_of(identity))
        except Exception:
            self._log.failure("could not read the triggers of {person}", person=identity.name)
            triggers = []
        try:
            collar = await self.collar_of(identity)
        except Exception:
            self._log.failure("could not read the collar of {person}", person=identity.name)
            collar = ""
        return triggers, collar

    def _observe(self, reply: _Reply, method: str, *args: str) -> None:
        """Call ``method`` of every observer of the reply; one that raises is
        logged and dropped."""
        for observer in list(reply.observers):
            try:
                getattr(observer, method)(*args)
            except Exception:
                self._log.failure(
                    "observer {observer} of reply {id} failed in {method}",
                    observer=type(observer).__name__,
                    id=reply.reply_id,
                    method=method,
                )
                if observer in reply.observers:
                    reply.observers.remove(observer)

    def _admit(self) -> Admission:
        try:
            return self.router.admit()
        except Busy:
            raise ClientError("busy", "the companion is busy; try again in a moment") from None
        except NoBackends:
            raise ClientError("unavailable", "no AI backend is configured") from None

    def run(self, reply: _Reply) -> Deferred[None]:
        """Generate the accepted reply (call right after the ``ack``: the
        first frames may go out before this returns). The Deferred fires once
        the reply is stored, recorded and rewarded."""
        reply.generation = Deferred.fromCoroutine(
            self.router.generate(reply.messages, _ReplyListener(self, reply), reply.admission)
        )
        if self._stopping and reply.stop_reason is None:
            reply.stop_reason = "server shutting down"
        if reply.stop_reason is not None:  # stopped between the ack and now
            reply.generation.cancel()
        task = Deferred.fromCoroutine(self._run(reply))
        task.addErrback(lambda f: self._log.failure("companion reply {id}", f, id=reply.reply_id))
        self._tasks.add(task)
        task.addBoth(lambda _: self._tasks.discard(task))
        return task

    async def _run(self, reply: _Reply) -> None:
        assert reply.generation is not None
        try:
            generated = await reply.generation
        except CancelledError:
            outcome = _Outcome("stopped", "".join(reply.parts))
        except AllBackendsFailed as e:
            outcome = self._unavailable(reply, e)
        except NoBackends:
            outcome = _Outcome("unavailable", "", "unavailable", "no AI backend is configured")
        except BackendError as e:
            code = e.code if e.code in _MID_REPLY_CODES else "interrupted"
            self._log.warn(
                "reply {id} broke off: {code}: {message}",
                id=reply.reply_id,
                code=e.code,
                message=e.message,
            )
            outcome = _Outcome(code, "".join(reply.parts), code, _BROKE_OFF[code])
        except Exception:
            self._log.failure("companion reply {id} failed", id=reply.reply_id)
            outcome = _Outcome("internal", "".join(reply.parts), "internal", "internal error")
        else:
            completion = generated.completion
            outcome = _Outcome(completion.finish_reason or "stop", completion.text, None, "")
            outcome.generated = generated
        if reply.stop_reason is not None and outcome.error not in (None, "internal"):
            # A stop can surface as the client's own error; it is still a stop.
            outcome = _Outcome("stopped", "".join(reply.parts))
        self._observe(reply, "cancel" if outcome.stopped else "finish")
        reply.observers = []
        await self._finish(reply, outcome)

    def _unavailable(self, reply: _Reply, error: AllBackendsFailed) -> _Outcome:
        if reply.stop_reason is not None:
            return _Outcome("stopped", "".join(reply.parts))
        tried = ", ".join(failure.code for _, failure in error.failures)
        self._log.warn("no AI backend answered reply {id}: {error}", id=reply.reply_id, error=error)
        return _Outcome(
            "unavailable",
            "",
            "unavailable",
            f"the companion cannot answer right now: no AI server responded ({tried})",
        )

    async def _finish(self, reply: _Reply, outcome: _Outcome) -> None:
        """Store the assistant turn, tell every tab, record, award."""
        person = reply.person
        finished_at = self.clock.seconds()
        async with person.lock:
            conversation = person.conversation
            if conversation is None or conversation.conversation_id != reply.conversation_id:
                conversation = await self.storage.get_conversation_by_id(reply.conversation_id)
            if conversation is not None:
                conversation = self._with_reply(conversation, reply, outcome, finished_at)
                try:
                    await self.storage.save_conversation(conversation)
                except Exception:
                    self._log.failure("could not store reply {id}", id=reply.reply_id)
                if (
                    person.conversation is not None
                    and person.conversation.conversation_id == conversation.conversation_id
                ):
                    person.conversation = conversation
            # Turn stored and reply over at once: ai.history never shows both.
            person.reply = None
            self._cancel_grace(person)
            if outcome.error is None:
                usage = outcome.generated.completion.usage if outcome.generated else None
                self._to_person(
                    person,
                    "ai.done",
                    reply_id=reply.reply_id,
                    text=outcome.text,
                    finish_reason=outcome.finish_reason,
                    usage=usage,
                )
            else:
                self._to_person(
                    person,
                    "ai.error",
                    reply_id=reply.reply_id,
                    code=outcome.error,
                    message=outcome.message,
                    text=outcome.text,
                )
        reply.finished.callback(None)
        try:
            await self._after(reply, outcome, finished_at)
        finally:
            self._forget_if_idle(person)

    def _with_reply(
        self, conversation: Conversation, reply: _Reply, outcome: _Outcome, now: float
    ) -> Conversation:
        index = len(conversation.turns)
        replies = dict(conversation.metadata.get("replies", {}))
        usage = outcome.generated.completion.usage if outcome.generated else None
        replies[str(index)] = {
            "reply_id": reply.reply_id,
            "finish_reason": outcome.finish_reason,
            "stopped": outcome.stopped,
            "error": outcome.error,
            "backend": reply.backend,
            "model": (outcome.generated.completion.model if outcome.generated else "")
            or reply.model,
            "usage": usage,
        }
        return attrs.evolve(
            conversation,
            turns=(*conversation.turns, ConversationTurn("assistant", outcome.text, now)),
            metadata={**conversation.metadata, "replies": replies},
            updated_at=now,
        )

    async def _after(self, reply: _Reply, outcome: _Outcome, finished_at: float) -> None:
        """Record the exchange and award XP; failures are logged, never sent."""
        usage = outcome.generated.completion.usage if outcome.generated else None
        error = None
        if outcome.error is not None:
            error = f"{outcome.error}: {outcome.message}"
        elif outcome.stopped:
            error = f"stopped: {reply.stop_reason or 'stop'}"
        self._log.info(
            "AI {kind} {id} for {person}: {finish} via {backend} ({model}), "
            "{duration:.3f}s, usage {usage}",
            kind=reply.kind,
            id=reply.reply_id,
            person=reply.identity.name,
            finish=outcome.finish_reason,
            backend=reply.backend or "-",
            model=reply.model or "-",
            duration=finished_at - reply.accepted_at,
            usage=usage,
        )
        try:
            await self.storage.record(
                AIInteraction(
                    username=owner_of(reply.identity),
                    interaction_type=reply.kind,
                    input_data=reply.prompt,
                    output_data=outcome.text,
                    duration=finished_at - reply.accepted_at,
                    timestamp=reply.accepted_at,
                    connection_id=reply.connection_id,
                    error=error,
                    model=reply.model or "",
                    backend=reply.backend or "",
                    prompt_tokens=_tokens(usage, "prompt_tokens"),
                    completion_tokens=_tokens(usage, "completion_tokens"),
                )
            )
        except Exception:
            self._log.failure("could not record reply {id}", id=reply.reply_id)
        amount = xp_for(outcome.text)
        if outcome.error is None and not outcome.stopped and not reply.identity.guest and amount:
            try:
                await self.xp.award(reply.identity, amount)
            except Exception:
                self._log.failure("could not award XP for reply {id}", id=reply.reply_id)
        ended = outcome.error or ("stopped" if outcome.stopped else "completed")
        for listener in self.outcome_listeners:
            listener(ended, finished_at - reply.accepted_at)

    # -- stopping --------------------------------------------------------------------------

    def current_reply(self, identity: Identity) -> _Reply | None:
        person = self._people.get(self._key(identity))
        return person.reply if person is not None else None

    def stop(self, reply: _Reply, why: str) -> None:
        """Stop a reply: cancel its generation (a no-op once it has ended)."""
        if reply.stop_reason is None:
            reply.stop_reason = why
        self._observe(reply, "cancel")
        if reply.generation is not None and not reply.generation.called:
            reply.generation.cancel()

    async def _stop_and_wait(self, person: _Person) -> None:
        reply = person.reply
        if reply is not None:
            waiting = when_fired(reply.finished)
            self.stop(reply, "switched conversation")
            await waiting

    # -- switching conversations -------------------------------------------------------------

    async def reset(self, identity: Identity) -> Conversation:
        """``ai.reset``: a new, empty conversation becomes current (a reply in
        progress is stopped first; the current one is reused if empty). The
        caller acks, then ``announce``s it."""
        person = await self._person(identity)
        await self._stop_and_wait(person)
        async with person.lock:
            if person.reply is not None:
                raise ClientError("in_progress", "a reply is already being generated")
            current = person.conversation
            if current is not None and not current.turns:
                conversation = attrs.evolve(current, updated_at=self.clock.seconds())
            else:
                conversation = self._new_conversation(person)
            await self.storage.save_conversation(conversation)
            person.conversation = conversation
        return conversation

    def announce(self, identity: Identity, conversation: Conversation) -> None:
        """Every tab of the person gets ``ai.conversation`` (after a switch)."""
        self.people.send_to_person(
            identity.name, "ai.conversation", **self._conversation_frame(conversation)
        )

    async def load(self, identity: Identity, conversation_id: Any) -> Conversation:
        """``ai.load``: a stored conversation of the person becomes current
        (``not_found`` for an unknown one or someone else's; a reply in
        progress is stopped first). The caller acks, then ``announce``s it."""
        if not isinstance(conversation_id, str) or not conversation_id:
            raise ClientError("bad_request", "'conversation_id' must be a string")
        person = await self._person(identity)
        current = person.conversation
        if current is not None and current.conversation_id == conversation_id:
            return current  # already current (perhaps not stored yet: still empty)
        await self._owned(person, conversation_id)
        await self._stop_and_wait(person)
        async with person.lock:
            if person.reply is not None:
                raise ClientError("in_progress", "a reply is already being generated")
            found = await self._owned(person, conversation_id)
            conversation = attrs.evolve(found, updated_at=self.clock.seconds())
            await self.storage.save_conversation(conversation)
            person.conversation = conversation
        return conversation

    async def _owned(self, person: _Person, conversation_id: str) -> Conversation:
        """The stored conversation if it is the person's; ``not_found`` otherwise."""
        found = await self.storage.get_conversation_by_id(conversation_id)
        if found is None or username_key(found.owner) != person.key:
            raise ClientError("not_found", "there is no such conversation")
        return found

    # -- connections come and go ----------------------------------------------------------------

    def connection_closed(self, connection: Connection) -> None:
        """A close listener: when the person's last connection is gone, their
        reply is stopped after ``ai.grace_seconds`` unless they come back."""
        identity = connection.identity
        if identity is None:
            return
        person = self._people.get(self._key(identity))
        if person is None:
            return
        others = [c for c in self.people.connections_of(identity.name) if c is not connection]
        if others:
            return
        if person.reply is None:
            self._forget_if_idle(person)
            return
        self._cancel_grace(person)
        person.grace = self.clock.callLater(self.config.grace_seconds, self._grace_over, person)

    def _grace_over(self, person: _Person) -> None:
        person.grace = None
        if person.reply is not None and not self.people.connections_of(person.identity.name):
            self._log.info(
                "stopping reply {id}: {person} has been gone for {seconds}s",
                id=person.reply.reply_id,
                person=person.identity.name,
                seconds=self.config.grace_seconds,
            )
            self.stop(person.reply, "grace period over")

    @staticmethod
    def _cancel_grace(person: _Person) -> None:
        if person.grace is not None:
            if person.grace.active():
                person.grace.cancel()
            person.grace = None

    # -- life cycle -----------------------------------------------------------------------

    @property
    def replies(self) -> list[_Reply]:
        return [p.reply for p in self._people.values() if p.reply is not None]

    async def shutdown(self) -> None:
        """Refuse new replies, stop every running one and wait until each is
        stored and recorded."""
        self._stopping = True
        waiting = [when_fired(task) for task in self._tasks]
        for person in list(self._people.values()):
            self._cancel_grace(person)
            if person.reply is not None:
                if person.reply.generation is None and person.reply.admission is not None:
                    person.reply.admission.release()  # accepted, never run
                self.stop(person.reply, "server shutting down")
        if waiting:
            await defer.DeferredList(waiting, consumeErrors=True)


def _without_last_reply(conversation: Conversation) -> Conversation:
    """The conversation without its trailing assistant turn (and its metadata)."""
    if not conversation.turns or conversation.turns[-1].role != "assistant":
        return conversation
    index = len(conversation.turns) - 1
    replies = {k: v for k, v in conversation.metadata.get("replies", {}).items() if k != str(index)}
    return attrs.evolve(
        conversation,
        turns=conversation.turns[:-1],
        metadata={**conversation.metadata, "replies": replies},
    )


def _tokens(usage: Mapping[str, Any] | None, key: str) -> int:
    """A token count from the backend's ``usage`` (0 when absent or odd)."""
    value = (usage or {}).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

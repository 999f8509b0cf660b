"""The AI companion over a real loopback port, with real SQLite and fake
OpenAI-compatible backends speaking real HTTP (``tests.fakellm``): streaming
to every tab, stop, failover, the queue, catch-up after a reload, the grace
period, XP and records, and who may talk to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import Clock

from bambid.ai.persona import Persona
from bambid.models import AIInteraction
from tests.chatsupport import add_person, connect, expect, tick
from tests.companionsupport import (
    companion_server,
    eventually,
    fake_llm,
    read_reply,
    send,
    stalled,
    until,
)
from tests.fakellm import (
    NORMAL_REPLY,
    JSONReply,
    Stream,
    closed_port_url,
    openai_error,
    sse_events,
)

REPLY_WORDS = len(NORMAL_REPLY.split())  # 25: the fake's normal reply


@pytest_twisted.ensureDeferred
async def test_reply_streams_in_order_to_every_tab(tmp_path: Path) -> None:
    async with fake_llm() as fake, companion_server(tmp_path, [fake.url]) as r:
        token = await add_person(r.service.storage, "Ada")
        tab1, _ = await connect(r, token)
        tab2, _ = await connect(r, token)
        ack = await send(tab1, "  Help me relax for a minute.  ", id="q1")
        assert ack == {
            "type": "ack",
            "id": "q1",
            "reply_id": ack["reply_id"],
            "conversation_id": ack["conversation_id"],
        }
        for tab in (tab1, tab2):
            reply = await read_reply(tab)
            deltas = reply.deltas
            assert reply.types == ["ai.start"] + ["ai.delta"] * len(deltas) + ["ai.done"]
            assert reply.frames[0] == {
                "type": "ai.start",
                "reply_id": ack["reply_id"],
                "conversation_id": ack["conversation_id"],
                "prompt": "Help me relax for a minute.",
                "backend": fake.url,
                "model": "fake-model",
                "trimmed": 0,
            }
            assert len(deltas) == REPLY_WORDS
            assert [d["index"] for d in deltas] == list(range(1, REPLY_WORDS + 1))
            assert all(d["reply_id"] == ack["reply_id"] for d in deltas)
            assert "".join(d["text"] for d in deltas) == NORMAL_REPLY
            assert reply.end == {
                "type": "ai.done",
                "reply_id": ack["reply_id"],
                "text": NORMAL_REPLY,
                "finish_reason": "stop",
                "usage": {
                    "prompt_tokens": 10,
                    "completion_tokens": REPLY_WORDS,
                    "total_tokens": 10 + REPLY_WORDS,
                },
            }
            # ceil(25 / 10) = 3 XP, once, told to every tab.
            xp = await expect(tab, "xp.update")
            assert xp["xp"] == 3
        profile = await r.service.storage.get_profile("Ada")
        assert profile is not None and profile.xp == 3

        async def recorded() -> bool:
            return bool(await r.service.storage.list_records(AIInteraction, "Ada", 10))

        await eventually(recorded)
        (record,) = await r.service.storage.list_records(AIInteraction, "Ada", 10)
        assert record.interaction_type == "reply"
        assert record.input_data == "Help me relax for a minute."
        assert record.output_data == NORMAL_REPLY
        assert record.error is None
        assert record.duration >= 0
        assert (record.model, record.backend) == ("fake-model", fake.url)
        assert record.prompt_tokens == 10
        assert record.completion_tokens > 0
        # The backend got the persona and the prompt, nothing else.
        (request,) = fake.chat_requests
        assert [m["role"] for m in request.body["messages"]] == ["system", "user"]
        assert request.body["stream"] is True


@pytest_twisted.ensureDeferred
async def test_stop_closes_the_upstream_connection_and_keeps_the_partial_reply(
    tmp_path: Path,
) -> None:
    async with fake_llm() as fake, companion_server(tmp_path, [fake.url]) as r:
        token = await add_person(r.service.storage, "Ada")
        tab, _ = await connect(r, token)
        stream, stall = stalled(["Hel", "lo", " there"], after=2)
        fake.script(stream)
        ack = await send(tab, "Count with me")
        frames = await until(tab, "ai.delta")
        frames += await until(tab, "ai.delta")
        assert [f["type"] for f in frames] == ["ai.start", "ai.delta", "ai.delta"]

        stop = await tab.request({"type": "ai.stop", "id": "x", "reply_id": ack["reply_id"]})
        assert stop == {"type": "ack", "id": "x", "reply_id": ack["reply_id"], "stopped": True}
        done = await tab.next()
        assert done == {
            "type": "ai.done",
            "reply_id": ack["reply_id"],
            "text": "Hello",
            "finish_reason": "stopped",
            "usage": None,
        }
        assert await fake.chat_requests[-1].outcome == "disconnected"

        history = await tab.request({"type": "ai.history", "id": "h"})
        assert history["type"] == "ai.conversation"
        assert [t["content"] for t in history["turns"]] == ["Count with me", "Hello"]
        assert history["turns"][1]["stopped"] is True
        assert history["turns"][1]["error"] is None

        async def recorded() -> bool:
            return bool(await r.service.storage.list_records(AIInteraction, "Ada", 10))

        await eventually(recorded)
        (record,) = await r.service.storage.list_records(AIInteraction, "Ada", 10)
        assert record.output_data == "Hello" and record.error == "stopped: ai.stop"
        # A stopped reply earns nothing and is not counted as a reply.
        profile = await r.service.storage.get_profile("Ada")
        assert profile is None or (profile.xp == 0 and profile.usage_stats.companion_replies == 0)
        # Stopping again (it has ended) is acknowledged, and does nothing.
        again = await tab.request({"type": "ai.stop", "id": "y", "reply_id": ack["reply_id"]})
        assert again["stopped"] is False
        stall.release()


@pytest_twisted.ensureDeferred
async def test_failover_to_the_next_backend(tmp_path: Path) -> None:
    refused = await closed_port_url(reactor)
    async with (
        fake_llm() as failing,
        fake_llm() as good,
        companion_server(tmp_path, [refused, failing.url, good.url]) as r,
    ):
        failing.script(JSONReply(500, openai_error("out of memory")))
        token = await add_person(r.service.storage, "Ada")
        tab, _ = await connect(r, token)
        await send(tab, "hello")
        reply = await read_reply(tab)
        # The refused backend never got as far as a start; the 500 one did.
        starts = [f["backend"] for f in reply.frames if f["type"] == "ai.start"]
        assert starts == [failing.url, good.url]
        assert reply.end["type"] == "ai.done" and reply.end["text"] == NORMAL_REPLY
        assert len(failing.chat_requests) == 1 and len(good.chat_requests) == 1

        # Those that failed are tried last for a while: the next reply goes
        # straight to the one that worked.
        await expect(tab, "xp.update")
        await send(tab, "again")
        reply = await read_reply(tab)
        assert [f["backend"] for f in reply.frames if f["type"] == "ai.start"] == [good.url]
        assert len(failing.chat_requests) == 1


@pytest_twisted.ensureDeferred
async def test_all_backends_down_is_unavailable(tmp_path: Path) -> None:
    urls = [await closed_port_url(reactor), await closed_port_url(reactor)]
    async with companion_server(tmp_path, urls) as r:
        token = await add_person(r.service.storage, "Ada")
        tab, _ = await connect(r, token)
        ack = await send(tab, "anyone there?")
        assert ack["type"] == "ack"
        reply = await read_reply(tab)
        assert reply.types == ["ai.error"]
        error = reply.end
        assert error["code"] == "unavailable" and error["text"] == ""
        assert "no AI server responded" in error["message"]
        assert "Traceback" not in error["message"]
        history = await tab.request({"type": "ai.history"})
        assert history["turns"][-1]["role"] == "assistant"
        assert history["turns"][-1]["error"] == "unavailable"
        assert reply.xp == []


@pytest_twisted.ensureDeferred
async def test_failure_mid_reply_is_interrupted_and_the_partial_text_stored(
    tmp_path: Path,
) -> None:
    async with fake_llm() as fake, companion_server(tmp_path, [fake.url]) as r:
        fake.script(Stream(sse_events(["Hel", "lo"], done=False)[:3], end="close"))
        token = await add_person(r.service.storage, "Ada")
        tab, _ = await connect(r, token)
        await send(tab, "go on")
        reply = await read_reply(tab)
        assert reply.types == ["ai.start", "ai.delta", "ai.delta", "ai.error"]
        assert reply.end["code"] == "interrupted"
        assert reply.end["text"] == "Hello"
        history = await tab.request({"type": "ai.history"})
        assert history["turns"][-1]["content"] == "Hello"
        assert history["turns"][-1]["error"] == "interrupted"
        assert history["turns"][-1]["stopped"] is False
        stored = await r.service.storage.get_conversation("Ada")
        assert stored is not None and stored.turns[-1].content == "Hello"


@pytest_twisted.ensureDeferred
async def test_queue_positions_and_busy(tmp_path: Path) -> None:
    async with (
        fake_llm() as fake,
        companion_server(tmp_path, [fake.url], ai={"concurrency": 1, "max_queue": 2}) as r,
    ):
        first, stall_a = stalled(["a1", " a2"], after=1)
        second, stall_b = stalled(["b1", " b2"], after=1)
        fake.script(first, second)
        tabs = {}
        for name in ("Ann", "Ben", "Cid", "Dot"):
            tabs[name], _ = await connect(r, await add_person(r.service.storage, name))

        assert (await send(tabs["Ann"], "first"))["type"] == "ack"
        await until(tabs["Ann"], "ai.delta")
        ben = await send(tabs["Ben"], "second")
        assert ben["type"] == "ack"
        assert await tabs["Ben"].next() == {
            "type": "ai.queued",
            "reply_id": ben["reply_id"],
            "position": 1,
        }
        cid = await send(tabs["Cid"], "third")
        assert await tabs["Cid"].next() == {
            "type": "ai.queued",
            "reply_id": cid["reply_id"],
            "position": 2,
        }
        busy = await send(tabs["Dot"], "fourth")
        assert busy["type"] == "error" and busy["code"] == "busy"

        stall_a.release()
        assert (await read_reply(tabs["Ann"])).end["text"] == "a1 a2"
        assert (await tabs["Ben"].next())["type"] == "ai.start"
        assert await tabs["Cid"].next() == {
            "type": "ai.queued",
            "reply_id": cid["reply_id"],
            "position": 1,
        }
        stall_b.release()
        assert (await read_reply(tabs["Ben"])).end["text"] == "b1 b2"
        cid_reply = await read_reply(tabs["Cid"])
        assert cid_reply.types[0] == "ai.start"
        assert cid_reply.end["text"] == NORMAL_REPLY
        # Dot may try again now.
        assert (await send(tabs["Dot"], "fourth"))["type"] == "ack"
        assert (await read_reply(tabs["Dot"])).end["type"] == "ai.done"


@pytest_twisted.ensureDeferred
async def test_two_peoples_conversations_never_mix(tmp_path: Path) -> None:
    async with fake_llm(scenario="echo") as fake, companion_server(tmp_path, [fake.url]) as r:
        ada, _ = await connect(r, await add_person(r.service.storage, "Ada"))
        zed, _ = await connect(r, await add_person(r.service.storage, "Zed", guest=True))
        for round_ in (1, 2):
            # Both at once: their replies stream side by side.
            await send(ada, f"ada says {round_}")
            await send(zed, f"zed says {round_}")
            ada_reply, zed_reply = await read_reply(ada), await read_reply(zed)
            assert ada_reply.end["text"] == f"ada says {round_}"
            assert zed_reply.end["text"] == f"zed says {round_}"
            assert {d["reply_id"] for d in ada_reply.deltas} == {ada_reply.end["reply_id"]}
        for request in fake.chat_requests:
            messages = request.body["messages"]
            system, turns = messages[0]["content"], messages[1:]
            who = "ada" if "Ada" in system else "zed"
            other = "zed" if who == "ada" else "ada"
            assert all(t["content"].startswith(f"{who} says") for t in turns), messages
            assert other not in json.dumps(messages).lower()
        last = [r.body["messages"] for r in fake.chat_requests[-2:]]
        assert sorted(len(m) for m in last) == [4, 4]  # system, prompt, reply, prompt
        # The guest's conversation is stored under "guest:Zed".
        stored = await r.service.storage.get_conversation("guest:Zed")
        assert stored is not None and len(stored.turns) == 4
        assert await r.service.storage.get_conversation("Zed") is None


@pytest_twisted.ensureDeferred
async def test_a_page_opened_mid_reply_catches_up_then_follows(tmp_path: Path) -> None:
    async with fake_llm() as fake, companion_server(tmp_path, [fake.url]) as r:
        token = await add_person(r.service.storage, "Ada")
        tab1, _ = await connect(r, token)
        stream, stall = stalled(["Hel", "lo", " there", " friend"], after=2)
        fake.script(stream)
        ack = await send(tab1, "greet me")
        first = await until(tab1, "ai.delta")
        first += await until(tab1, "ai.delta")
        start = first[0]

        tab2, _ = await connect(r, token)  # the reloaded page
        conversation = await tab2.request({"type": "ai.history", "id": "h"})
        assert conversation["type"] == "ai.conversation" and conversation["id"] == "h"
        assert conversation["conversation_id"] == ack["conversation_id"]
        assert conversation["title"] == "greet me"
        assert [(t["role"], t["content"]) for t in conversation["turns"]] == [("user", "greet me")]
        assert await tab2.next() == start
        assert await tab2.next() == {
            "type": "ai.delta",
            "reply_id": ack["reply_id"],
            "index": 2,
            "text": "Hello",
        }
        stall.release()
        for tab in (tab1, tab2):
            rest = await read_reply(tab)
            assert [d["index"] for d in rest.deltas] == [3, 4]
            assert rest.end["text"] == "Hello there friend"


@pytest_twisted.ensureDeferred
async def test_the_grace_period_stops_a_reply_nobody_watches(tmp_path: Path) -> None:
    async with (
        fake_llm() as fake,
        companion_server(tmp_path, [fake.url], ai={"grace_seconds": 30.0}) as r,
    ):
        clock = Clock()
        r.service.companion.companion.clock = clock
        token = await add_person(r.service.storage, "Ada")

        # Gone, then back before the grace period is over: the reply goes on.
        stream, stall = stalled(["one", " two"], after=1)
        fake.script(stream)
        tab, _ = await connect(r, token)
        await send(tab, "first")
        await until(tab, "ai.delta")
        tab.sendClose()
        await tab.closed

        async def all_closed() -> bool:
            return not r.service.ws_factory.connections

        await eventually(all_closed)
        back, _ = await connect(r, token)
        clock.advance(30)
        await back.request({"type": "ai.history"})
        stall.release()
        assert (await read_reply(back)).end["text"] == "one two"
        assert fake.chat_requests[0].state == "finished"
        await expect(back, "xp.update")

        # Gone for good: after the grace period the upstream request is closed.
        stream, stall = stalled(["three", " four"], after=1)
        fake.script(stream)
        await send(back, "second")
        await until(back, "ai.delta")
        back.sendClose()
        await back.closed
        await eventually(all_closed)
        clock.advance(29)
        assert fake.chat_requests[1].state == "open"
        clock.advance(1)
        assert await fake.chat_requests[1].outcome == "disconnected"

        async def stored() -> bool:
            conversation = await r.service.storage.get_conversation("Ada")
            return conversation is not None and len(conversation.turns) == 4

        await eventually(stored)
        again, _ = await connect(r, token)
        history = await again.request({"type": "ai.history"})
        assert history["turns"][-1]["content"] == "three"
        assert history["turns"][-1]["stopped"] is True
        stall.release()


@pytest_twisted.ensureDeferred
async def test_one_reply_at_a_time_per_person(tmp_path: Path) -> None:
    async with fake_llm() as fake, companion_server(tmp_path, [fake.url]) as r:
        token = await add_person(r.service.storage, "Ada")
        tab1, _ = await connect(r, token)
        tab2, _ = await connect(r, token)
        stream, stall = stalled(["a", " b"], after=1)
        fake.script(stream)
        await send(tab1, "one")
        await until(tab2, "ai.delta")
        refused = await send(tab2, "two", id="t")
        assert refused["type"] == "error" and refused["code"] == "in_progress"
        regenerate = await tab2.request({"type": "ai.regenerate", "id": "g"})
        assert regenerate["code"] == "in_progress"
        stall.release()
        await read_reply(tab2)


@pytest_twisted.ensureDeferred
async def test_prompt_filter_and_length_cap(tmp_path: Path) -> None:
    async with (
        fake_llm() as fake,
        companion_server(tmp_path, [fake.url], ai={"max_prompt_length": 30}) as r,
    ):
        token = await add_person(r.service.storage, "Ada")
        tab, _ = await connect(r, token)
        too_long = await send(tab, "x" * 31)
        assert too_long["type"] == "error" and too_long["code"] == "bad_request"
        assert "30" in too_long["message"]
        empty = await send(tab, " \u202e \n ")
        assert empty["code"] == "bad_request"
        not_text = await tab.request({"type": "ai.send", "text": 5})
        assert not_text["code"] == "bad_request"
        assert (await send(tab, "no Spamword\u0007 here")).get("type") == "ack"
        reply = await read_reply(tab)
        assert reply.frames[0]["prompt"] == "no ******** here"
        assert fake.chat_requests[-1].body["messages"][-1] == {
            "role": "user",
            "content": "no ******** here",
        }


@pytest_twisted.ensureDeferred
async def test_anonymous_connections_are_unauthenticated(tmp_path: Path) -> None:
    async with fake_llm() as fake, companion_server(tmp_path, [fake.url]) as r:
        anonymous, welcome = await connect(r)
        assert welcome["user"] is None
        for kind in (
            "ai.history",
            "ai.send",
            "ai.stop",
            "ai.regenerate",
            "ai.reset",
            "ai.conversations",
            "ai.load",
        ):
            answer = await anonymous.request({"type": kind, "id": kind, "text": "hi"})
            assert answer["type"] == "error" and answer["code"] == "unauthenticated", answer
            assert answer["id"] == kind
        assert fake.chat_requests == []


@pytest_twisted.ensureDeferred
async def test_the_system_prompt_is_the_persona_for_the_person(tmp_path: Path) -> None:
    async with fake_llm() as fake, companion_server(tmp_path, [fake.url]) as r:
        storage = r.service.storage
        token = await add_person(storage, "Ada")
        await storage.ensure_profile("Ada", 0.0)
        await storage.add_xp("Ada", 2600)  # level 2
        tab, _ = await connect(r, token)
        await send(tab, "hi")
        await read_reply(tab)
        system = fake.chat_requests[0].body["messages"][0]
        assert system == {"role": "system", "content": Persona.load("").render("Ada", 2)}
        assert "Ada" in system["content"] and "level 2" in system["content"]


@pytest_twisted.ensureDeferred
async def test_history_is_trimmed_to_the_context_budget(tmp_path: Path) -> None:
    persona = tmp_path / "persona.md.j2"
    persona.write_text("Calm companion for {{ username }}.")
    settings = {"context_tokens": 256, "max_tokens": 56, "persona_file": str(persona)}
    async with (
        fake_llm(scenario="echo") as fake,
        companion_server(tmp_path, [fake.url], ai=settings) as r,
    ):
        tab, _ = await connect(r, await add_person(r.service.storage, "Ada", guest=True))
        prompts = [f"round {i} " + "word " * 22 for i in range(1, 5)]
        trimmed = []
        for prompt in prompts:
            await send(tab, prompt)
            reply = await read_reply(tab)
            trimmed.append(reply.frames[0]["trimmed"])
        # 120 characters a turn: 34 tokens by the estimate. Budget 200, the
        # system prompt 13: the fourth request cannot carry all seven turns.
        assert trimmed == [0, 0, 0, 2]
        messages = fake.chat_requests[-1].body["messages"]
        assert messages[0] == {"role": "system", "content": "Calm companion for Ada."}
        contents = [m["content"] for m in messages[1:]]
        assert contents[0].startswith("round 2") and contents[-1].startswith("round 4")
        assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * 2 + ["user"]
        assert not any(c.startswith("round 1") for c in contents)
        # Trimming is for the backend only: everything stays stored.
        history = await tab.request({"type": "ai.history"})
        assert len(history["turns"]) == 8


@pytest_twisted.ensureDeferred
async def test_regenerate_replaces_the_last_reply(tmp_path: Path) -> None:
    async with fake_llm() as fake, companion_server(tmp_path, [fake.url]) as r:
        tab, _ = await connect(r, await add_person(r.service.storage, "Ada", guest=True))
        nothing = await tab.request({"type": "ai.regenerate", "id": 1})
        assert nothing["type"] == "error" and nothing["code"] == "bad_request"
        await send(tab, "tell me")
        first = await read_reply(tab)
        assert first.xp == []  # guests earn no XP
        fake.script(Stream(sse_events(["Another", " answer"])))
        ack = await tab.request({"type": "ai.regenerate", "id": 2})
        assert ack["type"] == "ack" and ack["reply_id"] != first.end["reply_id"]
        second = await read_reply(tab)
        assert second.frames[0]["prompt"] == "tell me"
        assert second.end["text"] == "Another answer"
        assert [m["role"] for m in fake.chat_requests[-1].body["messages"]] == ["system", "user"]
        history = await tab.request({"type": "ai.history"})
        assert [t["content"] for t in history["turns"]] == ["tell me", "Another answer"]

        async def recorded() -> bool:
            records = await r.service.storage.list_records(AIInteraction, "guest:Ada", 10)
            return len(records) == 2

        await eventually(recorded)
        records = await r.service.storage.list_records(AIInteraction, "guest:Ada", 10)
        assert [x.interaction_type for x in records] == ["regenerate", "reply"]


@pytest_twisted.ensureDeferred
async def test_health_reports_backends_and_queue_without_deciding_status(
    tmp_path: Path,
) -> None:
    refused = await closed_port_url(reactor)
    async with fake_llm() as fake, companion_server(tmp_path, [fake.url, refused]) as r:

        async def report() -> dict:
            response = await treq.get(r.http + "/health/api")
            return json.loads(await response.content())

        async def checked() -> bool:
            backends = (await report())["ai"]["backends"]
            return all(b["checked_at"] is not None for b in backends)

        await eventually(checked, turns=2000)
        health = await report()
        assert health["status"] == "ok"
        up, down = health["ai"]["backends"]
        assert up["url"] == fake.url and up["reachable"] is True and up["model"] == "fake-model"
        assert down["url"] == refused and down["reachable"] is False and down["error"]
        assert health["ai"]["queue"] == {"waiting": 0, "running": 0}

        stream, stall = stalled(["a", " b"], after=1)
        fake.script(stream)
        tab, _ = await connect(r, await add_person(r.service.storage, "Ada"))
        await send(tab, "hi")
        await until(tab, "ai.delta")
        assert (await report())["ai"]["queue"] == {"waiting": 0, "running": 1}
        stall.release()
        await read_reply(tab)
        await tick()

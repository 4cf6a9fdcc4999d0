"""The session service over the scripted model and the in-memory sandbox backend: turns,
queueing, abort, delete, retries, limits, permissions, events and restart recovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agentplex.agent.scripted import ScriptedProvider
from agentplex.agent.tools import SandboxTools
from agentplex.core.session_events import SessionEvent, SessionEventLog
from agentplex.core.session_model import Message, ModelRef
from agentplex.core.sessions import Prompt, PromptPart, SessionService
from agentplex.errors import (
    BadRequest,
    PermissionNotFound,
    SessionNotFound,
    SessionTerminated,
)
from agentplex.sandbox.memory import MemorySandbox
from agentplex.settings import AgentSettings

from .conftest import Core

SCRIPTED = ModelRef("scripted", "scripted-model")


def _shell(sandbox: MemorySandbox, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """``echo WORDS`` prints WORDS; anything else prints nothing."""
    script = " ".join([str(body.get("command", "")), *map(str, body.get("args") or [])])
    if kind == "command" and "echo " in script:
        return {"stdout": script.split("echo ", 1)[1].strip() + "\n", "exit_code": 0}
    return {"stdout": "", "exit_code": 0}


def text(value: str) -> Prompt:
    return Prompt(parts=[PromptPart("text", value)])


class Harness:
    def __init__(self, core: Core, service: SessionService, provider: ScriptedProvider) -> None:
        self.core = core
        self.service = service
        self.provider = provider
        self.env = core.env_id

    def events(self) -> list[SessionEvent]:
        return self.service.events.after(self.env, 0)

    def types(self, session_id: str) -> list[str]:
        return [e.type for e in self.events() if e.session_id == session_id]


@pytest.fixture
def make(core: Core) -> Callable[..., Any]:
    services: list[SessionService] = []
    core.backend.runner = _shell

    def build(provider: ScriptedProvider | None = None, **settings: Any) -> Harness:
        provider = provider or ScriptedProvider(slow_delay=0.2)
        agent = AgentSettings(model="scripted:scripted-model", retry_backoff_secs=0.01, **settings)
        service = SessionService(
            core.db,
            core.sandboxes,
            agent,
            [provider],
            [SandboxTools(core.backend)],
            SessionEventLog(),
        )
        services.append(service)
        return Harness(core, service, provider)

    return build


@pytest.fixture
async def h(make: Callable[..., Harness]) -> AsyncIterator[Harness]:
    harness = make()
    await harness.service.start()
    yield harness
    await harness.service.close()


async def test_a_prompt_is_answered_stored_and_streamed_in_order(h: Harness) -> None:
    session = await h.service.create(h.env)
    answer = await h.service.prompt(h.env, session.id, text("hello"))

    assert answer.role == "assistant" and answer.finish == "stop" and answer.error is None
    assert answer.text() == "Hello! I am a fake model."
    assert [p.type for p in answer.parts] == ["step-start", "reasoning", "text", "step-finish"]
    assert answer.tokens.output > 0 and answer.completed is not None
    stored = await h.service.messages(h.env, session.id)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[0].text() == "hello" and stored[1].text() == answer.text()

    types = h.types(session.id)
    assert types[0] == "session.created"
    assert types.index("message.updated") < types.index("message.part.updated")
    assert types[-1] == "session.idle"
    assert "message.part.delta" in types
    deltas = "".join(
        e.delta or ""
        for e in h.events()
        if e.type == "message.part.delta" and e.part and e.part.type == "text"
    )
    assert deltas == "Hello! I am a fake model."
    # every event carries an increasing seq: a reconnecting client resumes exactly
    seqs = [e.seq for e in h.events()]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    refreshed = await h.service.get(h.env, session.id)
    assert refreshed.turn_count == 1 and refreshed.tokens.output == answer.tokens.output


async def test_a_tool_call_runs_in_the_sessions_own_sandbox(h: Harness) -> None:
    session = await h.service.create(h.env)
    assert session.sandbox_id is None
    answer = await h.service.prompt(h.env, session.id, text("run a TOOL please"))

    assert answer.text() == "The command printed: hello-from-tool"
    messages = await h.service.messages(h.env, session.id)
    assert [m.role for m in messages] == ["user", "assistant", "assistant"]
    step1 = messages[1]
    assert step1.finish == "tool-calls"
    tool = next(p for p in step1.parts if p.type == "tool")
    assert tool.data["state"]["status"] == "completed"
    assert tool.data["state"]["input"] == {"command": "echo hello-from-tool"}
    assert "hello-from-tool" in tool.data["state"]["output"]
    statuses = [
        e.part.data["state"]["status"]
        for e in h.events()
        if e.type == "message.part.updated" and e.part and e.part.type == "tool"
    ]
    assert statuses[0] == "pending" and statuses[-1] == "completed" and "running" in statuses
    sandbox_id = (await h.service.get(h.env, session.id)).sandbox_id
    assert sandbox_id in h.core.backend.sandboxes
    # the second tool call reuses the sandbox
    await h.service.prompt(h.env, session.id, text("again a TOOL"))
    assert (await h.service.get(h.env, session.id)).sandbox_id == sandbox_id
    # the model saw the tool result in its history
    last = h.provider.requests[-1]
    assert any(m.role == "tool" for m in last.messages)


async def test_a_prompt_while_busy_queues_behind_the_running_turn(
    make: Callable[..., Harness],
) -> None:
    h = make(ScriptedProvider(delay=0.02))
    await h.service.start()
    session = await h.service.create(h.env)
    first = asyncio.create_task(h.service.prompt(h.env, session.id, text("one")))
    await asyncio.sleep(0)
    second = asyncio.create_task(h.service.prompt(h.env, session.id, text("two")))
    a, b = await asyncio.gather(first, second)
    messages = await h.service.messages(h.env, session.id)
    users = [m for m in messages if m.role == "user"]
    assert a.parent_id == users[0].id and b.parent_id == users[1].id
    assert h.types(session.id).count("session.idle") == 1
    await h.service.close()


async def test_abort_ends_the_turn_within_a_second_and_the_session_stays_usable(
    h: Harness,
) -> None:
    session = await h.service.create(h.env)
    await h.service.prompt_async(h.env, session.id, text("SLOW please"))
    await asyncio.sleep(0.5)
    assert h.service.status(h.env) == {session.id: {"type": "busy"}}
    started = time.monotonic()
    assert await h.service.abort(h.env, session.id) is True
    assert time.monotonic() - started < 1.0
    assert h.service.status(h.env) == {}
    messages = await h.service.messages(h.env, session.id)
    aborted = messages[-1]
    assert aborted.error is not None and aborted.error["name"] == "MessageAbortedError"
    assert aborted.completed is not None and aborted.finish is None
    assert h.types(session.id)[-1] == "session.idle"
    answer = await h.service.prompt(h.env, session.id, text("hello again"))
    assert answer.text() == "Hello! I am a fake model."


async def test_abort_of_an_unknown_or_idle_session_is_true(h: Harness) -> None:
    assert await h.service.abort(h.env, "ses_nope") is True


async def test_delete_mid_answer_stops_the_turn_and_the_session_is_not_busy(h: Harness) -> None:
    session = await h.service.create(h.env)
    await h.service.prompt_async(h.env, session.id, text("SLOW"))
    await asyncio.sleep(0.3)
    await h.service.delete(h.env, session.id)
    assert h.service.status(h.env) == {}
    count = len(h.events())
    await asyncio.sleep(0.5)
    assert not [e for e in h.events()[count:] if e.type == "message.part.delta"]
    with pytest.raises(SessionTerminated):
        await h.service.prompt(h.env, session.id, text("hi"))
    with pytest.raises(SessionTerminated):
        await h.service.delete(h.env, session.id)
    assert (await h.service.get(h.env, session.id)).status == "terminated"
    listed, _ = await h.service.list(h.env)
    assert session.id not in [s.id for s in listed]


async def test_delete_reclaims_the_sandbox(h: Harness) -> None:
    session = await h.service.create(h.env)
    await h.service.prompt(h.env, session.id, text("TOOL"))
    sandbox_id = (await h.service.get(h.env, session.id)).sandbox_id
    await h.service.delete(h.env, session.id)
    assert sandbox_id not in h.core.backend.sandboxes


async def test_a_failing_provider_is_retried_then_the_turn_ends_with_an_error(
    make: Callable[..., Harness],
) -> None:
    h = make(max_retries=2)
    await h.service.start()
    try:
        session = await h.service.create(h.env)
        answer = await h.service.prompt(h.env, session.id, text("FAIL"))
        assert answer.error is not None and answer.error["name"] == "APIError"
        assert answer.error["data"]["statusCode"] == 500
        assert len(h.provider.requests) == 3
        retries = [
            e.status
            for e in h.events()
            if e.type == "session.status" and e.status and e.status["type"] == "retry"
        ]
        assert [r["attempt"] for r in retries] == [1, 2]
        assert "session.error" in h.types(session.id)
        assert h.types(session.id)[-1] == "session.idle"
        # a 400 is not retried
        before = len(h.provider.requests)
        answer = await h.service.prompt(h.env, session.id, text("BAD"))
        assert answer.error["data"]["statusCode"] == 400
        assert len(h.provider.requests) == before + 1
        # still usable
        assert (await h.service.prompt(h.env, session.id, text("hi"))).error is None
    finally:
        await h.service.close()


async def test_a_stream_dropped_mid_answer_is_retried_without_duplicating_text(
    h: Harness,
) -> None:
    session = await h.service.create(h.env)
    answer = await h.service.prompt(h.env, session.id, text("FLAKY"))
    assert answer.error is None
    assert [p.type for p in answer.parts].count("text") == 1
    assert "message.part.removed" in h.types(session.id)


async def test_no_model_ends_the_turn_with_an_error_that_says_how_to_configure_one(
    core: Core,
) -> None:
    service = SessionService(
        core.db,
        core.sandboxes,
        AgentSettings(),
        [],
        [SandboxTools(core.backend)],
        SessionEventLog(),
    )
    await service.start()
    try:
        session = await service.create(core.env_id)
        answer = await service.prompt(core.env_id, session.id, text("hello"))
        assert answer.error is not None
        assert "OPENAI_API_KEY" in answer.error["data"]["message"]
        events = service.events.after(core.env_id, 0)
        assert any(e.type == "session.error" for e in events)
        assert events[-1].type == "session.idle"
    finally:
        await service.close()


async def test_step_budget_ends_the_turn_cleanly_with_a_note(make: Callable[..., Harness]) -> None:
    h = make(max_turns=1)
    await h.service.start()
    try:
        session = await h.service.create(h.env)
        answer = await h.service.prompt(h.env, session.id, text("TOOL"))
        notes = [p for p in answer.parts if p.type == "text" and p.data.get("synthetic")]
        assert notes and "agent.max_turns" in notes[0].data["text"]
        assert answer.error is None
    finally:
        await h.service.close()


async def test_tool_call_budget(make: Callable[..., Harness]) -> None:
    h = make(max_tool_calls_per_turn=0)
    await h.service.start()
    try:
        session = await h.service.create(h.env)
        answer = await h.service.prompt(h.env, session.id, text("TOOL"))
        tool = next(p for p in answer.parts if p.type == "tool")
        assert tool.data["state"]["status"] == "error"
        assert "max_tool_calls_per_turn" in answer.text() or any(
            "max_tool_calls_per_turn" in str(p.data.get("text")) for p in answer.parts
        )
    finally:
        await h.service.close()


async def _permission(h: Harness, session_id: str) -> dict[str, Any]:
    for _ in range(200):
        for e in h.events():
            if e.type == "permission.updated" and e.session_id == session_id:
                return e.extra
        await asyncio.sleep(0.01)
    raise AssertionError("no permission.updated event")


async def test_ask_pauses_the_turn_until_answered_once(make: Callable[..., Harness]) -> None:
    h = make(permissions={"bash": "ask"})
    await h.service.start()
    try:
        session = await h.service.create(h.env)
        turn = asyncio.create_task(h.service.prompt(h.env, session.id, text("TOOL")))
        request = await _permission(h, session.id)
        assert request["type"] == "bash" and request["pattern"] == "echo hello-from-tool"
        asked = [e.extra for e in h.events() if e.type == "permission.asked"]
        assert asked and asked[0]["id"] == request["id"]
        assert asked[0]["patterns"] == ["echo hello-from-tool"] and asked[0]["permission"] == "bash"
        assert not turn.done()
        with pytest.raises(PermissionNotFound):
            await h.service.reply_permission(h.env, session.id, "per_nope", "once")
        await h.service.reply_permission(h.env, session.id, request["id"], "once")
        answer = await asyncio.wait_for(turn, 5)
        assert answer.text() == "The command printed: hello-from-tool"
    finally:
        await h.service.close()


async def test_reject_fails_the_tool_and_ends_the_turn(make: Callable[..., Harness]) -> None:
    h = make(permissions={"*": "ask"})
    await h.service.start()
    try:
        session = await h.service.create(h.env)
        turn = asyncio.create_task(h.service.prompt(h.env, session.id, text("TOOL")))
        request = await _permission(h, session.id)
        await h.service.reply_permission(h.env, session.id, request["id"], "reject")
        answer = await asyncio.wait_for(turn, 5)
        tool = next(p for p in answer.parts if p.type == "tool")
        assert tool.data["state"]["status"] == "error"
        assert "rejected" in tool.data["state"]["error"]
        assert answer.finish == "tool-calls"
    finally:
        await h.service.close()


async def test_deny_refuses_without_asking(make: Callable[..., Harness]) -> None:
    h = make(permissions={"bash": "deny"})
    await h.service.start()
    try:
        session = await h.service.create(h.env)
        answer = await h.service.prompt(h.env, session.id, text("TOOL"))
        messages = await h.service.messages(h.env, session.id)
        tool = next(p for p in messages[1].parts if p.type == "tool")
        assert tool.data["state"]["status"] == "error"
        assert answer.error is None
    finally:
        await h.service.close()


async def test_bad_input_is_refused_before_anything_is_stored(h: Harness) -> None:
    session = await h.service.create(h.env)
    with pytest.raises(BadRequest):
        await h.service.prompt(h.env, session.id, Prompt(parts=[]))
    with pytest.raises(BadRequest):
        await h.service.prompt(h.env, session.id, text("   "))
    with pytest.raises(BadRequest):
        await h.service.prompt(h.env, session.id, Prompt(parts=[PromptPart("video", "x")]))  # type: ignore[arg-type]
    with pytest.raises(BadRequest):
        await h.service.prompt(
            h.env, session.id, Prompt(parts=[PromptPart("text", "hi")], model=ModelRef("nope", "x"))
        )
    with pytest.raises(SessionNotFound):
        await h.service.prompt(h.env, "ses_missing", text("hi"))
    assert await h.service.messages(h.env, session.id) == []


async def test_a_turn_running_when_the_server_died_ends_as_an_error(
    make: Callable[..., Harness],
) -> None:
    h = make()
    await h.service.start()
    session = await h.service.create(h.env)
    await h.service.prompt_async(h.env, session.id, text("SLOW"))
    await asyncio.sleep(0.3)
    # the process dies: nothing closes the turn (no close(), the task is just dropped)
    for runner in list(h.service._runners.values()):
        assert runner.task is not None
        runner.task.cancel()
    await asyncio.sleep(0.05)
    # the cancelled turn stored an aborted message; make the store look like a crash did
    from agentplex.db.records import sessions as store

    await h.service._writer.flush()

    async with h.core.db.write() as conn:
        messages = await store.list_messages(conn, session.id)
        messages[-1].completed = None
        messages[-1].error = None
        await store.save_message(conn, messages[-1])
    restarted = make()
    await restarted.service.start()
    try:
        messages = await restarted.service.messages(h.env, session.id)
        assert messages[-1].completed is not None
        assert messages[-1].error is not None and messages[-1].error["name"] == "UnknownError"
        answer = await restarted.service.prompt(h.env, session.id, text("hi"))
        assert answer.error is None
    finally:
        await restarted.service.close()
        await h.service.close()


async def test_replay_from_a_cursor_is_exact(h: Harness) -> None:
    session = await h.service.create(h.env)
    await h.service.prompt(h.env, session.id, text("hello"))
    middle = h.events()[len(h.events()) // 2].seq
    got: list[int] = []
    before = h.service.events.last_seq(h.env)
    async with h.service.events.subscribe(h.env, after=middle) as events:
        turn = asyncio.create_task(h.service.prompt(h.env, session.id, text("again")))
        async for event in events:
            got.append(event.seq)
            if event.type == "session.idle" and event.seq > before:
                break
    await turn
    assert got == list(range(middle + 1, got[-1] + 1))


async def test_fork_and_children(h: Harness) -> None:
    parent = await h.service.create(h.env, title="Parent")
    child = await h.service.create(h.env, parent_id=parent.id)
    assert [s.id for s in await h.service.children(h.env, parent.id)] == [child.id]
    await h.service.prompt(h.env, parent.id, text("hello"))
    fork = await h.service.fork(h.env, parent.id)
    assert fork.title == "Parent (fork #1)"
    copied: list[Message] = await h.service.messages(h.env, fork.id)
    original = await h.service.messages(h.env, parent.id)
    assert [m.text() for m in copied] == [m.text() for m in original]
    assert {m.id for m in copied}.isdisjoint({m.id for m in original})


async def test_shell_runs_a_command_without_the_model(h: Harness) -> None:
    session = await h.service.create(h.env)
    message = await h.service.shell(h.env, session.id, "echo from-shell")
    tool = message.parts[0]
    assert tool.data["tool"] == "bash" and tool.data["state"]["status"] == "completed"
    assert "from-shell" in tool.data["state"]["output"]
    assert h.provider.requests == []


async def test_sessions_go_idle_when_quiet_then_terminate(make: Callable[..., Harness]) -> None:
    h = make(idle_after_secs=1, session_timeout_secs=2)
    await h.service.start()
    try:
        session = await h.service.create(h.env)
        await asyncio.sleep(1.6)
        assert (await h.service.get(h.env, session.id)).status == "idle"
        await asyncio.sleep(1.2)
        assert (await h.service.get(h.env, session.id)).status == "terminated"
    finally:
        await h.service.close()


async def test_abort_right_after_the_prompt_still_aborts_its_turn(h: Harness) -> None:
    session = await h.service.create(h.env)
    turn = asyncio.create_task(h.service.prompt(h.env, session.id, text("SLOW")))
    await asyncio.sleep(0)  # the prompt is queued; its turn has not begun
    for _ in range(50):
        if h.service.status(h.env):
            break
        await asyncio.sleep(0)
    started = time.monotonic()
    await h.service.abort(h.env, session.id)
    answer = await asyncio.wait_for(turn, 2)
    assert time.monotonic() - started < 1.0
    assert answer.error is not None and answer.error["name"] == "MessageAbortedError"
    assert h.service.status(h.env) == {}


async def test_a_session_id_taken_in_another_environment_is_a_clear_error(h: Harness) -> None:
    from agentplex.core import environments

    async with h.core.db.write() as conn:
        other = await environments.create(conn, "other")
    await h.service.create(h.env, session_id="shared-name")
    with pytest.raises(BadRequest, match="in use"):
        await h.service.create(other.id, session_id="shared-name")


async def test_a_prompt_past_the_size_cap_is_refused(h: Harness) -> None:
    session = await h.service.create(h.env)
    with pytest.raises(BadRequest, match="too large"):
        await h.service.prompt(h.env, session.id, text("y" * (1024 * 1024 + 1)))


async def test_fields_past_their_column_are_refused_not_a_database_error(h: Harness) -> None:
    with pytest.raises(BadRequest, match="user_id"):
        await h.service.create(h.env, user_id="0" * 201)
    with pytest.raises(BadRequest, match="channel"):
        await h.service.create(h.env, channel="c" * 65)
    with pytest.raises(BadRequest, match="session id"):
        await h.service.create(h.env, session_id="s" * 65)
    session = await h.service.create(h.env, session_id="s" * 64)
    with pytest.raises(BadRequest, match="NUL"):
        await h.service.update(h.env, session.id, title="a\x00b")


async def test_a_queued_prompt_sees_the_conversation_up_to_itself(
    make: Callable[..., Harness],
) -> None:
    h = make(ScriptedProvider(delay=0.02))
    await h.service.start()
    try:
        session = await h.service.create(h.env)
        turns = [
            asyncio.create_task(h.service.prompt(h.env, session.id, text(f"prompt {i}")))
            for i in range(3)
        ]
        await asyncio.gather(*turns)
        for i, request in enumerate(h.provider.requests):
            roles = [m.role for m in request.messages]
            assert roles == ["user", "assistant"] * i + ["user"], roles
            assert request.messages[-1].text == f"prompt {i}"
    finally:
        await h.service.close()


async def test_a_client_message_id_must_be_new_and_well_formed(h: Harness) -> None:
    one = await h.service.create(h.env)
    two = await h.service.create(h.env)
    await h.service.prompt(
        h.env, one.id, Prompt(parts=[PromptPart("text", "a")], message_id="msg_client0001")
    )
    with pytest.raises(BadRequest, match="already used"):
        await h.service.prompt(
            h.env, two.id, Prompt(parts=[PromptPart("text", "b")], message_id="msg_client0001")
        )
    for bad in ("m" * 65, "bad id", "msg_../x"):
        with pytest.raises(BadRequest, match="messageID"):
            await h.service.prompt(
                h.env, two.id, Prompt(parts=[PromptPart("text", "b")], message_id=bad)
            )


async def test_event_ids_go_on_increasing_across_a_restart() -> None:
    before = SessionEventLog()
    last = before.append("env", "session.idle", "ses_1").seq
    after = SessionEventLog()  # a new process
    assert after.append("env", "session.idle", "ses_1").seq > last


async def test_a_prompt_queued_when_the_server_died_is_answered_with_an_error(
    make: Callable[..., Harness],
) -> None:
    h = make()
    await h.service.start()
    session = await h.service.create(h.env)
    await h.service.prompt_async(h.env, session.id, text("SLOW"))
    queued = await h.service.prompt_async(h.env, session.id, text("queued behind"))
    await asyncio.sleep(0.3)
    await h.service._writer.flush()
    for runner in list(h.service._runners.values()):  # the process dies: nothing more runs
        assert runner.task is not None
        runner.task.cancel()
    from agentplex.db.records import sessions as store

    await asyncio.sleep(0.05)
    await h.service._writer.flush()
    async with h.core.db.write() as conn:  # as a crash leaves it: the queued prompt unmarked
        stored = await store.get_message(conn, session.id, queued.id)
        assert stored is not None
        stored.completed = None
        await store.save_message(conn, stored)
        for m in await store.list_messages(conn, session.id):
            if m.role == "assistant" and m.parent_id == queued.id:
                raise AssertionError("the queued prompt was answered before the crash")
    restarted = make()
    await restarted.service.start()
    try:
        messages = await restarted.service.messages(h.env, session.id)
        answers = [m for m in messages if m.parent_id == queued.id]
        assert len(answers) == 1 and answers[0].error is not None
        assert "send it again" in answers[0].error["data"]["message"]
    finally:
        await restarted.service.close()
        await h.service.close()

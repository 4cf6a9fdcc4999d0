"""The scripted model: the answers most tests are built on, and its script forms."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from agentplex.agent.scripted import (
    MODEL_ID,
    TOOL_ARGS,
    UNICODE_TEXT,
    ScriptedProvider,
    tool_call_events,
)
from agentplex.core.ports import (
    ChatMessage,
    ModelEvent,
    ModelRequest,
    ReasoningDelta,
    StepFinished,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
    ToolSpec,
)
from agentplex.errors import ModelProviderError

TOOLS = (
    ToolSpec("bash", "Run a shell command", {"type": "object"}),
    ToolSpec("read", "Read a file", {"type": "object"}),
)


def request(*messages: ChatMessage, tools: tuple[ToolSpec, ...] = TOOLS) -> ModelRequest:
    return ModelRequest(MODEL_ID, "You are a test.", messages, tools)


def user(text: str) -> ModelRequest:
    return request(ChatMessage("user", text))


async def collect(provider: ScriptedProvider, req: ModelRequest) -> list[ModelEvent]:
    return [event async for event in provider.stream(req)]


def text_of(events: list[ModelEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def finished(events: list[ModelEvent]) -> StepFinished:
    steps = [e for e in events if isinstance(e, StepFinished)]
    assert len(steps) == 1, "usage must be reported exactly once"
    assert events[-1] is steps[0]
    return steps[0]


async def test_a_greeting_streams_reasoning_then_text_in_chunks() -> None:
    provider = ScriptedProvider()
    events = await collect(provider, user("hello there"))
    assert isinstance(events[0], ReasoningDelta)
    assert text_of(events) == "Hello! I am a fake model."
    assert sum(isinstance(e, TextDelta) for e in events) == 4
    done = finished(events)
    assert done.reason == "stop"
    assert done.usage.input > 0 and done.usage.output == 5
    assert provider.models()[0].id == MODEL_ID == "scripted-model"
    assert provider.id == "scripted"


async def test_it_records_each_request_it_got() -> None:
    provider = ScriptedProvider()
    first, second = user("one"), user("two")
    await collect(provider, first)
    await collect(provider, second)
    assert provider.requests == [first, second]


async def test_tool_asks_for_bash_with_arguments_in_pieces() -> None:
    events = await collect(ScriptedProvider(), user("please TOOL"))
    started = [e for e in events if isinstance(e, ToolCallStarted)]
    pieces = [e.arguments for e in events if isinstance(e, ToolCallDelta)]
    ready = [e for e in events if isinstance(e, ToolCallReady)]
    assert [s.name for s in started] == ["bash"]
    assert len(pieces) >= 2
    assert json.loads("".join(pieces)) == TOOL_ARGS
    assert ready[0].call.arguments == TOOL_ARGS
    assert ready[0].call.call_id == started[0].call_id
    assert finished(events).reason == "tool-calls"


async def test_tool_without_tools_offered_answers_in_text() -> None:
    events = await collect(ScriptedProvider(), request(ChatMessage("user", "TOOL"), tools=()))
    assert not any(isinstance(e, ToolCallStarted) for e in events)
    assert finished(events).reason == "stop"


async def test_a_tool_result_is_answered_with_its_first_line() -> None:
    call = ToolCall("call_1", "bash", TOOL_ARGS)
    events = await collect(
        ScriptedProvider(),
        request(
            ChatMessage("user", "TOOL"),
            ChatMessage("assistant", tool_calls=(call,)),
            ChatMessage("tool", "hello-from-tool\nsecond line", call_id="call_1", tool_name="bash"),
        ),
    )
    assert text_of(events) == "The command printed: hello-from-tool"


async def test_toolerr_reads_a_missing_file() -> None:
    events = await collect(ScriptedProvider(), user("TOOLERR"))
    ready = next(e for e in events if isinstance(e, ToolCallReady))
    assert ready.call.name == "read"
    assert ready.call.arguments == {"filePath": "does-not-exist.txt"}


async def test_fail_is_a_retryable_500_and_bad_a_final_400() -> None:
    with pytest.raises(ModelProviderError) as fail:
        await collect(ScriptedProvider(), user("FAIL"))
    assert fail.value.retryable and fail.value.status_code == 500
    assert "scripted failure 500" in (fail.value.body or "")
    with pytest.raises(ModelProviderError) as bad:
        await collect(ScriptedProvider(), user("BAD"))
    assert not bad.value.retryable and bad.value.status_code == 400


async def test_drop_sends_part_of_an_answer_then_fails_retryably() -> None:
    seen: list[ModelEvent] = []
    with pytest.raises(ModelProviderError) as dropped:
        async for event in ScriptedProvider().stream(user("DROP")):
            seen.append(event)
    assert dropped.value.retryable
    assert text_of(seen) == "Partial answer "


async def test_flaky_fails_once_then_answers() -> None:
    provider = ScriptedProvider()
    req = user("FLAKY")
    with pytest.raises(ModelProviderError):
        await collect(provider, req)
    events = await collect(provider, req)
    assert text_of(events) == "Hello! I am a fake model."


async def test_slow_sends_forty_chunks_spaced_out() -> None:
    start = time.monotonic()
    events = await collect(ScriptedProvider(slow_delay=0.01), user("SLOW"))
    assert sum(isinstance(e, TextDelta) for e in events) == 40
    assert time.monotonic() - start >= 0.4


async def test_a_slow_answer_stops_when_its_reader_leaves() -> None:
    stream = ScriptedProvider(slow_delay=0.05).stream(user("SLOW"))
    first = await anext(stream)  # type: ignore[call-overload]
    assert first == TextDelta("word0 ")
    task = asyncio.ensure_future(anext(stream))  # type: ignore[call-overload]
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(StopAsyncIteration):
        await anext(stream)  # type: ignore[call-overload]


async def test_reason_thinks_before_answering() -> None:
    events = await collect(ScriptedProvider(), user("REASON please"))
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("ReasoningDelta") < kinds.index("TextDelta")
    assert text_of(events) == "The answer is 42."


async def test_big_is_hundreds_of_kib_of_multibyte_text_in_many_chunks() -> None:
    events = await collect(ScriptedProvider(), user("BIG"))
    text = text_of(events)
    assert len(text.encode()) >= 300 * 1024
    assert "日本語" in text and "\U0001f600" in text
    assert sum(isinstance(e, TextDelta) for e in events) > 50
    assert finished(events).usage.output > 50


async def test_unicode_chunks_split_characters_from_their_marks() -> None:
    events = await collect(ScriptedProvider(), user("UNICODE"))
    chunks = [e.text for e in events if isinstance(e, TextDelta)]
    assert "".join(chunks) == UNICODE_TEXT
    assert any(c.startswith("\u0301") for c in chunks)  # the accent comes apart from its e
    assert any(c.startswith("\u200d") for c in chunks)  # an emoji sequence comes apart


async def test_token_mode_streams_n_tokens_without_delay() -> None:
    start = time.monotonic()
    events = await collect(ScriptedProvider(tokens=200), user("hi"))
    assert sum(isinstance(e, TextDelta) for e in events) == 200
    assert not any(isinstance(e, ReasoningDelta) for e in events)
    assert finished(events).usage.output == 200
    assert time.monotonic() - start < 0.5


async def test_a_callable_script_gets_each_request_and_none_means_default() -> None:
    def script(req: ModelRequest) -> list[object] | None:
        if req.messages[-1].text == "custom":
            return ["Cus", "tom", 0.001, ToolCall("c1", "bash", {"command": "ls"})]
        return None

    provider = ScriptedProvider(script)  # type: ignore[arg-type]
    events = await collect(provider, user("custom"))
    assert text_of(events) == "Custom"
    assert next(e for e in events if isinstance(e, ToolCallReady)).call.arguments == {
        "command": "ls"
    }
    assert finished(events).reason == "tool-calls"
    assert text_of(await collect(provider, user("hello"))) == "Hello! I am a fake model."


async def test_a_script_of_steps_is_used_in_order_then_the_defaults() -> None:
    async def streamed(req: ModelRequest) -> AsyncIterator[ModelEvent]:
        yield TextDelta("from a generator")

    error = ModelProviderError("boom", retryable=True)
    provider = ScriptedProvider([["first"], streamed(user("x")), ["half", error]])
    assert text_of(await collect(provider, user("a"))) == "first"
    assert text_of(await collect(provider, user("b"))) == "from a generator"
    with pytest.raises(ModelProviderError, match="boom"):
        await collect(provider, user("c"))
    assert text_of(await collect(provider, user("d"))) == "Hello! I am a fake model."


def test_tool_call_events_split_the_arguments() -> None:
    call = ToolCall("c", "write", {"filePath": "a.txt", "content": "héllo"})
    events = tool_call_events(call, pieces=4)
    assert events[0] == ToolCallStarted("c", "write")
    assert events[-1] == ToolCallReady(call)
    pieces = [e.arguments for e in events if isinstance(e, ToolCallDelta)]
    assert len(pieces) == 4
    assert json.loads("".join(pieces)) == dict(call.arguments)

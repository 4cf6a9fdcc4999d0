"""Our model request (`core.ports.ModelRequest`) as pydantic-ai messages and request parameters.

The history is repaired on the way so that no provider rejects it: an assistant tool call
without a result (a turn that was aborted mid-tool) gets a "no result" answer, a tool result
whose call is not in the history goes as user text, empty messages are left out, and
consecutive messages of one side are sent as one. Reasoning is not sent back: without the
provider's signature Anthropic refuses it and OpenAI-compatible servers ignore it.
"""

from __future__ import annotations

from typing import Any

from pydantic_ai import messages as pai
from pydantic_ai.models import ModelRequestParameters
from pydantic_ai.tools import ToolDefinition

from agentplex.core.ports import ChatMessage, ModelRequest

NO_RESULT = "The tool call did not complete (the turn was interrupted); it has no result."

_RequestPart = pai.SystemPromptPart | pai.UserPromptPart | pai.ToolReturnPart
_ResponsePart = pai.TextPart | pai.ToolCallPart


def to_messages(request: ModelRequest) -> list[pai.ModelMessage]:
    """The system prompt and history of ``request`` as pydantic-ai messages, oldest first."""
    out: list[pai.ModelMessage] = []
    pending: list[_RequestPart] = []
    if request.system:
        pending.append(pai.SystemPromptPart(request.system))
    answered = {m.call_id for m in request.messages if m.role == "tool"}
    called: set[str] = set()
    history = request.messages
    for index, message in enumerate(history):
        if message.role == "assistant":
            parts = _response_parts(message)
            if not parts:
                continue
            if pending:
                out.append(pai.ModelRequest(parts=pending))
                pending = []
            _append_response(out, parts)
            called.update(call.call_id for call in message.tool_calls)
            # a call whose result never came: answer it before anything else is said
            missing = [c for c in message.tool_calls if c.call_id not in answered]
            for call in missing:
                pending.append(
                    pai.ToolReturnPart(call.name, NO_RESULT, call.call_id, outcome="interrupted")
                )
        elif message.role == "tool":
            if message.call_id in called:
                pending.append(
                    pai.ToolReturnPart(
                        message.tool_name,
                        message.text,
                        message.call_id,
                        outcome="failed" if message.is_error else "success",
                    )
                )
            else:
                pending.append(pai.UserPromptPart(_orphan_result(message)))
        elif message.text:
            pending.append(pai.UserPromptPart(message.text))
        elif index == len(history) - 1:
            pending.append(pai.UserPromptPart(" "))  # a request must end with something to answer
    if pending:
        out.append(pai.ModelRequest(parts=pending))
    if not out:
        out.append(pai.ModelRequest(parts=[pai.UserPromptPart(" ")]))
    return out


def to_parameters(request: ModelRequest) -> ModelRequestParameters:
    """The tools of ``request`` as pydantic-ai function tools."""
    return ModelRequestParameters(
        function_tools=[
            ToolDefinition(
                name=tool.name,
                description=tool.description,
                parameters_json_schema=_schema(tool.parameters),
            )
            for tool in request.tools
        ]
    )


def _response_parts(message: ChatMessage) -> list[_ResponsePart]:
    parts: list[_ResponsePart] = []
    if message.text:
        parts.append(pai.TextPart(message.text))
    for call in message.tool_calls:
        parts.append(pai.ToolCallPart(call.name, dict(call.arguments), call.call_id))
    return parts


def _append_response(out: list[pai.ModelMessage], parts: list[_ResponsePart]) -> None:
    last = out[-1] if out else None
    if isinstance(last, pai.ModelResponse):
        last.parts = [*last.parts, *parts]
    else:
        out.append(pai.ModelResponse(parts=parts))


def _orphan_result(message: ChatMessage) -> str:
    state = "failed" if message.is_error else "returned"
    return f"(Tool {message.tool_name or 'call'} {state}:)\n{message.text}"


def _schema(parameters: Any) -> dict[str, Any]:
    schema = dict(parameters) if parameters else {}
    schema.setdefault("type", "object")
    if schema["type"] == "object":
        schema.setdefault("properties", {})
    return schema

"""pydantic-ai's stream events as our model events (`core.ports.ModelEvent`).

pydantic-ai announces each part of a response with a start event that may already hold some
of its content, then deltas, then an end event with the whole part; a start event for an
index it has seen replaces that part. `StreamTranslator` turns that into plain appends: every
character of text, reasoning and tool-call arguments is sent exactly once, in order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic_ai import messages as pai

from agentplex.core.ports import (
    ModelEvent,
    ReasoningDelta,
    StepFinished,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
    Usage,
)

StopReason = Literal["stop", "tool-calls", "length", "other"]


@dataclass(slots=True)
class _Part:
    kind: str  # "text" | "thinking" | "tool"
    sent: str = ""  # what was streamed of the part so far
    call_id: str = ""  # ours: unique within the step
    source_id: str = ""  # the provider's
    name: str = ""


@dataclass(slots=True)
class StreamTranslator:
    """Feed it pydantic-ai events in order, then `finish` with the final response."""

    _parts: dict[int, _Part] = field(default_factory=dict)
    _call_ids: set[str] = field(default_factory=set)

    @property
    def tool_calls(self) -> int:
        """How many tool calls the response made so far."""
        return sum(1 for p in self._parts.values() if p.kind == "tool")

    def feed(self, event: pai.ModelResponseStreamEvent) -> Iterator[ModelEvent]:
        """Our events for one pydantic-ai event (none for those we do not show)."""
        if isinstance(event, pai.PartStartEvent | pai.PartEndEvent):
            yield from self._part(event.index, event.part)
        elif isinstance(event, pai.PartDeltaEvent):
            yield from self._delta(event.index, event.delta)

    def finish(self, response: pai.ModelResponse) -> Iterator[ModelEvent]:
        """What is left once the stream ended: each tool call's `ToolCallReady` (its arguments
        complete: another call's pieces may come between a call's own), then `StepFinished`."""
        final = {p.tool_call_id: p for p in response.parts if isinstance(p, pai.ToolCallPart)}
        seen = {state.source_id for state in self._parts.values() if state.kind == "tool"}
        # a call the stream never showed (an adapter that hands over the whole answer at once)
        for source_id, late in final.items():
            if source_id not in seen:
                yield from self._part(max(self._parts, default=-1) + 1, late)
        for state in self._parts.values():
            if state.kind != "tool":
                continue
            part = final.get(state.source_id)
            if part is not None:
                yield from self._args(state, part.args)
            yield ToolCallReady(ToolCall(state.call_id, state.name, parse_arguments(state.sent)))
        yield StepFinished(self._reason(response.finish_reason), usage_of(response.usage))

    def _part(self, index: int, part: pai.ModelResponsePart) -> Iterator[ModelEvent]:
        if isinstance(part, pai.TextPart):
            yield from self._text(index, "text", part.content)
        elif isinstance(part, pai.ThinkingPart):
            yield from self._text(index, "thinking", part.content)
        elif isinstance(part, pai.ToolCallPart):
            state = self._parts.get(index)
            if state is None or state.kind != "tool":
                state = self._parts[index] = _Part("tool", name=part.tool_name)
                state.source_id = part.tool_call_id
                state.call_id = self._unique_call_id(part.tool_call_id, index)
                yield ToolCallStarted(state.call_id, state.name)
            yield from self._args(state, part.args)

    def _delta(self, index: int, delta: pai.ModelResponsePartDelta) -> Iterator[ModelEvent]:
        state = self._parts.get(index)
        if state is None:
            return  # pydantic-ai sends a start event with what came so far once the part is known
        if isinstance(delta, pai.TextPartDelta) and state.kind == "text":
            if delta.content_delta:
                state.sent += delta.content_delta
                yield TextDelta(delta.content_delta)
        elif isinstance(delta, pai.ThinkingPartDelta) and state.kind == "thinking":
            if delta.content_delta:
                state.sent += delta.content_delta
                yield ReasoningDelta(delta.content_delta)
        elif (
            isinstance(delta, pai.ToolCallPartDelta)
            and state.kind == "tool"
            and isinstance(delta.args_delta, str)
            and delta.args_delta
        ):
            state.sent += delta.args_delta
            yield ToolCallDelta(state.call_id, delta.args_delta)

    def _text(self, index: int, kind: str, content: str) -> Iterator[ModelEvent]:
        state = self._parts.get(index)
        if state is None or state.kind != kind:
            state = self._parts[index] = _Part(kind)
        # a replaced part that rewrote what was sent cannot be unsent: send only what it adds
        if len(content) > len(state.sent) and content.startswith(state.sent):
            more = content[len(state.sent) :]
            state.sent = content
            yield TextDelta(more) if kind == "text" else ReasoningDelta(more)

    def _args(self, state: _Part, args: object) -> Iterator[ModelEvent]:
        if isinstance(args, dict):  # arguments that came whole, not as JSON text
            if args and not state.sent:
                state.sent = json.dumps(args, ensure_ascii=False)
                yield ToolCallDelta(state.call_id, state.sent)
        elif isinstance(args, str) and args.startswith(state.sent) and args != state.sent:
            more = args[len(state.sent) :]
            state.sent = args
            yield ToolCallDelta(state.call_id, more)

    def _unique_call_id(self, call_id: str, index: int) -> str:
        # some OpenAI-compatible servers number calls per response or leave the id out
        call_id = call_id or f"call_{index}"
        if call_id in self._call_ids:
            call_id = f"{call_id}_{index}"
        self._call_ids.add(call_id)
        return call_id

    def _reason(self, finish: pai.FinishReason | None) -> StopReason:
        if finish == "length":
            return "length"
        if self.tool_calls:
            return "tool-calls"
        if finish in (None, "stop"):
            return "stop"
        return "other"


def parse_arguments(text: str) -> dict[str, Any]:
    """A tool call's JSON arguments; ``{}`` for none, ``{"_raw": text}`` for JSON that is not an
    object (the tool then reports the bad arguments to the model)."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_raw": text}


def usage_of(usage: Any) -> Usage:
    """Our `Usage` from pydantic-ai's `RequestUsage`. ``input`` leaves cached tokens out (they
    are ``cache_read``/``cache_write``), as OpenCode counts them."""
    cache_read = int(usage.cache_read_tokens or 0)
    cache_write = int(usage.cache_write_tokens or 0)
    reasoning = int(usage.output_reasoning_tokens or 0) or int(
        (usage.details or {}).get("reasoning_tokens", 0)
    )
    return Usage(
        input=max(0, int(usage.input_tokens or 0) - cache_read - cache_write),
        output=int(usage.output_tokens or 0),
        reasoning=reasoning,
        cache_read=cache_read,
        cache_write=cache_write,
    )

"""A deterministic in-memory model for tests and benchmarks (provider ``scripted``).

Without a script it answers like ``tests/compat/fixtures/opencode/fake_openai.py``, keyed on
the last user message (the first keyword found, in this order):

* the last message is a tool result -> ``"The command printed: <its first line>"``
* ``FAIL`` -> `ModelProviderError` retryable, HTTP 500; ``BAD`` -> not retryable, HTTP 400
* ``DROP`` -> a few words, then a retryable error (a connection dropped mid-answer)
* ``FLAKY`` -> like ``DROP`` the first time a history is seen, answers the second time
* ``TOOLERR`` -> a call of ``read`` on ``does-not-exist.txt`` (a tool call that fails)
* ``TOOL`` -> a call of ``bash`` ``{"command": "echo hello-from-tool"}``, its arguments in
  several pieces (with no tools offered, both answer in text instead)
* ``SLOW`` -> 40 chunks ``slow_delay`` seconds apart (10 s by default: long enough to abort)
* ``REASON`` -> reasoning in pieces, then text
* ``BIG`` -> about 300 KiB of text with multi-byte characters, in 4 KiB chunks
* ``UNICODE`` -> text whose chunks split accents, emoji sequences and flags from their base
* anything else -> a reasoning delta, then ``"Hello! I am a fake model."`` in four chunks

Every step ends with `StepFinished` and a usage (input: words in the request + 10; output:
chunks sent). ``tokens=N`` makes every plain answer N tokens sent with no delay, for
benchmarks. Each request is kept in ``requests``.

A *script* replaces the defaults: a sequence of steps used one per request (then the
defaults), or a callable ``(ModelRequest) -> step | None`` (``None``: the defaults). A step is
an async iterator of model events, or a list whose items are events, strings (text), `ToolCall`
(started, arguments in pieces, ready), numbers (seconds to sleep) or exceptions (raised).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Literal

from agentplex.core.ports import (
    ModelEvent,
    ModelInfo,
    ModelProvider,
    ModelRequest,
    ReasoningDelta,
    StepFinished,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
    Usage,
)
from agentplex.errors import ModelProviderError

MODEL_ID = "scripted-model"
TOOL_ARGS = {"command": "echo hello-from-tool"}
BAD_READ_ARGS = {"filePath": "does-not-exist.txt"}
GREETING = ("Hello! ", "I am ", "a fake ", "model.")
# pieces that split an accent, a family emoji (ZWJ sequence) and a flag from their base
UNICODE_PIECES = (
    "Unicode: caf",
    "e",
    "\u0301 na\u00efve \U0001f468",
    "\u200d\U0001f469",
    "\u200d\U0001f467 \U0001f1eb",
    "\U0001f1f7 \u65e5\u672c",
    "\u8a9e \u0645\u0631\u062d\u0628\u0627 \U0001f600",
)
UNICODE_TEXT = "".join(UNICODE_PIECES)

StepItem = ModelEvent | str | ToolCall | float | int | BaseException
Step = Iterable[StepItem] | AsyncIterator[ModelEvent]
Script = Sequence[Step] | Callable[[ModelRequest], Step | None]


class ScriptedProvider(ModelProvider):
    """Provider ``scripted`` with the one model ``scripted-model``; see the module docstring."""

    id = "scripted"
    name = "Scripted"
    env = ()

    def __init__(
        self,
        script: Script | None = None,
        *,
        delay: float = 0.0,
        slow_delay: float = 0.25,
        tokens: int | None = None,
        big_size: int = 300 * 1024,
        cost_input: float = 0.0,
        cost_output: float = 0.0,
    ) -> None:
        self._steps: list[Step] | None = None
        self._script: Callable[[ModelRequest], Step | None] | None = None
        if callable(script):
            self._script = script
        elif script is not None:
            self._steps = list(script)
        self.delay = delay
        self.slow_delay = slow_delay
        self.tokens = tokens
        self.big_size = big_size
        self.cost_input = cost_input
        self.cost_output = cost_output
        self.requests: list[ModelRequest] = []
        self._seen: set[tuple[Any, ...]] = set()

    def models(self) -> tuple[ModelInfo, ...]:
        return (
            ModelInfo(
                id=MODEL_ID,
                name="Scripted model",
                context=128_000,
                output=16_384,
                reasoning=True,
                cost_input=self.cost_input,
                cost_output=self.cost_output,
            ),
        )

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """The scripted step for ``request`` (recorded in ``requests``)."""
        self.requests.append(request)
        step: Step | None = None
        if self._script is not None:
            step = self._script(request)
        elif self._steps:
            step = self._steps.pop(0)
        if step is None:
            step = self.default_step(request)
        finished = False
        chunks = 0
        calls = 0
        async for event in _events(step):
            if isinstance(event, TextDelta | ReasoningDelta | ToolCallDelta):
                chunks += 1
            elif isinstance(event, ToolCallReady):
                calls += 1
            elif isinstance(event, StepFinished):
                finished = True
            yield event
        if not finished:
            reason: Literal["stop", "tool-calls"] = "tool-calls" if calls else "stop"
            yield StepFinished(reason, Usage(input=input_tokens(request), output=chunks))

    def default_step(self, request: ModelRequest) -> list[StepItem]:
        """The answer without a script, keyed on the last user message (module docstring)."""
        last = request.messages[-1] if request.messages else None
        if last is not None and last.role == "tool":
            lines = last.text.strip().splitlines()
            return self._text([f"The command printed: {lines[0] if lines else ''}"])
        text = next((m.text for m in reversed(request.messages) if m.role == "user"), "")
        tools = [t.name for t in request.tools]
        if "FAIL" in text:
            return [_http_error(500, "server_error")]
        if "BAD" in text:
            return [_http_error(400, "invalid_request_error")]
        if "DROP" in text or ("FLAKY" in text and self._first_time(request)):
            return [*self._text(["Partial ", "answer "]), _dropped()]
        if "TOOLERR" in text and tools:
            name = "read" if "read" in tools else sorted(tools)[0]
            return [ToolCall(f"call_scripted_{len(self.requests):04d}", name, BAD_READ_ARGS)]
        if "TOOL" in text and tools:
            name = "bash" if "bash" in tools else sorted(tools)[0]
            return [ToolCall(f"call_scripted_{len(self.requests):04d}", name, TOOL_ARGS)]
        if "SLOW" in text:
            return _spaced([f"word{i} " for i in range(40)], self.slow_delay)
        if "REASON" in text:
            thoughts = [ReasoningDelta("Let me think. "), ReasoningDelta("The answer is 42.")]
            return [*thoughts, *self._text(["The answer ", "is 42."])]
        if "BIG" in text:
            return self._text(_chunked(big_text(self.big_size), 4096))
        if "UNICODE" in text:
            return self._text(list(UNICODE_PIECES))
        if self.tokens is not None:
            return [f"tok{i} " for i in range(self.tokens)]
        return [ReasoningDelta("The user greets me; I greet back."), *self._text(list(GREETING))]

    def _text(self, pieces: list[str]) -> list[StepItem]:
        return _spaced(pieces, self.delay)

    def _first_time(self, request: ModelRequest) -> bool:
        key = tuple((m.role, m.text, m.call_id) for m in request.messages)
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def big_text(size: int) -> str:
    """About ``size`` bytes of UTF-8 text, numbered lines with multi-byte characters."""
    lines: list[str] = []
    total, n = 0, 0
    while total < size:
        line = f"line {n:05d}: caf\u00e9 \u65e5\u672c\u8a9e \U0001f600 \u00fcber \u2014 ok\n"
        lines.append(line)
        total += len(line.encode())
        n += 1
    return "".join(lines)


def input_tokens(request: ModelRequest) -> int:
    """The scripted usage's input tokens: words of the system prompt and history, plus 10."""
    words = len(request.system.split()) + sum(len(m.text.split()) for m in request.messages)
    return words + 10


def _http_error(status: int, kind: str) -> ModelProviderError:
    message = f"scripted failure {status}"
    body = json.dumps({"error": {"message": message, "type": kind}})
    return ModelProviderError(message, retryable=status >= 500, status_code=status, body=body)


def _dropped() -> ModelProviderError:
    return ModelProviderError("The connection to the model dropped mid-answer", retryable=True)


def _spaced(pieces: list[str], delay: float) -> list[StepItem]:
    out: list[StepItem] = []
    for piece in pieces:
        if delay:
            out.append(delay)
        out.append(piece)
    return out


def _chunked(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


async def _events(step: Step) -> AsyncIterator[ModelEvent]:
    if isinstance(step, AsyncIterator):
        async for event in step:
            yield event
        return
    for item in step:
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, bool):
            continue
        if isinstance(item, int | float):
            await asyncio.sleep(item)
        elif isinstance(item, str):
            yield TextDelta(item)
        elif isinstance(item, ToolCall):
            for event in tool_call_events(item):
                yield event
        else:
            yield item


def tool_call_events(call: ToolCall, pieces: int = 3) -> list[ModelEvent]:
    """A tool call as a model streams it: started, its JSON arguments in ``pieces`` parts, ready."""
    args = json.dumps(dict(call.arguments))
    step = max(1, -(-len(args) // pieces))
    events: list[ModelEvent] = [ToolCallStarted(call.call_id, call.name)]
    events += [ToolCallDelta(call.call_id, args[i : i + step]) for i in range(0, len(args), step)]
    events.append(ToolCallReady(call))
    return events

"""The agent loop: one turn of a session, model step after model step, tools in between.

A turn answers one user message. Each model step is one assistant message (as in OpenCode):
``step-start``, then the step's reasoning, text and tool parts as they stream, then
``step-finish`` with its tokens and cost. When the step asked for tools, they run (after their
permission is settled) and the next step sees their results; the turn ends when a step answers
without tools, or a budget (``agent.max_turns`` steps, ``agent.max_tool_calls_per_turn``) is
reached: then a note part says so.

A model call that fails in a way worth retrying is retried with exponential backoff
(``agent.max_retries``, ``agent.retry_backoff_secs``), its partial parts removed, while the
session's status says ``retry``; then the message gets ``error`` and the turn ends. Cancelling
the turn's task (abort, delete) stops the model call and the running tool at once; the message
ends with ``MessageAbortedError``.

Everything the loop changes goes through `TurnHost`: it records events and stores messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentplex.core.ports import (
    ChatMessage,
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
    ToolContext,
    ToolResult,
    ToolSource,
    ToolSpec,
)
from agentplex.core.session_model import Message, ModelRef, Part, Session, Tokens, new_id, now_ms
from agentplex.errors import ModelProviderError
from agentplex.settings import AgentSettings

log = logging.getLogger("agentplex.agent")

# A text part's every chunk is a `message.part.updated` (with `delta`) while the text is short;
# past this size at most one per _THROTTLE_SECONDS (the `delta` then holds everything since the
# previous one), so a 300 KiB answer does not cost its square in event bytes.
_FULL_UPDATES_UP_TO = 32 * 1024
_THROTTLE_SECONDS = 0.1
_SAVE_SECONDS = 1.0

ABORTED = {"name": "MessageAbortedError", "data": {"message": "Aborted"}}
REJECTED = "The user rejected permission to use this specific tool call."
DENIED = "The user has specified a rule which prevents you from using this specific tool call."


class TurnHost(Protocol):
    """What the loop needs from the session service."""

    def emit(self, type: str, session_id: str, **fields: Any) -> None:
        """Record an event (see `agentplex.core.session_events.SessionEvent`)."""

    async def save(self, message: Message) -> None:
        """Store a message with its parts."""

    def save_soon(self, message: Message) -> None:
        """Store the message as it is now, without waiting (a long answer's text so far)."""

    def set_status(self, session_id: str, status: Mapping[str, Any] | None) -> None:
        """Set (or clear, None = idle) the session's run status and emit ``session.status``."""

    async def ask_permission(
        self, session: Session, message: Message, part: Part, tool: str, pattern: str
    ) -> str:
        """Wait for the answer to a permission request: ``once``, ``always`` or ``reject``."""

    async def sandbox(self, session: Session) -> str:
        """The session's sandbox id, created on first use."""


@dataclass(slots=True)
class TurnLimits:
    max_steps: int
    max_tool_calls: int
    max_retries: int
    backoff: float
    tool_timeout: float
    model_timeout: float
    permissions: Mapping[str, str]

    @classmethod
    def from_settings(cls, s: AgentSettings) -> TurnLimits:
        return cls(
            s.max_turns,
            s.max_tool_calls_per_turn,
            s.max_retries,
            s.retry_backoff_secs,
            s.tool_timeout_secs,
            s.model_timeout_secs,
            dict(s.permissions),
        )


@dataclass(slots=True)
class Turn:
    """One turn's inputs. ``history`` is every earlier message of the session, oldest first
    (the user message being answered last); it grows as the turn's steps complete."""

    session: Session
    user: Message
    provider: ModelProvider
    model: ModelInfo
    system: str
    history: list[Message]
    tools: Sequence[ToolSource]
    disabled_tools: frozenset[str] = frozenset()
    approved: set[tuple[str, str]] = field(default_factory=set)
    messages: list[Message] = field(default_factory=list)


class _StepFailed(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["data"].get("message", ""))
        self.error = error


async def run_turn(turn: Turn, host: TurnHost, limits: TurnLimits) -> Message:
    """Answer ``turn.user``; returns the turn's last assistant message (also when it failed
    or was aborted: then ``error`` is set). Cancellation propagates after the message is
    closed and stored."""
    specs, owner = _tool_index(turn.tools, turn.disabled_tools)
    tool_calls = 0
    last: Message | None = None
    for step in range(limits.max_steps):
        message = _new_assistant(turn)
        turn.messages.append(message)
        last = message
        host.emit("message.updated", turn.session.id, message=message.snapshot())
        await host.save(message)
        try:
            calls = await _model_step(turn, host, limits, message, specs)
        except asyncio.CancelledError:
            await _close_aborted(turn, host, message)
            raise
        except _StepFailed as failed:
            message.error = failed.error
            await _complete(turn, host, message)
            host.emit("session.error", turn.session.id, error=failed.error)
            return message
        if not calls:
            return message
        # the step wants tool results: run its calls, then the next step sees them
        stop = False
        try:
            for call, part in calls:
                if tool_calls >= limits.max_tool_calls:
                    _fail_tool(
                        host,
                        part,
                        f"Not run: the turn reached its budget of "
                        f"{limits.max_tool_calls} tool calls.",
                    )
                    stop = True
                    continue
                tool_calls += 1
                rejected = await _run_tool(turn, host, limits, message, part, call, owner)
                stop = stop or rejected
        except asyncio.CancelledError:
            await _close_aborted(turn, host, message)
            raise
        _finish_step(host, message)
        await _complete(turn, host, message)
        turn.history.append(message)
        if stop:
            if tool_calls >= limits.max_tool_calls:
                await _note(
                    turn,
                    host,
                    f"Stopped: this turn reached its budget of "
                    f"{limits.max_tool_calls} tool calls (agent.max_tool_calls_per_turn).",
                )
            return message
        if step == limits.max_steps - 1:
            await _note(
                turn,
                host,
                f"Stopped: this turn reached its budget of "
                f"{limits.max_steps} model steps (agent.max_turns).",
            )
    assert last is not None
    return last


def _new_assistant(turn: Turn) -> Message:
    return Message(
        id=new_id("msg"),
        session_id=turn.session.id,
        role="assistant",
        created=now_ms(),
        parent_id=turn.user.id,
        model=ModelRef(turn.provider.id, turn.model.id),
        agent=turn.user.agent,
    )


def _tool_index(
    sources: Sequence[ToolSource], disabled: frozenset[str]
) -> tuple[tuple[ToolSpec, ...], dict[str, ToolSource]]:
    specs: list[ToolSpec] = []
    owner: dict[str, ToolSource] = {}
    for source in sources:
        for spec in source.specs():
            if spec.name in disabled or spec.name in owner:
                continue
            owner[spec.name] = source
            specs.append(spec)
    return tuple(specs), owner


def history_for_model(messages: Sequence[Message]) -> tuple[ChatMessage, ...]:
    """The chat history a model sees: user text, assistant text/reasoning/tool calls, tool
    results. Failed steps without content are left out."""
    out: list[ChatMessage] = []
    for message in messages:
        if message.role == "user":
            text = "".join(str(p.data.get("text", "")) for p in message.parts if p.type == "text")
            for p in message.parts:
                if p.type == "file":
                    text += f"\n[file {p.data.get('filename') or p.data.get('url', '')}]"
            if text:
                out.append(ChatMessage("user", text))
            continue
        text = "".join(
            str(p.data.get("text", ""))
            for p in message.parts
            if p.type == "text" and not p.data.get("synthetic")
        )
        reasoning = "".join(
            str(p.data.get("text", "")) for p in message.parts if p.type == "reasoning"
        )
        calls: list[ToolCall] = []
        results: list[ChatMessage] = []
        for p in message.parts:
            if p.type != "tool":
                continue
            state = p.data.get("state", {})
            status = state.get("status")
            if status not in ("completed", "error"):
                continue
            call_id, tool = str(p.data.get("callID")), str(p.data.get("tool"))
            calls.append(ToolCall(call_id, tool, dict(state.get("input") or {})))
            if status == "completed":
                results.append(
                    ChatMessage(
                        "tool", str(state.get("output", "")), call_id=call_id, tool_name=tool
                    )
                )
            else:
                results.append(
                    ChatMessage(
                        "tool",
                        str(state.get("error", "")),
                        call_id=call_id,
                        tool_name=tool,
                        is_error=True,
                    )
                )
        if text or reasoning or calls:
            out.append(ChatMessage("assistant", text, reasoning, tuple(calls)))
            out.extend(results)
    return tuple(out)


class _Streamer:
    """Turns a step's model events into parts and events."""

    def __init__(self, turn: Turn, host: TurnHost, message: Message) -> None:
        self.turn = turn
        self.host = host
        self.message = message
        self.open: Part | None = None  # the text or reasoning part being streamed
        self.pending_delta = ""
        self.last_full = 0.0
        self.tools: dict[str, Part] = {}
        self.ready: list[tuple[ToolCall, Part]] = []
        self.finished: StepFinished | None = None
        self.started_parts: list[Part] = []
        self.last_saved = asyncio.get_running_loop().time()

    def _add(self, type: str, data: dict[str, Any]) -> Part:
        part = Part(new_id("prt"), self.message.session_id, self.message.id, type, data)
        self.message.parts.append(part)
        self.started_parts.append(part)
        return part

    def _update(self, part: Part, **fields: Any) -> None:
        self.host.emit("message.part.updated", part.session_id, part=part.snapshot(), **fields)

    def text(self, kind: str, chunk: str) -> None:
        part = self.open
        if part is None or part.type != kind:
            self.close_open()
            part = self.open = self._add(kind, {"text": "", "time": {"start": now_ms()}})
            self._update(part)
        part.data["text"] += chunk
        self.pending_delta += chunk
        self.host.emit("message.part.delta", part.session_id, part=part, delta=chunk)
        loop_time = asyncio.get_running_loop().time()
        if loop_time - self.last_saved >= _SAVE_SECONDS:
            # a crash mid-answer keeps the text up to about a second before it
            self.last_saved = loop_time
            self.host.save_soon(self.message)
        if (
            len(part.data["text"]) <= _FULL_UPDATES_UP_TO
            or loop_time - self.last_full >= _THROTTLE_SECONDS
        ):
            self.last_full = loop_time
            self._update(part, delta=self.pending_delta)
            self.pending_delta = ""

    def close_open(self) -> None:
        part = self.open
        if part is None:
            return
        self.open = None
        self.pending_delta = ""
        part.data["time"]["end"] = now_ms()
        self._update(part)

    def tool_started(self, call_id: str, name: str) -> None:
        self.close_open()
        part = self._add(
            "tool",
            {
                "callID": call_id,
                "tool": name,
                "state": {"status": "pending", "input": {}, "raw": ""},
            },
        )
        self.tools[call_id] = part
        self._update(part)

    def tool_delta(self, call_id: str, arguments: str) -> None:
        part = self.tools.get(call_id)
        if part is not None:
            part.data["state"]["raw"] += arguments

    def tool_ready(self, call: ToolCall) -> None:
        part = self.tools.get(call.call_id)
        if part is None:
            self.tool_started(call.call_id, call.name)
            part = self.tools[call.call_id]
        part.data["state"]["input"] = dict(call.arguments)
        self.ready.append((call, part))


async def _model_step(
    turn: Turn,
    host: TurnHost,
    limits: TurnLimits,
    message: Message,
    specs: tuple[ToolSpec, ...],
) -> list[tuple[ToolCall, Part]]:
    """One model step with retries: returns the tool calls to run (empty: the turn is done)."""
    request = ModelRequest(
        model_id=turn.model.id,
        system=turn.system,
        messages=history_for_model(turn.history),
        tools=specs if turn.model.tool_call else (),
    )
    attempt = 0
    while True:
        streamer = _Streamer(turn, host, message)
        start = _add_part(host, message, "step-start", {})
        try:
            await _consume(turn.provider, request, streamer, limits.model_timeout)
            break
        except ModelProviderError as exc:
            _remove_parts(host, message, [start, *streamer.started_parts])
            if not exc.retryable or attempt >= limits.max_retries:
                raise _StepFailed(_api_error(exc)) from None
            attempt += 1
            delay = limits.backoff * 2 ** (attempt - 1)
            host.set_status(
                turn.session.id,
                {
                    "type": "retry",
                    "attempt": attempt,
                    "message": exc.message,
                    "next": now_ms() + int(delay * 1000),
                },
            )
            await asyncio.sleep(delay)
            host.set_status(turn.session.id, {"type": "busy"})
        except Exception as exc:  # a provider bug must not take the session down
            log.exception("model step failed")
            _remove_parts(host, message, [start, *streamer.started_parts])
            raise _StepFailed({"name": "UnknownError", "data": {"message": str(exc)}}) from None
    streamer.close_open()
    finished = streamer.finished or StepFinished("stop")
    usage = finished.usage
    step_tokens = Tokens(
        usage.input, usage.output, usage.reasoning, usage.cache_read, usage.cache_write
    )
    cost = (usage.input * turn.model.cost_input + usage.output * turn.model.cost_output) / 1e6
    reason = "tool-calls" if streamer.ready else finished.reason
    message.tokens = step_tokens
    message.cost = cost
    turn.session.tokens.add(step_tokens)
    turn.session.cost += cost
    if not streamer.ready:
        _add_part(
            host,
            message,
            "step-finish",
            {"reason": reason, "cost": cost, "tokens": step_tokens.to_json(with_total=True)},
        )
        message.finish = reason
        await _complete(turn, host, message)
        return []
    message.finish = reason
    # the step-finish part comes once the tools ran (as in OpenCode): see `_finish_step`
    return streamer.ready


class _IdleWatch:
    """Cancels the current task when ``idle`` seconds pass without `touch`: one timer per
    quiet period rather than one per model event (a 200-token answer is 200 events)."""

    def __init__(self, idle: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._idle = idle
        self._last = self._loop.time()
        self.fired = False
        self._handle = self._loop.call_later(idle, self._check)

    def touch(self) -> None:
        self._last = self._loop.time()

    def _check(self) -> None:
        deadline = self._last + self._idle
        if self._loop.time() < deadline:
            self._handle = self._loop.call_at(deadline, self._check)
            return
        self.fired = True
        if self._task is not None:
            self._task.cancel()

    def close(self) -> None:
        self._handle.cancel()


async def _consume(
    provider: ModelProvider, request: ModelRequest, streamer: _Streamer, idle_timeout: float
) -> None:
    stream = provider.stream(request)
    watch = _IdleWatch(idle_timeout)
    try:
        async for event in stream:
            watch.touch()
            if isinstance(event, TextDelta):
                if event.text:
                    streamer.text("text", event.text)
            elif isinstance(event, ReasoningDelta):
                if event.text:
                    streamer.text("reasoning", event.text)
            elif isinstance(event, ToolCallStarted):
                streamer.tool_started(event.call_id, event.name)
            elif isinstance(event, ToolCallDelta):
                streamer.tool_delta(event.call_id, event.arguments)
            elif isinstance(event, ToolCallReady):
                streamer.tool_ready(event.call)
            elif isinstance(event, StepFinished):
                streamer.finished = event
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not watch.fired or task is None:
            raise
        task.uncancel()  # our own timeout, not an abort
        raise ModelProviderError(
            f"The model sent nothing for {idle_timeout:g} s", retryable=True
        ) from None
    finally:
        watch.close()
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]


def _finish_step(host: TurnHost, message: Message) -> None:
    """The step-finish part of a step whose tools have run."""
    data = {
        "reason": message.finish or "tool-calls",
        "cost": message.cost,
        "tokens": message.tokens.to_json(with_total=True),
    }
    _add_part(host, message, "step-finish", data)


def _api_error(exc: ModelProviderError) -> dict[str, Any]:
    data: dict[str, Any] = {"message": exc.message, "isRetryable": exc.retryable}
    if exc.status_code is not None:
        data["statusCode"] = exc.status_code
    if exc.body is not None:
        data["responseBody"] = exc.body[:4096]
    return {"name": "APIError", "data": data}


def _add_part(host: TurnHost, message: Message, type: str, data: dict[str, Any]) -> Part:
    part = Part(new_id("prt"), message.session_id, message.id, type, data)
    message.parts.append(part)
    host.emit("message.part.updated", message.session_id, part=part.snapshot())
    return part


def _remove_parts(host: TurnHost, message: Message, parts: Sequence[Part]) -> None:
    for part in parts:
        if part in message.parts:
            message.parts.remove(part)
            host.emit("message.part.removed", message.session_id, part=part.snapshot())


async def _complete(turn: Turn, host: TurnHost, message: Message) -> None:
    message.completed = now_ms()
    host.emit("message.updated", turn.session.id, message=message.snapshot())
    await host.save(message)


async def _close_aborted(turn: Turn, host: TurnHost, message: Message) -> None:
    """Close what was open when the turn was cancelled, and store it (shielded: the store
    must finish even though the task is being cancelled). The order is OpenCode's:
    ``session.error`` first, then the closed parts, then the message."""
    end = now_ms()
    host.emit("session.error", turn.session.id, error=dict(ABORTED))
    for part in message.parts:
        if part.type in ("text", "reasoning") and "end" not in part.data.get("time", {}):
            part.data.setdefault("time", {})["end"] = end
            host.emit("message.part.updated", part.session_id, part=part.snapshot())
        elif part.type == "tool" and part.data["state"]["status"] in ("pending", "running"):
            state = part.data["state"]
            part.data["state"] = {
                "status": "error",
                "input": state.get("input", {}),
                "error": "Tool execution aborted",
                "time": {"start": state.get("time", {}).get("start", end), "end": end},
            }
            host.emit("message.part.updated", part.session_id, part=part.snapshot())
    message.finish = None  # an aborted step has no finish reason
    message.error = dict(ABORTED)
    message.completed = end
    host.emit("message.updated", turn.session.id, message=message.snapshot())
    await asyncio.shield(host.save(message))


def _fail_tool(host: TurnHost, part: Part, error: str) -> None:
    state = part.data["state"]
    now = now_ms()
    part.data["state"] = {
        "status": "error",
        "input": state.get("input", {}),
        "error": error,
        "time": {"start": state.get("time", {}).get("start", now), "end": now},
    }
    host.emit("message.part.updated", part.session_id, part=part.snapshot())


async def _run_tool(
    turn: Turn,
    host: TurnHost,
    limits: TurnLimits,
    message: Message,
    part: Part,
    call: ToolCall,
    owner: Mapping[str, ToolSource],
) -> bool:
    """Run one call (after its permission); True when the user rejected it (the turn then
    ends after this step, as in OpenCode)."""
    source = owner.get(call.name)
    if source is None:
        known = ", ".join(sorted(owner)) or "none"
        _fail_tool(host, part, f"Unknown tool {call.name!r}. Available tools: {known}.")
        return False
    pattern = source.pattern(call.name, call.arguments)
    rule = _rule(turn, limits, call.name)
    if rule == "deny":
        _fail_tool(host, part, DENIED)
        return False
    if (
        rule == "ask"
        and (call.name, pattern) not in turn.approved
        and (call.name, "*") not in turn.approved
    ):
        answer = await host.ask_permission(turn.session, message, part, call.name, pattern)
        if answer == "reject":
            _fail_tool(host, part, REJECTED)
            return True
        if answer == "always":
            turn.approved.add((call.name, pattern))
    start = now_ms()
    part.data["state"] = {
        "status": "running",
        "input": dict(call.arguments),
        "time": {"start": start},
    }
    host.emit("message.part.updated", part.session_id, part=part.snapshot())
    last_progress = [0.0]

    async def progress(output: str) -> None:
        now = asyncio.get_running_loop().time()
        if now - last_progress[0] < _THROTTLE_SECONDS:
            return
        last_progress[0] = now
        part.data["state"]["metadata"] = {"output": output}
        host.emit("message.part.updated", part.session_id, part=part.snapshot())

    async def sandbox() -> str:
        return await host.sandbox(turn.session)

    ctx = ToolContext(
        env_id=turn.session.env_id,
        session_id=turn.session.id,
        message_id=message.id,
        call_id=call.call_id,
        sandbox=sandbox,
        progress=progress,
        timeout=limits.tool_timeout,
    )
    try:
        result = await asyncio.wait_for(
            source.call(ctx, call.name, call.arguments), limits.tool_timeout + 5
        )
    except TimeoutError:
        result = ToolResult(error=f"Tool {call.name} timed out after {limits.tool_timeout:g} s")
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("tool %s failed", call.name)
        result = ToolResult(error=f"Tool {call.name} failed: {exc}")
    end = now_ms()
    if result.error is not None:
        part.data["state"] = {
            "status": "error",
            "input": dict(call.arguments),
            "error": result.error,
            "time": {"start": start, "end": end},
        }
        if result.metadata:
            part.data["state"]["metadata"] = dict(result.metadata)
    else:
        part.data["state"] = {
            "status": "completed",
            "input": dict(call.arguments),
            "output": result.output,
            "title": result.title or call.name,
            "metadata": dict(result.metadata),
            "time": {"start": start, "end": end},
        }
    host.emit("message.part.updated", part.session_id, part=part.snapshot())
    return False


def _rule(turn: Turn, limits: TurnLimits, tool: str) -> str:
    for rules in (turn.session.permission, limits.permissions):
        if tool in rules:
            return rules[tool]
        if "*" in rules:
            return rules["*"]
    return "allow"


async def _note(turn: Turn, host: TurnHost, text: str) -> None:
    """A closing note on the turn's last message (a synthetic text part)."""
    message = turn.messages[-1]
    now = now_ms()
    _add_part(
        host, message, "text", {"text": text, "synthetic": True, "time": {"start": now, "end": now}}
    )
    if message.completed is None:
        message.completed = now
    host.emit("message.updated", turn.session.id, message=message.snapshot())
    await host.save(message)


def parse_arguments(raw: str) -> dict[str, Any]:
    """Tool-call arguments from their JSON text; anything else becomes ``{"_raw": text}``."""
    try:
        value = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"_raw": raw}

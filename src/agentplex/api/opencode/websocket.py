"""HotPlex's streaming data plane: the WebSocket ``/ws/v1/agent``.

Client messages (JSON text):
``{"type": "execute", "session_id"?, "prompt", "instructions"?, "request_id"?}`` runs a prompt
(no ``session_id``: a new session; an unknown but well-formed one: a new session with that id),
``{"type": "stop", "session_id"?, "request_id"?}`` ends that session's running turn,
``{"type": "stats"}`` and ``{"type": "version"}``.

Server messages: ``{"event", "data", "request_id"}``. ``server.connected`` first; then, for each
session this connection executes on, the OpenCode events (``data`` = the event's properties,
in the order ``/event`` has them), then ``completed`` / ``stopped`` / ``error`` for the execute
(always after every event its turn produced). Other replies: ``stats``, ``version``, ``error``.

Auth: the gateway's (``Authorization``/``X-API-Key``, or a ``token`` query parameter for
browsers, which cannot set headers on a WebSocket).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from agentplex.api.common.routing import RouteTable
from agentplex.api.opencode.caller import env_of
from agentplex.api.opencode.views import VERSION, dumps, message_view, ws_frame
from agentplex.core.auth import Principal
from agentplex.core.session_events import SessionEvent, Subscription
from agentplex.core.session_model import Message, new_id
from agentplex.core.sessions import Prompt, PromptPart, check_prompt
from agentplex.errors import AgentplexError, SessionNotFound
from agentplex.services import Services

routes = RouteTable(tags=["opencode"])

_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
RequestId = str | int | None
_SETTLE_SECONDS = 5.0


@dataclass(eq=False, slots=True)
class _Pending:
    session_id: str
    answer_id: str
    parent_id: str | None
    frame: bytes
    seen: bool  # the answer's final message.updated went out


def _reply(event: str, data: Any, request_id: RequestId) -> bytes:
    return dumps({"event": event, "data": data, "request_id": request_id})


class _Connection:
    """One client: its subscription to the environment's events, its executes in flight."""

    def __init__(self, websocket: WebSocket, services: Services, env_id: str) -> None:
        self.ws = websocket
        self.services = services
        self.env_id = env_id
        self.log = services.sessions.events
        self.send_lock = asyncio.Lock()
        self.cursor = self.log.last_seq(env_id)
        # which execute an event belongs to: by message id, else the session's current one
        self.by_message: dict[str, RequestId] = {}
        self.current: dict[str, RequestId] = {}
        self.pending: list[_Pending] = []  # completions waiting for their turn's last event
        self.answered: dict[str, int] = {}  # assistant message id -> seq of its final update
        self.idle: dict[str, int] = {}  # session id -> seq of its last session.idle
        self.running: dict[asyncio.Task[None], str] = {}  # execute task -> session id
        self.executions = 0
        self.background: set[asyncio.Future[None]] = set()
        self.subscription: Subscription | None = None
        self.stack = contextlib.AsyncExitStack()
        self.forwarder: asyncio.Task[None] | None = None

    async def follow(self, session_id: str) -> None:
        """Stream this session's events to the client from now on."""
        if self.subscription is None:
            self.subscription = await self.stack.enter_async_context(
                self.log.subscribe(self.env_id, after=self.cursor, sessions=set())
            )
        self.subscription.watch(session_id)
        if self.forwarder is None:
            self.forwarder = asyncio.create_task(self.forward(self.subscription))

    async def send(self, frame: bytes) -> None:
        async with self.send_lock:
            if self.ws.application_state is WebSocketState.CONNECTED:
                await self.ws.send_text(frame.decode())

    # --- events ---------------------------------------------------------------------------

    async def forward(self, events: Subscription) -> None:
        async for batch in events.batches():
            for event in batch:
                await self._forward_one(event)

    async def _forward_one(self, event: SessionEvent) -> None:
        self.cursor = event.seq
        sid = event.session_id
        if sid is None or sid not in self.current:
            return
        message = event.message
        if (
            self.pending
            and event.type == "message.updated"
            and message is not None
            and message.role == "assistant"
        ):
            # the next queued turn starts: what the previous one owes is sent first
            await self._release(sid, next_turn=message.parent_id)
        await self.send(ws_frame(event, self._request_of(event, sid)))
        if event.type == "session.idle":
            self.idle[sid] = event.seq
            await self._release(sid)
        elif (
            event.type == "message.updated"
            and message is not None
            and message.role == "assistant"
            and message.completed is not None
        ):
            self.answered[message.id] = event.seq
            for pending in self.pending:
                if pending.answer_id == message.id:
                    pending.seen = True

    def _request_of(self, event: SessionEvent, sid: str) -> RequestId:
        message = event.message
        if message is not None:
            if message.role == "assistant" and message.parent_id in self.by_message:
                self.by_message[message.id] = self.by_message[message.parent_id]
            if message.id in self.by_message:
                self.current[sid] = self.by_message[message.id]
                return self.current[sid]
        if event.part is not None and event.part.message_id in self.by_message:
            return self.by_message[event.part.message_id]
        return self.current.get(sid)

    async def _release(self, sid: str, *, next_turn: str | None = None) -> None:
        """Send the session's owed completions (with ``next_turn``: those of other turns)."""
        ready = [
            p
            for p in self.pending
            if p.session_id == sid and p.seen and (next_turn is None or p.parent_id != next_turn)
        ]
        if not ready:
            return
        self.pending = [p for p in self.pending if p not in ready]
        for pending in ready:
            self.answered.pop(pending.answer_id, None)
            await self.send(pending.frame)

    async def finish(self, session_id: str, answer: Message, frame: bytes) -> None:
        """Send an execute's last message once its turn's events have all gone out: after
        the answer's final ``message.updated`` and the ``session.idle`` (or the start of the
        next queued turn) that follows it."""
        done_at = self.answered.get(answer.id)
        if done_at is not None and self.idle.get(session_id, 0) > done_at:
            self.answered.pop(answer.id, None)
            await self.send(frame)
            return
        pending = _Pending(session_id, answer.id, answer.parent_id, frame, done_at is not None)
        self.pending.append(pending)
        # a turn whose events never name its answer (it failed before any) must not hang
        asyncio.get_running_loop().call_later(_SETTLE_SECONDS, self._expire, pending)

    def _expire(self, pending: _Pending) -> None:
        if pending in self.pending:
            self.pending.remove(pending)
            task = asyncio.ensure_future(self.send(pending.frame))
            self.background.add(task)
            task.add_done_callback(self.background.discard)

    # --- client messages ------------------------------------------------------------------

    async def handle(self, raw: str) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            await self.send(_error("Messages must be JSON objects", "bad_request", None))
            return
        if not isinstance(message, dict):
            await self.send(_error("Messages must be JSON objects", "bad_request", None))
            return
        request_id = message.get("request_id")
        if not isinstance(request_id, str | int) or isinstance(request_id, bool):
            request_id = None
        kind = message.get("type")
        try:
            if kind == "execute":
                await self.execute(message, request_id)
            elif kind == "stop":
                await self.stop(message, request_id)
            elif kind == "stats":
                await self.send(_reply("stats", await self.stats(), request_id))
            elif kind == "version":
                data = {"version": VERSION, "protocol": "hotplex", "api": "opencode"}
                await self.send(_reply("version", data, request_id))
            else:
                await self.send(
                    _error(
                        f"Unknown message type {kind!r}: use execute, stop, stats or version",
                        "bad_request",
                        request_id,
                    )
                )
        except AgentplexError as exc:
            await self.send(_error(exc.message, exc.code, request_id, status=exc.status))

    async def execute(self, message: dict[str, Any], request_id: RequestId) -> None:
        text = message.get("prompt")
        if not isinstance(text, str) or not text.strip():
            await self.send(_error("execute needs a non-empty prompt", "bad_request", request_id))
            return
        instructions = message.get("instructions")
        session_id = message.get("session_id")
        sessions = self.services.sessions
        prompt = Prompt(
            parts=[PromptPart("text", text=text)],
            system=instructions if isinstance(instructions, str) and instructions else None,
            message_id=new_id("msg"),
        )
        check_prompt(prompt)  # before a session is made for it
        if session_id is None or session_id == "":
            session = await sessions.create(self.env_id, channel="hotplex")
        elif not isinstance(session_id, str) or not _SESSION_ID.match(session_id):
            await self.send(
                _error(
                    "session_id must be 1-64 letters, digits, _ . : -", "bad_request", request_id
                )
            )
            return
        else:
            try:
                session = await sessions.get(self.env_id, session_id)
            except SessionNotFound:
                session = await sessions.create(
                    self.env_id, channel="hotplex", session_id=session_id
                )
        assert prompt.message_id is not None
        self.by_message[prompt.message_id] = request_id
        self.current.setdefault(session.id, request_id)
        await self.follow(session.id)
        self.executions += 1
        task = asyncio.create_task(self._run(session.id, prompt, request_id))
        self.running[task] = session.id
        task.add_done_callback(self.running.pop)

    async def _run(self, session_id: str, prompt: Prompt, request_id: RequestId) -> None:
        try:
            answer: Message = await self.services.sessions.prompt(self.env_id, session_id, prompt)
        except AgentplexError as exc:
            await self.send(_error(exc.message, exc.code, request_id, status=exc.status))
            return
        data = {"session_id": session_id, **message_view(answer), "text": answer.text()}
        error = answer.error or {}
        if error.get("name") == "MessageAbortedError":
            kind = "stopped"
        elif error:
            kind = "error"
            data["message"] = str((error.get("data") or {}).get("message", error.get("name")))
            data["code"] = error.get("name")
        else:
            kind = "completed"
        await self.finish(session_id, answer, _reply(kind, data, request_id))

    async def stop(self, message: dict[str, Any], request_id: RequestId) -> None:
        session_id = message.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            # the session of that request, else the one this connection used last
            session_id = next(
                (s for s, r in reversed(self.current.items()) if r == request_id), None
            ) or next(reversed(self.current), None)
        if session_id is None:
            await self.send(_error("stop needs a session_id", "bad_request", request_id))
            return
        await self.services.sessions.abort(self.env_id, session_id)
        if session_id not in self.running.values():  # nothing ran: say so now
            data = {"session_id": session_id, "running": False}
            await self.send(_reply("stopped", data, request_id))

    async def stats(self) -> dict[str, Any]:
        sessions = self.services.sessions
        _active, total = await sessions.list(self.env_id, limit=1)
        busy = sessions.status(self.env_id)
        tokens = {"input": 0, "output": 0, "reasoning": 0}
        cost = 0.0
        for session_id in self.current:
            with contextlib.suppress(AgentplexError):
                session = await sessions.get(self.env_id, session_id)
                tokens["input"] += session.tokens.input
                tokens["output"] += session.tokens.output
                tokens["reasoning"] += session.tokens.reasoning
                cost += session.cost
        return {
            "sessions": {"total": total, "busy": len(busy)},
            "connection": {
                "sessions": list(self.current),
                "executions": self.executions,
                "running": len(self.running),
            },
            "tokens": tokens,
            "cost": cost,
        }


def _error(message: str, code: str, request_id: RequestId, *, status: int = 400) -> bytes:
    return _reply("error", {"message": message, "code": code, "status": status}, request_id)


@routes.websocket("/ws/v1/agent", summary="HotPlex streaming data plane (execute, stop, ...)")
async def agent_socket(websocket: WebSocket) -> None:
    services: Services = websocket.app.state.services
    principal: Principal = websocket.scope["state"]["principal"]
    conn = _Connection(websocket, services, env_of(principal, services))
    await websocket.accept()
    # only the sessions this connection executes on, and only once it does: an idle
    # connection holds no subscription, no task, and is woken by no event
    async with conn.stack:
        try:
            await conn.send(_reply("server.connected", {"version": VERSION}, None))
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                raw = message.get("text")
                if raw is None:
                    raw = (message.get("bytes") or b"").decode("utf-8", "replace")
                await conn.handle(raw)
        except WebSocketDisconnect:
            pass
        finally:
            forwarder = conn.forwarder
            if forwarder is not None:
                forwarder.cancel()
            for task in list(conn.running):
                task.cancel()
            if forwarder is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await forwarder

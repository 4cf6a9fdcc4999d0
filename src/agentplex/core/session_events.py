"""The session event log: every change to a session, message or part, in order, per environment.

Events are kept in a bounded in-memory ring per environment (``streams.session_ring_size``) and
handed to every subscriber the moment they are appended. Each event has a sequence number
``seq`` (increasing, per environment): a subscriber that reconnects with the last ``seq`` it saw
gets every later event still in the ring, then the live ones, with nothing missed or repeated.
(The real OpenCode server sends no ids and loses what happened while a client was away.)

Event types and their fields are OpenCode's (``docs/opencode-protocol.md``, section 4).
Surfaces render an event once and cache the bytes on it (`SessionEvent.rendered`), so a
hundred subscribers cost one serialisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from agentplex.core.session_model import Message, Part, Session, now_ms

_QUEUE_LIMIT = 10_000


@dataclass(slots=True)
class SessionEvent:
    """One change. ``type`` is OpenCode's event type; the objects are snapshots.

    - ``session.created|updated|deleted``: ``session``
    - ``session.status``: ``status`` (``{"type": "idle"|"busy"}`` or ``{"type": "retry",
      "attempt", "message", "next"}``); ``session.idle``: nothing more; ``session.error``:
      ``error`` (``{name, data}``)
    - ``message.updated``: ``message`` (no parts); ``message.removed``: ``message``
    - ``message.part.updated``: ``part``, and ``delta`` (text added since the previous update of
      that part) while text streams
    - ``message.part.delta``: ``part`` (the part so far) and ``delta`` (1.x servers' per-chunk
      event: ``{sessionID, messageID, partID, field, delta}``)
    - ``permission.updated``, ``permission.replied``: ``extra`` holds the request or answer
    """

    seq: int
    env_id: str
    type: str
    session_id: str | None
    time: int
    session: Session | None = None
    message: Message | None = None
    part: Part | None = None
    delta: str | None = None
    field: str = "text"
    status: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    rendered: dict[str, bytes] = dataclasses.field(default_factory=dict)


class _Subscriber:
    __slots__ = ("overflowed", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[SessionEvent] = asyncio.Queue()
        self.overflowed = False


class _Log:
    """One environment's ring and subscribers."""

    __slots__ = ("next_seq", "ring", "subscribers")

    def __init__(self, size: int) -> None:
        self.ring: deque[SessionEvent] = deque(maxlen=size)
        self.subscribers: set[_Subscriber] = set()
        self.next_seq = 1


class SessionEventLog:
    """Append events; subscribe from a cursor."""

    def __init__(self, ring_size: int = 10_000) -> None:
        self._size = ring_size
        self._logs: dict[str, _Log] = {}

    def _log(self, env_id: str) -> _Log:
        log = self._logs.get(env_id)
        if log is None:
            log = self._logs[env_id] = _Log(self._size)
        return log

    def append(self, env_id: str, type: str, session_id: str | None, **fields: Any) -> SessionEvent:
        """Record an event and hand it to every subscriber of the environment."""
        log = self._log(env_id)
        event = SessionEvent(log.next_seq, env_id, type, session_id, now_ms(), **fields)
        log.next_seq += 1
        log.ring.append(event)
        for sub in log.subscribers:
            if sub.queue.qsize() >= _QUEUE_LIMIT:
                # a subscriber this far behind re-reads from the ring (see `subscribe`)
                sub.overflowed = True
                continue
            sub.queue.put_nowait(event)
        return event

    def last_seq(self, env_id: str) -> int:
        """The newest event's ``seq`` (0 when there is none)."""
        return self._log(env_id).next_seq - 1

    def after(self, env_id: str, seq: int) -> list[SessionEvent]:
        """Events still in the ring with a ``seq`` above ``seq``, oldest first."""
        ring = self._log(env_id).ring
        if not ring or ring[-1].seq <= seq:
            return []
        start = max(0, seq - ring[0].seq + 1)
        return [ring[i] for i in range(start, len(ring))]

    @contextlib.asynccontextmanager
    async def subscribe(
        self, env_id: str, after: int | None = None
    ) -> AsyncIterator[AsyncIterator[SessionEvent]]:
        """Events of the environment: those after ``after`` still in the ring (none when
        ``after`` is None: live only), then live ones, in ``seq`` order, for as long as the
        context is open."""
        log = self._log(env_id)
        sub = _Subscriber()
        log.subscribers.add(sub)
        cursor = log.next_seq - 1 if after is None else after

        async def events() -> AsyncIterator[SessionEvent]:
            nonlocal cursor
            for event in self.after(env_id, cursor):
                cursor = event.seq
                yield event
            while True:
                if sub.overflowed:
                    sub.overflowed = False
                    while not sub.queue.empty():
                        sub.queue.get_nowait()
                    for event in self.after(env_id, cursor):
                        cursor = event.seq
                        yield event
                    continue
                event = await sub.queue.get()
                if event.seq <= cursor:
                    continue  # already replayed from the ring
                cursor = event.seq
                yield event

        try:
            yield events()
        finally:
            log.subscribers.discard(sub)

    def subscriber_count(self, env_id: str) -> int:
        return len(self._log(env_id).subscribers)

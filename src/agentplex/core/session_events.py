"""The session event log: every change to a session, message or part, in order, per environment.

Events are kept in a bounded in-memory ring per environment (``streams.session_ring_size``) and
handed to every subscriber the moment they are appended. Each event has a sequence number
``seq`` (increasing, per environment): a subscriber that reconnects with the last ``seq`` it saw
gets every later event still in the ring, then the live ones, with nothing missed or repeated.
(The real OpenCode server sends no ids and loses what happened while a client was away.)

Event types and their fields are OpenCode's (``docs/opencode-protocol.md``, section 4).
Surfaces render an event once and cache the bytes on it (`SessionEvent.encoded`), so a
hundred subscribers cost one serialisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from agentplex.core.session_model import Message, Part, Session, now_ms

_QUEUE_LIMIT = 10_000
_RENDERED_KEPT = 512


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

    ``encoded`` is the surface's encoding of the event, made once and shared by every
    subscriber (events are kept by the ten thousand: one slot, not a dict per event).
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
    extra: dict[str, Any] | None = None
    encoded: bytes | None = None


class _Subscriber:
    """One follower: its queue, and the sessions it follows (None: the whole environment)."""

    __slots__ = ("log", "overflowed", "queue", "sessions")

    def __init__(self, log: _Log, sessions: set[str] | None) -> None:
        self.log = log
        self.queue: asyncio.Queue[SessionEvent] = asyncio.Queue()
        self.overflowed = False
        self.sessions = sessions

    def wants(self, event: SessionEvent) -> bool:
        return self.sessions is None or event.session_id in self.sessions


class Subscription:
    """Events of an environment (or of some of its sessions), in ``seq`` order: iterate it
    event by event, or `batches` to take whatever has queued up at once."""

    def __init__(self, owner: SessionEventLog, env_id: str, sub: _Subscriber, cursor: int) -> None:
        self._owner = owner
        self._env_id = env_id
        self._sub = sub
        self.cursor = cursor

    def watch(self, session_id: str) -> None:
        """Follow one more session (a subscription made for some sessions only)."""
        sub = self._sub
        if sub.sessions is None or session_id in sub.sessions:
            return
        sub.sessions.add(session_id)
        sub.log.by_session.setdefault(session_id, set()).add(sub)

    def _missed(self) -> list[SessionEvent]:
        return [e for e in self._owner.after(self._env_id, self.cursor) if self._sub.wants(e)]

    async def batches(self, limit: int = 512) -> AsyncIterator[list[SessionEvent]]:
        """Lists of events: those in the ring after the cursor first, then as they come
        (every event queued by the time the subscriber wakes, up to ``limit``, in one list)."""
        sub = self._sub
        missed = self._missed()
        if missed:
            self.cursor = missed[-1].seq
            yield missed
        while True:
            if sub.overflowed:
                sub.overflowed = False
                while not sub.queue.empty():
                    sub.queue.get_nowait()
                missed = self._missed()
                if missed:
                    self.cursor = missed[-1].seq
                    yield missed
                continue
            first = await sub.queue.get()
            batch = [first] if first.seq > self.cursor else []
            queue = sub.queue
            while not queue.empty() and len(batch) < limit:
                event = queue.get_nowait()
                if event.seq > self.cursor:
                    batch.append(event)
            if batch:
                self.cursor = batch[-1].seq
                yield batch

    async def __aiter__(self) -> AsyncIterator[SessionEvent]:
        async for batch in self.batches():
            for event in batch:
                yield event


class _Log:
    """One environment's ring and subscribers."""

    __slots__ = ("by_session", "next_seq", "ring", "subscribers")

    def __init__(self, size: int) -> None:
        self.ring: deque[SessionEvent] = deque(maxlen=size)
        self.subscribers: set[_Subscriber] = set()  # of the whole environment
        self.by_session: dict[str, set[_Subscriber]] = {}
        # seqs go on increasing across restarts (microseconds at start, then +1 an event), so
        # a client resuming with an id from before a restart is never mistaken for a newer one
        self.next_seq = time.time_ns() // 1000


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
        ring = log.ring
        ring.append(event)
        if len(ring) > _RENDERED_KEPT:
            # old events are only read again by a reconnecting client: their encodings are
            # dropped (made again on demand) so the ring holds each event's data once
            ring[-_RENDERED_KEPT - 1].encoded = None
        _deliver(log.subscribers, event)
        if session_id is not None and log.by_session:
            followers = log.by_session.get(session_id)
            if followers:
                _deliver(followers, event)
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
        self, env_id: str, after: int | None = None, *, sessions: set[str] | None = None
    ) -> AsyncIterator[Subscription]:
        """Events of the environment (or only of ``sessions``, a set `Subscription.watch`
        grows): those after ``after`` still in the ring (none when ``after`` is None: live
        only), then live ones, in ``seq`` order, for as long as the context is open."""
        log = self._log(env_id)
        sub = _Subscriber(log, None if sessions is None else set(sessions))
        if sub.sessions is None:
            log.subscribers.add(sub)
        else:
            for session_id in sub.sessions:
                log.by_session.setdefault(session_id, set()).add(sub)
        cursor = log.next_seq - 1 if after is None else after
        try:
            yield Subscription(self, env_id, sub, cursor)
        finally:
            log.subscribers.discard(sub)
            for session_id in sub.sessions or ():
                followers = log.by_session.get(session_id)
                if followers is not None:
                    followers.discard(sub)
                    if not followers:
                        del log.by_session[session_id]

    def subscriber_count(self, env_id: str) -> int:
        return len(self._log(env_id).subscribers)


def _deliver(subscribers: set[_Subscriber], event: SessionEvent) -> None:
    for sub in subscribers:
        if sub.queue.qsize() >= _QUEUE_LIMIT:
            # a subscriber this far behind re-reads from the ring (see `Subscription.batches`)
            sub.overflowed = True
            continue
        sub.queue.put_nowait(event)

"""Reading events and runs, and following their streams: what the API asks of the run engine.

Publishing goes through `core.events.publish` (the event and its queued runs in one
transaction) and then wakes this process's workers. Following a stream replays its stored items
after the subscriber's cursor and then delivers new ones as they are appended; it ends after
the stream's terminal item (``stream:complete``, or a run's terminal ``run:update``).

A follower does not count on a terminal item being written: once every run it waits for has
been terminal for a moment (``settle_seconds``) and the items did not come (a run failed by the
sweeper, say), it makes them up from the runs' snapshots and ends. A queued run cancelled here
gets its terminal items (and its stream's ``stream:complete``) here, since no worker holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from agentplex.core.clock import aware, utcnow
from agentplex.core.events import (
    DEFAULT_MAX_ATTEMPTS,
    RUN_TYPES,
    TERMINAL,
    Event,
    Published,
    Run,
    complete_item,
    event_from_row,
    finished_entries,
    publish,
    run_from_row,
    run_snapshot,
    stream_ends,
)
from agentplex.core.ports import RunExecutor
from agentplex.core.projects import as_uuid
from agentplex.core.projects import resolve as resolve_project
from agentplex.core.streams import StreamItem, StreamStore
from agentplex.db.engine import Database
from agentplex.db.records import events as event_records
from agentplex.db.records import projects as project_records
from agentplex.db.records import run_queries as queries
from agentplex.db.records import run_vars as var_records
from agentplex.db.records import runs as run_records
from agentplex.errors import BadRequest, EventNotFound, RunNotFound, StreamNotFound

if TYPE_CHECKING:
    from agentplex.engine.queue import RunQueue

RUN_STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
_RUN_ITEMS = frozenset({"run:start", "run:stop", "run:fail", "run:cancel", "run:update"})


@dataclass(frozen=True, slots=True)
class RunVar:
    """A value a run's handler captured (``sdk.capture``)."""

    var_id: str
    run_id: str
    ns: str
    var: str
    value: Any
    meta: Any
    start_time: datetime
    stop_time: datetime | None


@dataclass(frozen=True, slots=True)
class Stream:
    """A stream of an environment and who writes to it: the runs of an event, or one run of no
    event (a schedule's)."""

    stream_id: str
    env_id: str
    event_id: str | None = None
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class Frame:
    """One item for a subscriber: ``id`` is the stream item's (the resume cursor), None for a
    snapshot made on the spot."""

    data: dict[str, Any]
    id: int | None = None

    @property
    def type(self) -> str:
        return str(self.data.get("type", "message"))


PROJECT_DELETED = {
    "type": "Cancelled",
    "message": "the run was cancelled: its project was deleted",
    "traceback": None,
}


class RunService:
    """Publish events; read events, runs and run vars; cancel runs; follow streams."""

    def __init__(
        self,
        db: Database,
        queue: RunQueue,
        streams: StreamStore,
        *,
        check_seconds: float = 2.0,
        settle_seconds: float = 2.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        executor: RunExecutor | None = None,
    ) -> None:
        self._db = db
        self._executor = executor  # told when a project goes, to drop its warm sandboxes
        self._max_attempts = max_attempts  # of each run an event queues
        self._queue = queue
        self._streams = streams
        # how often an idle follower looks at its runs, and how long they must have been
        # terminal before it makes up the terminal items nobody wrote
        self.check_seconds = check_seconds
        self.settle_seconds = settle_seconds

    # -- events ------------------------------------------------------------------------------

    async def publish(self, env_id: str, event_type: Any, event_data: Any) -> Published:
        """Write the event and its queued runs (BadRequest for an invalid event or an unknown
        ``hot:call`` function), then wake this process's workers."""
        async with self._db.write() as conn:
            published = await publish(
                conn, env_id, event_type, event_data, max_attempts=self._max_attempts
            )
        self._queue.notify()
        await self._streams.announce(published.items)
        return published

    @staticmethod
    def event_stream(event: Event) -> Stream:
        """The stream of an event's runs."""
        return Stream(event.stream_id, event.env_id, event_id=event.event_id)

    async def events(self, env_id: str, *, limit: int, offset: int) -> tuple[list[Event], int]:
        """Newest first: a page of the environment's events, and their total."""
        async with self._db.read() as conn:
            rows, total = await event_records.page(conn, env_id, limit=limit, offset=offset)
        return [event_from_row(r) for r in rows], total

    async def event(self, env_id: str, event_id: str) -> Event:
        """The environment's event ``event_id`` (EventNotFound otherwise)."""
        row, ref = None, as_uuid(event_id)
        if ref is not None:
            async with self._db.read() as conn:
                row = await event_records.get(conn, env_id, ref)
        if row is None:
            raise EventNotFound()
        return event_from_row(row)

    async def by_event(self, env_id: str, event_id: str) -> list[Run]:
        """The runs the event started, oldest first (EventNotFound for an unknown event)."""
        event = await self.event(env_id, event_id)
        async with self._db.read() as conn:
            rows = await run_records.by_event(conn, env_id, event.event_id)
        return [run_from_row(r) for r in rows]

    async def stream(self, env_id: str, stream_id: str) -> Stream:
        """The environment's stream ``stream_id``; StreamNotFound when the environment has no
        such stream (another environment's stream is not found either)."""
        owner, ref = None, as_uuid(stream_id)
        if ref is not None:
            async with self._db.read() as conn:
                owner = await queries.stream_owner(conn, env_id, ref)
        if ref is None or owner is None:
            raise StreamNotFound()
        return Stream(ref, env_id, *owner)

    # -- runs --------------------------------------------------------------------------------

    async def runs(
        self,
        env_id: str,
        *,
        status: str | None = None,
        run_type: str | None = None,
        time_range: timedelta | None = None,
        project: str | None = None,
        limit: int,
        offset: int,
    ) -> tuple[list[Run], int]:
        """Newest first: a page of the environment's runs, and how many match. ``status`` and
        ``run_type`` take one value or several separated by commas; ``time_range`` keeps the
        runs created within it; ``project`` is a project's id or name."""
        statuses = _choices("status", status, RUN_STATUSES)
        run_types = _choices("type", run_type, RUN_TYPES)
        if time_range is not None and time_range <= timedelta(0):
            raise BadRequest("time_range must be a positive ISO 8601 duration such as P7D")
        since = utcnow() - time_range if time_range is not None else None
        async with self._db.read() as conn:
            project_id = None
            if project:
                project_id = (await resolve_project(conn, env_id, project)).project_id
            rows, total = await queries.page_runs(
                conn,
                env_id,
                statuses=statuses,
                run_types=run_types,
                since=since,
                project_id=project_id,
                limit=limit,
                offset=offset,
            )
        return [run_from_row(r) for r in rows], total

    async def get(self, env_id: str, run_id: str) -> Run:
        """The environment's run ``run_id`` (RunNotFound otherwise)."""
        row, ref = None, as_uuid(run_id)
        if ref is not None:
            async with self._db.read() as conn:
                row = await run_records.get(conn, ref, env_id)
        if row is None:
            raise RunNotFound()
        return run_from_row(row)

    async def vars(
        self, env_id: str, run_id: str, *, limit: int, offset: int
    ) -> tuple[list[RunVar], int]:
        """The values the run's handler captured, in capture order (RunNotFound for an
        unknown run)."""
        run = await self.get(env_id, run_id)
        async with self._db.read() as conn:
            rows, total = await var_records.page(conn, run.run_id, limit=limit, offset=offset)
        return [_var(r) for r in rows], total

    async def stats(self, env_id: str) -> dict[str, int]:
        """``{total_runs, queued, running, succeeded, failed, cancelled}`` of the environment."""
        async with self._db.read() as conn:
            counts = await run_records.count_by_status(conn, env_id)
        return {"total_runs": sum(counts.values()), **{s: counts.get(s, 0) for s in RUN_STATUSES}}

    async def cancel(self, env_id: str, run_id: str) -> Run:
        """Cancel the run: a queued one at once (its stream then says so), a running one as
        soon as its worker stops its code; a finished one stays as it is. The run afterwards."""
        before = await self.get(env_id, run_id)
        after = await self._queue.cancel(env_id, before.run_id)
        if before.status == "queued" and after.status == "cancelled":
            # no worker holds it: nobody else tells its stream
            async with self._db.write() as conn:
                entries = finished_entries(after) + await stream_ends(conn, [after])
                items = await self._streams.append_in(conn, entries)
            await self._streams.announce(items)
        return after

    async def end_project(self, env_id: str, project_id: str) -> list[Run]:
        """Before a project is deleted: cancel its unfinished runs, stop their code, and end
        their streams (a subscriber, the SDK's ``call_hot`` say, hears ``run:cancel`` at once
        instead of waiting on a run that vanished). The runs cancelled."""
        if self._executor is not None:
            await self._executor.forget_project(project_id)
        async with self._db.write() as conn:
            ended = await self._queue.end_project(conn, env_id, project_id, PROJECT_DELETED)
            if not ended:
                return []
            entries = [e for run in ended for e in finished_entries(run)]
            entries += await stream_ends(conn, ended)
            items = await self._streams.append_in(conn, entries)
        self._queue.stop_running([r.run_id for r in ended if r.started_at is not None])
        await self._streams.announce(items)
        return ended

    # -- following streams ---------------------------------------------------------------

    def follow_stream(self, stream: Stream, after: int = 0) -> AsyncIterator[Frame]:
        """The stream from after the cursor ``after``: stored items, then new ones, until
        ``stream:complete``."""
        state = _Followed()

        def wanted(frame: Frame) -> bool:
            state.note(frame)
            return True

        async def settled() -> list[Frame] | None:
            async with self._db.read() as conn:
                if stream.event_id is not None:
                    rows = await run_records.by_event(conn, stream.env_id, stream.event_id)
                else:
                    row = await run_records.get(conn, str(stream.run_id), stream.env_id)
                    rows = [row] if row is not None else []
            runs = [run_from_row(r) for r in rows]
            if not self._settled(runs):
                return None
            made: list[Frame] = []
            for run in runs:
                if run.run_id not in state.terminal:
                    made.extend(Frame(data) for _, data in finished_entries(run))
            made.append(Frame(complete_item(stream.stream_id)[1]))
            return made

        return self._named(
            stream.env_id,
            self._follow(
                stream.stream_id, after, wanted, lambda f: f.type == "stream:complete", settled
            ),
        )

    def follow_run(self, run: Run, after: int = 0) -> AsyncIterator[Frame]:
        """A run's snapshot (``run:update``), then its own items from its stream after the
        cursor ``after``, until its terminal ``run:update``. A resume (``after`` > 0) of a run
        that has finished since gets the items it missed, then the terminal snapshot."""
        run_id = run.run_id

        def wanted(frame: Frame) -> bool:
            return _run_of(frame.data) == run_id

        def last(frame: Frame) -> bool:
            return frame.type == "run:update" and _status_of(frame.data) in TERMINAL

        async def settled() -> list[Frame] | None:
            now = await self.get(run.env_id, run_id)
            if not self._settled([now]):
                return None
            return [Frame({"type": "run:update", "run": run_snapshot(now)})]

        async def missed() -> AsyncIterator[Frame]:
            cursor = after
            while page := await self._streams.read(run.stream_id, cursor):
                for item in page:
                    cursor = item.id
                    frame = Frame(item.data, item.id)
                    if wanted(frame):
                        yield frame
                        if last(frame):
                            return
            yield Frame({"type": "run:update", "run": run_snapshot(run)})

        async def frames() -> AsyncIterator[Frame]:
            if run.terminal and after > 0:
                async for frame in missed():
                    yield frame
                return
            yield Frame({"type": "run:update", "run": run_snapshot(run)})
            if run.terminal:
                return
            async for frame in self._follow(run.stream_id, after, wanted, last, settled):
                yield frame

        return self._named(run.env_id, frames())

    async def _named(self, env_id: str, frames: AsyncIterator[Frame]) -> AsyncIterator[Frame]:
        """``frames`` with each run snapshot's ``project_name`` filled in (workers write the
        snapshots without it), as `get` answers it. One lookup per project per subscriber."""
        names: dict[str, str | None] = {}
        try:
            async for frame in frames:
                run = frame.data.get("run")
                if isinstance(run, dict) and not run.get("project_name") and run.get("project_id"):
                    project_id = str(run["project_id"])
                    if project_id not in names:
                        async with self._db.read() as conn:
                            row = await project_records.get_project(conn, env_id, project_id)
                        names[project_id] = row["name"] if row is not None else None
                    if names[project_id] is not None:  # shared data: copied, never changed
                        run = {**run, "project_name": names[project_id]}
                        frame = Frame({**frame.data, "run": run}, frame.id)
                yield frame
        finally:
            await frames.aclose()  # type: ignore[attr-defined]

    def _settled(self, runs: Iterable[Run]) -> bool:
        """Every run terminal, the last of them for ``settle_seconds`` at least (by then its
        worker has written its terminal items, if it is going to)."""
        cutoff = utcnow() - timedelta(seconds=self.settle_seconds)
        for run in runs:
            if not run.terminal:
                return False
            if run.stopped_at is not None and aware(run.stopped_at) > cutoff:
                return False
        return True

    async def _follow(
        self,
        stream_id: str,
        after: int,
        wanted: Callable[[Frame], bool],
        last: Callable[[Frame], bool],
        settled: Callable[[], Awaitable[list[Frame] | None]],
    ) -> AsyncIterator[Frame]:
        live = aiter(self._streams.follow(stream_id, after))
        pending: asyncio.Future[StreamItem] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(live))
                done, _ = await asyncio.wait({pending}, timeout=self.check_seconds)
                if not done:  # quiet: the store's follower polls, this looks at the runs
                    made = await settled()
                    if made is not None:
                        for frame in made:
                            yield frame
                        return
                    continue
                try:
                    item = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                frame = Frame(item.data, item.id)
                if not wanted(frame):
                    continue
                yield frame
                if last(frame):
                    return
        finally:
            if pending is not None:
                pending.cancel()
                await asyncio.wait({pending})
                if not pending.cancelled():
                    pending.exception()  # retrieved: asyncio must not log it
            with contextlib.suppress(RuntimeError):
                await live.aclose()  # type: ignore[attr-defined]


class _Followed:
    """Which runs' terminal items a stream's follower has delivered."""

    __slots__ = ("terminal",)

    def __init__(self) -> None:
        self.terminal: set[str] = set()

    def note(self, frame: Frame) -> None:
        if frame.type in ("run:stop", "run:fail", "run:cancel"):
            run_id = _run_of(frame.data)
            if run_id is not None:
                self.terminal.add(run_id)


def _choices(name: str, raw: str | None, allowed: tuple[str, ...]) -> list[str]:
    if raw is None or not raw.strip():
        return []
    values = [v.strip() for v in raw.split(",") if v.strip()]
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise BadRequest(
            f"{name} {', '.join(repr(v) for v in unknown)} is not one of: {', '.join(allowed)}"
        )
    return values


def _run_of(data: dict[str, Any]) -> str | None:
    """The run an item is about (None for the event's own items)."""
    kind = data.get("type")
    if kind in _RUN_ITEMS:
        run = data.get("run")
        value = run.get("run_id") if isinstance(run, dict) else None
    elif kind == "stream:data":
        value = data.get("run_id")
    else:
        return None
    return value if isinstance(value, str) else None


def _status_of(data: dict[str, Any]) -> str | None:
    run = data.get("run")
    return run.get("status") if isinstance(run, dict) else None


def _var(row: dict[str, Any]) -> RunVar:
    stop = row["stop_time"]
    return RunVar(
        var_id=row["var_id"],
        run_id=row["run_id"],
        ns=row["ns"],
        var=row["var"],
        value=row["value"],
        meta=row["meta"],
        start_time=aware(row["start_time"]),
        stop_time=aware(stop) if stop is not None else None,
    )

"""Events and the runs they start.

Publishing writes the event and one queued run per matching handler of the environment's
deployed builds in the caller's transaction, so an accepted event never lacks its runs (and a
failure leaves neither). A ``hot:call`` event (``{"fn": "::a::b/fn" | "a.b:fn", "args": [...]}``)
queues one ``call`` run of that function, found among the deployed builds' functions.

The runs of one event share the event's stream (``stream_id``), which is where their output and
state changes go. Queued runs are then claimed by workers through `agentplex.engine.queue`.

A stream's items (see docs and COMPAT.md, Hot): ``event:published`` first (written by
`publish`, in its transaction), then per run ``run:start`` and ``run:update`` (running), its
``stream:data``, its end (``run:stop`` | ``run:fail`` | ``run:cancel``) and a ``run:update``
with the final snapshot (`finished_entries`), and ``stream:complete`` once every run of the
event is finished (`stream_ends`; at once when the event started no run). A run's snapshot in
these items is `run_snapshot`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.core.clock import aware, iso, new_id, utcnow
from agentplex.core.manifest import FunctionRef, Manifest, event_type_problem, parse_function
from agentplex.core.streams import Entry, StreamItem, write_items
from agentplex.db.records import events as records
from agentplex.db.records import run_streams
from agentplex.db.records import runs as run_records
from agentplex.errors import BadRequest

CALL_EVENT = "hot:call"
DEFAULT_MAX_ATTEMPTS = 3
MAX_EVENT_TYPE_LENGTH = 200
MAX_EVENT_DATA_BYTES = 1024 * 1024
MAX_CHAIN_DEPTH = 8
"""Events published by handlers whose runs publish again: at most this many links."""

RunType = Literal["call", "event", "schedule", "run", "eval", "repl"]
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
RUN_TYPES: tuple[str, ...] = ("call", "event", "schedule", "run", "eval", "repl")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    env_id: str
    project_id: str | None
    stream_id: str
    event_type: str
    event_data: Any
    origin_run_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Run:
    """A run as stored (``project_name`` only where the query joined it)."""

    run_id: str
    env_id: str
    project_id: str
    build_id: str | None
    event_id: str | None
    stream_id: str
    run_type: str
    ns: str
    var: str
    function: str
    status: str
    input: Any
    result: Any
    error: Any
    attempt: int
    retry_attempt: int
    max_attempts: int
    available_at: datetime
    next_retry_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    fence: int
    heartbeat_at: datetime | None
    timeout_seconds: float | None
    cancel_requested: bool
    origin_run_id: str | None
    dedupe_key: str | None
    created_at: datetime
    started_at: datetime | None
    stopped_at: datetime | None
    project_name: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def _when(value: datetime | None) -> datetime | None:
    return aware(value) if value is not None else None


def event_from_row(row: Mapping[str, Any]) -> Event:
    return Event(
        event_id=row["event_id"],
        env_id=row["env_id"],
        project_id=row["project_id"],
        stream_id=row["stream_id"],
        event_type=row["event_type"],
        event_data=row["event_data"],
        origin_run_id=row["origin_run_id"],
        created_at=aware(row["created_at"]),
    )


def run_from_row(row: Mapping[str, Any]) -> Run:
    return Run(
        run_id=row["run_id"],
        env_id=row["env_id"],
        project_id=row["project_id"],
        build_id=row["build_id"],
        event_id=row["event_id"],
        stream_id=row["stream_id"],
        run_type=row["run_type"],
        ns=row["ns"],
        var=row["var"],
        function=row["function"],
        status=row["status"],
        input=row["input"],
        result=row["result"],
        error=row["error"],
        attempt=int(row["attempt"]),
        retry_attempt=int(row["retry_attempt"]),
        max_attempts=int(row["max_attempts"]),
        available_at=aware(row["available_at"]),
        next_retry_at=_when(row["next_retry_at"]),
        lease_owner=row["lease_owner"],
        lease_expires_at=_when(row["lease_expires_at"]),
        fence=int(row["fence"]),
        heartbeat_at=_when(row["heartbeat_at"]),
        timeout_seconds=row["timeout_seconds"],
        cancel_requested=bool(row["cancel_requested"]),
        origin_run_id=row["origin_run_id"],
        dedupe_key=row["dedupe_key"],
        created_at=aware(row["created_at"]),
        started_at=_when(row["started_at"]),
        stopped_at=_when(row["stopped_at"]),
        project_name=row.get("project_name"),
    )


def new_run_row(
    env_id: str,
    *,
    project_id: str,
    build_id: str | None,
    run_type: RunType,
    function: FunctionRef,
    input: Any,
    stream_id: str | None = None,
    event_id: str | None = None,
    origin_run_id: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout_seconds: float | None = None,
    dedupe_key: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The row of a new queued run, due at once (``available_at`` = now)."""
    if run_type not in RUN_TYPES:
        raise BadRequest(f"run type {run_type!r} is not one of {', '.join(RUN_TYPES)}")
    if max_attempts < 1:
        raise BadRequest(f"max_attempts is {max_attempts}: a run needs at least 1 attempt")
    now = now or utcnow()
    return {
        "run_id": new_id(),
        "env_id": env_id,
        "project_id": project_id,
        "build_id": build_id,
        "event_id": event_id,
        "stream_id": stream_id or new_id(),
        "run_type": run_type,
        "ns": function.ns,
        "var": function.var,
        "function": function.target,
        "status": "queued",
        "input": input,
        "result": None,
        "error": None,
        "attempt": 0,
        "retry_attempt": 0,
        "max_attempts": max_attempts,
        "available_at": now,
        "next_retry_at": None,
        "lease_owner": None,
        "lease_expires_at": None,
        "fence": 0,
        "heartbeat_at": None,
        "timeout_seconds": timeout_seconds,
        "cancel_requested": False,
        "origin_run_id": origin_run_id,
        "dedupe_key": dedupe_key,
        "created_at": now,
        "started_at": None,
        "stopped_at": None,
    }


async def enqueue(conn: AsyncConnection, row: Mapping[str, Any], *, notify: bool = True) -> bool:
    """Queue one run (a `new_run_row`) in the caller's transaction. With a ``dedupe_key``
    (a schedule's fire), False and nothing written when the environment has that key already.
    Workers of other processes are notified at commit (PostgreSQL); call the queue's
    ``notify()`` after the commit for this process's."""
    inserted = await run_records.insert_once(conn, row)
    if inserted and notify:
        await run_records.notify(conn, str(row["env_id"]))
    return inserted


def run_snapshot(run: Run) -> dict[str, Any]:
    """The run as JSON, as stream items carry it and as Hot's run view shows it."""
    return {
        "run_id": run.run_id,
        "env_id": run.env_id,
        "project_id": run.project_id,
        "project_name": run.project_name,
        "build_id": run.build_id,
        "stream_id": run.stream_id,
        "event_id": run.event_id,
        "origin_run_id": run.origin_run_id,
        "run_type": run.run_type,
        "ns": run.ns,
        "var": run.var,
        "function": run.function,
        "status": run.status,
        "result": run.result,
        "error": run.error,
        "attempt": run.attempt,
        "retry_attempt": run.retry_attempt,
        "max_attempts": run.max_attempts,
        "next_retry_at": iso(run.next_retry_at),
        "timeout_seconds": run.timeout_seconds,
        "created_at": iso(run.created_at),
        "start_time": iso(run.started_at),
        "stop_time": iso(run.stopped_at),
    }


def run_item(item_type: str, run: Run) -> Entry:
    """A ``run:*`` item of the run's stream: ``{"type": item_type, "run": snapshot}``."""
    return run.stream_id, {"type": item_type, "run": run_snapshot(run)}


_END_ITEMS = {"succeeded": "run:stop", "failed": "run:fail", "cancelled": "run:cancel"}


def finished_entries(run: Run) -> list[Entry]:
    """The items a finished run writes to its stream: its end (``run:stop``, ``run:fail``
    or ``run:cancel``), then a ``run:update`` with its final snapshot."""
    return [run_item(_END_ITEMS[run.status], run), run_item("run:update", run)]


def complete_item(stream_id: str) -> Entry:
    return stream_id, {"type": "stream:complete", "stream_id": stream_id}


async def stream_ends(conn: AsyncConnection, finished: Iterable[Run]) -> list[Entry]:
    """The ``stream:complete`` items of the streams that runs just finished in this (write)
    transaction end: those where no run of the event is left unfinished. A run of no event
    (a schedule's) is alone in its stream. Call it once the runs' final state is written."""
    alone: list[str] = []
    by_event: dict[str, str] = {}
    for run in finished:
        if run.event_id is None:
            alone.append(run.stream_id)
        else:
            by_event[run.event_id] = run.stream_id
    if by_event:
        await run_streams.lock_events(conn, by_event.keys())
        unfinished = await run_streams.unfinished_events(conn, by_event.keys())
        alone.extend(
            sid for event_id, sid in sorted(by_event.items()) if event_id not in unfinished
        )
    return [complete_item(sid) for sid in dict.fromkeys(alone)]


@dataclass(frozen=True, slots=True)
class Published:
    """A published event, the runs it queued and the stream items written with it
    (``event:published``, and ``stream:complete`` when no run started): announce these with
    ``StreamStore.announce`` once the transaction committed."""

    event: Event
    runs: tuple[Run, ...]
    items: tuple[StreamItem, ...] = ()


async def publish(
    conn: AsyncConnection,
    env_id: str,
    event_type: str,
    event_data: Any,
    *,
    origin_run_id: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> Published:
    """Write the event and its queued runs in the caller's (write) transaction: one ``event``
    run per handler of ``event_type`` in the environment's deployed builds of active projects,
    or, for ``hot:call``, one ``call`` run of the named function. BadRequest for an invalid
    event or an unknown function. Other processes' workers are notified at commit
    (PostgreSQL); call the queue's ``notify()`` after the commit for this process's."""
    _check_event_type(event_type)
    _check_event_data(event_data)
    if origin_run_id is not None:
        await _check_chain(conn, origin_run_id)
    now = utcnow()
    event_id, stream_id = new_id(), new_id()
    project_id: str | None = None

    def queued(
        row: Mapping[str, Any], run_type: RunType, function: FunctionRef, input: Any
    ) -> dict[str, Any]:
        return new_run_row(
            env_id,
            project_id=row["project_id"],
            build_id=row["build_id"],
            run_type=run_type,
            function=function,
            input=input,
            stream_id=stream_id,
            event_id=event_id,
            origin_run_id=origin_run_id,
            max_attempts=max_attempts,
            now=now,
        )

    rows: list[dict[str, Any]] = []
    if event_type == CALL_EVENT:
        fn, args = _call_arguments(event_data)
        ref, build = await _resolve_function(conn, env_id, fn)
        project_id = build["project_id"]
        rows.append(queued(build, "call", ref, {"fn": fn, "args": args}))
    else:
        payload = {"event_id": event_id, "event_type": event_type, "event_data": event_data}
        for handler in await records.matching_handlers(conn, env_id, event_type):
            rows.append(queued(handler, "event", parse_function(handler["function"]), payload))
    event = {
        "event_id": event_id,
        "env_id": env_id,
        "project_id": project_id,
        "stream_id": stream_id,
        "event_type": event_type,
        "event_data": event_data,
        "origin_run_id": origin_run_id,
        "created_at": now,
    }
    await records.insert(conn, event)
    await run_records.insert(conn, rows)
    entries: list[Entry] = [
        (
            stream_id,
            {
                "type": "event:published",
                "event_id": event_id,
                "stream_id": stream_id,
                "event_type": event_type,
                "event_data": event_data,
                "env_id": env_id,
                "project_id": project_id,
                "created_at": iso(now),
            },
        )
    ]
    if rows:
        await run_records.notify(conn, env_id)
    else:
        entries.append(complete_item(stream_id))
    items = await write_items(conn, entries)
    return Published(event_from_row(event), tuple(run_from_row(r) for r in rows), tuple(items))


def _check_event_type(event_type: Any) -> None:
    if not isinstance(event_type, str) or not event_type.strip():
        raise BadRequest("event_type is required: a string such as user.signup")
    if len(event_type) > MAX_EVENT_TYPE_LENGTH:
        raise BadRequest(
            f"event_type is {len(event_type)} characters long; the limit is {MAX_EVENT_TYPE_LENGTH}"
        )
    if event_type != CALL_EVENT and (problem := event_type_problem(event_type)):
        raise BadRequest(f"Invalid event_type: {problem}")


def _check_event_data(event_data: Any) -> None:
    """BadRequest when ``event_data`` is over `MAX_EVENT_DATA_BYTES` as JSON: every run of
    the event carries it, and every page of the event list."""
    try:
        size = len(orjson.dumps(event_data))
    except (TypeError, orjson.JSONEncodeError):  # the surfaces hand over parsed JSON
        raise BadRequest("event_data must be JSON") from None
    if size > MAX_EVENT_DATA_BYTES:
        raise BadRequest(
            f"event_data is {size} bytes as JSON; at most {MAX_EVENT_DATA_BYTES} (1 MiB) are"
            " allowed: put large payloads in a store and send their address"
        )


async def _check_chain(conn: AsyncConnection, origin_run_id: str) -> None:
    """BadRequest when a handler's publish would chain events deeper than
    `MAX_CHAIN_DEPTH` (a handler publishing the event that runs it again, say), which would
    otherwise grow without bound and starve every other project."""
    run_id: str | None = origin_run_id
    for _ in range(MAX_CHAIN_DEPTH):
        run_id = await run_streams.origin_of(conn, run_id) if run_id else None
        if run_id is None:
            return
    raise BadRequest(
        f"this event would be the {MAX_CHAIN_DEPTH + 1}th in a chain of events published by"
        f" handlers (at most {MAX_CHAIN_DEPTH}): a handler may be publishing the event that"
        " runs it"
    )


def _call_arguments(event_data: Any) -> tuple[str, list[Any] | dict[str, Any]]:
    if not isinstance(event_data, dict):
        raise BadRequest('hot:call needs event_data {"fn": "::module::path/fn", "args": [...]}')
    fn = event_data.get("fn")
    if not isinstance(fn, str) or not fn:
        raise BadRequest('hot:call needs event_data.fn, e.g. "::hello::math/add"')
    args = event_data.get("args")
    if args is None:
        args = []
    if not isinstance(args, list | dict):
        raise BadRequest(
            "hot:call event_data.args must be a list (positional arguments) or an object "
            f"(keyword arguments), not {type(args).__name__}"
        )
    return fn, args


async def _resolve_function(
    conn: AsyncConnection, env_id: str, fn: str
) -> tuple[FunctionRef, dict[str, Any]]:
    """The function ``fn`` names and the deployed build (row) that declares it."""
    try:
        ref = parse_function(fn)
    except ValueError:
        raise BadRequest(
            f"hot:call fn {fn!r} is not a function name: write ::module::path/fn or module.path:fn"
        ) from None
    found = [
        build
        for build in await records.deployed_builds(conn, env_id)
        if ref in _callable(Manifest.from_json(build["manifest"]))
    ]
    if not found:
        raise BadRequest(
            f"hot:call fn {fn!r} is not a function of any deployed build in this environment: "
            "declare it in agentplex.json (functions) and deploy the build"
        )
    if len(found) > 1:
        names = ", ".join(str(b["project_name"]) for b in found)
        raise BadRequest(
            f"hot:call fn {fn!r} is declared by several deployed projects ({names}): "
            "give the function a module path of its own in each project"
        )
    return ref, found[0]


def _callable(manifest: Manifest) -> set[FunctionRef]:
    """Every function a build declares: its functions, handlers and scheduled functions."""
    return {
        *manifest.functions,
        *(h.function for h in manifest.handlers),
        *(s.function for s in manifest.schedules),
    }

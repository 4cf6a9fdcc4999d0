"""Workers: claim queued runs, execute them through the `RunExecutor`, write what happened.

A `Worker` has ``slots`` runs going at once. While a slot is free it claims due runs in
batches (`RunQueue.claim`, which enforces each environment's ``max_concurrent_runs``) and
otherwise waits for a notification (`RunQueue.wait_for_work`); the wait's timeout only
covers the next retry's due time (and, on SQLite, other processes, which cannot notify).

For each run it writes ``run:start`` and ``run:update`` (running) to the run's stream, in the
claim's transaction, loads the project's secrets, and executes the handler. What the handler
produces goes, as it comes, to the stream (``stream:data``), the run's vars or a new event
(``origin_run_id`` set). The outcome is written fenced (`records.update_held`): ``{"$ok":
value}`` when it succeeded; a failure is queued again after a backoff while attempts are
left; a cancel ends it ``cancelled``. Then come the run's end items and, once every run of its
event is finished, ``stream:complete``.

Every write goes through one writer task that commits everything pending in one transaction
(group commit): the output of every running run, and the outcomes of the runs that finished
together. Each outcome's update stays per run and exact; one that finds its fence gone (the
lease was lost: the run was swept, perhaps claimed again) writes nothing, neither state nor
items. A finish wakes other claimers (NOTIFY ``free:<env>``) only where a claim left runs
queued for their environment's ``max_concurrent_runs``.

Leases: every ``heartbeat_seconds`` the worker renews the leases of its runs; a run whose lease
is lost (or could not be renewed before it expired) is stopped and nothing of its end is
written. Cancel: a cancel asked in this process (`RunQueue.on_cancel`), through PostgreSQL's
NOTIFY, or seen by a twice-a-second look at the runs (SQLite, other processes) cancels the
executor's task, which stops the user code within a second.

Stopping: `Worker.stop` stops claiming, lets running runs finish for ``grace_seconds``, then
stops the rest and queues them again for another worker (an attempt spent, as a lost lease
would).

The `Sweeper` takes back runs whose lease expired (their worker died), queueing them again
or failing them when out of attempts, and writes their stream items in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.core import events
from agentplex.core.clock import iso, new_id, utcnow
from agentplex.core.events import Run, finished_entries, run_from_row, run_item, stream_ends
from agentplex.core.manifest import Manifest
from agentplex.core.ports import RunExecutor, RunJob, RunOutcome, RunOutput
from agentplex.core.secrets import SecretService
from agentplex.core.streams import Entry, StreamItem, StreamStore, write_items
from agentplex.db.engine import Database
from agentplex.db.records import builds as build_records
from agentplex.db.records import run_vars as var_records
from agentplex.db.records import runs as records
from agentplex.engine.queue import FREE_PREFIX, LEASE_EXPIRED, RunQueue
from agentplex.errors import AgentplexError, BadRequest
from agentplex.settings import RunSettings

log = logging.getLogger("agentplex.worker")

CANCELLED_ERROR: dict[str, Any] = {
    "type": "Cancelled",
    "message": "the run was cancelled",
    "traceback": None,
}
LEASE_EXPIRED_ERROR: dict[str, Any] = dict(LEASE_EXPIRED)
WORKER_STOPPED_ERROR: dict[str, Any] = {
    "type": "WorkerStopped",
    "message": "the worker running the run shut down before the run finished",
    "traceback": None,
}
UNAVAILABLE = "ExecutorUnavailable"
_CANCEL_POLL_SECONDS = 0.5
_CLAIM_LINGER_SECONDS = 0.02
_TIMEOUT_SLACK_SECONDS = 5.0  # the executor enforces the timeout; this is the backstop
_MAX_OPS_PER_COMMIT = 1000
_TIMEOUT_CACHE_SIZE = 1000
_RELEASED: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}


def new_worker_id() -> str:
    """``host:pid:random``: unique per Worker, readable in ``lease_owner``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def timed_out_error(seconds: float) -> dict[str, Any]:
    return {
        "type": "TimeoutError",
        "message": f"the handler ran longer than its timeout of {seconds:g} s",
        "traceback": None,
    }


def err_result(error: Mapping[str, Any]) -> dict[str, Any]:
    """Hot's result of a run that did not succeed."""
    return {"$err": {"type": error.get("type", "Error"), "message": error.get("message", "")}}


# -- group commit ------------------------------------------------------------------------------


@dataclasses.dataclass
class _Commit:
    """What the operations of one transaction add up to."""

    entries: list[Entry] = dataclasses.field(default_factory=list)
    finished: list[Run] = dataclasses.field(default_factory=list)
    announce: list[StreamItem] = dataclasses.field(default_factory=list)
    wake: bool = False  # runs were queued: wake this process's workers
    notify_env: str | None = None  # ... and other processes' (PostgreSQL NOTIFY)
    freed_env: str | None = None  # a run finished: a slot of its environment is free


class _Op:
    """One write the writer commits with others; ``future`` (if any) gets what ``apply``
    returned once the transaction committed."""

    future: asyncio.Future[Any] | None = None

    async def apply(self, conn: AsyncConnection, commit: _Commit) -> Any:
        raise NotImplementedError


class _Writer:
    """Commits the pending operations together, in the order they came, one transaction at a
    time; what comes during a commit goes into the next one."""

    def __init__(self, db: Database, streams: StreamStore, queue: RunQueue) -> None:
        self.db = db
        self.streams = streams
        self.queue = queue
        self._ops: list[_Op] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="agentplex-run-writer")

    def add(self, op: _Op) -> None:
        """Queue ``op`` (fire and forget)."""
        self._ops.append(op)
        self._wake.set()

    async def submit(self, op: _Op) -> Any:
        """Queue ``op`` and wait until it is committed: what it returned."""
        op.future = asyncio.get_running_loop().create_future()
        self.add(op)
        return await op.future

    async def close(self) -> None:
        """Commit what is pending, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._ops:
                ops = self._ops[:_MAX_OPS_PER_COMMIT]
                del self._ops[:_MAX_OPS_PER_COMMIT]
                await self._flush(ops)
            if self._closing:
                return

    async def _flush(self, ops: list[_Op]) -> None:
        try:
            results = await self._commit(ops)
        except Exception as exc:
            if len(ops) == 1:
                _settle(ops[0], error=exc)
                return
            # one bad operation must not sink the others: commit each on its own
            for op in ops:
                try:
                    (result,) = await self._commit([op])
                except Exception as one:
                    _settle(op, error=one)
                else:
                    _settle(op, result=result)
            return
        for op, result in zip(ops, results, strict=True):
            _settle(op, result=result)

    async def _commit(self, ops: Sequence[_Op]) -> list[Any]:
        commit = _Commit()
        results: list[Any] = []
        async with self.db.write() as conn:
            for op in ops:
                results.append(await op.apply(conn, commit))
            if commit.finished:
                commit.entries.extend(await stream_ends(conn, commit.finished))
            commit.announce.extend(await write_items(conn, commit.entries))
            if commit.notify_env is not None:
                await records.notify(conn, commit.notify_env)
            elif commit.freed_env is not None:  # wakes only claimers held back by a limit
                await records.notify(conn, FREE_PREFIX + commit.freed_env)
        try:
            await self.streams.announce(commit.announce)
        except Exception:  # the items are stored: followers catch up from the store
            log.exception("could not announce %d stream items", len(commit.announce))
        if commit.wake:
            self.queue.notify()
        elif commit.freed_env is not None:
            self.queue.notify_freed()
        return results


def _settle(op: _Op, *, result: Any = None, error: BaseException | None = None) -> None:
    future = op.future
    if future is None:
        if error is not None:
            log.error("a run engine write failed: %s", error, exc_info=error)
        return
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _Items(_Op):
    """Append stream items."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries

    async def apply(self, conn: AsyncConnection, commit: _Commit) -> None:
        commit.entries.extend(self.entries)


class _Vars(_Op):
    """Store captured vars."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    async def apply(self, conn: AsyncConnection, commit: _Commit) -> None:
        await var_records.insert(conn, self.rows)


class _Publish(_Op):
    """Publish an event from a handler (its runs' ``origin_run_id`` is the handler's run)."""

    def __init__(self, run: Run, event_type: Any, event_data: Any, max_attempts: int) -> None:
        self.run = run
        self.event_type = event_type
        self.event_data = event_data
        self.max_attempts = max_attempts

    async def apply(self, conn: AsyncConnection, commit: _Commit) -> str | None:
        try:
            # BadRequest comes before publish writes anything: the transaction stays good
            published = await events.publish(
                conn,
                self.run.env_id,
                self.event_type,
                self.event_data,
                origin_run_id=self.run.run_id,
                max_attempts=self.max_attempts,
            )
        except BadRequest as exc:
            text = f"publish({self.event_type!r}) failed: {exc.message}\n"
            commit.entries.append(_data_entry(self.run, "text", {"text": text, "stream": "stderr"}))
            return None
        commit.announce.extend(published.items)
        if published.runs:
            commit.wake = True
        return published.event.event_id


class _Heartbeat(_Op):
    """Renew leases; the (run_id, fence) whose lease is lost."""

    def __init__(self, held: list[tuple[str, int]], lease_seconds: float, clock: Any) -> None:
        self.held = held
        self.lease_seconds = lease_seconds
        self.clock = clock

    async def apply(self, conn: AsyncConnection, commit: _Commit) -> set[tuple[str, int]]:
        now = self.clock()
        values = {
            "heartbeat_at": now,
            "lease_expires_at": now + timedelta(seconds=self.lease_seconds),
        }
        lost: set[tuple[str, int]] = set()
        for run_id, fence in self.held:
            if not await records.update_held(conn, run_id, fence, values):
                lost.add((run_id, fence))
        return lost


class _Finish(_Op):
    """Write an attempt's outcome, fenced: the run's new status, or None when its fence no
    longer holds it (nothing written then)."""

    def __init__(
        self,
        run: Run,
        status: str,
        *,
        result: Any = None,
        error: Mapping[str, Any] | None = None,
        retry: bool = False,
        backoff: Callable[[int], float] | None = None,
        clock: Any,
    ) -> None:
        self.run = run
        self.status = status  # succeeded | failed | cancelled
        self.result = result
        self.error = dict(error) if error is not None else None
        self.retry = retry
        self.backoff = backoff
        self.clock = clock

    async def apply(self, conn: AsyncConnection, commit: _Commit) -> str | None:
        run = self.run
        now = self.clock()
        values: dict[str, Any]
        if self.status == "succeeded":
            values = {"status": "succeeded", "result": {"$ok": self.result}, "error": None}
        elif self.status == "cancelled":
            error = self.error or CANCELLED_ERROR
            values = {"status": "cancelled", "result": err_result(error), "error": error}
        else:
            error = self.error or {"type": "Error", "message": "the run failed", "traceback": None}
            values = {"status": "failed", "result": err_result(error), "error": error}
            if self.retry:
                row = await records.get_held(conn, run.run_id, run.fence)
                if row is None:
                    return None
                attempt = int(row["attempt"])
                if self.backoff is None and not row["cancel_requested"]:
                    # handed back by a worker shutting down, not failed: due at once, ahead
                    # of later runs, and the attempt is given back (a run must not run out of
                    # attempts because workers were restarted under it)
                    values = {
                        "status": "queued",
                        "error": error,
                        "available_at": run.available_at,
                        "attempt": max(attempt - 1, 0),
                        "heartbeat_at": None,
                    }
                elif attempt < int(row["max_attempts"]) and not row["cancel_requested"]:
                    when = now + timedelta(seconds=self.backoff(attempt)) if self.backoff else now
                    values = {
                        "status": "queued",
                        "error": error,
                        "available_at": when,
                        "next_retry_at": when,
                        "retry_attempt": attempt,
                        "heartbeat_at": None,
                    }
        if values["status"] != "queued":
            values["stopped_at"] = now
        values.update(_RELEASED)
        if not await records.update_held(conn, run.run_id, run.fence, values):
            return None
        after = dataclasses.replace(run, **values)
        if after.status == "queued":
            commit.entries.append(run_item("run:update", after))
            commit.notify_env = run.env_id
            commit.wake = True
        else:
            commit.entries.extend(finished_entries(after))
            commit.finished.append(after)
            commit.freed_env = run.env_id
        return after.status


def _start_entries(runs: list[Run]) -> list[Entry]:
    """What a claimed run writes to its stream as it starts."""
    entries: list[Entry] = []
    for run in runs:
        entries.append(run_item("run:start", run))
        entries.append(run_item("run:update", run))
    return entries


def _data_entry(run: Run, data_type: str, payload: Any) -> Entry:
    return run.stream_id, {
        "type": "stream:data",
        "stream_data_id": new_id(),
        "run_id": run.run_id,
        "data_type": data_type,
        "payload": payload,
        "created_at": iso(utcnow()),
    }


# -- the worker --------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Active:
    """A run this worker holds."""

    run: Run
    lease_until: float  # monotonic
    task: asyncio.Task[None] | None = None
    exec_task: asyncio.Task[RunOutcome] | None = None
    cancel_requested: bool = False
    lease_lost: bool = False
    shutdown: bool = False
    finishing: bool = False

    def interrupt(self) -> None:
        if self.exec_task is not None and not self.exec_task.done():
            self.exec_task.cancel()


class Worker:
    """Executes queued runs, ``settings.workers`` at once (see the module docstring)."""

    def __init__(
        self,
        queue: RunQueue,
        streams: StreamStore,
        db: Database,
        secrets: SecretService | None,
        executor: RunExecutor,
        settings: RunSettings,
        worker_id: str | None = None,
        *,
        slots: int | None = None,
        idle_seconds: float | None = None,
    ) -> None:
        self.queue = queue
        self.streams = streams
        self.db = db
        self.secrets = secrets
        self.executor = executor
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.slots = max(1, slots if slots is not None else settings.workers)
        # no NOTIFY on SQLite: other processes' runs are looked for this often
        self.idle_seconds = (
            idle_seconds if idle_seconds is not None else (1.0 if db.is_sqlite else 10.0)
        )
        # by (run_id, fence): a run lost and claimed again here is held twice for a moment
        self._active: dict[tuple[str, int], _Active] = {}
        # fewer free slots than this, with runs going: wait a moment for more before claiming
        self._batch_floor = max(1, min(settings.claim_batch, self.slots) // 2)
        # one project may hold all but an eighth of the slots (one at least): a flood of its
        # runs cannot make other projects' runs wait for a slot
        reserved = max(1, self.slots // 8) if self.slots > 1 else 0
        self._project_cap: int | None = self.slots - reserved if reserved else None
        self._capped = False  # the last claim left out a project at its cap
        self._writer = _Writer(db, streams, queue)
        # build_id -> the timeouts its manifest declares per function (builds never change)
        self._timeouts: dict[str, Mapping[str, float]] = {}
        self._slot_freed = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.started = 0
        self.finished = 0

    @property
    def running(self) -> int:
        """Runs held right now."""
        return len(self._active)

    def status(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "slots": self.slots,
            "running": len(self._active),
            "started": self.started,
            "finished": self.finished,
        }

    async def start(self) -> None:
        """Start claiming and executing runs."""
        if self._tasks:
            return
        self._stopping = False
        self.queue.on_cancel(self._on_cancel)
        self._writer.start()
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name=f"worker-claim-{self.worker_id}"),
            asyncio.create_task(self._heartbeat_loop(), name=f"worker-heartbeat-{self.worker_id}"),
            asyncio.create_task(self._cancel_poll_loop(), name=f"worker-cancel-{self.worker_id}"),
        ]
        log.info("worker %s started: %d slots", self.worker_id, self.slots)

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; let running runs finish for ``grace`` seconds (the settings'
        ``grace_seconds`` by default), then stop them and queue them again."""
        if not self._tasks:
            return
        self._stopping = True
        claim, *others = self._tasks
        self._slot_freed.set()
        self.queue.notify()  # out of wait_for_work
        with contextlib.suppress(asyncio.CancelledError):
            await claim
        grace = self.settings.grace_seconds if grace is None else grace
        running = [a.task for a in self._active.values() if a.task is not None]
        if running:
            log.info(
                "worker %s: waiting up to %g s for %d runs", self.worker_id, grace, len(running)
            )
            pending = set(running)
            if grace > 0:
                _, pending = await asyncio.wait(running, timeout=grace)
            if pending:
                log.warning(
                    "worker %s: %d runs still running after %g s: queueing them again",
                    self.worker_id,
                    len(pending),
                    grace,
                )
                for active in list(self._active.values()):
                    active.shutdown = True
                    active.interrupt()
                await asyncio.wait(pending, timeout=_TIMEOUT_SLACK_SECONDS + 5)
        for task in others:
            task.cancel()
        for task in others:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._writer.close()
        self._tasks = []
        log.info("worker %s stopped", self.worker_id)

    # -- claiming ----------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        settings = self.settings
        while not self._stopping:
            self._slot_freed.clear()
            free = self.slots - len(self._active)
            if free <= 0:
                await self._slot_freed.wait()
                continue
            if free < self._batch_floor and self._active:
                # a slot or two free while the others run: let more free up first, since a
                # claim costs about as much for one run as for a batch
                await asyncio.sleep(_CLAIM_LINGER_SECONDS)
                free = self.slots - len(self._active)
                if self._stopping or free <= 0:
                    continue
            asked_at = self.queue.clock()
            try:
                # run:start and run:update (running) are written with the claim
                held: dict[str, int] = {}
                for active in self._active.values():
                    held[active.run.project_id] = held.get(active.run.project_id, 0) + 1
                cap = self._project_cap
                self._capped = cap is not None and any(n >= cap for n in held.values())
                runs, items = await self.queue.claim_and_start(
                    self.worker_id,
                    limit=min(free, settings.claim_batch),
                    lease_seconds=settings.lease_seconds,
                    start_items=_start_entries,
                    project_room=held,
                    project_cap=self._project_cap,
                )
            except Exception:
                log.exception("worker %s: claiming runs failed; retrying in 1 s", self.worker_id)
                await asyncio.sleep(1.0)
                continue
            if runs:
                await self._launch(runs, items)
                continue
            await self._wait_for_work(asked_at)

    async def _wait_for_work(self, asked_at: datetime) -> None:
        """Return when a claim may find something: on a notification, or when a queued run
        (a retry) comes due. Without notifications (another process on SQLite) the queue is
        looked at every ``idle_seconds``, with a read: a claim (a write) only follows when a
        run is due."""
        due = await self._next_due()
        while not self._stopping:
            now = self.queue.clock()
            if due is not None and asked_at < due <= now:
                return  # came due since the claim looked
            if due is None or due <= asked_at:
                # nothing queued; or due when we claimed and not given (its environment is
                # at max_concurrent_runs, or another worker took it): a finish notifies
                timeout = self.idle_seconds
            else:
                timeout = min(self.idle_seconds, (due - now).total_seconds())
            if await self.queue.wait_for_work(max(timeout, 0.0)):
                return
            due = await self._next_due()
            if due is not None and due <= self.queue.clock():
                return

    async def _next_due(self) -> datetime | None:
        try:
            return await self.queue.next_due()
        except Exception:
            log.exception("worker %s: reading the queue failed", self.worker_id)
            await asyncio.sleep(1.0)
            return self.queue.clock()

    async def _launch(self, runs: list[Run], items: list[StreamItem]) -> None:
        deadline = time.monotonic() + self.settings.lease_seconds
        for run in runs:
            self._active[(run.run_id, run.fence)] = _Active(run, deadline)
        self.started += len(runs)
        try:
            await self.streams.announce(items)
        except Exception:  # the items are stored: followers catch up from the store
            log.exception("could not announce %d stream items", len(items))
        secrets = await self._secrets({(r.env_id, r.project_id) for r in runs})
        await self._load_timeouts({r.build_id for r in runs if r.build_id})
        for run in runs:
            active = self._active[(run.run_id, run.fence)]
            found = secrets[(run.env_id, run.project_id)]
            active.task = asyncio.create_task(
                self._execute(active, found), name=f"run-{run.run_id}"
            )

    async def _load_timeouts(self, build_ids: set[str]) -> None:
        """Read the per-function timeouts of builds not seen yet (one query)."""
        missing = build_ids - self._timeouts.keys()
        if not missing:
            return
        try:
            async with self.db.read() as conn:
                manifests = await build_records.manifests(conn, missing)
        except Exception:  # the default timeout applies meanwhile
            log.exception("worker %s: reading build manifests failed", self.worker_id)
            return
        if len(self._timeouts) > _TIMEOUT_CACHE_SIZE:
            self._timeouts.clear()
        for build_id, manifest in manifests.items():
            self._timeouts[build_id] = Manifest.from_json(manifest).timeouts

    def _timeout(self, run: Run) -> float:
        """The run's own timeout, else its function's in the build's manifest, else the
        server's default."""
        if run.timeout_seconds:
            return float(run.timeout_seconds)
        declared = self._timeouts.get(run.build_id or "", {}).get(run.function)
        return float(declared or self.settings.default_timeout_seconds)

    async def _secrets(
        self, projects: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], Mapping[str, str] | Exception]:
        found: dict[tuple[str, str], Mapping[str, str] | Exception] = {}
        for env_id, project_id in projects:
            if self.secrets is None:
                found[(env_id, project_id)] = {}
                continue
            try:
                found[(env_id, project_id)] = await self.secrets.values(env_id, project_id)
            except Exception as exc:  # the run fails with it (and a broken database retries)
                found[(env_id, project_id)] = exc
        return found

    # -- one run -----------------------------------------------------------------------------

    async def _execute(self, active: _Active, secrets: Mapping[str, str] | Exception) -> None:
        run = active.run
        try:
            finish = await self._attempt(active, secrets)
            if finish is None:  # the lease was lost: the run is not ours to end
                log.warning("run %s: lease lost, its outcome is not written", run.run_id)
                return
            active.finishing = True
            status = await self._writer.submit(finish)
            if status is None:
                log.warning("run %s: lease lost before its outcome was written", run.run_id)
        except Exception:
            log.exception("run %s: the worker failed to finish it", run.run_id)
        finally:
            self._active.pop((run.run_id, run.fence), None)
            self.finished += 1
            self._slot_freed.set()
            if self._capped:  # the claim left a project's runs out: they may go now
                self.queue.notify()

    async def _attempt(
        self, active: _Active, secrets: Mapping[str, str] | Exception
    ) -> _Finish | None:
        run = active.run
        clock = self.queue.clock
        if isinstance(secrets, AgentplexError):  # unreadable secrets: retrying will not help
            error = {"type": type(secrets).__name__, "message": secrets.message, "traceback": None}
            return _Finish(run, "failed", error=error, clock=clock)
        if isinstance(secrets, Exception):
            error = {
                "type": "SecretsUnavailable",
                "message": f"the project's secrets could not be read: {secrets}",
                "traceback": None,
            }
            return self._failure(run, error, retryable=True)
        if active.cancel_requested:
            return _Finish(run, "cancelled", clock=clock)
        timeout = self._timeout(run)
        job = RunJob(
            run_id=run.run_id,
            env_id=run.env_id,
            project_id=run.project_id,
            build_id=run.build_id or "",
            run_type=run.run_type,
            function=run.function,
            input=run.input,
            secrets=secrets,
            timeout_seconds=timeout,
        )
        task = asyncio.create_task(
            self.executor.execute(job, lambda out: self._output(active, out))
        )
        active.exec_task = task
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout + _TIMEOUT_SLACK_SECONDS)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait({task})
            raise
        if not done:  # the executor did not enforce the timeout: stop it here
            task.cancel()
            await asyncio.wait({task})
            if not task.cancelled():
                done = {task}
            else:
                return self._failure(run, timed_out_error(timeout), retryable=False)
        if task.cancelled():
            if active.lease_lost:
                return None
            if active.shutdown:
                return self._failure(run, WORKER_STOPPED_ERROR, retryable=True, backoff=False)
            return _Finish(run, "cancelled", clock=clock)
        exc = task.exception()
        if exc is not None:
            log.error("run %s: the executor failed", run.run_id, exc_info=exc)
            error = {
                "type": type(exc).__name__,
                "message": f"the run could not be executed: {exc}",
                "traceback": None,
            }
            return self._failure(run, error, retryable=True)
        outcome = task.result()
        if active.lease_lost:
            return None
        if outcome.status == "succeeded":
            return _Finish(run, "succeeded", result=outcome.result, clock=clock)
        if outcome.status == "cancelled":
            return _Finish(run, "cancelled", error=outcome.error, clock=clock)
        if outcome.status == "timed_out":
            error = dict(outcome.error or timed_out_error(timeout))
            return self._failure(run, error, retryable=outcome.retryable)
        error = dict(outcome.error or {"type": "Error", "message": "the handler failed"})
        error.setdefault("traceback", None)
        return self._failure(run, error, retryable=outcome.retryable)

    def _failure(
        self, run: Run, error: Mapping[str, Any], *, retryable: bool, backoff: bool = True
    ) -> _Finish:
        # every failure retries while attempts are left (a code error, a timeout, a broken
        # sandbox alike: max_attempts bounds them all), except where nothing can execute it;
        # a call's caller is waiting on it: its code's errors are final at once (the same
        # arguments would fail the same way), only a broken environment is tried again
        if run.run_type == "call":
            retry = retryable
        else:
            retry = retryable or error.get("type") != UNAVAILABLE
        return _Finish(
            run,
            "failed",
            error=error,
            retry=retry,
            backoff=self.queue.backoff if backoff else None,
            clock=self.queue.clock,
        )

    def _output(self, active: _Active, output: RunOutput) -> None:
        """What the handler produced (called by the executor, as it happens)."""
        if active.finishing or active.lease_lost:
            return
        run = active.run
        kind = output.kind
        if kind in ("text", "data"):
            self._writer.add(_Items([_data_entry(run, output.data_type, output.payload)]))
        elif kind == "var":
            payload = output.payload if isinstance(output.payload, dict) else {}
            now = self.queue.clock()
            row = {
                "var_id": new_id(),
                "run_id": run.run_id,
                "env_id": run.env_id,
                "ns": run.ns,
                "var": str(payload.get("name", "")),
                "value": payload.get("value"),
                "meta": payload.get("meta"),
                "start_time": now,
                "stop_time": now,
            }
            self._writer.add(_Vars([row]))
        elif kind == "publish":
            payload = output.payload if isinstance(output.payload, dict) else {}
            self._writer.add(
                _Publish(
                    run,
                    payload.get("event_type"),
                    payload.get("event_data"),
                    self.settings.max_attempts,
                )
            )
        else:
            log.warning("run %s: unknown output kind %r ignored", run.run_id, kind)

    # -- leases and cancels ------------------------------------------------------------------

    def _on_cancel(self, run_id: str) -> None:
        for active in list(self._active.values()):
            if active.run.run_id != run_id or active.cancel_requested or active.finishing:
                continue
            active.cancel_requested = True
            active.interrupt()

    def _lose(self, active: _Active) -> None:
        if active.finishing or active.lease_lost:
            return
        log.warning("run %s: the lease was lost; stopping it", active.run.run_id)
        active.lease_lost = True
        active.interrupt()

    async def _heartbeat_loop(self) -> None:
        settings = self.settings
        while True:
            await asyncio.sleep(settings.heartbeat_seconds)
            held = [a for a in self._active.values() if not a.finishing]
            if held:
                asked = time.monotonic()
                op = _Heartbeat(
                    [(a.run.run_id, a.run.fence) for a in held],
                    settings.lease_seconds,
                    self.queue.clock,
                )
                try:
                    lost = await self._writer.submit(op)
                except Exception:
                    log.exception("worker %s: renewing leases failed", self.worker_id)
                else:
                    for active in held:
                        if (active.run.run_id, active.run.fence) in lost:
                            self._lose(active)
                        else:
                            active.lease_until = asked + settings.lease_seconds
            now = time.monotonic()
            for active in list(self._active.values()):
                if active.lease_until < now:  # could not renew it in time: another may hold it
                    self._lose(active)

    async def _cancel_poll_loop(self) -> None:
        while True:
            await asyncio.sleep(_CANCEL_POLL_SECONDS)
            ids = list(
                {
                    a.run.run_id
                    for a in self._active.values()
                    if not a.cancel_requested and not a.finishing
                }
            )
            if not ids:
                continue
            try:
                asked = await self.queue.cancel_requested(ids)
            except Exception:
                log.exception("worker %s: looking for cancels failed", self.worker_id)
                continue
            for run_id in asked:
                self._on_cancel(run_id)


# -- the sweeper -------------------------------------------------------------------------------


class Sweeper:
    """Takes back runs whose lease expired, every ``settings.sweep_seconds``: queued again,
    or failed when out of attempts (cancelled when a cancel was asked), with their stream
    items written in the same transaction."""

    def __init__(
        self, db: Database, streams: StreamStore, queue: RunQueue, settings: RunSettings
    ) -> None:
        self.db = db
        self.streams = streams
        self.queue = queue
        self.settings = settings

    async def sweep(self, now: datetime | None = None) -> list[tuple[str, str]]:
        """One pass: (run_id, new status) of each run taken back."""
        async with self.db.write() as conn:
            when = now or self.queue.clock()
            swept = await records.sweep_expired(conn, when, LEASE_EXPIRED_ERROR)
            if not swept:
                return []
            entries: list[Entry] = []
            finished: list[Run] = []
            for run_id, status in swept:
                row = await records.get(conn, run_id)
                if row is None:
                    continue
                run = run_from_row(row)
                if status == "queued":
                    entries.append(run_item("run:update", run))
                else:
                    entries.extend(finished_entries(run))
                    finished.append(run)
            entries.extend(await stream_ends(conn, finished))
            items = await write_items(conn, entries)
            await records.notify(conn)
        log.warning("took back %d runs whose lease expired", len(swept))
        await self.streams.announce(items)
        self.queue.notify()
        return swept

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every ``sweep_seconds`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.sweep()
            except Exception:
                log.exception("sweeping expired run leases failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.sweep_seconds)


# -- no executor -------------------------------------------------------------------------------


class UnavailableExecutor(RunExecutor):
    """Stands in when sandboxes are disabled: every run fails saying why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def execute(self, job: RunJob, emit: Callable[[RunOutput], None]) -> RunOutcome:
        return RunOutcome(
            "failed",
            error={"type": UNAVAILABLE, "message": self.reason, "traceback": None},
        )

    async def discover(self, archive: bytes) -> Any:
        raise BadRequest(self.reason)

    def status(self) -> dict[str, Any]:
        return {"available": False, "reason": self.reason}

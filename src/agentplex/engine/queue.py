"""The durable run queue: the runs table is the source of truth (DESIGN.md section 3).

- ``claim`` takes due queued runs under a lease (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so
  concurrent claimers take different runs; SQLite: one writer at a time, ``BEGIN IMMEDIATE``),
  at most ``max_concurrent_runs`` running per environment (the rest stay queued), and raises
  each run's ``fence`` by one.
- The holder proves itself with ``(run_id, fence)``: ``heartbeat`` extends the lease,
  ``complete``/``fail``/``cancelled`` write the outcome. Each of these writes only while the
  run is ``running`` with that fence, so a holder whose lease expired (the run swept, perhaps
  claimed again under a higher fence) writes nothing and learns it from the False it gets:
  a run's terminal state is written exactly once.
- ``sweep`` re-queues runs whose lease expired (their worker died or stalled) or fails them
  when they are out of attempts; delivery is therefore at-least-once. ``attempt`` counts the
  claims, ``max_attempts`` bounds them, whatever ended each attempt (an error or a lost
  lease), so retries never exceed the limit.
- ``cancel`` makes a queued run cancelled at once (it is never claimed); a running run gets
  ``cancel_requested``, which its worker sees (``cancel_requested``, or the listener) and
  acknowledges with ``cancelled``.
- Wake-ups: ``notify()`` sets an in-process event; on PostgreSQL, ``start()`` also LISTENs on
  the channel that publishing and retries NOTIFY at commit, so workers of other processes
  wake too. ``wait_for_work(timeout)`` returns as soon as either fires (the timeout is the
  fallback, and bounds the wait for a retry's ``next_retry_at``: see ``next_due``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import psycopg

from agentplex.core.clock import aware, utcnow
from agentplex.core.events import Run, run_from_row
from agentplex.core.streams import Entry, StreamItem, write_items
from agentplex.db.engine import Database
from agentplex.db.records import runs as records
from agentplex.errors import BadRequest, RunNotFound

log = logging.getLogger("agentplex.queue")

LEASE_EXPIRED = {
    "type": "LeaseExpired",
    "message": "The run's worker stopped renewing its lease (it died or stalled): "
    "the run was taken back from it",
    "traceback": None,
}
_CANCEL_PREFIX = "cancel:"
FREE_PREFIX = "free:"
"""A NOTIFY payload saying a run of an environment finished (a slot of it is free): it wakes
only workers whose last claim left runs queued because of ``max_concurrent_runs``."""


class RunQueue:
    """Claim, lease, finish, cancel and sweep runs; wake workers when there is work."""

    def __init__(
        self,
        db: Database,
        *,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.clock = clock
        self._wake: asyncio.Event | None = None
        self._listener: asyncio.Task[None] | None = None
        self._cancel_callbacks: list[Callable[[str], None]] = []
        # the last claim left due runs queued because their environment was full: a finish
        # (a slot freed) must wake the claimers then, and only then
        self._blocked = False

    # -- claiming --------------------------------------------------------------------------

    async def claim(
        self,
        worker_id: str,
        *,
        limit: int = 1,
        lease_seconds: float = 30.0,
        env_limits: Mapping[str, int | None] | None = None,
    ) -> list[Run]:
        """Up to ``limit`` due queued runs, oldest due first, now ``running`` under
        ``worker_id``'s lease for ``lease_seconds`` with their fence one higher. At most
        ``max_concurrent_runs`` of an environment run at once (``env_limits`` overrides an
        environment's quota; None there means no limit): the others stay queued. Fewer than
        ``limit`` can come back while more are due (claim again at once when any came back)."""
        runs, _ = await self.claim_and_start(
            worker_id, limit=limit, lease_seconds=lease_seconds, env_limits=env_limits
        )
        return runs

    async def claim_and_start(
        self,
        worker_id: str,
        *,
        limit: int = 1,
        lease_seconds: float = 30.0,
        env_limits: Mapping[str, int | None] | None = None,
        start_items: Callable[[list[Run]], list[Entry]] | None = None,
        project_room: Mapping[str, int] | None = None,
        project_cap: int | None = None,
    ) -> tuple[list[Run], list[StreamItem]]:
        """`claim`, and in the same transaction the stream items ``start_items(runs)`` makes
        of the runs claimed (``run:start``...): the runs, and the items to announce.

        With ``project_cap``, no project gets more than that many of the claimer's slots,
        counting the ``project_room`` it holds already (project_id -> runs): a flood of one
        project's runs leaves the other slots to other projects' runs."""
        if limit < 1:
            return [], []
        if lease_seconds <= 0:
            raise BadRequest(f"lease_seconds is {lease_seconds}: a lease must last a while")
        overrides = dict(env_limits or {})
        async with self.db.write() as conn:
            now = self.clock()
            # environments at their limit are left out of the window, so that their queued
            # runs do not crowd out other environments' (one statement)
            seen = await records.capacity(conn)
            saturated = {e for e, (n, cap) in seen.items() if _full(_cap(e, cap, overrides), n)}
            saturated |= {e for e, cap in overrides.items() if cap is not None and cap <= 0}
            held = dict(project_room or {})
            full_projects = (
                {p for p, n in held.items() if n >= project_cap}
                if project_cap is not None
                else set()
            )
            window = await records.candidates(
                conn, now, max(limit * 4, limit + 16), saturated, full_projects
            )
            self._blocked = bool(saturated) or bool(full_projects)
            if not window:
                return [], []
            envs = {env_id for _, env_id, _ in window}
            if self.db.is_sqlite:
                # one writer at a time (BEGIN IMMEDIATE): what was counted above is exact
                exact = {e: seen[e] for e in envs & seen.keys()}
                if envs - seen.keys():  # environments with no running run: their limits
                    exact.update(await records.capacity(conn, envs - seen.keys()))
            else:  # lock the environments' rows, then count exactly
                exact = await records.capacity(conn, envs, lock=True)
            running = {e: n for e, (n, _) in exact.items()}
            limits = {e: _cap(e, cap, overrides) for e, (_, cap) in exact.items()}
            chosen: list[str] = []
            for run_id, env_id, project_id in window:
                if len(chosen) == limit:
                    break
                if _full(limits.get(env_id), running.get(env_id, 0)):
                    continue
                if project_cap is not None and held.get(project_id, 0) >= project_cap:
                    continue
                running[env_id] = running.get(env_id, 0) + 1
                held[project_id] = held.get(project_id, 0) + 1
                chosen.append(run_id)
            if len(chosen) < min(limit, len(window)):
                self._blocked = True  # some were left for their environment's limit
            until = now + timedelta(seconds=lease_seconds)
            rows = await records.mark_claimed(conn, chosen, worker_id, now, until)
            order = {run_id: i for i, run_id in enumerate(chosen)}
            runs = sorted((run_from_row(r) for r in rows), key=lambda run: order[run.run_id])
            items = await write_items(conn, start_items(runs)) if start_items and runs else []
        return runs, items

    # -- the holder's writes ---------------------------------------------------------------

    async def heartbeat(self, run_id: str, fence: int, lease_seconds: float) -> bool:
        """Extend the lease by ``lease_seconds`` from now; False when the lease was lost (the
        run was swept, claimed again or finished): stop working on it then."""
        async with self.db.write() as conn:
            now = self.clock()
            values = {
                "heartbeat_at": now,
                "lease_expires_at": now + timedelta(seconds=lease_seconds),
            }
            return await records.update_held(conn, run_id, fence, values)

    async def complete(self, run_id: str, fence: int, result: Any) -> bool:
        """The run succeeded with ``result``; False (nothing written) when ``fence`` no longer
        holds it."""
        async with self.db.write() as conn:
            now = self.clock()
            values = {"status": "succeeded", "result": result, "stopped_at": now, **_RELEASED}
            done = await records.update_held(conn, run_id, fence, values)
        if done:
            self.notify()  # a slot of its environment is free
        return done

    async def fail(
        self, run_id: str, fence: int, error: Mapping[str, Any], *, retry: bool
    ) -> str | None:
        """The attempt failed with ``error`` (``{"message", "traceback"}``). With ``retry`` and
        attempts left (and no cancel asked), the run is queued again after an exponential
        backoff (``next_retry_at``); otherwise it is failed. The run's new status
        (``"queued"`` or ``"failed"``), or None (nothing written) when ``fence`` no longer
        holds it."""
        async with self.db.write() as conn:
            row = await records.get_held(conn, run_id, fence)
            if row is None:
                return None
            now = self.clock()
            attempt = int(row["attempt"])
            if retry and attempt < int(row["max_attempts"]) and not row["cancel_requested"]:
                when = now + timedelta(seconds=self.backoff(attempt))
                values: dict[str, Any] = {
                    "status": "queued",
                    "error": dict(error),
                    "available_at": when,
                    "next_retry_at": when,
                    "retry_attempt": attempt,
                    **_RELEASED,
                }
            else:
                values = {"status": "failed", "error": dict(error), "stopped_at": now, **_RELEASED}
            if not await records.update_held(conn, run_id, fence, values):
                return None
            if values["status"] == "queued":
                await records.notify(conn, str(row["env_id"]))
        self.notify()
        return str(values["status"])

    async def cancelled(
        self, run_id: str, fence: int, error: Mapping[str, Any] | None = None
    ) -> bool:
        """The worker stopped the run's code after a cancel: the run is cancelled. False
        (nothing written) when ``fence`` no longer holds it."""
        async with self.db.write() as conn:
            now = self.clock()
            values = {
                "status": "cancelled",
                "stopped_at": now,
                "error": dict(error) if error is not None else None,
                **_RELEASED,
            }
            done = await records.update_held(conn, run_id, fence, values)
        if done:
            self.notify()
        return done

    def backoff(self, attempt: int) -> float:
        """Seconds before the retry that follows attempt ``attempt`` (1, 2, ...):
        ``backoff_base * 2 ** (attempt - 1)``, at most ``backoff_max``."""
        return float(min(self.backoff_max, self.backoff_base * 2 ** max(attempt - 1, 0)))

    # -- cancel, sweep, reads --------------------------------------------------------------

    async def cancel(self, env_id: str, run_id: str) -> Run:
        """Cancel the environment's run: a queued one (a retry's wait included) is cancelled
        at once and never claimed; a running one gets ``cancel_requested`` for its worker; a
        finished one is left as it is. The run afterwards; RunNotFound if there is none."""
        async with self.db.write() as conn:
            now = self.clock()
            requested = False
            if not await records.cancel_queued(conn, env_id, run_id, now):
                requested = await records.request_cancel(conn, env_id, run_id)
                if requested:
                    await records.notify(conn, _CANCEL_PREFIX + run_id)
            row = await records.get(conn, run_id, env_id)
        if row is None:
            raise RunNotFound(f"Run {run_id} not found")
        if requested:
            self._cancel_requested(run_id)
        return run_from_row(row)

    async def end_project(
        self, conn: Any, env_id: str, project_id: str, error: Mapping[str, Any]
    ) -> list[Run]:
        """In the caller's write transaction: cancel every queued or running run of the
        project at once, with ``error`` (its project is being deleted; no worker could write
        their end once their rows are gone). Workers running them are told to stop (call
        `stop_running` with the running ones after the commit, for this process's). The runs
        afterwards, the running ones first."""
        result = {"$err": {"type": error.get("type"), "message": error.get("message")}}
        ended = await records.end_unfinished_of_project(
            conn, env_id, project_id, self.clock(), error, result
        )
        running = [run_from_row(row) for row, status in ended if status == "running"]
        for run in running:
            await records.notify(conn, _CANCEL_PREFIX + run.run_id)
        return running + [run_from_row(row) for row, status in ended if status != "running"]

    def stop_running(self, run_ids: list[str]) -> None:
        """Tell this process's workers to stop these runs' code now."""
        for run_id in run_ids:
            self._cancel_requested(run_id)

    async def sweep(self, now: datetime | None = None) -> list[tuple[str, str]]:
        """Take back runs whose lease expired before ``now``: queued again at once, or failed
        when out of attempts (cancelled when cancel was asked). (run_id, new status) of each."""
        async with self.db.write() as conn:
            swept = await records.sweep_expired(conn, aware(now or self.clock()), LEASE_EXPIRED)
            if any(status == "queued" for _, status in swept):
                await records.notify(conn)
        if swept:
            log.warning("took back %d runs whose lease expired", len(swept))
            self.notify()
        return swept

    async def cancel_requested(self, run_ids: list[str]) -> set[str]:
        """Which of these running runs were asked to stop."""
        async with self.db.read() as conn:
            return await records.cancel_requested(conn, run_ids)

    async def get(self, run_id: str, env_id: str | None = None) -> Run | None:
        async with self.db.read() as conn:
            row = await records.get(conn, run_id, env_id)
        return run_from_row(row) if row else None

    async def next_due(self) -> datetime | None:
        """When the earliest queued run is due (a retry's ``next_retry_at``), if any is
        queued: a worker with nothing to claim waits at most until then."""
        async with self.db.read() as conn:
            value = await records.next_available(conn)
        return aware(value) if value is not None else None

    # -- wake-ups ----------------------------------------------------------------------------

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(run_id)`` when a running run is asked to stop (in this process,
        and, once started on PostgreSQL, in any process)."""
        self._cancel_callbacks.append(callback)

    def _cancel_requested(self, run_id: str) -> None:
        for callback in self._cancel_callbacks:
            try:
                callback(run_id)
            except Exception:  # a listener's bug must not break cancel
                log.exception("cancel callback failed")

    def _event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    def notify(self) -> None:
        """There may be work: wake this process's waiting workers."""
        self._event().set()

    def notify_freed(self) -> None:
        """A run finished, so a slot of its environment is free: wake this process's waiting
        workers if their last claim left runs queued for an environment's limit (otherwise
        there is nothing a claim would find now: new runs come with their own notify)."""
        if self._blocked:
            self._event().set()

    async def wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109 (a worker loop's API)
        """Wait until ``notify`` (or, on PostgreSQL once started, a NOTIFY from any process)
        or ``timeout`` seconds; True when woken. A notification that came since the last
        wait returns at once, so none is lost between a claim and this wait."""
        event = self._event()
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        event.clear()
        return True

    async def start(self) -> None:
        """On PostgreSQL, LISTEN for other processes' notifications (reconnecting when the
        connection drops). Nothing to do on SQLite."""
        if self.db.is_sqlite or self._listener is not None:
            return
        self._event()
        self._listener = asyncio.create_task(self._listen(), name="agentplex-run-queue-listen")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def _listen(self) -> None:
        url = self.db.url.set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {records.NOTIFY_CHANNEL}")
                    self.notify()  # anything queued while not listening
                    async for note in conn.notifies():
                        if note.payload.startswith(_CANCEL_PREFIX):
                            self._cancel_requested(note.payload[len(_CANCEL_PREFIX) :])
                        elif note.payload.startswith(FREE_PREFIX):
                            self.notify_freed()
                        else:
                            self.notify()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database restarted, the network dropped, ...
                log.warning("run queue: LISTEN connection lost (%s); reconnecting", exc)
                await asyncio.sleep(1.0)


_RELEASED: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}


def _cap(env_id: str, cap: int | None, overrides: Mapping[str, int | None]) -> int | None:
    """An environment's limit: the override given to ``claim``, else its quota."""
    return overrides.get(env_id, cap)


def _full(limit: int | None, running: int) -> bool:
    return limit is not None and running >= limit

"""The cron scheduler: the schedules of deployed builds become queued ``schedule`` runs.

Fire times
    A schedule's cron expression (5 fields, or 6 with seconds first; cronsim) is read as wall
    clock time in its time zone (``tz``, an IANA name). Each fire is a UTC instant, a whole
    second. Fires only come after the schedule was registered (its deploy): a deploy never
    fires the past.

Daylight-saving time (the rule; it holds for every expression)
    - A wall-clock fire time that does not exist (the hour skipped when clocks spring forward,
      e.g. 02:30 on the last Sunday of March in Europe/Paris) fires once, at the first valid
      instant after it: the transition itself (03:00 local). Several fire times of one
      schedule that land there (02:00, 02:30 and 03:00) are one fire.
    - A wall-clock fire time that exists twice (the hour repeated when clocks fall back, e.g.
      01:30 on the first Sunday of November in America/New_York) fires once, at its first
      occurrence (01:30 EDT). Nothing fires in the second pass of that hour, so a schedule of
      every 15 minutes pauses for that hour; a schedule that must follow elapsed time rather
      than the wall clock uses ``tz`` "UTC".

Exactly once
    Each fire is enqueued (core.events.enqueue) with ``dedupe_key``
    ``schedule:{schedule key}:{fire time, RFC 3339 UTC}``, unique per environment in the runs
    table: two schedulers ticking at once, in one process or in several on one PostgreSQL, and
    a scheduler restarted (or one tick repeated) queue a fire once. The schedule key
    (`schedule_key`) is a digest of the project, cron, time zone and function rather than the
    ``schedule_id``, which each deploy renews: a redeploy that keeps a schedule, racing a
    tick, cannot fire one time twice (once from the replaced row, once from the new one). The
    run's input names the ``schedule_id``. A schedule's state is its runs, nothing else is
    stored: queued fires are looked up by key among a bounded set of candidate fire times (an
    index lookup, no scan of the runs table). A run retention policy must therefore keep a
    schedule's latest fire: its run is the record that it fired.

Catch-up policy (after downtime: the storm fault)
    At each tick a schedule's fires due since it was registered are considered, newest first,
    as of ``now``. A fire at most ``misfire_grace`` seconds old (60 by default) is *on time*:
    it always runs. An older one was *missed* (no scheduler was running, or it stalled):
    - ``latest`` (the default): the missed fires collapse into one. The most recent due fire
      runs (at once, if it was missed); older missed fires never do. A daily job down for a
      week runs once on restart; one whose fire of today is on time runs only that one.
    - ``none``: missed fires never run; only on-time ones do.
    - ``all``: missed fires run, oldest first, but at most ``max_catch_up`` of them (the most
      recent ones, 10 by default): older ones are dropped with a warning.
    So what a restart queues per schedule is bounded (on-time fires plus at most one, or
    ``max_catch_up``), however long the downtime and however frequent the cron, and the work
    a tick does per schedule is bounded the same way (fire times are walked back from now).
    A reactivated project's schedules follow the same policy for the fires they missed while
    it was inactive.

Deploys
    A deploy replaces a project's schedules (a new ``schedule_id`` each, registered at the deploy);
    a build no longer deployed, and a deactivated project, fire no more. A fire is queued
    only while its schedule still fires, checked in the transaction that queues it after
    locking the projects' rows (PostgreSQL, FOR KEY SHARE: a deploy locks its project's row
    FOR UPDATE first, so it waits, or is seen as done), so a fire never runs a build replaced
    before it was queued. Call ``notify()`` after a deploy in this process; deploys in other
    processes are seen within ``max_sleep`` seconds (10 by default).

Loop
    ``run(stop)`` ticks, then sleeps until the next fire of any schedule (so a fire is queued
    within a few milliseconds of its time), at most ``max_sleep`` seconds, or until
    ``notify()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from agentplex.core.clock import aware, iso, utcnow
from agentplex.core.events import enqueue, new_run_row
from agentplex.core.manifest import FunctionRef, parse_function
from agentplex.db.engine import Database
from agentplex.db.records import schedules as records

log = logging.getLogger("agentplex.scheduler")

CatchUp = Literal["latest", "none", "all"]
CATCH_UP_POLICIES: tuple[str, ...] = ("latest", "none", "all")
_ONE_SECOND = timedelta(seconds=1)


# -- fire times -------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _wall(instant: datetime, tz: ZoneInfo) -> datetime:
    """The naive wall-clock time of ``instant`` in ``tz``."""
    return instant.astimezone(tz).replace(tzinfo=None)


def instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant a wall-clock fire time (naive) fires at, by the DST rule: its first
    occurrence when it is ambiguous, the first valid instant after it when it does not
    exist."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if _wall(first, tz) == wall:
        return first  # exists (fold=0 is the first occurrence of an ambiguous time)
    # In a gap: fold=0 reads it with the offset from before the transition (an instant after
    # it), fold=1 with the offset from after (an instant before it). The transition, where
    # the offset changes, is the first valid instant after the wall time.
    before = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    low, high = min(before, first), max(before, first)
    offset = high.astimezone(tz).utcoffset()
    lo, hi = 0, int((high - low).total_seconds())
    while lo < hi:  # the first second whose offset is the new one
        mid = (lo + hi) // 2
        if (low + timedelta(seconds=mid)).astimezone(tz).utcoffset() == offset:
            hi = mid
        else:
            lo = mid + 1
    return low + timedelta(seconds=lo)


def _cron(expr: str, start: datetime, *, reverse: bool = False) -> Iterator[datetime]:
    """Wall-clock matches of ``expr`` (naive) after ``start`` (before it, in ``reverse``)."""
    try:
        yield from CronSim(expr, start, reverse=reverse)
    except (StopIteration, CronSimError):  # no match within cronsim's 50-year horizon
        return


def next_fire(expr: str, tz_name: str, after: datetime) -> datetime | None:
    """The first fire strictly after the instant ``after`` (UTC), or None if there is none."""
    tz = zone(tz_name)
    after = aware(after)
    # Wall times before after's wall time fire at or before it (also in a repeated hour's
    # second pass, whose wall times fire at their first occurrence); later ones may not.
    start = _wall(after, tz).replace(microsecond=0) - _ONE_SECOND
    for wall in _cron(expr, start):
        when = instant(wall, tz)
        if when > after:
            return when
    return None


def fires_between(expr: str, tz_name: str, start: datetime, end: datetime) -> list[datetime]:
    """The fires in ``(start, end]``, oldest first (UTC instants)."""
    out: list[datetime] = []
    when = next_fire(expr, tz_name, start)
    while when is not None and when <= aware(end):
        out.append(when)
        when = next_fire(expr, tz_name, when)
    return out


def fires_back(expr: str, tz_name: str, now: datetime) -> Iterator[datetime]:
    """The fires at or before ``now``, newest first, each once (UTC instants)."""
    tz = zone(tz_name)
    now = aware(now)
    local = now.astimezone(tz)
    start = local.replace(tzinfo=None, microsecond=0) + _ONE_SECOND
    if local.fold:  # second pass of a repeated hour: later wall times fired already
        start += (local.replace(fold=0).utcoffset() or timedelta()) - (
            local.utcoffset() or timedelta()
        )
    last: datetime | None = None
    for wall in _cron(expr, start, reverse=True):
        when = instant(wall, tz)
        if when > now or when == last:
            continue
        last = when
        yield when


# -- the scheduler ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fire:
    """A fire a tick queued: its run and the time it stands for."""

    schedule_id: str
    env_id: str
    project_id: str
    build_id: str
    fire_time: datetime
    run_id: str
    dedupe_key: str


def schedule_key(schedule: Mapping[str, Any]) -> str:
    """What a schedule (a row) is across deploys: a digest of its project, cron, time zone
    and function (a manifest declares each such schedule once)."""
    parts = (schedule["project_id"], schedule["cron"], schedule["tz"], schedule["function"])
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:32]


def dedupe_key(schedule: Mapping[str, Any], fire_time: datetime) -> str:
    """``schedule:{schedule_key}:{fire time, RFC 3339 UTC with milliseconds}``."""
    return f"schedule:{schedule_key(schedule)}:{iso(fire_time)}"


class Scheduler:
    """Turns the deployed builds' schedules into queued ``schedule`` runs (see the module
    docstring for the DST rule, exactly-once and the catch-up policy)."""

    def __init__(
        self,
        db: Database,
        *,
        catch_up: CatchUp = "latest",
        max_catch_up: int = 10,
        misfire_grace: float = 60.0,
        max_sleep: float = 10.0,
        clock: Callable[[], datetime] = utcnow,
        on_enqueued: Callable[[], None] | None = None,
    ) -> None:
        if catch_up not in CATCH_UP_POLICIES:
            raise ValueError(f"catch_up is {catch_up!r}: use one of {', '.join(CATCH_UP_POLICIES)}")
        if max_catch_up < 1:
            raise ValueError(f"max_catch_up is {max_catch_up}: at least 1")
        if misfire_grace < 0 or max_sleep <= 0:
            raise ValueError("misfire_grace must be >= 0 and max_sleep > 0 seconds")
        self.db = db
        self.catch_up = catch_up
        self.max_catch_up = max_catch_up
        self.misfire_grace = timedelta(seconds=misfire_grace)
        self.max_sleep = max_sleep
        self.clock = clock
        self.on_enqueued = on_enqueued
        self.next_wake: datetime | None = None
        self._wake: asyncio.Event | None = None
        self._warned: set[str] = set()

    # -- one pass ----------------------------------------------------------------------------

    def due(self, schedule: Mapping[str, Any], now: datetime) -> list[datetime]:
        """The fires of ``schedule`` (a row) that the policy runs as of ``now``, oldest
        first: queued or not (the caller skips the queued ones)."""
        registered = aware(schedule["created_at"])
        on_time: list[datetime] = []
        missed: list[datetime] = []
        wanted = {"none": 0, "latest": 1, "all": self.max_catch_up}[self.catch_up]
        for when in fires_back(schedule["cron"], schedule["tz"], now):
            if when <= registered:
                break
            if now - when <= self.misfire_grace:
                on_time.append(when)
                continue
            if self.catch_up == "latest" and on_time:
                break  # the missed fires collapse into the on-time one
            if len(missed) == wanted:
                if self.catch_up == "all" and schedule["schedule_id"] not in self._warned:
                    self._warned.add(schedule["schedule_id"])
                    log.warning(
                        "schedule %s (%s): fires before %s were missed and are dropped "
                        "(catch-up all keeps the latest %d)",
                        schedule["schedule_id"],
                        schedule["cron"],
                        iso(missed[-1]),
                        self.max_catch_up,
                    )
                break
            missed.append(when)
        return sorted(on_time + missed)

    async def tick(self, now: datetime | None = None) -> list[Fire]:
        """Queue every fire due as of ``now`` (default: the clock) that is not queued yet;
        the fires this call queued (another scheduler may have queued the others). Also sets
        ``next_wake``, the next fire of any schedule."""
        now = aware(now or self.clock())
        async with self.db.read() as conn:
            schedules = await records.firing(conn)
        candidates: dict[str, list[tuple[Mapping[str, Any], datetime, str]]] = {}
        next_wake: datetime | None = None
        for schedule in schedules:
            for when in self.due(schedule, now):
                key = dedupe_key(schedule, when)
                candidates.setdefault(schedule["env_id"], []).append((schedule, when, key))
            upcoming = next_fire(schedule["cron"], schedule["tz"], now)
            if upcoming is not None and (next_wake is None or upcoming < next_wake):
                next_wake = upcoming
        self.next_wake = next_wake
        if not candidates:
            return []
        async with self.db.read() as conn:
            for env_id, items in list(candidates.items()):
                queued = await records.existing_keys(conn, env_id, [k for _, _, k in items])
                candidates[env_id] = [item for item in items if item[2] not in queued]
        todo = [item for items in candidates.values() for item in items]
        if not todo:
            return []
        fired: list[Fire] = []
        async with self.db.write() as conn:
            live = await records.still_firing(
                conn, {s["schedule_id"] for s, _, _ in todo}, {s["project_id"] for s, _, _ in todo}
            )
            # one global order (fire time, key): schedulers racing never wait on each other
            # in a cycle
            for entry, when, key in sorted(todo, key=lambda item: (item[1], item[2])):
                if entry["schedule_id"] not in live:
                    continue  # replaced by a deploy, undeployed or deactivated meanwhile
                row = new_run_row(
                    entry["env_id"],
                    project_id=entry["project_id"],
                    build_id=entry["build_id"],
                    run_type="schedule",
                    function=_function(entry),
                    input={
                        "schedule_id": entry["schedule_id"],
                        "cron": entry["cron"],
                        "tz": entry["tz"],
                        "fire_time": iso(when),
                    },
                    dedupe_key=key,
                )
                if await enqueue(conn, row):
                    fired.append(
                        Fire(
                            schedule_id=entry["schedule_id"],
                            env_id=entry["env_id"],
                            project_id=entry["project_id"],
                            build_id=entry["build_id"],
                            fire_time=when,
                            run_id=row["run_id"],
                            dedupe_key=key,
                        )
                    )
        for fire in fired:
            late = (now - fire.fire_time).total_seconds()
            log.info(
                "schedule %s fired for %s (%.3f s after its time): run %s",
                fire.schedule_id,
                iso(fire.fire_time),
                late,
                fire.run_id,
            )
        if fired and self.on_enqueued is not None:
            self.on_enqueued()
        return fired

    # -- the loop ----------------------------------------------------------------------------

    def _event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    def notify(self) -> None:
        """Schedules changed (a deploy): tick again now rather than at the next known fire."""
        self._event().set()

    async def run(self, stop: asyncio.Event) -> None:
        """Tick at every fire time until ``stop`` is set. A failing tick (the database away)
        is logged and retried after a second; nothing is lost meanwhile, as the next tick
        queues what came due (by the catch-up policy once a fire is ``misfire_grace`` old)."""
        wake = self._event()
        while not stop.is_set():
            wake.clear()
            timeout = self.max_sleep
            try:
                await self.tick()
                if self.next_wake is not None:
                    until = (self.next_wake - aware(self.clock())).total_seconds()
                    timeout = min(self.max_sleep, max(until, 0.0))
            except Exception:
                log.exception("scheduler tick failed; retrying in 1 s")
                timeout = 1.0
            await _wait_any(stop, wake, timeout)


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, timeout: float) -> None:  # noqa: ASYNC109
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter


def _function(schedule: Mapping[str, Any]) -> FunctionRef:
    return parse_function(str(schedule["function"]))

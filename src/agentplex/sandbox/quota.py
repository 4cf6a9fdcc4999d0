"""Workspace disk quota: a size check that comes sooner as a workspace nears its limit.

The host filesystem has no per-directory quota we can rely on, so the watch sums each running
sandbox's workspace (RLIMIT_FSIZE bounds any single file at once). A sandbox over its
template's `disk_mb` has its processes ended by agentd (`/_reset`), with the reason reported to
the executions that were running and kept on the handle; writes through /files are refused
until space is freed.

A fixed period lets a fast writer overshoot by its write rate times the period (1-2 GiB/s for
2 s here). So each workspace is checked again after the time it would take to fill half of its
remaining headroom at the fastest write rate seen on this host: checks come geometrically
closer while a writer approaches the limit, down to `MIN_INTERVAL` (or a few times the scan's
own duration, for very large trees), and stay at `interval` for idle, roomy workspaces. As long
as a writer is at most twice as fast as the fastest one seen lately, usage crosses the limit by
at most rate x (min interval + scan + reset), well under 0.1 s of writing (docs/sandbox.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from agentplex.errors import AgentplexError
from agentplex.sandbox.agentd.usage import disk_usage
from agentplex.sandbox.handle import SandboxHandle
from agentplex.sandbox.state import SandboxState

__all__ = ["QuotaWatch", "disk_usage"]

log = logging.getLogger(__name__)
MB = 1024 * 1024
MIN_INTERVAL = 0.05
# What a sandbox is assumed able to write per second before any has been seen writing faster
# (a page-cache write on this class of host is ~1 GiB/s per core); the cap keeps an instant
# allocation (fallocate) from being taken for a sustained rate.
RATE_FLOOR = 512 * MB
RATE_CAP = 4096 * MB
# The fastest rate seen fades with this half-life (s), so that one burst does not keep every
# workspace under close watch for good.
RATE_MEMORY = 300.0
SCAN_SHARE = 4  # never re-scan a workspace sooner than this many times its last scan took
PICKUP = 0.1  # a new sandbox's first check comes within this many seconds


@dataclass
class _Track:
    """What the watch knows about one workspace between checks."""

    due: float = 0.0  # monotonic time of the next check
    used: int = 0
    at: float = 0.0  # when `used` was measured
    scan: float = 0.0  # how long that measurement took
    stopped_at: int = 0  # usage when its processes were last ended; 0 while under quota


class QuotaWatch:
    """Enforce every running sandbox's disk quota; `handles` lists the sandboxes to watch."""

    def __init__(self, handles: Callable[[], Iterable[SandboxHandle]], interval: float) -> None:
        self.handles = handles
        self.interval = interval
        self.min_interval = min(MIN_INTERVAL, interval) if interval > 0 else MIN_INTERVAL
        self.rate = float(RATE_FLOOR)  # the fastest write rate seen lately, bytes/s
        self._rate_at = time.monotonic()
        self.task: asyncio.Task[None] | None = None
        self._tracks: dict[str, _Track] = {}

    def start(self) -> None:
        if self.interval > 0:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # the watch must keep running
                log.exception("workspace quota check failed")
            await asyncio.sleep(self._next_wake() - time.monotonic())

    def _next_wake(self) -> float:
        # a new sandbox can write from its first moment: look for new ones often (cheap)
        latest = time.monotonic() + min(self.interval, PICKUP)
        return min([latest, *(t.due for t in self._tracks.values())])

    async def check(self) -> None:
        """Check every running sandbox whose check is due."""
        now = time.monotonic()
        running = {h.id: h for h in self.handles() if h.state is SandboxState.RUNNING}
        for gone in self._tracks.keys() - running.keys():
            del self._tracks[gone]
        due = [h for h in running.values() if self._tracks.setdefault(h.id, _Track()).due <= now]
        if due:  # one thread for the batch: a thread hop costs as much as a small scan
            sizes = await asyncio.to_thread(_measure, [h.workspace for h in due])
            for handle, size in zip(due, sizes, strict=True):
                await self._judge(handle, *size)

    async def _judge(self, handle: SandboxHandle, used: int, at: float, took: float) -> None:
        """Enforce the quota on one measurement; schedule the next one."""
        track = self._tracks[handle.id]
        grew = used - track.used if track.at else 0
        self._learn(grew / (at - track.at) if track.at and at > track.at else 0.0, at)
        track.used, track.at, track.scan = used, at, took
        limit = handle.template.resources.disk_mb * MB
        if used <= limit:
            track.stopped_at = 0
        elif not track.stopped_at or used > track.stopped_at:
            # over quota for the first time, or written to again since its processes ended
            await self._stop(handle, used, limit)
            # what the writers had in flight when they were killed is not a new write
            track.used = track.stopped_at = max(
                used, await asyncio.to_thread(disk_usage, handle.workspace)
            )
        else:
            track.stopped_at = used
        track.due = at + self._interval(track, limit - used, grew)

    def _learn(self, rate: float, at: float) -> None:
        faded = self.rate * 0.5 ** (max(0.0, at - self._rate_at) / RATE_MEMORY)
        self.rate = max(RATE_FLOOR, faded, min(RATE_CAP, rate))
        self._rate_at = at

    def _interval(self, track: _Track, headroom: int, grew: int) -> float:
        floor = max(self.min_interval, SCAN_SHARE * track.scan)
        if headroom <= 0:  # over quota: watch closely only while something is still writing
            return self.interval if grew <= 0 else floor
        return max(floor, min(self.interval, headroom / (2 * self.rate)))

    async def _stop(self, handle: SandboxHandle, used: int, limit: int) -> None:
        reason = (
            f"disk quota exceeded: the workspace uses {used // MB} MiB of {limit // MB} MiB;"
            " running processes were stopped, delete files to continue"
        )
        handle.reason = reason
        with contextlib.suppress(AgentplexError):
            await handle.request("POST", "/_reset", json={"reason": reason, "quota_limit": limit})

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


def _measure(roots: list[Path]) -> list[tuple[int, float, float]]:
    """(bytes used, when measured, how long it took) for each root."""
    out = []
    for root in roots:
        start = time.monotonic()
        used = disk_usage(root)
        end = time.monotonic()
        out.append((used, end, end - start))
    return out

"""Workspace disk quota: a size check that comes sooner as a workspace nears its limit.

The host filesystem has no per-directory quota we can rely on, so the watch sums each running
sandbox's workspace, plus the template layer it may write to (a template build's), in bytes and
in entries (RLIMIT_FSIZE bounds any single file at once). A sandbox over its template's
`disk_mb`, or holding more than one file or directory per `BYTES_PER_ENTRY` of it (empty files
cost the host inodes, not bytes), has its processes ended by agentd (`/_reset`), with the
reason reported to the executions that were running and kept on the handle; writes through
/files are refused until space is freed.

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
from agentplex.sandbox.agentd.usage import BYTES_PER_ENTRY, disk_usage, entry_limit, tree_usage
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
# The same for files and directories made per second (a tight loop of open/close makes ~100k/s
# per core here).
ENTRY_RATE_FLOOR = 100_000
ENTRY_RATE_CAP = 1_000_000
SCAN_SHARE = 4  # never re-scan a workspace sooner than this many times its last scan took
PICKUP = 0.1  # a new sandbox's first check comes within this many seconds


@dataclass
class _Track:
    """What the watch knows about one workspace between checks."""

    due: float = 0.0  # monotonic time of the next check
    used: int = 0  # bytes
    entries: int = 0  # files and directories
    at: float = 0.0  # when `used` was measured
    scan: float = 0.0  # how long that measurement took
    stopped: bool = False  # over quota, its processes ended
    stopped_at: tuple[int, int] = (0, 0)  # (bytes, entries) since then


@dataclass
class _Usage:
    """One measurement of a sandbox's workspace and writable layer together."""

    used: int  # bytes
    entries: int
    layer_used: int  # the writable layer's part of them
    layer_entries: int
    at: float  # monotonic time it was taken
    took: float  # seconds


class QuotaWatch:
    """Enforce every running sandbox's disk quota; `handles` lists the sandboxes to watch."""

    def __init__(self, handles: Callable[[], Iterable[SandboxHandle]], interval: float) -> None:
        self.handles = handles
        self.interval = interval
        self.min_interval = min(MIN_INTERVAL, interval) if interval > 0 else MIN_INTERVAL
        self.rate = float(RATE_FLOOR)  # the fastest write rate seen lately, bytes/s
        self.entry_rate = float(ENTRY_RATE_FLOOR)  # the same in entries/s
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
            sizes = await asyncio.to_thread(_measure, [_roots(h) for h in due])
            for handle, size in zip(due, sizes, strict=True):
                await self._judge(handle, size)

    async def _judge(self, handle: SandboxHandle, u: _Usage) -> None:
        """Enforce the quota on one measurement; schedule the next one."""
        track = self._tracks[handle.id]
        grew = u.used - track.used if track.at else 0
        grew_entries = u.entries - track.entries if track.at else 0
        elapsed = u.at - track.at if track.at and u.at > track.at else 0.0
        self._learn(
            grew / elapsed if elapsed else 0.0, grew_entries / elapsed if elapsed else 0.0, u.at
        )
        track.used, track.entries, track.at, track.scan = u.used, u.entries, u.at, u.took
        limit = handle.template.resources.disk_mb * MB
        max_entries = entry_limit(limit)
        if u.used <= limit and u.entries <= max_entries:
            track.stopped, track.stopped_at = False, (0, 0)
        elif not track.stopped or u.used > track.stopped_at[0] or u.entries > track.stopped_at[1]:
            # over quota for the first time, or written to again since its processes ended
            await self._stop(handle, u, limit, max_entries)
            # what the writers had in flight when they were killed is not a new write
            after = (await asyncio.to_thread(_measure, [_roots(handle)]))[0]
            track.used, track.entries = max(u.used, after.used), max(u.entries, after.entries)
            track.stopped, track.stopped_at = True, (track.used, track.entries)
        else:
            track.stopped_at = (u.used, u.entries)
        track.due = u.at + self._interval(
            track, (limit - u.used, grew), (max_entries - u.entries, grew_entries)
        )

    def _learn(self, rate: float, entry_rate: float, at: float) -> None:
        fade = 0.5 ** (max(0.0, at - self._rate_at) / RATE_MEMORY)
        self.rate = max(RATE_FLOOR, self.rate * fade, min(RATE_CAP, rate))
        self.entry_rate = max(
            ENTRY_RATE_FLOOR, self.entry_rate * fade, min(ENTRY_RATE_CAP, entry_rate)
        )
        self._rate_at = at

    def _interval(self, track: _Track, space: tuple[int, int], entries: tuple[int, int]) -> float:
        """Seconds to the next check, from (headroom, growth since the last check) in bytes
        and in entries."""
        floor = max(self.min_interval, SCAN_SHARE * track.scan)
        if space[0] <= 0 or entries[0] <= 0:
            # over quota: watch closely only while something is still writing
            return self.interval if space[1] <= 0 and entries[1] <= 0 else floor
        soonest = min(space[0] / (2 * self.rate), entries[0] / (2 * self.entry_rate))
        return max(floor, min(self.interval, soonest))

    async def _stop(self, handle: SandboxHandle, u: _Usage, limit: int, max_entries: int) -> None:
        where = "the workspace and template layer" if handle.layer else "the workspace"
        if u.used > limit:
            reason = f"disk quota exceeded: {where} use {u.used // MB} MiB of {limit // MB} MiB"
        else:
            reason = (
                f"too many files: {where} hold {u.entries} files and directories, at most"
                f" {max_entries} (one per {BYTES_PER_ENTRY // 1024} KiB of the disk quota)"
            )
        reason += "; running processes were stopped, delete files to continue"
        handle.reason = reason
        # agentd sees only the workspace: it refuses writes until that fits in what the layer
        # leaves of the quota
        body = {
            "reason": reason,
            "quota_limit": max(1, limit - u.layer_used),
            "entry_limit": max(1, max_entries - u.layer_entries),
        }
        with contextlib.suppress(AgentplexError):
            await handle.request("POST", "/_reset", json=body)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


def _roots(handle: SandboxHandle) -> tuple[Path, Path | None]:
    """The trees a sandbox's quota covers: its workspace, and the layer it may write to."""
    return handle.workspace, handle.layer


def _measure(sandboxes: list[tuple[Path, Path | None]]) -> list[_Usage]:
    """Usage of each sandbox's (workspace, writable layer or None)."""
    out = []
    for workspace, layer in sandboxes:
        start = time.monotonic()
        used, entries = tree_usage(workspace)
        layer_used, layer_entries = tree_usage(layer) if layer is not None else (0, 0)
        end = time.monotonic()
        out.append(
            _Usage(
                used + layer_used,
                entries + layer_entries,
                layer_used,
                layer_entries,
                end,
                end - start,
            )
        )
    return out

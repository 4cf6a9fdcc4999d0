"""Workspace disk quota: a periodic size check (RLIMIT_FSIZE bounds any single file at once).

The host filesystem has no per-directory quota we can rely on, so every `interval` seconds the
watch sums each running sandbox's workspace. A sandbox over its template's `disk_mb` has its
processes ended by agentd (`/_reset`), with the reason reported to the running executions and
kept on the handle; writes through /files are refused until space is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from agentplex.errors import AgentplexError
from agentplex.sandbox.state import SandboxState

if TYPE_CHECKING:
    from agentplex.sandbox.manager import SandboxManager

log = logging.getLogger(__name__)
MB = 1024 * 1024


def disk_usage(root: Path) -> int:
    """Bytes allocated under `root` (symlinks not followed, hard links counted once)."""
    total, seen = 0, set()
    stack = [str(root)]
    while stack:
        path = stack.pop()
        try:
            with os.scandir(path) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        total += st.st_blocks * 512
        except OSError:
            continue
    return total


class QuotaWatch:
    def __init__(self, manager: SandboxManager, interval: float) -> None:
        self.manager = manager
        self.interval = interval
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval > 0:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # the watch must keep running
                log.exception("workspace quota check failed")

    async def check(self) -> None:
        for handle in self.manager.list():
            if handle.state is not SandboxState.RUNNING:
                continue
            used = await asyncio.to_thread(disk_usage, handle.workspace)
            limit = handle.template.resources.disk_mb * MB
            if used <= limit:
                continue
            reason = (
                f"disk quota exceeded: the workspace uses {used // MB} MiB of {limit // MB} MiB;"
                " running processes were stopped, delete files to continue"
            )
            handle.reason = reason
            with contextlib.suppress(AgentplexError):
                await handle.request(
                    "POST", "/_reset", json={"reason": reason, "quota_limit": limit}
                )

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task

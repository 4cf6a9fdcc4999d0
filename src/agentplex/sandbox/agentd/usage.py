"""The sandbox's own resource usage: its cgroups (when the host gave agentd their files) and
the disk (bytes and entries) its workspace takes.

agentd sees no /sys: the zygote opens the sandbox's cgroup files read-only before agentd enters
the sandbox and hands over the descriptors (`AgentConfig.cgroup_fds`). Without them (no
cgroups on the host) `snapshot()` returns None and /metrics/snapshot falls back to /proc.

`disk_usage` lives here, not in the host's quota watch, because both sides measure a workspace:
the host to enforce the quota, agentd to lift its refusal of writes once space is freed.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

_UNLIMITED = 1 << 60  # cgroup v1 reports "no memory limit" as a huge page-aligned number


# A workspace (or writable template layer) may hold at most one file or directory per this many
# bytes of its quota (262,144 for 1 GiB): empty files cost the host inodes, not bytes.
BYTES_PER_ENTRY = 4096


def entry_limit(quota_bytes: int) -> int:
    """The most files and directories a tree with a `quota_bytes` disk quota may hold."""
    return max(1, quota_bytes // BYTES_PER_ENTRY)


def disk_usage(root: str | os.PathLike[str]) -> int:
    """Bytes allocated under `root` (symlinks not followed, hard links counted once)."""
    return tree_usage(root)[0]


def tree_usage(root: str | os.PathLike[str]) -> tuple[int, int]:
    """(bytes allocated, entries) under `root`, `root` itself not counted: entries are the files,
    directories, symlinks etc. below it, each inode once (symlinks not followed)."""
    total, seen = 0, set()
    stack = [os.fspath(root)]
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
    return total, len(seen)


class CgroupUsage:
    def __init__(self, fds: dict[str, int]) -> None:
        self.fds = fds
        self._last: tuple[float, int] | None = None  # (monotonic time, cpu ns) of last call

    def _read(self, name: str) -> str | None:
        fd = self.fds.get(name)
        if fd is None:
            return None
        try:
            return os.pread(fd, 4096, 0).decode().strip()
        except OSError:
            return None

    def _int(self, name: str) -> int | None:
        text = self._read(name)
        if text is None:
            return None
        with contextlib.suppress(ValueError):
            return int(text)
        return None  # e.g. pids.max "max"

    def snapshot(self) -> dict[str, Any] | None:
        """Memory, CPU and pids of this sandbox, or None without cgroup files."""
        if not self.fds:
            return None
        used = self._int("memory.usage_in_bytes") or 0
        limit = self._int("memory.limit_in_bytes")
        limit = limit if limit is not None and limit < _UNLIMITED else None
        quota, period = self._int("cpu.cfs_quota_us"), self._int("cpu.cfs_period_us")
        vcpu = quota / period if quota and period and quota > 0 else float(os.cpu_count() or 1)
        cpu_ns = self._int("cpuacct.usage")
        percent = None
        now = time.monotonic()
        if cpu_ns is not None:
            if self._last is not None and now > self._last[0]:
                busy = (cpu_ns - self._last[1]) / 1e9 / (now - self._last[0])
                percent = round(max(0.0, min(100.0, busy / vcpu * 100)), 2)
            self._last = (now, cpu_ns)
        return {
            "memory": {
                "used": used,
                "total": limit,
                "peak": self._int("memory.max_usage_in_bytes"),
                "usage_percent": round(used / limit * 100, 2) if limit else None,
            },
            "cpu": {
                "usage_percent": percent,  # since the previous snapshot; None on the first
                "usage_seconds": round(cpu_ns / 1e9, 3) if cpu_ns is not None else None,
                "cores": round(vcpu, 3),
            },
            "pids": {"current": self._int("pids.current"), "max": self._int("pids.max")},
        }

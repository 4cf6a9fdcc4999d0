"""Detect whether bubblewrap sandboxes actually work here (tried once, then cached)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

from agentplex.core.ports import IsolationInfo


def _probe_args(bwrap: str) -> list[str]:
    args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session"]
    for top in ("usr", "etc"):
        args += ["--ro-bind", f"/{top}", f"/{top}"]
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{link}"):
            args += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
        elif os.path.isdir(f"/{link}"):
            args += ["--ro-bind", f"/{link}", f"/{link}"]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--remount-ro", "/"]  # noqa: S108
    return [*args, "--", "/bin/sh", "-c", "test -w /usr && exit 3; echo ok"]


@functools.lru_cache(maxsize=4)
def detect_isolation(sandbox_uid: int | None = None) -> IsolationInfo:
    """Run one tiny bubblewrap sandbox (as `sandbox_uid` when we are root) and report the result."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return IsolationInfo("none", "bubblewrap (bwrap) is not installed")
    user = sandbox_uid if (os.geteuid() == 0 and sandbox_uid is not None) else None
    try:
        proc = subprocess.run(
            _probe_args(bwrap),
            capture_output=True,
            timeout=10,
            user=user,
            group=user,
            extra_groups=[] if user is not None else None,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return IsolationInfo("none", f"bubblewrap could not run: {exc}")
    if proc.returncode != 0 or proc.stdout.strip() != b"ok":
        err = proc.stderr.decode(errors="replace").strip() or f"exit code {proc.returncode}"
        return IsolationInfo("none", f"bubblewrap failed (user namespaces unavailable?): {err}")
    version = subprocess.run([bwrap, "--version"], capture_output=True, check=False)
    label = version.stdout.decode().strip() or "bubblewrap"
    return IsolationInfo("bubblewrap", f"{label}: user, mount, pid, ipc, uts and net namespaces")

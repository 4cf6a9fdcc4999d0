"""Who agentd is, and who the code it runs is.

In an isolated sandbox of a root server the sandbox's user namespace maps two uids: 0 (the
"system" uid: bwrap's init, its payload and agentd) and 1000 (the sandbox's code). agentd holds
real and saved uid 0 and effective uid 1000, so

- no process of the code can signal, ptrace or prlimit agentd (the kernel compares the sender's
  uids with agentd's real and saved uid, which the code never has);
- agentd reads and writes the workspace as the code does (its file system uid is 1000), so
  files the code creates, private ones included, are served by /files and vice versa;
- its children become the sandbox user with no capability at all: 1000 is already one of
  agentd's uids. Forked children call `become_user`; exec'd ones go through `setpriv`, which
  keeps the cheap vfork start of asyncio subprocesses.

agentd's own files (its socket, log and env.json under /run/agentd, mode 0700) belong to the
system uid: `own_files()` switches the calling thread's file system ids for those accesses.
Without the split (unisolated, or a server that is not root) all of this is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import Any

from agentplex.sandbox import nsutil

_USER: int | None = None
_SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin")  # looked up once, in the zygote


def configure(user_uid: int | None) -> None:
    """Called once in agentd: the uid (and gid) its children run as, None for no split."""
    global _USER
    _USER = user_uid


def split() -> bool:
    return _USER is not None


def as_system() -> None:
    """This thread's file accesses as agentd's own (real) uid."""
    if _USER is not None:
        nsutil.set_fs_ids(os.getuid(), os.getgid())


def as_user() -> None:
    """This thread's file accesses as the sandbox's code (the default)."""
    if _USER is not None:
        nsutil.set_fs_ids(_USER, _USER)


@contextlib.contextmanager
def own_files() -> Iterator[None]:
    """Access agentd's private files (under /run/agentd) for the duration of the block."""
    as_system()
    try:
        yield
    finally:
        as_user()


def become_user() -> None:
    """In a freshly forked child: take the code's uid and gid for good."""
    if _USER is not None:
        os.setresgid(_USER, _USER, _USER)
        os.setresuid(_USER, _USER, _USER)
    with contextlib.suppress(OSError):  # agentd is not dumpable; the code's processes are
        nsutil.set_dumpable(True)


def spawn(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """argv and subprocess keyword arguments that start `argv` as the sandbox's code."""
    if _USER is None:
        return argv, {}
    if _SETPRIV is not None:
        ids = [f"--reuid={_USER}", f"--regid={_USER}", "--keep-groups", "--"]
        return [_SETPRIV, *ids, *argv], {}
    return argv, {"user": _USER, "group": _USER}  # forks instead of vfork: slower, as safe

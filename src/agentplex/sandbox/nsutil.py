"""Thin ctypes wrappers for the few Linux calls Python lacks: setns, capset, prctl."""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
_CAP_V3 = 0x20080522
_LAST_CAP = 63

# The order matters: bwrap run by root creates these namespaces before the user namespace, so
# they must be joined while we still hold the host capabilities, the user namespace last.
NAMESPACES = ("ipc", "uts", "net", "pid", "mnt", "user")


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


_CLONE_FLAGS = {"pid": 0x20000000, "mnt": 0x00020000, "user": 0x10000000}


def setns(fd: int, name: str) -> None:
    """Join the namespace `fd` refers to (which must be of kind `name`)."""
    _check(_libc.setns(fd, _CLONE_FLAGS.get(name, 0)), f"setns({name})")


def enter_namespaces(pid: int, names: tuple[str, ...] = NAMESPACES) -> None:
    """Join the namespaces of `pid` (caller single-threaded; the pid ns applies to children)."""
    fds = [(name, os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)) for name in names]
    try:
        for name, fd in fds:
            _check(_libc.setns(fd, 0), f"setns({name})")
    finally:
        for _, fd in fds:
            os.close(fd)


CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_NOSUID = 2
MS_NODEV = 4


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    ret = _libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    _check(ret, f"mount({source} -> {target})")


def prepare_view(exposed: dict[str, list[str]], binds: list[tuple[str, str]]) -> None:
    """Make, in a private mount namespace (root only), the view an unprivileged bwrap needs:
    `binds` (source -> existing target) first, then each private top-level directory replaced
    by a tmpfs holding only its `exposed` trees."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
    for source, target in binds:
        _mount(source, target, None, MS_BIND | MS_REC, None)
    # opened in the new namespace: a bind source must be a mount of the caller's namespace
    fds = {tree: os.open(tree, os.O_PATH) for trees in exposed.values() for tree in trees}
    for top, trees in exposed.items():
        _mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=65536")
        for tree in trees:
            os.makedirs(tree, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fds[tree]}", tree, None, MS_BIND | MS_REC, None)
    for fd in fds.values():
        os.close(fd)


def set_pdeathsig(sig: int) -> None:
    """Receive `sig` when the parent dies."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl(PDEATHSIG)")


def set_child_subreaper() -> None:
    """Adopt orphaned descendants (agentd, once the process that entered the sandbox exits)."""
    _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(CHILD_SUBREAPER)")


def drop_privileges() -> None:
    """Drop every capability (bounding set included) and forbid regaining any (no_new_privs)."""
    for cap in range(_LAST_CAP + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the kernel's last cap: fine
    header = (ctypes.c_uint32 * 2)(_CAP_V3, 0)
    data = (ctypes.c_uint32 * 6)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")


PR_SET_NAME = 15
PR_SET_DUMPABLE = 4


def set_dumpable(on: bool) -> None:
    """Non-dumpable: no core files, and /proc/<pid> is closed to processes of the same uid."""
    _check(_libc.prctl(PR_SET_DUMPABLE, int(on), 0, 0, 0), "prctl(DUMPABLE)")


def set_fs_ids(uid: int, gid: int) -> None:
    """The calling thread's file system uid and gid (per thread; new threads copy them)."""
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    if _libc.setfsuid(-1) != uid or _libc.setfsgid(-1) != gid:  # -1 only reads them
        raise OSError(f"setfsuid({uid}) / setfsgid({gid}) refused")


def set_process_name(name: str) -> None:
    """What `ps`, `pgrep` and `pkill [-f]` see: comm and the whole command line."""
    _libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
        if end <= start:
            return
        text = name.encode()[: end - start - 1]
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(text + b"\0" * (end - start - len(text)))
    except (OSError, ValueError, IndexError):
        pass  # a cosmetic failure: the process keeps its inherited command line

"""The seccomp filter of every sandbox: system calls sandboxed code never needs answer EPERM.

Built once per server with libseccomp (through `pyseccomp`, a ctypes binding with
libseccomp's own Python API) and saved as a BPF program (`write_filter`). bubblewrap installs it
on the sandbox's init and payload (`--seccomp FD`); agentd, which enters the sandbox from the
zygote rather than from bubblewrap, installs the same program on itself (`install`) before it
serves, so the Python kernel, commands, terminals and every process they start inherit it.

Refused (EPERM, never a kill, so programs that probe fall back): kernel keyrings, bpf,
perf_event_open, userfaultfd, io_uring, module loading, kexec, mounts and new mount APIs,
chroot, pivot_root, setns, new namespaces through unshare or clone (user namespaces above all),
accounting, swap, reboot, setting the clocks or host names, quotactl, open_by_handle_at, the
I/O port calls, syslog, and personality flags beyond PER_LINUX32 and UNAME26. clone3 answers
ENOSYS, as on kernels without it: its flags sit in memory a filter can't read, and the C library
then falls back to clone, whose flags it can. Calls of another architecture (32-bit int 0x80,
x32) kill the calling thread, libseccomp's default: they would bypass a native-only filter.

Not refused: ptrace (the code's uid cannot trace agentd, which is non-dumpable and runs with
another real uid; debuggers of the code's own processes keep working), fork, pidfd, and
everything else.
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
from pathlib import Path

REFUSED = (
    # kernel keyrings: shared by the whole kernel, not namespaced
    "add_key",
    "keyctl",
    "request_key",
    # in-kernel programs, tracing and async interfaces with a history of escapes
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "lookup_dcookie",
    "syslog",
    # kernel modules and kexec
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    # mounts (old and new API) and changing root
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    # joining namespaces
    "setns",
    # host-wide state
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "sethostname",
    "setdomainname",
    "quotactl",
    "quotactl_fd",
    "vhangup",
    "iopl",
    "ioperm",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    # opens a file by handle, bypassing the permissions of the path to it
    "open_by_handle_at",
)
# namespace flags of clone and unshare (CLONE_NEWTIME, 0x80, only unshare: in clone's flags
# those bits are the exit signal)
NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
CLONE_NEWTIME = 0x00000080
# personality: PER_LINUX (0) with PER_LINUX32 (8) and UNAME26 allowed, 0xffffffff only reads
PERSONALITY_ALLOWED = 0x0008 | 0x0020000
_PERSONALITY_QUERY_BIT = 1 << 31


def build_filter() -> bytes:
    """The filter as a BPF program (an array of `struct sock_filter`, host byte order)."""
    import pyseccomp as sc

    flt = sc.SyscallFilter(defaction=sc.ALLOW)
    # a binary tree of syscall numbers: every allowed call (nearly all of them) passes in a
    # handful of comparisons rather than one per rule
    flt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    eperm = sc.ERRNO(errno.EPERM)
    for name in REFUSED:
        if sc.resolve_syscall(sc.Arch.NATIVE, name) >= 0:  # absent on this architecture: skip
            flt.add_rule(eperm, name)
    for flag in NAMESPACE_FLAGS.values():
        flt.add_rule(eperm, "unshare", sc.Arg(0, sc.MASKED_EQ, flag, flag))
        flt.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    flt.add_rule(eperm, "unshare", sc.Arg(0, sc.MASKED_EQ, CLONE_NEWTIME, CLONE_NEWTIME))
    if sc.resolve_syscall(sc.Arch.NATIVE, "clone3") >= 0:
        flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    # libseccomp allows one comparison per argument and rule, so "not the query and a flag
    # outside the allowed ones" is spelt bit by bit: a disallowed bit set with bit 31 clear,
    # or bit 31 set with any other bit clear (0xffffffff is the only query)
    for bit in range(31):
        value = 1 << bit
        if not value & PERSONALITY_ALLOWED:
            mask = value | _PERSONALITY_QUERY_BIT
            flt.add_rule(eperm, "personality", sc.Arg(0, sc.MASKED_EQ, mask, value))
        mask = value | _PERSONALITY_QUERY_BIT
        flt.add_rule(eperm, "personality", sc.Arg(0, sc.MASKED_EQ, mask, _PERSONALITY_QUERY_BIT))
    with tempfile.TemporaryFile() as out:
        flt.export_bpf(out)
        out.seek(0)
        return out.read()


def write_filter(path: Path) -> Path:
    """Build the filter and save it at `path` (mode 0644: bubblewrap reads it as the sandbox's
    system uid). Returns `path`."""
    data = build_filter()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)
    return path


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SOCK_FILTER_SIZE = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k


def install(program: bytes) -> None:
    """Install a BPF program from `build_filter` on the calling thread (and so on every process
    it forks). Needs no_new_privs (or CAP_SYS_ADMIN); OSError if the kernel refuses it."""
    if not program or len(program) % _SOCK_FILTER_SIZE:
        raise ValueError("not a seccomp BPF program")
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // _SOCK_FILTER_SIZE, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"installing the seccomp filter failed: {os.strerror(err)}")

"""What code inside a sandbox can see and call: its root holds only what templates need, and the
system calls sandboxed code never needs answer EPERM (the seccomp filter)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pyseccomp
import pytest

import agentplex
from agentplex.sandbox import SandboxManager
from tests.sandbox.conftest import create, run

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHECKOUT = Path(agentplex.__file__).resolve().parents[2]  # src/agentplex/__init__.py

# walks / (4 levels; /usr, /proc, /sys and /dev are the system's or the sandbox's own) and
# prints every path it saw
_WALK = """
import json, os
seen = []
def walk(path, depth):
    try:
        entries = sorted(os.listdir(path))
    except OSError:
        return
    for entry in entries:
        full = os.path.join(path, entry)
        seen.append(full)
        if depth > 1 and os.path.isdir(full) and not os.path.islink(full) and full not in (
            "/usr", "/proc", "/sys", "/dev"
        ):
            walk(full, depth - 1)
walk("/", 4)
print(json.dumps(seen))
"""


def _allowed_roots() -> list[Path]:
    """What a sandbox may show, stated apart from the code under test: the system tree, the
    sandbox's own directories, and the Python, node and go that run in it."""
    system = ("usr", "etc", "dev", "proc", "tmp", "run", "workspace", "var", "sbin")
    roots = [Path(f"/{p}") for p in (*system, "bin", "lib", "lib32", "lib64", "libx32")]
    python = [Path(sys.prefix), Path(sys.base_prefix), Path(agentplex.__file__).parent]
    python.append(Path(os.path.realpath(sys.executable)).parents[1])
    for tool in ("node", "go"):
        found = shutil.which(tool)
        if found:
            python.append(Path(os.path.realpath(found)).parents[1])
    return roots + [p.resolve() for p in python]


def _allowed(path: Path, roots: list[Path]) -> bool:
    # the path lies in an allowed tree, or on the way to one (a parent bwrap creates)
    return any(path == r or r in path.parents or path in r.parents for r in roots)


async def test_code_sees_only_what_its_template_needs(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    out = await run(h, _WALK)
    seen = {Path(p) for p in json.loads(out["stdout"])}
    assert Path("/workspace") in seen and Path("/usr") in seen, out  # the walk really walked
    roots = _allowed_roots()
    beyond = sorted(str(p) for p in seen if not _allowed(p, roots))
    assert beyond == [], beyond
    for absent in (
        CHECKOUT / ".git",
        CHECKOUT / "pyproject.toml",
        CHECKOUT / "tests",
        Path("/home"),
        Path("/opt"),
        Path("/srv"),
        Path("/mnt"),
        Path("/var/log"),
        Path("/var/lib"),
        Path("/etc/shadow"),
        Path("/etc/ssh"),
        Path("/etc/pip.conf"),
        manager.data_dir,
        manager.run_dir,
    ):
        assert absent not in seen, absent
    # /root holds nothing but the way to the interpreter (when it lives there at all)
    under_root = {p for p in seen if p.parts[:2] == ("/", "root")}
    assert all(_allowed(p, [Path(sys.base_prefix).resolve()]) for p in under_root), under_root
    etc = {p.name for p in seen if p.parent == Path("/etc")}
    assert {"passwd", "group", "hosts", "hostname", "nsswitch.conf"} <= etc
    assert etc <= {
        *("passwd", "group", "hosts", "hostname", "nsswitch.conf", "ld.so.cache", "localtime"),
        *("os-release", "protocols", "services", "bash.bashrc", "inputrc", "alternatives"),
    }, etc
    # and nothing readable behind them, whatever the path
    probe = "cat /etc/shadow; ls /home /opt /var/log; ls " + str(CHECKOUT / ".git") + "; echo end"
    out = await run(h, probe, "bash")
    assert out["stdout"] == "end\n" and "No such file or directory" in out["stderr"], out
    await manager.delete(h.id)


async def test_templates_still_run_in_the_minimal_root(manager: SandboxManager) -> None:
    py = await create(manager, "python")
    out = await run(
        py,
        "import numpy as np, pandas as pd, matplotlib.pyplot as plt, ssl, locale, time\n"
        "plt.plot(np.arange(3)); plt.show()\n"
        "print(pd.DataFrame({'a': [1, 2]}).a.sum(), time.strftime('%Z'), locale.getlocale()[1])",
    )
    assert out["stdout"] == "3 UTC UTF-8\n" and out.get("png"), out
    sh = await create(manager, "bash")
    out = await run(sh, "id; echo a b | awk '{print $2}'; ls -d /var/tmp/; hostname", "bash")
    assert out["stdout"] == (
        "uid=1000(user) gid=1000(user) groups=1000(user)\nb\n/var/tmp/\nsandbox\n"
    ), out
    assert shutil.which("node"), "node is installed on the hosts this suite runs on"
    js = await create(manager, "node")
    out = await run(js, "console.log(require('os').userInfo().username, 6 * 7)", "javascript")
    assert out["stdout"] == "user 42\n", out
    for h in (py, sh, js):
        await manager.delete(h.id)


async def test_resolver_and_certificates_only_with_internet(manager: SandboxManager) -> None:
    probe = "ls /etc/resolv.conf /etc/ssl/certs/ca-certificates.crt; echo rc=$?"
    closed = await create(manager, "bash")
    out = await run(closed, probe, "bash")
    assert out["stdout"] == "rc=2\n", out
    if Path("/etc/ssl/certs/ca-certificates.crt").exists():
        net = await create(manager, "bash", internet_access=True)
        out = await run(net, probe, "bash")
        assert out["stdout"].endswith("rc=0\n"), out
        await manager.delete(net.id)
    await manager.delete(closed.id)


def _nr(name: str) -> int:
    return int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))


CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
# name -> arguments; chosen so that, without the filter, most would not fail with EPERM (they
# succeed, or fail on a bad pointer or descriptor first)
REFUSED: dict[str, list[int]] = {
    "add_key": [0, 0, 0, 0, 0],
    "keyctl": [0, -3, 0],  # KEYCTL_GET_KEYRING_ID of the session keyring: works unfiltered
    "request_key": [0, 0, 0, 0],
    "bpf": [0, 0, 0],
    "perf_event_open": [0, 0, -1, -1, 0],
    "userfaultfd": [1],  # UFFD_USER_MODE_ONLY
    "io_uring_setup": [1, 0],
    "init_module": [0, 0, 0],
    "finit_module": [-1, 0, 0],
    "delete_module": [0, 0],
    "kexec_load": [0, 0, 0, 0],
    "kexec_file_load": [-1, -1, 0, 0, 0],
    "mount": [0, 0, 0, 0, 0],
    "umount2": [0, 0],
    "pivot_root": [0, 0],
    "chroot": [0],
    "move_mount": [-1, 0, -1, 0, 0],
    "fsopen": [0, 0],
    "open_tree": [-1, 0, 0],
    "setns": [-1, 0],  # EBADF unfiltered
    "unshare": [CLONE_NEWUSER],  # works unfiltered: a nested user namespace
    "clone": [CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0],
    "acct": [0],
    "swapon": [0, 0],
    "swapoff": [0],
    "reboot": [0, 0, 0, 0],  # EINVAL (bad magic) unfiltered
    "settimeofday": [0, 0],  # succeeds unfiltered (sets nothing)
    "clock_settime": [0, 0],
    "open_by_handle_at": [-1, 0, 0],
    "personality": [0x0400000],  # READ_IMPLIES_EXEC: works unfiltered
}
_SYSCALLS = """
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}
for name, (nr, args) in json.loads(sys.argv[1]).items():
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if ret == 0 and name == "clone":
        os._exit(0)  # the child of a clone that went through
    if ret > 0 and name == "clone":
        os.waitpid(ret, 0)
    out[name] = errno.errorcode.get(ctypes.get_errno(), "?") if ret == -1 else "ok"
print(json.dumps(out))
"""


async def test_seccomp_refuses_what_sandboxed_code_never_needs(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    calls = {name: [_nr(name), args] for name, args in REFUSED.items()}
    calls["clone3"] = [_nr("clone3"), [0, 0]]
    calls["personality (query)"] = [_nr("personality"), [0xFFFFFFFF]]
    code = (
        "import json, subprocess, sys\n"
        f"r = subprocess.run([sys.executable, '-c', {_SYSCALLS!r}, {json.dumps(calls)!r}],"
        " capture_output=True, text=True)\n"
        "print(r.stdout, r.stderr)"
    )
    out = await run(h, code)
    got = json.loads(out["stdout"].split("\n", 1)[0])
    assert {n: got[n] for n in REFUSED} == dict.fromkeys(REFUSED, "EPERM"), got
    assert got["clone3"] == "ENOSYS"  # so the C library falls back to clone, which is filtered
    assert got["personality (query)"] == "ok"
    # the same from bash, and the filter is there for the code's every process
    out = await run(h, "grep ^Seccomp: /proc/self/status; unshare -U true; echo rc=$?", "bash")
    assert out["stdout"] == "Seccomp:\t2\nrc=1\n", out
    assert "Operation not permitted" in out["stderr"], out
    await manager.delete(h.id)


async def test_ordinary_code_runs_under_the_filter(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    code = (
        "import os, subprocess, threading, multiprocessing as mp\n"
        "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
        "pid = os.fork()\n"
        "if pid == 0: os._exit(5)\n"
        "fd = os.pidfd_open(pid); os.close(fd)\n"
        "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
        "print(subprocess.run(['sh', '-c', 'echo sub'], capture_output=True, text=True).stdout)\n"
        "with mp.get_context('fork').Pool(2) as p: print(sum(p.map(abs, [-1, -2])))"
    )
    out = await run(h, code)
    assert out["stdout"] == "5\nsub\n\n3\n", out
    assert (await run(h, "print('kernel alive')"))["stdout"] == "kernel alive\n"
    await manager.delete(h.id)

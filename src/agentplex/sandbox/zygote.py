"""The zygote: one pre-imported Python process that forks every sandbox's agentd.

Run as `python -m agentplex.sandbox.zygote CTL_FD` by `ZygoteClient`. It imports agentd, uvicorn,
IPython and the scientific stack once, then serves JSON-line requests on CTL_FD:

  -> {"op": "spawn", "key", "bwrap": [argv] | null, "cgroup_procs": [...], "uid", "log",
      "workspace", "runtime", "agentd": {AgentConfig fields}}
  <- {"event": "ready", "key", "bwrap_pid", "agentd_pid"} | {"event": "failed", "key", "error"}
  <- {"event": "exited", "key", "pid", "status"}      (bwrap, or agentd when unisolated)

Isolated spawn: fork A joins the sandbox's cgroups, drops to the sandbox uid and execs bwrap,
whose payload signals readiness on a pipe. Then fork B joins the cgroups and the namespaces of
the sandbox (setns), forks C inside its pid namespace and exits; C drops every privilege and
becomes agentd. C shares the zygote's imported pages copy-on-write, which is what makes a
sandbox cheap in memory and start time. The zygote dies with its parent (PDEATHSIG), and bwrap
dies with the zygote (--die-with-parent), so nothing outlives the server.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import selectors
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

from agentplex.sandbox import nsutil
from agentplex.sandbox.bwrap import READY_FD, RUNTIME_DIR, SANDBOX_UID

AGENTD_OOM_SCORE_ADJ = "-500"


def preload() -> None:
    """Import everything a sandbox will use, so forks inherit it instead of importing."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import uvicorn.protocols.http.httptools_impl
    import uvicorn.protocols.websockets.websockets_sansio_impl  # noqa: F401

    import agentplex.sandbox.agentd.app
    import agentplex.sandbox.agentd.server  # noqa: F401

    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401
    if os.environ.get("AGENTPLEX_ZYGOTE_LIGHT") != "1":
        from agentplex.sandbox.agentd import pykernel

        pykernel.prewarm()


@dataclass
class _Spawn:
    key: str
    req: dict[str, Any]
    phase: str  # "bwrap" then "agentd"
    bwrap_pid: int = 0
    agentd_pid: int = 0
    buf: bytes = b""
    lines: list[str] = field(default_factory=list)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


class Zygote:
    def __init__(self, ctl: int) -> None:
        self.ctl = ctl
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.spawns: dict[int, _Spawn] = {}
        self.watch: dict[int, str] = {}
        self.inbuf = b""

    # -- plumbing ------------------------------------------------------------------------------
    def send(self, msg: dict[str, Any]) -> None:
        _write_all(self.ctl, json.dumps(msg).encode() + b"\n")

    def _in_child(self, keep: set[int]) -> None:
        """Drop the zygote's own descriptors and signal set-up in a freshly forked child."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        with contextlib.suppress(Exception):
            self.sel.close()
        for fd in [self.ctl, self.wake_r, self.wake_w, *self.spawns]:
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def serve(self) -> NoReturn:
        self.sel.register(self.ctl, selectors.EVENT_READ)
        self.sel.register(self.wake_r, selectors.EVENT_READ)
        while True:
            for key, _ in self.sel.select():
                fd = key.fd
                if fd == self.ctl:
                    self._on_ctl()
                elif fd == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self.wake_r, 512):
                            pass
                    self._reap()
                elif fd in self.spawns:
                    self._on_pipe(fd)

    def _on_ctl(self) -> None:
        data = os.read(self.ctl, 1 << 16)
        if not data:
            os._exit(0)  # the server went away
        self.inbuf += data
        while b"\n" in self.inbuf:
            line, self.inbuf = self.inbuf.split(b"\n", 1)
            req = json.loads(line)
            try:
                if req.get("op") == "spawn":
                    self._spawn(req)
            except Exception as exc:  # report, never die: other sandboxes depend on us
                self.send({"event": "failed", "key": req.get("key"), "error": repr(exc)})

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            key = self.watch.pop(pid, None)
            if key is not None:
                code = os.waitstatus_to_exitcode(status)
                self.send({"event": "exited", "key": key, "pid": pid, "status": code})

    def _watch_pipe(self, fd: int, sp: _Spawn) -> None:
        os.set_blocking(fd, False)
        self.spawns[fd] = sp
        self.sel.register(fd, selectors.EVENT_READ)

    def _close_pipe(self, fd: int) -> None:
        self.sel.unregister(fd)
        del self.spawns[fd]
        os.close(fd)

    # -- spawning ------------------------------------------------------------------------------
    def _spawn(self, req: dict[str, Any]) -> None:
        r, w = os.pipe()
        if req.get("bwrap"):
            pid = os.fork()
            if pid == 0:
                self._exec_bwrap(req, w)
            sp = _Spawn(req["key"], req, "bwrap", bwrap_pid=pid)
        else:
            pid = os.fork()
            if pid == 0:
                self._in_child(keep={w})
                _become_agentd(req, w, isolated=False)
            sp = _Spawn(req["key"], req, "agentd", agentd_pid=pid)
        os.close(w)
        self.watch[pid] = req["key"]
        self._watch_pipe(r, sp)

    def _exec_bwrap(self, req: dict[str, Any], w: int) -> NoReturn:
        log = -1
        try:
            self._in_child(keep={w})
            log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            _join_cgroups(req)
            w = fcntl.fcntl(w, fcntl.F_DUPFD, 3)  # a low number: sh can't redirect to fd >= 10
            runtime = req["runtime"]
            args = [a.replace(RUNTIME_DIR, runtime).replace(READY_FD, str(w)) for a in req["bwrap"]]
            nsutil.prepare_view(req.get("expose") or {}, [(req["workspace"], f"{runtime}/ws")])
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(log, 2)
            os.set_inheritable(w, True)
            uid = req.get("uid")
            if uid is not None and os.geteuid() == 0:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            os.execve(args[0], args, {"PATH": "/usr/bin:/bin"})  # noqa: S606
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(log, f"starting bubblewrap failed: {_describe(exc)}\n".encode())
        os._exit(127)

    def _on_pipe(self, fd: int) -> None:
        sp = self.spawns[fd]
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:
            self._close_pipe(fd)
            self._fail(sp, "the sandbox exited during start-up")
            return
        if sp.phase == "bwrap":
            self._close_pipe(fd)
            self._join(sp)
            return
        sp.buf += data
        while b"\n" in sp.buf:
            line, sp.buf = sp.buf.split(b"\n", 1)
            text = line.decode()
            if text.startswith("pid "):
                sp.agentd_pid = int(text[4:])
            elif text == "ready":
                self._close_pipe(fd)
                self.send(
                    {
                        "event": "ready",
                        "key": sp.key,
                        "bwrap_pid": sp.bwrap_pid,
                        "agentd_pid": sp.agentd_pid,
                    }
                )
                return
            elif text.startswith("error "):
                sp.lines.append(text[6:])

    def _fail(self, sp: _Spawn, why: str) -> None:
        detail = "; ".join(sp.lines)
        with contextlib.suppress(OSError), open(sp.req["log"]) as f:
            detail = (detail + " " + f.read().strip()).strip()
        for pid in (sp.bwrap_pid, sp.agentd_pid):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.send({"event": "failed", "key": sp.key, "error": f"{why}: {detail}".rstrip(": ")})

    def _join(self, sp: _Spawn) -> None:
        try:
            with open(f"/proc/{sp.bwrap_pid}/task/{sp.bwrap_pid}/children") as f:
                pid1 = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            self._fail(sp, "bubblewrap did not start the sandbox")
            return
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            self._in_child(keep={w})
            _join_and_fork(sp.req, pid1, w)
        os.close(w)
        sp.phase = "agentd"
        self._watch_pipe(r, sp)


def _describe(exc: BaseException) -> str:
    """One line: the exception and where it happened (the zygote's children have no log)."""
    import traceback

    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" at {os.path.basename(frame.filename)}:{frame.lineno}" if frame else ""
    return f"{exc!r}{where}"


def _join_cgroups(req: dict[str, Any]) -> None:
    for path in req.get("cgroup_procs", []):
        with open(path, "w") as f:
            f.write("0")


def _protect_from_oom() -> None:
    """Make agentd the OOM killer's last choice when we may (CAP_SYS_RESOURCE); its children
    raise their own score anyway, so they go first either way."""
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write(AGENTD_OOM_SCORE_ADJ)


def _join_and_fork(req: dict[str, Any], pid1: int, w: int) -> NoReturn:
    """Process B: enter the sandbox, fork agentd inside its pid namespace, report its pid."""
    try:
        _join_cgroups(req)
        _protect_from_oom()
        os.setgroups([])
        nsutil.enter_namespaces(pid1)
        pid = os.fork()
        if pid == 0:
            _become_agentd(req, w, isolated=True)
        _write_all(w, f"pid {pid}\n".encode())
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _write_all(w, f"error {_describe(exc)}\n".encode())
    os._exit(0)


def _become_agentd(req: dict[str, Any], w: int, *, isolated: bool) -> NoReturn:
    """Process C: drop privileges and serve the data plane until killed."""
    try:
        os.setsid()
        if isolated:
            os.chdir("/")
            os.setresgid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
            os.setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
        else:
            nsutil.set_pdeathsig(signal.SIGKILL)
            _join_cgroups(req)
            _protect_from_oom()
        nsutil.drop_privileges()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):
            os.dup2(null, fd)
        log = os.open(
            os.path.join(req["agentd"]["state_dir"], "agentd.log"),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND,
            0o600,
        )
        os.dup2(log, 2)
        import resource

        fsize = req.get("fsize_bytes")
        if fsize:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.environ.clear()
        os.environ.update(req.get("environ", {}))
        os.chdir(req["agentd"]["workspace_real"])
        from agentplex.sandbox.agentd.config import AgentConfig
        from agentplex.sandbox.agentd.server import serve

        serve(AgentConfig(**req["agentd"]), notify_fd=w)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _write_all(w, f"error {_describe(exc)}\n".encode())
    os._exit(1)


def main() -> NoReturn:
    ctl = int(sys.argv[1])
    nsutil.set_pdeathsig(signal.SIGKILL)
    nsutil.set_child_subreaper()
    if os.getppid() == 1:
        os._exit(0)
    preload()
    gc.collect()
    gc.freeze()  # keep the collector from touching (and so copying) inherited pages
    zygote = Zygote(ctl)
    _write_all(ctl, b'{"event": "up"}\n')
    zygote.serve()


if __name__ == "__main__":
    main()

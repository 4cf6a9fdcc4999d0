"""The zygote: a pre-imported Python process that forks sandboxes' agentd (and starts bwrap).

Run as `python -m agentplex.sandbox.zygote CTL_FD` by `ZygoteClient`, which starts two: a full
one (agentd, uvicorn, IPython and the scientific stack imported once) and a light one (agentd
and uvicorn only; AGENTPLEX_ZYGOTE_LIGHT=1). Each serves JSON-line requests on CTL_FD:

  -> {"op": "spawn" | "launch", "key", "bwrap": [argv] | null, "cgroup_procs": [...],
      "cgroup_stats": {...}, "uid", "user_uid", "log", "workspace", "runtime", "seccomp",
      "agentd": {AgentConfig fields}}
  -> {"op": "enter", ...the same..., "pid1", "bwrap_pid"}
  <- {"event": "launched", "key", "bwrap_pid", "pid1"}                    (after "launch")
  <- {"event": "ready", "key", "bwrap_pid", "agentd_pid"} | {"event": "failed", "key", "error"}
  <- {"event": "exited", "key", "pid", "status"}      (bwrap, or agentd when unisolated)

"launch" starts the sandbox's bubblewrap, "enter" forks its agentd, "spawn" does both (or, with
no "bwrap", forks an unisolated agentd). Launch: fork A joins the sandbox's cgroups, drops to
the sandbox's system uid ("uid") and execs bwrap, whose payload signals readiness on a pipe.
With "user_uid" (we are root), bwrap waits after creating its user namespace
(--userns-block-fd) while we write a two-entry uid map: 0 inside is the system uid (bwrap's
init, its payload, agentd) and 1000 inside is "user_uid" (the sandbox's code), so the code can
neither signal nor ptrace nor prlimit agentd. Enter: we point our pid_for_children at the
sandbox's pid namespace, fork C straight into it and point it back; C joins the cgroups and the
other namespaces (setns), takes agentd's identity (see `_become_agentd`), drops every capability
and serves. C shares the zygote's imported pages copy-on-write, which is what makes a sandbox
cheap in memory and start time. A zygote ends with its parent (its control socket closes, and
PDEATHSIG sends SIGTERM), and bwrap dies with its zygote (--die-with-parent), so nothing
outlives the server; the light zygote, told by a "janitor" request (`{"op": "janitor",
"run_dir", "cgroups": [dirs]}`), first kills what is left in the sandboxes' cgroups and
removes them and the runtime directory, even when the server died of SIGKILL.
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

from agentplex.sandbox import network, nsutil, seccomp
from agentplex.sandbox.bwrap import READY_FD, RUNTIME_DIR, SANDBOX_UID

AGENTD_OOM_SCORE_ADJ = "-500"
SYSTEM_UID = 0  # agentd's uid inside a sandbox whose user code runs as SANDBOX_UID
# bwrap makes these as the system uid with mode 0755; the sandbox's code must be able to use them
_SHARED_DIRS = ("/tmp", "/dev/shm")  # noqa: S108


def preload() -> None:
    """Import everything a sandbox will use, so forks inherit it instead of importing."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging.config
    import resource  # noqa: F401  (a C extension: loading it per sandbox costs ~0.5 ms)

    import uvicorn.config
    import uvicorn.lifespan.off
    import uvicorn.protocols.http.httptools_impl
    import uvicorn.protocols.websockets.websockets_sansio_impl

    import agentplex.sandbox.agentd.app
    import agentplex.sandbox.agentd.identity
    import agentplex.sandbox.agentd.server  # noqa: F401

    # uvicorn's logging set up once here (agentd passes log_config=None): its handlers write
    # to fd 2, which each agentd points at its own log
    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)

    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401
    if os.environ.get("AGENTPLEX_ZYGOTE_LIGHT") != "1":
        from agentplex.sandbox.agentd import pykernel

        pykernel.prewarm()


@dataclass
class _Spawn:
    key: str
    req: dict[str, Any]
    phase: str  # ["userns" ->] "bwrap" [-> "agentd"]
    bwrap_pid: int = 0
    agentd_pid: int = 0
    buf: bytes = b""
    lines: list[str] = field(default_factory=list)
    ready_fd: int = -1  # the payload's readiness pipe, watched once the uid map is written
    block_fd: int = -1  # bwrap waits on this until we have written its uid map


def _id_map(system: int, user: int) -> str:
    return f"{SYSTEM_UID} {system} 1\n{SANDBOX_UID} {user} 1\n"


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
        self.ppid = os.getppid()
        self.janitor: dict[str, Any] | None = None  # what to remove if the server dies
        signal.signal(signal.SIGTERM, lambda *_: None)  # PDEATHSIG: seen via the wakeup fd
        self.pid = os.getpid()
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.slirps: dict[int, network.Slirp] = {}  # by bwrap pid: internet sandboxes' network

    # -- plumbing ------------------------------------------------------------------------------
    def send(self, msg: dict[str, Any]) -> None:
        _write_all(self.ctl, json.dumps(msg).encode() + b"\n")

    def _in_child(self, keep: set[int]) -> None:
        """Drop the zygote's own descriptors and signal set-up in a freshly forked child."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with contextlib.suppress(Exception):
            self.sel.close()
        # slirps' exit pipes too: one held open by another sandbox's agentd would keep that
        # slirp4netns alive after its own sandbox ended
        exits = [s.exit_fd for s in self.slirps.values()]
        for fd in [self.ctl, self.wake_r, self.wake_w, self.own_pidns, *self.spawns, *exits]:
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
                    if os.getppid() != self.ppid:  # PDEATHSIG: the server died
                        self._server_gone()
                    self._reap()
                elif fd in self.spawns:
                    self._on_pipe(fd)

    def _on_ctl(self) -> None:
        data = os.read(self.ctl, 1 << 16)
        if not data:
            self._server_gone()
        self.inbuf += data
        while b"\n" in self.inbuf:
            line, self.inbuf = self.inbuf.split(b"\n", 1)
            req = json.loads(line)
            try:
                op = req.get("op")
                if op in ("spawn", "launch"):
                    self._spawn(req)
                elif op == "enter":
                    sp = _Spawn(req["key"], req, "agentd", bwrap_pid=int(req["bwrap_pid"]))
                    self._fork_agentd(sp, int(req["pid1"]))
                elif op == "janitor":
                    self.janitor = req
            except Exception as exc:  # report, never die: other sandboxes depend on us
                self.send({"event": "failed", "key": req.get("key"), "error": repr(exc)})

    def _server_gone(self) -> NoReturn:
        """The server died (its end of the control socket closed, or PDEATHSIG): as the
        janitor, end every sandbox and remove its cgroups and the runtime directory, so that
        nothing of a killed server waits for the next start."""
        if self.janitor is not None:
            with contextlib.suppress(BaseException):
                _clean_up(self.janitor, list(self.watch))
        os._exit(0)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            key = self.watch.pop(pid, None)
            slirp = self.slirps.pop(pid, None)
            if slirp is not None:  # its sandbox's bubblewrap exited: the network goes too
                slirp.stop()
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
        if req.get("bwrap") and _split(req):
            info_r, info_w = os.pipe()
            block_r, block_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                self._exec_bwrap(req, w, userns=(block_r, info_w))
            os.close(block_r)
            os.close(info_w)
            sp = _Spawn(req["key"], req, "userns", bwrap_pid=pid, ready_fd=r, block_fd=block_w)
            os.close(w)
            self.watch[pid] = req["key"]
            self._watch_pipe(info_r, sp)
            return
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

    def _exec_bwrap(
        self, req: dict[str, Any], w: int, userns: tuple[int, int] | None = None
    ) -> NoReturn:
        log = -1
        try:
            self._in_child(keep={w, *(userns or ())})
            log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            _join_cgroups(req)
            w = fcntl.fcntl(w, fcntl.F_DUPFD, 3)  # a low number: sh can't redirect to fd >= 10
            runtime = req["runtime"]
            args = [a.replace(RUNTIME_DIR, runtime).replace(READY_FD, str(w)) for a in req["bwrap"]]
            if userns is not None:  # wait for us to write the uid map (see `_map_ids`)
                block, info = userns
                os.set_inheritable(block, True)
                os.set_inheritable(info, True)
                extra = ["--unshare-user", "--userns-block-fd", str(block), "--info-fd", str(info)]
                args[1:1] = extra
            if req.get("seccomp"):  # bwrap installs it on the sandbox's init and payload
                program = os.open(req["seccomp"], os.O_RDONLY)
                program = fcntl.fcntl(program, fcntl.F_DUPFD, 3)
                os.set_inheritable(program, True)
                args[1:1] = ["--seccomp", str(program)]
            binds = [(req["workspace"], f"{runtime}/ws")]
            if req.get("layer"):  # a custom template's layer, seen by bwrap at <runtime>/layer
                binds.append((req["layer"], f"{runtime}/layer"))
            nsutil.prepare_view(req.get("expose") or {}, binds)
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
        if sp.phase == "userns":
            sp.buf += data
            if data and b"}" not in sp.buf:
                return
            self._close_pipe(fd)
            self._map_ids(sp)
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
            if text == "ready":
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

    def _map_ids(self, sp: _Spawn) -> None:
        """bwrap's user namespace exists: write its uid/gid maps, let it go on, await ready."""
        text, sp.buf = sp.buf.decode(errors="replace"), b""
        try:
            child = int(json.loads(text)["child-pid"])
            ids = _id_map(int(sp.req["uid"]), int(sp.req["user_uid"]))
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{child}/{name}", "w") as f:
                    f.write(ids)
            os.write(sp.block_fd, b"x")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            sp.lines.append(f"setting up the user namespace failed: {exc!r} ({text.strip()!r})")
            os.close(sp.ready_fd)
            self._fail(sp, "the sandbox did not start")
            return
        finally:
            os.close(sp.block_fd)
            sp.block_fd = -1
        sp.phase = "bwrap"
        self._watch_pipe(sp.ready_fd, sp)

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
        if sp.req.get("internet"):
            try:
                self._connect(sp, pid1)
            except Exception as exc:  # report, never die: other sandboxes depend on us
                sp.lines.append(str(exc) if isinstance(exc, network.NetworkError) else repr(exc))
                self._fail(sp, "the sandbox's network could not be set up")
                return
        if sp.req.get("op") == "launch":  # another zygote forks its agentd ("enter")
            self.send({"event": "launched", "key": sp.key, "bwrap_pid": sp.bwrap_pid, "pid1": pid1})
            return
        self._fork_agentd(sp, pid1)

    def _connect(self, sp: _Spawn, pid1: int) -> None:
        """Give an internet sandbox its outbound-only network (see agentplex/sandbox/network.py)
        before agentd, and so any of its code, exists: the filter first, then slirp4netns."""
        network.install_filter(pid1, network.ruleset(network.cached_host_addresses()))
        log = os.open(sp.req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            slirp = network.start_slirp(pid1, sp.req.get("cgroup_procs") or [], log)
        finally:
            os.close(log)
        if sp.bwrap_pid in self.watch:
            self.slirps[sp.bwrap_pid] = slirp
        else:  # bubblewrap already exited (and was reaped) meanwhile
            slirp.stop()
            raise network.NetworkError("the sandbox exited while its network was set up")

    def _fork_agentd(self, sp: _Spawn, pid1: int) -> None:
        """Fork agentd (process C) straight into the sandbox's pid namespace: setns(pid) only
        sets where our *children* go, so we point it at the sandbox for one fork and back."""
        r, w = os.pipe()
        pid = -1
        try:
            pidns = os.open(f"/proc/{pid1}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            try:
                nsutil.setns(pidns, "pid")
                try:
                    pid = os.fork()
                finally:
                    if pid != 0:  # in the child it must stay: agentd's children live there
                        nsutil.setns(self.own_pidns, "pid")
            finally:
                if pid != 0:
                    os.close(pidns)
        except OSError as exc:  # e.g. the sandbox died meanwhile (its pid namespace is gone)
            os.close(r)
            os.close(w)
            sp.lines.append(_describe(exc))
            self._fail(sp, "the sandbox exited during start-up")
            return
        if pid == 0:
            self._in_child(keep={w})
            _enter_sandbox(sp.req, pid1, w)
        os.close(w)
        sp.phase = "agentd"
        sp.agentd_pid = pid
        self._watch_pipe(r, sp)


def _clean_up(janitor: dict[str, Any], pids: list[int], timeout: float = 5.0) -> None:
    """Kill ``pids`` (the sandboxes' bwrap) and every process in the cgroups under
    ``janitor["cgroups"]`` (thawing paused ones: a frozen process cannot die), then remove
    those cgroups, deepest first, and ``janitor["run_dir"]``."""
    import shutil
    import time

    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    # deepest first; every hierarchy thawed before anything is killed (v1: a process frozen
    # in the freezer hierarchy does not die, and so cannot leave its memory cgroup either)
    dirs = [d for base in janitor.get("cgroups") or [] for d, _, _ in os.walk(base, topdown=False)]
    for path in dirs:
        for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
            with contextlib.suppress(OSError), open(os.path.join(path, name), "w") as f:
                f.write(value)
    deadline = time.monotonic() + timeout
    while dirs and time.monotonic() < deadline:
        for path in list(dirs):
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    inside = [int(p) for p in f.read().split()]
            except (OSError, ValueError):
                inside = []
            for pid in inside:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                continue
            dirs.remove(path)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        if dirs:
            time.sleep(0.01)
    if janitor.get("run_dir"):
        shutil.rmtree(janitor["run_dir"], ignore_errors=True)


def _describe(exc: BaseException) -> str:
    """One line: the exception and where it happened (the zygote's children have no log)."""
    import traceback

    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" at {os.path.basename(frame.filename)}:{frame.lineno}" if frame else ""
    return f"{exc!r}{where}"


_ROOT = os.geteuid() == 0  # evaluated in the zygote: inside a sandbox, euid 0 is unmapped


def _split(req: dict[str, Any]) -> bool:
    """Whether agentd and the sandbox's code get different uids (needs root to map two)."""
    return req.get("user_uid") is not None and req.get("uid") is not None and _ROOT


def _join_cgroups(req: dict[str, Any]) -> None:
    for path in req.get("cgroup_procs", []):
        with open(path, "w") as f:
            f.write("0")


def _open_cgroup_stats(req: dict[str, Any]) -> None:
    """agentd reports its sandbox's own usage from these (it has no /sys): read-only fds,
    opened while we still see the host's cgroup file system."""
    fds: dict[str, int] = {}
    for name, path in (req.get("cgroup_stats") or {}).items():
        with contextlib.suppress(OSError):
            fds[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    req["agentd"]["cgroup_fds"] = fds


def _seccomp_program(req: dict[str, Any]) -> bytes | None:
    """The sandbox's seccomp filter (see agentplex/sandbox/seccomp.py), None without one."""
    path = req.get("seccomp")
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def _protect_from_oom() -> None:
    """Make agentd the OOM killer's last choice when we may (CAP_SYS_RESOURCE); its children
    raise their own score anyway, so they go first either way."""
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write(AGENTD_OOM_SCORE_ADJ)


def _enter_sandbox(req: dict[str, Any], pid1: int, w: int) -> NoReturn:
    """Process C, already in the sandbox's pid namespace: join its cgroups and its other
    namespaces (the user namespace last: we are root until then), then become agentd."""
    try:
        _join_cgroups(req)
        _open_cgroup_stats(req)
        _protect_from_oom()
        req["seccomp_program"] = _seccomp_program(req)  # read while the host's files are seen
        os.setgroups([])
        nsutil.enter_namespaces(pid1, tuple(n for n in nsutil.NAMESPACES if n != "pid"))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _write_all(w, f"error {_describe(exc)}\n".encode())
        os._exit(1)
    _become_agentd(req, w, isolated=True)


def _become_agentd(req: dict[str, Any], w: int, *, isolated: bool) -> NoReturn:
    """Process C: drop privileges and serve the data plane until killed.

    Split identities: real and saved uid SYSTEM_UID (no process of the sandbox's code has it,
    so none can signal, ptrace or prlimit agentd), effective (so file system) uid SANDBOX_UID:
    agentd reads and writes the workspace as the code does, and its children become the
    sandbox user without any capability (see agentd/identity.py)."""
    try:
        os.setsid()
        nsutil.set_process_name("agentd")
        if isolated and _split(req):
            os.chdir("/")
            for path in _SHARED_DIRS:
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o1777)  # noqa: S103 (sticky, like any /tmp)
            os.setresgid(SYSTEM_UID, SANDBOX_UID, SYSTEM_UID)
            os.setresuid(SYSTEM_UID, SANDBOX_UID, SYSTEM_UID)
            req["agentd"]["user_uid"] = SANDBOX_UID
        elif isolated:
            os.chdir("/")
            os.setresgid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
            os.setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
        else:
            nsutil.set_pdeathsig(signal.SIGKILL)
            _join_cgroups(req)
            _open_cgroup_stats(req)
            _protect_from_oom()
        nsutil.drop_privileges()
        program = req.get("seccomp_program") if isolated else _seccomp_program(req)
        if program:  # after no_new_privs (drop_privileges); every child inherits it
            seccomp.install(program)
        if isolated and _split(req):
            nsutil.set_dumpable(False)  # its /proc entries (fds, environ, mem) closed to the code
        from agentplex.sandbox.agentd import identity

        identity.configure(req["agentd"].get("user_uid"))
        os.chdir(req["agentd"]["workspace_real"])  # as the code: it may have made it private
        identity.as_system()  # the log and the socket are agentd's, not the code's
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
        from agentplex.sandbox.agentd.config import AgentConfig
        from agentplex.sandbox.agentd.server import serve

        serve(AgentConfig(**req["agentd"]), notify_fd=w)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _write_all(w, f"error {_describe(exc)}\n".encode())
    os._exit(1)


def main() -> NoReturn:
    ctl = int(sys.argv[1])
    # SIGTERM, not SIGKILL: the zygote must live on to clean up after a server that died
    # (`Zygote._server_gone`); until it serves, SIGTERM's default still ends it
    nsutil.set_pdeathsig(signal.SIGTERM)
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

"""cgroup limits for sandboxes: memory, cpu, pids, and freezing for pause/resume.

`CgroupRoot.detect()` picks the hierarchy the host has: cgroup v2 (the unified hierarchy, the
default of current distributions) when /sys/fs/cgroup is a cgroup2 mount (`CgroupV2Root`),
cgroup v1 otherwise.

v1: each sandbox gets `<controller>/<our own cgroup>/agentplex/<pid>.<n>/<key>` in the memory,
pids, cpu and freezer hierarchies. v2: `<our own cgroup>/agentplex/<pid>.<n>/<key>`, with the
memory, pids and cpu controllers delegated down to it at start (see `CgroupV2Root.detect`).
Either way sandboxes are accounted inside whatever limits the server itself runs under.
`<pid>.<n>` is one manager (server process `pid`): several servers, or several managers in one
process, share a host without sweeping each other's sandboxes away. When the hierarchies are
missing or not writable, `detect()` returns None and sandboxes run without cgroup limits (the
manager reports that).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import signal
import time
from pathlib import Path

from agentplex.core.ports import Resources

CONTROLLERS = ("memory", "pids", "cpu", "freezer")
OPTIONAL = ("cpuacct",)  # CPU time used, for the sandbox's /metrics/snapshot
# what a sandbox's agentd reads about itself (opened by the zygote, since /sys is not mounted)
STAT_FILES = {
    "memory.usage_in_bytes": "memory",
    "memory.limit_in_bytes": "memory",
    "memory.max_usage_in_bytes": "memory",
    "pids.current": "pids",
    "pids.max": "pids",
    "cpu.cfs_quota_us": "cpu",
    "cpu.cfs_period_us": "cpu",
    "cpuacct.usage": "cpuacct",
}
_FS = Path("/sys/fs/cgroup")
_SEQ = itertools.count()


def _own_paths() -> dict[str, str]:
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            for name in names.split(","):
                paths[name] = path
    return paths


class CgroupRoot:
    """The `agentplex` parent cgroup in each controller hierarchy."""

    def __init__(self, bases: dict[str, Path]) -> None:
        self.bases = bases

    version = 1

    @classmethod
    def detect(cls, name: str = "agentplex") -> CgroupRoot | None:
        """This manager's writable hierarchies nested under our own cgroup (v2 when the host
        mounts cgroup2 at /sys/fs/cgroup, v1 otherwise), or None."""
        if is_v2(_FS):
            return CgroupV2Root.detect_v2(name)
        own = _own_paths()
        mine = f"{os.getpid()}.{next(_SEQ)}"
        bases: dict[str, Path] = {}
        for ctrl in (*CONTROLLERS, *OPTIONAL):
            mount = _FS / ctrl
            if not (mount / "cgroup.procs").exists():
                if ctrl in OPTIONAL:
                    continue
                return None
            base = mount / own.get(ctrl, "/").lstrip("/") / name / mine
            try:
                base.mkdir(parents=True, exist_ok=True)
                probe = base / ".probe"
                probe.mkdir(exist_ok=True)
                probe.rmdir()
            except OSError:
                return None
            bases[ctrl] = base
        return cls(bases)

    def create(self, key: str) -> SandboxCgroup:
        """Make (or reuse) the cgroups of one sandbox."""
        dirs = {ctrl: base / key for ctrl, base in self.bases.items()}
        for path in dirs.values():
            path.mkdir(exist_ok=True)
        return SandboxCgroup(dirs)

    def sweep(self) -> None:
        """Remove the cgroups left by managers whose server process is gone (killing what is
        inside); a live server's are left alone."""
        parents = {ctrl: base.parent for ctrl, base in self.bases.items()}
        names = {p.name for parent in parents.values() for p in parent.iterdir() if p.is_dir()}
        for name in names:
            pid, dot, _ = name.partition(".")
            if not dot:  # a sandbox of an older layout: remove only when nothing runs in it
                for parent in parents.values():
                    with contextlib.suppress(OSError):
                        (parent / name).rmdir()
                continue
            if not pid.isdigit() or _alive(int(pid)):
                continue
            stale = {ctrl: parent / name for ctrl, parent in parents.items()}
            keys = {p.name for d in stale.values() if d.is_dir() for p in d.iterdir() if p.is_dir()}
            for key in keys:
                SandboxCgroup({c: d / key for c, d in stale.items()}).destroy()
            for d in stale.values():
                with contextlib.suppress(OSError):
                    d.rmdir()

    def destroy(self) -> None:
        """Remove this manager's (by now empty) parent cgroups."""
        for base in self.bases.values():
            with contextlib.suppress(OSError):
                base.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class SandboxCgroup:
    """The cgroups of one sandbox."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs
        self._limits: dict[Path, str] = {}  # what set_limits last wrote, to skip rewrites

    def _limit(self, path: Path, value: str) -> None:
        if self._limits.get(path) != value:
            _write(path, value)
            self._limits[path] = value

    @property
    def procs_files(self) -> list[str]:
        """The `cgroup.procs` files a process writes its pid to, to join this sandbox."""
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    @property
    def stat_files(self) -> dict[str, str]:
        """{name: path} of the usage and limit files this sandbox's agentd reports."""
        return {
            name: str(self.dirs[ctrl] / name)
            for name, ctrl in STAT_FILES.items()
            if ctrl in self.dirs
        }

    def set_limits(self, res: Resources) -> None:
        """Apply memory (no swap), cpu quota and pid limits."""
        mem = self.dirs["memory"]
        limit = str(res.memory_mb * 1024 * 1024)
        mem_limit, memsw = mem / "memory.limit_in_bytes", mem / "memory.memsw.limit_in_bytes"
        if self._limits.get(mem_limit) != limit:
            # memory <= memory+swap at every moment: raising, the memsw limit goes first
            try:
                raising = int(limit) > int(mem_limit.read_text())
            except (OSError, ValueError):
                raising = False
            with contextlib.suppress(OSError):  # memsw exists only with swap accounting
                if raising:
                    self._limit(memsw, limit)
            self._limit(mem_limit, limit)
            with contextlib.suppress(OSError):
                self._limit(memsw, limit)
        self._limit(self.dirs["pids"] / "pids.max", str(res.max_pids))
        cpu = self.dirs["cpu"]
        self._limit(cpu / "cpu.cfs_period_us", "100000")
        self._limit(cpu / "cpu.cfs_quota_us", str(max(1000, int(res.vcpu * 100000))))

    def pids(self) -> list[int]:
        try:
            text = (self.dirs["pids"] / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def freeze(self, timeout: float = 2.0) -> bool:
        """Freeze every process of the sandbox; True once the kernel reports FROZEN."""
        state = self.dirs["freezer"] / "freezer.state"
        _write(state, "FROZEN")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if state.read_text().strip() == "FROZEN":
                return True
            time.sleep(0.001)
        return False

    def thaw(self) -> None:
        _write(self.dirs["freezer"] / "freezer.state", "THAWED")

    def kill_all(self, timeout: float = 2.0) -> None:
        """SIGKILL everything in the sandbox; freezing first so nothing forks away meanwhile."""
        with contextlib.suppress(OSError):
            self.freeze(timeout=0.5)
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.thaw()
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.002)

    def memory_usage(self) -> int:
        try:
            return int((self.dirs["memory"] / "memory.usage_in_bytes").read_text())
        except (OSError, ValueError):
            return 0

    def oom_kills(self) -> int:
        """How many processes the OOM killer ended in this sandbox (0 if the kernel can't say)."""
        try:
            text = (self.dirs["memory"] / "memory.oom_control").read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def destroy(self) -> None:
        """Kill what is left and remove the cgroups."""
        self.kill_all()
        for path in self.dirs.values():
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


# -- cgroup v2 -----------------------------------------------------------------------------------
V2_CONTROLLERS = ("memory", "pids", "cpu")
# where the processes of our own cgroup move when it must become a parent only (v2 lets a
# cgroup other than the root hand controllers to children only while it holds no process)
SERVER_LEAF = "agentplex-server"
# what agentd reads about itself, under the v1 names it knows; v2's cpu.max and cpu.stat have
# another format, so /metrics/snapshot reports host CPUs and no CPU usage there
V2_STAT_FILES = {
    "memory.usage_in_bytes": "memory.current",
    "memory.limit_in_bytes": "memory.max",
    "memory.max_usage_in_bytes": "memory.peak",
    "pids.current": "pids.current",
    "pids.max": "pids.max",
}
CPU_PERIOD_US = 100000


def is_v2(fs: Path) -> bool:
    """Whether `fs` is a cgroup2 mount (the unified hierarchy): only its root has
    cgroup.controllers; v1's is a tmpfs of per-controller mounts (a hybrid host's v2 part sits
    in its `unified` subdirectory and counts as v1)."""
    return (fs / "cgroup.controllers").is_file()


def _own_v2() -> str:
    """Our cgroup in the unified hierarchy ("0::<path>" in /proc/self/cgroup)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    return "/"


def _enable(parent: Path, controllers: tuple[str, ...]) -> None:
    _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in controllers))


class CgroupV2Root(CgroupRoot):
    """This manager's `agentplex/<pid>.<n>` cgroup in the unified hierarchy (`bases` holds it
    under the key "unified")."""

    version = 2

    @classmethod
    def detect_v2(
        cls, name: str = "agentplex", fs: Path | None = None, own: str | None = None
    ) -> CgroupV2Root | None:
        """Delegate memory, pids and cpu from our own cgroup (`own`, default: ours from
        /proc/self/cgroup) down to this manager's cgroup, or None if the host won't.

        v2's rule that a cgroup with processes hands no controller to its children (the root
        excepted) is met as systemd's delegation does: when enabling them in our own cgroup is
        refused (EBUSY), its processes (the server among them) move to a leaf `agentplex-server`
        beside `agentplex`, and the enabling is retried."""
        fs = fs or _FS
        own_path = (own if own is not None else _own_v2()).strip("/")
        top = fs / own_path if own_path else fs
        if top.name == SERVER_LEAF:  # an earlier manager of this process moved us there
            top = top.parent
        try:
            have = set((top / "cgroup.controllers").read_text().split())
        except OSError:
            return None
        if not set(V2_CONTROLLERS) <= have:
            return None
        parent = top / name
        base = parent / f"{os.getpid()}.{next(_SEQ)}"
        try:
            try:
                _enable(top, V2_CONTROLLERS)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                leaf = top / SERVER_LEAF
                leaf.mkdir(exist_ok=True)
                for pid in (top / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):  # gone meanwhile
                        _write(leaf / "cgroup.procs", pid)
                _enable(top, V2_CONTROLLERS)
            parent.mkdir(exist_ok=True)
            _enable(parent, V2_CONTROLLERS)
            base.mkdir(exist_ok=True)
            _enable(base, V2_CONTROLLERS)
            probe = base / ".probe"
            probe.mkdir(exist_ok=True)
            probe.rmdir()
        except OSError:
            return None
        return cls({"unified": base})

    def create(self, key: str) -> SandboxCgroupV2:
        path = self.bases["unified"] / key
        path.mkdir(exist_ok=True)
        return SandboxCgroupV2({"unified": path})

    def sweep(self) -> None:
        parent = self.bases["unified"].parent
        for stale in parent.iterdir():
            pid, dot, _ = stale.name.partition(".")
            if not stale.is_dir() or not dot or not pid.isdigit() or _alive(int(pid)):
                continue
            for child in stale.iterdir():
                if child.is_dir():
                    SandboxCgroupV2({"unified": child}).destroy()
            with contextlib.suppress(OSError):
                stale.rmdir()


class SandboxCgroupV2(SandboxCgroup):
    """The (leaf) cgroup of one sandbox in the unified hierarchy."""

    @property
    def path(self) -> Path:
        return self.dirs["unified"]

    @property
    def stat_files(self) -> dict[str, str]:
        return {name: str(self.path / file) for name, file in V2_STAT_FILES.items()}

    def set_limits(self, res: Resources) -> None:
        """memory.max (and no swap), cpu.max from vcpu, pids.max."""
        self._limit(self.path / "memory.max", str(res.memory_mb * 1024 * 1024))
        with contextlib.suppress(FileNotFoundError):  # only with swap accounting
            if (self.path / "memory.swap.max").exists():
                self._limit(self.path / "memory.swap.max", "0")
        quota = max(1000, int(res.vcpu * CPU_PERIOD_US))
        self._limit(self.path / "cpu.max", f"{quota} {CPU_PERIOD_US}")
        self._limit(self.path / "pids.max", str(res.max_pids))

    def pids(self) -> list[int]:
        try:
            text = (self.path / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def _events(self) -> dict[str, str]:
        try:
            text = (self.path / "cgroup.events").read_text()
        except OSError:
            return {}
        return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)

    def freeze(self, timeout: float = 2.0) -> bool:
        """Freeze (cgroup.freeze); True once cgroup.events reports it frozen."""
        _write(self.path / "cgroup.freeze", "1")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._events().get("frozen") == "1":
                return True
            time.sleep(0.001)
        return False

    def thaw(self) -> None:
        _write(self.path / "cgroup.freeze", "0")

    def kill_all(self, timeout: float = 2.0) -> None:
        """SIGKILL everything: cgroup.kill (Linux 5.14+) in one write, else freeze and kill."""
        if (self.path / "cgroup.kill").exists():
            _write(self.path / "cgroup.kill", "1")
            deadline = time.monotonic() + timeout
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.002)
            return
        super().kill_all(timeout)

    def memory_usage(self) -> int:
        try:
            return int((self.path / "memory.current").read_text())
        except (OSError, ValueError):
            return 0

    def oom_kills(self) -> int:
        try:
            text = (self.path / "memory.events").read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

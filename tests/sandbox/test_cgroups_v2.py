"""cgroup v2 against a cgroupfs tree built in a temporary directory (this host has cgroup v1).

`_FakeKernel` keeps the two rules of the unified hierarchy the code must meet: a cgroup other
than the root hands controllers to its children only while it holds no process (EBUSY
otherwise), and a process written to a `cgroup.procs` leaves the cgroup it was in."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agentplex.core.ports import Resources
from agentplex.sandbox import cgroups
from agentplex.sandbox.cgroups import CgroupRoot, CgroupV2Root, SandboxCgroupV2


class _FakeKernel:
    def __init__(self, fs: Path) -> None:
        self.fs = fs
        self.real_write = cgroups._write

    def write(self, path: Path, value: str) -> None:
        if path.name == "cgroup.subtree_control" and path.parent != self.fs:
            procs = path.parent / "cgroup.procs"
            if procs.exists() and procs.read_text().split():
                raise OSError(errno.EBUSY, "Device or resource busy")
        if path.name == "cgroup.procs":
            for other in self.fs.rglob("cgroup.procs"):
                pids = other.read_text().split()
                if value in pids:
                    pids.remove(value)
                    other.write_text("".join(f"{p}\n" for p in pids))
            with open(path, "a") as f:
                f.write(f"{value}\n")
            return
        self.real_write(path, value)

    def rmdir(self, path: Path) -> None:
        """cgroupfs removes a cgroup with its interface files, unless processes are in it."""
        procs = path / "cgroup.procs"
        if procs.exists() and procs.read_text().split():
            raise OSError(errno.EBUSY, "Device or resource busy")
        if path.is_relative_to(self.fs):
            for entry in path.iterdir():
                if entry.is_file():
                    entry.unlink()
        _REAL_RMDIR(path)


_REAL_RMDIR = Path.rmdir


@pytest.fixture
def fs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A unified hierarchy whose root is ours, the server's cgroup `/system/agentplex.service`
    holding the server and one helper process."""
    root = tmp_path / "cgroup"
    own = root / "system" / "agentplex.service"
    own.mkdir(parents=True)
    for d in (root, root / "system", own):
        (d / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
        (d / "cgroup.procs").write_text("")
    (own / "cgroup.procs").write_text(f"{os.getpid()}\n4242\n")
    kernel = _FakeKernel(root)
    monkeypatch.setattr(cgroups, "_write", kernel.write)
    monkeypatch.setattr(Path, "rmdir", lambda path: kernel.rmdir(path))
    return root


def test_the_server_picks_v2_on_a_cgroup2_mount_and_v1_otherwise(
    fs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cgroups.is_v2(fs)
    v1 = tmp_path / "v1"  # a v1 host: a tmpfs of per-controller mounts
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "cgroup.procs").write_text("")
    assert not cgroups.is_v2(v1)
    monkeypatch.setattr(cgroups, "_FS", fs)
    monkeypatch.setattr(cgroups, "_own_v2", lambda: "/system/agentplex.service")
    picked = CgroupRoot.detect()
    assert isinstance(picked, CgroupV2Root) and picked.version == 2


def test_delegation_moves_the_servers_processes_and_enables_the_controllers(fs: Path) -> None:
    own = fs / "system" / "agentplex.service"
    root = CgroupV2Root.detect_v2(fs=fs, own="/system/agentplex.service")
    assert root is not None
    base = root.bases["unified"]
    assert base.parent == own / "agentplex" and base.name.startswith(f"{os.getpid()}.")
    # the server's cgroup holds no process any more: they went to a leaf beside agentplex
    assert (own / "cgroup.procs").read_text().split() == []
    assert sorted((own / cgroups.SERVER_LEAF / "cgroup.procs").read_text().split()) == sorted(
        [str(os.getpid()), "4242"]
    )
    for parent in (own, own / "agentplex", base):
        assert (parent / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    # a second manager of the same process finds the same parent, not the leaf
    again = CgroupV2Root.detect_v2(fs=fs, own=f"/system/agentplex.service/{cgroups.SERVER_LEAF}")
    assert again is not None and again.bases["unified"].parent == own / "agentplex"


def test_without_the_controllers_there_are_no_limits(fs: Path) -> None:
    own = fs / "system" / "agentplex.service"
    (own / "cgroup.controllers").write_text("cpuset io\n")
    assert CgroupV2Root.detect_v2(fs=fs, own="/system/agentplex.service") is None


def test_limits_freeze_and_kill_write_the_v2_files(fs: Path) -> None:
    root = CgroupV2Root.detect_v2(fs=fs, own="/system/agentplex.service")
    assert root is not None
    sandbox = root.create("abc")
    assert isinstance(sandbox, SandboxCgroupV2)
    path = root.bases["unified"] / "abc"
    (path / "memory.swap.max").write_text("max\n")  # present with swap accounting
    sandbox.set_limits(Resources(vcpu=1.5, memory_mb=256, max_pids=64))
    assert (path / "memory.max").read_text() == str(256 * 1024 * 1024)
    assert (path / "memory.swap.max").read_text() == "0"
    assert (path / "cpu.max").read_text() == "150000 100000"
    assert (path / "pids.max").read_text() == "64"
    assert sandbox.procs_files == [str(path / "cgroup.procs")]
    assert sandbox.stat_files["memory.usage_in_bytes"] == str(path / "memory.current")
    # pause: cgroup.freeze, done once cgroup.events says frozen
    (path / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    assert sandbox.freeze(timeout=0.5)
    assert (path / "cgroup.freeze").read_text() == "1"
    sandbox.thaw()
    assert (path / "cgroup.freeze").read_text() == "0"
    (path / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    assert not sandbox.freeze(timeout=0.05)  # never frozen: reported, so pause falls back
    # usage and OOM kills come from memory.current and memory.events
    (path / "memory.current").write_text("12345\n")
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    assert (sandbox.memory_usage(), sandbox.oom_kills()) == (12345, 2)
    # cgroup.kill ends everything in one write where the kernel has it (5.14+)
    (path / "cgroup.kill").write_text("")
    sandbox.kill_all(timeout=0.05)
    assert (path / "cgroup.kill").read_text() == "1"


def test_sweep_removes_only_the_cgroups_of_servers_that_are_gone(fs: Path) -> None:
    root = CgroupV2Root.detect_v2(fs=fs, own="/system/agentplex.service")
    assert root is not None
    parent = root.bases["unified"].parent
    gone = parent / "999999999.0"
    (gone / "sbx").mkdir(parents=True)
    (gone / "sbx" / "cgroup.procs").write_text("")
    (gone / "sbx" / "cgroup.kill").write_text("")
    mine = root.create("live")
    root.sweep()
    assert not gone.exists()
    assert mine.path.is_dir()

"""What the server depends on is supervised, and nothing of a dead server lingers:

- a killed sandbox fork server (zygote) is restarted, health says so meanwhile, the sandboxes
  that died with it are reported stopped, and creating sandboxes works again;
- after SIGKILL of `agentplex serve`, no sandbox process, cgroup or runtime directory of it
  remains (without waiting for another start).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ServeFactory

pytestmark = pytest.mark.e2e

SANDBOXES_ON = {"AGENTPLEX_SANDBOX_WARM_ON_START": "true", "AGENTPLEX_SANDBOX_POOL_SIZE": "1"}


def _ppid_and_state(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def _alive(pid: int) -> bool:
    info = _ppid_and_state(pid)
    return info is not None and info[1] not in ("Z", "X")


def _descendants(root: int) -> set[int]:
    """Every live process below ``root``."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _ppid_and_state(int(entry))) is not None:
            parents[int(entry)] = info[0]
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return {pid for pid in found if _alive(pid)}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # it exited meanwhile
        return b""


def _zygotes(server_pid: int) -> list[int]:
    out = []
    for pid in _descendants(server_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"agentplex.sandbox.zygote" in cmdline:
            out.append(pid)
    return out


def _cgroup_dirs(server_pid: int) -> list[Path]:
    """The sandbox cgroup directories of the server process (`.../agentplex/<pid>.<n>`)."""
    dirs: list[Path] = []
    for line in Path(f"/proc/{server_pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            mount = Path("/sys/fs/cgroup") / controller.removeprefix("name=")
            dirs += (mount / path.lstrip("/") / "agentplex").glob(f"{server_pid}.*")
    return dirs


def _run_dir(data_dir: Path) -> Path:
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return Path("/tmp") / f"agentplex-{digest}"


def _create(http: httpx.Client, template: str = "bash", *, internet: bool = False) -> str:
    body = {"template_name": template, "internet_access": internet}
    created = http.post("/v1/sandboxes", json=body)
    assert created.status_code == 200, created.text
    sandbox_id: str = created.json()["id"]
    ran = http.post(f"/sandboxes/{sandbox_id}/commands/run", json={"command": "echo up"})
    assert ran.status_code == 200 and ran.json()["stdout"].strip() == "up", ran.text
    return sandbox_id


def test_a_killed_zygote_is_restarted_and_health_says_so_meanwhile(serve: ServeFactory) -> None:
    server = serve(env=SANDBOXES_ON)
    assert server.proc is not None
    with server.client(timeout=120) as http:
        sandbox_id = _create(http)
        zygotes = _zygotes(server.proc.pid)
        assert len(zygotes) == 2, zygotes
        for pid in zygotes:
            os.kill(pid, signal.SIGKILL)

        # while the sandbox layer is down, readiness and health say why
        deadline = time.monotonic() + 10
        while True:
            ready = http.get("/health/ready")
            if ready.status_code == 503:
                break
            assert time.monotonic() < deadline, "/health/ready stayed green with no zygote"
            time.sleep(0.02)
        assert "zygote" in ready.json()["reason"]

        # it comes back by itself
        deadline = time.monotonic() + 120
        while http.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, http.get("/health").json()
            time.sleep(0.2)
        health = http.get("/health")
        assert health.status_code == 200 and health.json()["checks"]["sandboxes"] == "ok"
        assert http.get("/status").json()["sandbox"]["zygote"]["restarts"] == 2
        assert set(_zygotes(server.proc.pid)).isdisjoint(zygotes)

        # the sandbox that died with it is stopped, with the reason; it can be started again
        record = http.get(f"/v1/sandboxes/{sandbox_id}").json()
        assert record["status"] == "stopped", record
        assert "zygote" in record["status_reason"]
        assert http.post(f"/v1/sandboxes/{sandbox_id}/start").status_code == 200
        ran = http.post(f"/sandboxes/{sandbox_id}/commands/run", json={"command": "echo back"})
        assert ran.json()["stdout"].strip() == "back"

        # and new sandboxes of both zygotes' kinds start again
        _create(http, "bash")
        _create(http, "python")


def test_sigkill_of_the_server_leaves_no_sandbox_behind(serve: ServeFactory) -> None:
    server = serve(env=SANDBOXES_ON)
    assert server.proc is not None
    pid = server.proc.pid
    with server.client(timeout=120) as http:
        sandbox_id = _create(http)
        http.post(
            f"/sandboxes/{sandbox_id}/commands/run",
            json={"command": "sleep 1000 >/dev/null 2>&1 &", "timeout": 10},
        )
        paused = _create(http, "bash")
        assert http.post(f"/v1/sandboxes/{paused}/pause").status_code == 200
        _create(http, "bash", internet=True)  # with its slirp4netns (sandbox/network.py)
        online = _create(http, "bash", internet=True)
        assert http.post(f"/v1/sandboxes/{online}/pause").status_code == 200
    processes = _descendants(pid)
    slirps = [p for p in processes if b"slirp4netns" in _cmdline(p)]
    assert len(slirps) == 2, slirps
    cgroups = _cgroup_dirs(pid)
    run_dir = _run_dir(server.data_dir)
    assert len(processes) >= 5 and cgroups and run_dir.is_dir()  # what there is to clean

    os.kill(pid, signal.SIGKILL)
    server.proc.wait(5)

    deadline = time.monotonic() + 10
    while True:
        left = {
            "processes": sorted(p for p in processes if _alive(p)),
            "cgroups": [str(d) for d in cgroups if d.exists()],
            "run_dir": [str(run_dir)] if run_dir.exists() else [],
        }
        if not any(left.values()):
            break
        assert time.monotonic() < deadline, f"left behind after SIGKILL: {left}"
        time.sleep(0.1)

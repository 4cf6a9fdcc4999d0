"""Escape attempts against real sandboxes (the sandbox layer): each must fail, and everything
else keep working."""

from __future__ import annotations

import asyncio
import json
import os
import socket

import pytest

from agentplex.core.ports import IsolationInfo, Resources, Template
from agentplex.errors import SandboxUnavailable
from agentplex.sandbox import SandboxManager
from tests.sandbox.conftest import call, create, run

pytestmark = pytest.mark.asyncio(loop_scope="module")

SMALL = Template(
    id="small",
    name="small",
    display_name="Small",
    language="bash",
    resources=Resources(vcpu=0.5, memory_mb=128, disk_mb=8, max_pids=64),
)


async def test_filesystem_outside_workspace_is_read_only_or_hidden(manager: SandboxManager) -> None:
    h = await create(manager, "bash")
    other = await create(manager, "bash")
    (other.workspace / "secret.txt").write_text("other's secret")
    for attempt in (
        "echo x > /etc/evil",
        "echo x > /usr/evil",
        "mkdir /evil",
        "cat /etc/shadow",
        f"ls {manager.data_dir}",
        f"cat {other.workspace}/secret.txt",
        f"ls {manager.run_dir}",
        "cat /root/.bash_history",
        "touch /run/evil",
        "cat /run/agentd/agentd.log",
        "python3 -c \"import socket; socket.socket(socket.AF_UNIX).connect('/run/agentd/a.sock')\"",
    ):
        out = await run(h, attempt, "bash")
        assert out["exit_code"] != 0, (attempt, out)
    assert not os.path.exists("/etc/evil") and not os.path.exists("/usr/evil")
    out = await run(h, "ls /run/agentd; ls /workspace", "bash")
    assert "secret.txt" not in out["stdout"]
    # the test's data dir is under /tmp, which inside the sandbox is the sandbox's own /tmp
    _status, body = await call(
        h, "GET", "/files/read", params={"path": f"{other.workspace}/secret.txt"}
    )
    assert body["code"] in ("PATH_NOT_ALLOWED", "FILE_NOT_FOUND") and "content" not in body
    await manager.delete(other.id)
    await manager.delete(h.id)


async def test_no_network_without_internet_access(manager: SandboxManager) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    probe = (
        f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "print('connected')"
    )
    try:
        h = await create(manager, "python")
        out = await run(h, probe)
        assert "connected" not in out["stdout"] and "ConnectionRefused" in out["stderr"]
        out = await run(h, "import socket; socket.create_connection(('1.1.1.1', 53), timeout=2)")
        assert not out["success"]
        # internet access is outbound only: the host's loopback stays out of reach (it was
        # reachable when internet sandboxes shared the host's network namespace)
        net = await create(manager, "python", internet_access=True)
        out = await run(net, probe)
        assert "connected" not in out["stdout"] and "ConnectionRefused" in out["stderr"], out
        assert not _accepted(server)
        await manager.delete(net.id)
        await manager.delete(h.id)
    finally:
        server.close()


def _accepted(server: socket.socket) -> bool:
    """Whether a connection reached `server` (a listener of the host)."""
    server.setblocking(False)
    try:
        server.accept()[0].close()
    except BlockingIOError:
        return False
    return True


async def test_host_processes_are_invisible_and_unsignalable(manager: SandboxManager) -> None:
    h = await create(manager, "bash")
    me = os.getpid()
    out = await run(h, f"kill -0 {me} && echo reached; ls /proc | grep -c '^[0-9]'", "bash")
    assert "reached" not in out["stdout"]
    assert int(out["stdout"].split()[-1]) < 15  # only the sandbox's own few processes
    out = await run(h, "kill -9 1; echo done; cat /proc/1/comm", "bash")
    # refused (init runs as the sandbox's system uid), and the same init is still there
    assert out["stdout"] == "done\nbwrap\n", out
    assert "Operation not permitted" in out["stderr"], out
    assert (await call(h, "GET", "/health"))[0] == 200
    await manager.delete(h.id)


async def test_code_cannot_signal_or_limit_its_agentd(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    agentd = manager._runtimes[h.id].agentd_pid
    out = await run(h, "pgrep -x agentd", "bash")
    assert out["stdout"].strip(), out  # the code sees agentd: the attempts below are real
    for attempt in (
        "kill -9 -1; echo done",
        "pkill -9 -f agentd; pkill -9 agentd; echo done",
        "kill -9 $(pgrep -x agentd); kill -STOP $(pgrep -x agentd); echo done",
        "prlimit --pid $(pgrep -x agentd) --nofile=1:1 --cpu=0:0; echo rc=$?",
        "cat /proc/$(pgrep -x agentd)/environ; ls /proc/$(pgrep -x agentd)/fd; echo rc=$?",
    ):
        out = await run(h, attempt, "bash")
        assert out["stdout"].endswith(("done\n", "rc=1\n", "rc=2\n")), (attempt, out)
        assert (await call(h, "GET", "/health"))[0] == 200, attempt
    everyone = (
        "import os\n"
        "for p in os.listdir('/proc'):\n"
        "    if p.isdigit() and int(p) != os.getpid():\n"
        "        try: os.kill(int(p), 9)\n"
        "        except OSError: pass\n"
    )
    await run(h, everyone)
    async with h.websocket("/terminal") as ws:  # the terminal's shell is the code's too
        line = "echo uid=$(id -u); kill -9 -1; exit 3\n"  # kill spares the shell itself
        await ws.send(json.dumps({"type": "input", "data": line}))
        seen = ""
        async with asyncio.timeout(10):
            while (msg := json.loads(await ws.recv()))["type"] != "exit":
                seen += msg.get("data", "")
    assert "uid=1000" in seen
    out = await run(h, "print('still here')")
    if out.get("kernel_died"):  # the kernel the terminal killed was still dying: reported so
        out = await run(h, "print('still here')")
    assert out["stdout"] == "still here\n"
    assert (await run(h, "echo fine", "bash"))["stdout"] == "fine\n"
    os.kill(agentd, 0)  # the very same agentd process
    assert h.state.value == "running" and not h.reason
    # agentd's socket and state are closed to the code; it can't talk to agentd behind the host
    out = await run(h, "ls /run/agentd || cat /run/agentd/env.json; echo rc=$?", "bash")
    assert "Permission denied" in out["stderr"] and out["stdout"] == "rc=1\n"
    await manager.delete(h.id)


async def test_files_of_the_code_and_of_the_files_api_are_shared(manager: SandboxManager) -> None:
    h = await create(manager, "bash")
    out = await run(h, "umask 077; echo private > mine.txt; id -u", "bash")
    assert out["stdout"] == "1000\n"
    status, body = await call(h, "GET", "/files/read", params={"path": "/workspace/mine.txt"})
    assert (status, body["content"]) == (200, "private\n")
    status, _ = await call(h, "POST", "/files/write", json={"path": "api.txt", "content": "a"})
    assert status == 200
    out = await run(h, "echo b >> api.txt && cat api.txt && echo t > /tmp/t && cat /tmp/t", "bash")
    assert out["stdout"] == "ab\nt\n", out
    assert os.stat(h.workspace / "api.txt").st_uid == os.stat(h.workspace / "mine.txt").st_uid
    await manager.delete(h.id)


async def test_memory_bomb_ends_only_that_work(manager: SandboxManager) -> None:
    bystander = await create(manager, "python")
    await run(bystander, "alive = True")
    h = await create(
        manager,
        Template(
            id="m",
            name="m",
            display_name="m",
            language="python",
            resources=Resources(memory_mb=160, disk_mb=64),
        ),
    )
    await run(h, "before = 1")
    out = await run(h, "x = b'x' * (600 * 1024 * 1024)", timeout=20)
    assert not out["success"]
    assert "out of memory" in out["stderr"] or "MemoryError" in out["stderr"]
    assert (await run(h, "print('back')"))["stdout"] == "back\n"  # fresh kernel, sandbox usable
    # 400 MiB through a pipe in a 160 MiB sandbox: streamed, so it completes
    out = await run(h, "head -c 400M /dev/zero | tail -c 1 | wc -c; echo rc=$?", "bash", timeout=20)
    assert (out["stdout"], out["exit_code"]) == ("1\nrc=0\n", 0), out
    assert (await call(h, "GET", "/health"))[0] == 200
    assert (await run(bystander, "print(alive)"))["stdout"] == "True\n"
    await manager.delete(h.id)
    await manager.delete(bystander.id)


async def test_fork_bomb_is_contained(manager: SandboxManager) -> None:
    bystander = await create(manager, "bash")
    h = await create(manager, SMALL)
    cgroup = manager._runtimes[h.id].cgroup
    assert cgroup is not None, "the suite runs where cgroups are writable"
    pids_dir = cgroup.dirs.get("pids") or cgroup.dirs["unified"]
    status, body = await call(
        h,
        "POST",
        "/execute",
        json={"language": "bash", "timeout": 3, "code": "bomb() { bomb | bomb & }; bomb; wait"},
    )
    assert status in (200, 408)
    # the limit was what stopped it: forks were refused at pids.max (64). The bomb's
    # pipeline returns at once and its descendants go on in the background, so the execute
    # can answer before they reach the limit: wait for the cgroup to record it.
    events: dict[str, str] = {}
    for _ in range(100):
        events = dict(
            line.split() for line in (pids_dir / "pids.events").read_text().splitlines() if line
        )
        if int(events["max"]) > 0:
            break
        await asyncio.sleep(0.05)
    assert int(events["max"]) > 0, (events, status, body)
    await asyncio.sleep(0.2)
    out = await run(h, "echo recovered", "bash")
    assert out["stdout"] == "recovered\n"
    assert (await run(bystander, "echo fine", "bash"))["stdout"] == "fine\n"
    await manager.delete(h.id)
    await manager.delete(bystander.id)


async def test_disk_fill_is_bounded(manager: SandboxManager) -> None:
    h = await create(manager, SMALL)
    out = await run(h, "head -c 20M /dev/zero > big", "bash")
    assert out["exit_code"] != 0 and "File size limit exceeded" in out["stderr"]
    out = await run(
        h, "for i in 1 2 3 4 5 6; do head -c 3M /dev/zero > f$i; done; sleep 5", "bash", timeout=10
    )
    assert "disk quota exceeded" in out["stderr"] and out["exit_code"] != 0
    assert "disk quota exceeded" in h.reason
    status, body = await call(h, "POST", "/files/write", json={"path": "more", "content": "x"})
    assert (status, body["code"]) == (507, "DISK_QUOTA_EXCEEDED")
    await run(h, "rm -f f* big", "bash")
    status, _ = await call(h, "POST", "/files/write", json={"path": "more", "content": "x"})
    assert status == 200
    await manager.delete(h.id)


async def test_pooled_python_kernel_takes_the_templates_file_size_limit(
    manager: SandboxManager,
) -> None:
    small = Template(
        id="tiny-py",
        name="tiny-py",
        display_name="Tiny Python",
        language="python",
        resources=Resources(disk_mb=4),
    )
    h = await create(manager, small)  # from the pool, whose kernel started with a higher limit
    out = await run(h, "open('big', 'wb').write(b'x' * (6 * 1024 * 1024))")
    assert not out["success"] and "File too large" in out["stderr"] + str(out.get("error"))
    await manager.delete(h.id)


async def test_unisolated_mode_is_refused_unless_allowed(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    none = IsolationInfo("none", "forced by the test")
    refusing = SandboxManager(tmp_path_factory.mktemp("a"), isolation=none, pool_size=0)
    with pytest.raises(SandboxUnavailable, match="forced by the test"):
        await create(refusing, "bash")
    await refusing.close()
    async with SandboxManager(
        tmp_path_factory.mktemp("b"),
        isolation=none,
        allow_unisolated=True,
        pool_size=0,
        preload_scientific=False,
        quota_interval=0,
    ) as m:
        h = await create(m, "bash")
        assert h.isolation == "none"
        out = await run(h, "echo hi > f; cat f; pwd; pwd -P", "bash")
        # it ran in the sandbox's own workspace, whichever way the path is spelt
        workspace = os.path.realpath(h.workspace)
        assert out["stdout"] == f"hi\n{workspace}\n{workspace}\n", out
        assert (h.workspace / "f").read_text() == "hi\n"
        _status, body = await call(h, "GET", "/files/read", params={"path": "/etc/passwd"})
        assert body["code"] == "PATH_NOT_ALLOWED"

"""Integration: real bubblewrap sandboxes driven through SandboxManager and agentd."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil

import pytest

from agentplex.core.ports import Resources, Template
from agentplex.errors import SandboxStateConflict
from agentplex.sandbox import SandboxHandle, SandboxManager, SandboxState
from tests.sandbox.conftest import call, create, run

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _start(manager: SandboxManager, handle: SandboxHandle) -> None:
    await manager.start(
        handle.id, handle.template, env_vars={}, internet_access=handle.internet_access
    )


async def test_isolation_is_bubblewrap(manager: SandboxManager) -> None:
    assert manager.isolation.kind == "bubblewrap"
    handle = await create(manager)
    assert handle.isolation == "bubblewrap" and handle.state is SandboxState.RUNNING
    status, body = await call(handle, "GET", "/health")
    assert (status, body["status"]) == (200, "healthy")
    out = await run(handle, "id -u; grep CapEff /proc/self/status", "bash")
    assert out["stdout"].split()[0] == "1000"
    assert out["stdout"].split()[-1] == "0000000000000000"
    await manager.delete(handle.id)


async def test_python_state_persists_and_rich_output(manager: SandboxManager) -> None:
    h = await create(manager, "python", env_vars={"GREETING": "hi"})
    assert (await run(h, "x = 40"))["success"]
    out = await run(h, "import os\nprint(x + 2, os.environ['GREETING'])")
    assert out["stdout"] == "42 hi\n" and out["exit_code"] == 0
    out = await run(h, "{'a': 1, 'b': [1, 2]}")
    assert out["json"] == {"a": 1, "b": [1, 2]}
    out = await run(h, "import pandas as pd\npd.DataFrame({'n': [1, 2], 's': ['a', 'b']})")
    assert "<table" in out["html"]
    assert out["dataframe"]["columns"] == ["n", "s"] and out["dataframe"]["data"] == [
        [1, "a"],
        [2, "b"],
    ]
    out = await run(h, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')")
    assert base64.b64decode(out["png"]).startswith(b"\x89PNG")
    out = await run(h, "1 / 0")
    assert not out["success"] and "ZeroDivisionError" in out["stderr"]
    await manager.delete(h.id)


async def test_bash_node_and_commands(manager: SandboxManager) -> None:
    h = await create(manager, "bash")
    out = await run(h, "echo out; echo err >&2; exit 3", "bash")
    assert (out["stdout"], out["stderr"], out["exit_code"], out["success"]) == (
        "out\n",
        "err\n",
        3,
        False,
    )
    # the test set-up installs node (the JS SDK needs it too): its absence is a failure here
    assert shutil.which("node"), "node is not installed: the javascript runtime is untested"
    out = await run(h, "console.log(6 * 7)", "javascript")
    assert out["stdout"] == "42\n"
    status, body = await call(
        h,
        "POST",
        "/commands/run",
        json={"command": "bash", "args": ["-c", "pwd; echo $V"], "env": {"V": "v"}},
    )
    assert status == 200 and body["stdout"] == "/workspace\nv\n" and body["exit_code"] == 0
    status, body = await call(h, "POST", "/commands/run", json={"command": "ls /nope"})
    assert status == 200 and body["exit_code"] != 0 and "No such file" in body["stderr"]
    status, body = await call(h, "POST", "/execute", json={"code": "1", "language": "cobol"})
    assert status == 400 and body["code"] == "INVALID_REQUEST"
    await manager.delete(h.id)


async def test_env_routes(manager: SandboxManager) -> None:
    h = await create(manager, "bash", env_vars={"A": "1"})
    assert (await call(h, "GET", "/env"))[1]["env_vars"] == {"A": "1"}
    await call(h, "PATCH", "/env", json={"env_vars": {"B": "2"}, "merge": True})
    assert (await call(h, "GET", "/env"))[1]["env_vars"] == {"A": "1", "B": "2"}
    await call(h, "PUT", "/env", json={"env_vars": {"C": "3"}})
    out = await run(h, "echo ${A:-none} $C $D", "bash", env={"D": "4"})
    assert out["stdout"] == "none 3 4\n"
    await manager.delete(h.id)


async def test_files_round_trip(manager: SandboxManager) -> None:
    h = await create(manager, "bash")
    status, _ = await call(
        h, "POST", "/files/write", json={"path": "dir/a.txt", "content": "héllo"}
    )
    assert status == 200
    assert (await call(h, "GET", "/files/read", params={"path": "/workspace/dir/a.txt"}))[1][
        "content"
    ] == "héllo"
    assert (h.workspace / "dir" / "a.txt").read_text() == "héllo"
    status, body = await call(h, "GET", "/files/list", params={"path": "/workspace/dir"})
    entry = body["files"][0]
    assert (entry["name"], entry["path"], entry["size"], entry["is_directory"]) == (
        "a.txt",
        "/workspace/dir/a.txt",
        6,
        False,
    )
    assert {"permissions", "modified_time"} <= set(entry)
    blob = bytes(range(256))
    status, _, _ = await h.request(
        "POST",
        "/files/upload",
        content=_multipart(blob),
        headers={"content-type": "multipart/form-data; boundary=XX"},
    )
    assert status == 200
    status, _, raw = await h.request("GET", "/files/download", params={"path": "up/b.bin"})
    assert status == 200 and raw == blob
    assert (await call(h, "GET", "/files/exists", params={"path": "up/b.bin"}))[1]["exists"] is True
    assert (await call(h, "POST", "/files/mkdir", json={"path": "/tmp/t/u"}))[0] == 200
    assert (await call(h, "DELETE", "/files/remove", params={"path": "up"}))[0] == 200
    assert (await call(h, "GET", "/files/exists", params={"path": "up/b.bin"}))[1][
        "exists"
    ] is False
    status, body = await call(h, "GET", "/files/read", params={"path": "missing.txt"})
    assert (status, body["code"]) == (404, "FILE_NOT_FOUND")
    status, _, raw = await h.request("GET", "/files/read", params={"path": "/etc/passwd"})
    assert status == 403 and json.loads(raw)["code"] == "PATH_NOT_ALLOWED"
    status, headers, _ = await h.request("GET", "/files/read", params={"path": "../x"})
    assert status == 403 and headers["x-request-id"]
    await manager.delete(h.id)


def _multipart(blob: bytes) -> bytes:
    return (
        b'--XX\r\nContent-Disposition: form-data; name="path"\r\n\r\n/workspace/up/b.bin\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="b.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + blob + b"\r\n--XX--\r\n"
    )


async def test_timeout_interrupts_and_keeps_sandbox_usable(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    await run(h, "kept = 'yes'")
    status, body = await call(
        h, "POST", "/execute", json={"code": "while True: pass", "timeout": 1}
    )
    assert status == 408 and body["code"] == "EXECUTION_TIMEOUT" and "timed out" in body["message"]
    assert (await run(h, "print(kept)"))["stdout"] == "yes\n"  # interrupted, state kept
    status, body = await call(
        h, "POST", "/execute", json={"code": "sleep 30", "language": "bash", "timeout": 1}
    )
    assert status == 408 and body["details"]["exit_code"] == 124
    assert (await run(h, "echo still here", "bash"))["stdout"] == "still here\n"
    await manager.delete(h.id)


async def test_background_processes(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    status, body = await call(
        h, "POST", "/execute/background", json={"code": "import time; time.sleep(30)"}
    )
    assert status == 200 and body["status"] == "running"
    pid = body["process_id"]
    procs = (await call(h, "GET", "/execute/processes"))[1]["processes"]
    assert [p["status"] for p in procs if p["process_id"] == pid] == ["running"]
    assert (await call(h, "POST", f"/execute/kill/{pid}"))[0] == 200
    await asyncio.sleep(0.3)
    procs = (await call(h, "GET", "/execute/processes"))[1]["processes"]
    assert [p["status"] for p in procs if p["process_id"] == pid] == ["killed"]
    status, body = await call(
        h, "POST", "/commands/background", json={"command": "echo bg > /workspace/bg.txt"}
    )
    assert status == 200 and body["process_id"]
    await asyncio.sleep(0.5)
    assert (h.workspace / "bg.txt").read_text() == "bg\n"
    await manager.delete(h.id)


async def test_stop_start_pause_resume_delete(manager: SandboxManager) -> None:
    h = await create(manager, "bash", env_vars={"K": "v"})
    await call(h, "POST", "/files/write", json={"path": "keep.txt", "content": "kept"})
    await call(h, "PATCH", "/env", json={"env_vars": {"L": "w"}})
    await manager.stop(h.id)
    assert h.state is SandboxState.STOPPED and (h.workspace / "keep.txt").exists()
    with pytest.raises(SandboxStateConflict):
        await h.request("GET", "/health")
    await _start(manager, h)
    assert h.state is SandboxState.RUNNING
    out = await run(h, 'cat keep.txt; echo " $K $L"', "bash")
    assert out["stdout"] == "kept v w\n"

    out = await run(h, "(while true; do echo . >> gone; sleep 0.05; done) & echo started", "bash")
    assert out["stdout"] == "started\n"  # returns at once: leftovers of /execute are ended
    await call(
        h,
        "POST",
        "/commands/background",
        json={"command": "while true; do echo . >> ticks; sleep 0.05; done"},
    )
    await asyncio.sleep(0.3)
    await manager.pause(h.id)
    assert h.state is SandboxState.PAUSED
    with pytest.raises(SandboxStateConflict):
        await h.request("GET", "/health")
    size = (h.workspace / "ticks").stat().st_size
    await asyncio.sleep(0.4)
    assert (h.workspace / "ticks").stat().st_size == size  # frozen: nothing ran
    await manager.resume(h.id)
    await asyncio.sleep(0.3)
    assert (h.workspace / "ticks").stat().st_size > size
    assert (await call(h, "GET", "/health"))[0] == 200

    home = h.workspace.parent
    await manager.delete(h.id)
    assert not home.exists()
    assert h.id not in {x.id for x in manager.list()}


async def test_websocket_execute_stream_and_terminal(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    async with h.websocket("/execute/stream") as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "execute",
                    "language": "python",
                    "code": "import time\nfor i in range(3):\n"
                    "    print(i, flush=True); time.sleep(0.05)",
                }
            )
        )
        msgs = []
        while True:
            msg = json.loads(await ws.recv())
            msgs.append(msg)
            if msg["type"] == "complete":
                break
    assert "".join(m["data"] for m in msgs if m["type"] == "stdout") == "0\n1\n2\n"
    assert all("timestamp" in m for m in msgs if m["type"] == "stdout")
    assert [m["type"] for m in msgs[-2:]] == ["result", "complete"] and msgs[-1]["success"] is True
    assert msgs[-2]["exit_code"] == 0

    async with h.websocket("/terminal") as ws:
        await ws.send(json.dumps({"type": "resize", "cols": 100, "rows": 30}))
        await ws.send(
            json.dumps({"type": "input", "data": "stty size; echo mark-$((6*7)); exit 5\n"})
        )
        seen, code = "", None
        async with asyncio.timeout(10):
            while code is None:
                msg = json.loads(await ws.recv())
                if msg["type"] == "output":
                    seen += msg["data"]
                elif msg["type"] == "exit":
                    code = msg["code"]
    assert "mark-42" in seen and "30 100" in seen and code == 5
    await manager.delete(h.id)


async def test_files_watch_reports_changes(manager: SandboxManager) -> None:
    h = await create(manager, "bash")
    await run(h, "mkdir -p sub && echo 1 > sub/old.txt && echo 1 > keep.txt", "bash")
    async with h.websocket("/files/watch") as ws:
        await ws.send(json.dumps({"action": "watch", "path": "/workspace"}))
        await asyncio.sleep(0.4)  # the first snapshot is taken
        await run(h, "echo new > a.txt; echo 22 >> keep.txt; mv sub/old.txt sub/moved.txt", "bash")
        await call(h, "POST", "/files/remove", json={"path": "keep.txt"})
        seen: dict[str, dict[str, str]] = {}
        async with asyncio.timeout(10):
            while len(seen) < 3 or "/workspace/keep.txt" not in seen:
                msg = json.loads(await ws.recv())
                assert msg["type"] == "change" and msg["timestamp"], msg
                seen[msg["path"]] = msg
    assert seen["/workspace/a.txt"]["event"] == "created"
    assert seen["/workspace/sub/moved.txt"]["event"] == "renamed"
    assert seen["/workspace/sub/moved.txt"]["old_path"] == "/workspace/sub/old.txt"
    assert seen["/workspace/keep.txt"]["event"] in ("modified", "deleted")
    async with h.websocket("/files/watch") as ws:
        await ws.send(json.dumps({"action": "watch", "path": "/etc"}))
        msg = json.loads(await ws.recv())
        assert (msg["type"], msg["code"]) == ("error", "PATH_NOT_ALLOWED")
    await manager.delete(h.id)


async def test_metrics_are_the_sandboxs_own(manager: SandboxManager) -> None:
    h = await create(manager, "bash")
    _, first = await call(h, "GET", "/metrics/snapshot")
    assert first["source"] == "cgroup"
    limit = h.template.resources.memory_mb * 1024 * 1024
    assert first["system"]["memory"]["total"] == limit
    assert 0 < first["system"]["memory"]["used"] < limit
    assert first["sandbox"]["pids"]["max"] == h.template.resources.max_pids
    assert first["process"]["count"] == first["sandbox"]["pids"]["current"] < 20
    await run(h, "timeout 1 sh -c 'while :; do :; done'", "bash")  # ~1 s of CPU
    _, second = await call(h, "GET", "/metrics/snapshot")
    busy = second["sandbox"]["cpu"]
    assert busy["usage_seconds"] > first["sandbox"]["cpu"]["usage_seconds"] + 0.3
    assert busy["usage_percent"] > 10 and busy["cores"] == h.template.resources.vcpu
    await manager.delete(h.id)


async def test_pooled_sandbox_takes_a_larger_template_limit(manager: SandboxManager) -> None:
    # pooled sandboxes start with the default template's memory; a template allowing more
    # must raise the limit (memory+swap first, or the kernel refuses it)
    big = Template(
        id="big",
        name="big",
        display_name="Big",
        language="bash",
        resources=Resources(vcpu=1.0, memory_mb=3000, disk_mb=64),
    )
    await manager.wait_pool(60)
    handle = await create(manager, big)
    out = await run(handle, "cat /proc/self/status | grep -c Pid", "bash")
    assert out["exit_code"] == 0
    status, body = await call(handle, "GET", "/metrics/snapshot")
    assert status == 200, body
    assert json.dumps(body).count(str(3000 * 1024 * 1024)) >= 1, body
    await manager.delete(handle.id)


async def test_stop_and_delete_leave_no_process_behind(manager: SandboxManager) -> None:
    def started(pid: int) -> str | None:
        """A live pid's start time (it tells a reused pid apart); None once dead or a zombie."""
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return None if fields[0] in ("Z", "X") else fields[19]

    h = await create(manager, "python")
    await run(h, "x = 1")  # the kernel is up
    status, _ = await call(h, "POST", "/commands/background", json={"command": "sleep 300"})
    assert status == 200
    for action in ("stop", "delete"):
        rt = manager._runtimes[h.id]
        assert rt.cgroup is not None
        procs = {pid: started(pid) for pid in rt.cgroup.pids()}
        assert len(procs) >= 4, procs  # bwrap, its init, agentd, the kernel, sleep...
        dirs = list(rt.cgroup.dirs.values())
        if action == "stop":
            await manager.stop(h.id)
        else:
            await manager.delete(h.id)
        # killed and out of the cgroup at once; a pid namespace's init may take a moment more
        # to finish exiting (it waits for the namespace's last process)
        for _ in range(100):
            alive = [pid for pid, since in procs.items() if since and started(pid) == since]
            if not alive:
                break
            await asyncio.sleep(0.05)
        assert alive == [], (action, alive)
        assert not any(d.exists() for d in dirs), action
        if action == "stop":
            await _start(manager, h)


async def test_the_go_template_runs_go(manager: SandboxManager) -> None:
    # scripts/install --test installs Go; without it the go template is not offered at all
    assert shutil.which("go"), "go is not installed: run scripts/install --test"
    h = await create(manager, "go")
    assert h.template.language == "go" and h.template.resources.memory_mb >= 2048
    code = 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println(6 * 7) }\n'
    out = await run(h, code, "go", timeout=120)
    assert (out["stdout"], out["exit_code"]) == ("42\n", 0), out
    out = await run(h, "go version", "bash")
    assert out["stdout"].startswith("go version go1."), out
    await manager.delete(h.id)


async def test_records_survive_manager_restart(manager: SandboxManager) -> None:
    # last in this module: the second manager clears the first one's pool directories
    h = await create(manager, "bash")
    await call(h, "POST", "/files/write", json={"path": "f", "content": "x"})
    async with SandboxManager(
        manager.data_dir,
        pool_size=0,
        quota_interval=0,
        runtime_dir=manager.run_dir.with_name(manager.run_dir.name + "-b"),
        preload_scientific=False,
    ) as second:
        with pytest.raises(SandboxStateConflict):  # nothing of it runs in the new process
            await second.request(h.id, "GET", "/health")
        await second.start(h.id, manager.builtin("bash"), env_vars={}, internet_access=False)
        again = second.get(h.id)
        assert again.state is SandboxState.RUNNING
        assert (await run(again, "cat f", "bash"))["stdout"] == "x"
        await second.stop(h.id)
    await manager.delete(h.id)

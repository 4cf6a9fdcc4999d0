"""agentd routes the official Hopx SDKs call besides the documented ones (agentd/compat.py)."""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime

import pytest

from agentplex.sandbox import SandboxManager
from tests.sandbox.conftest import call, create, run

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_execute_ipython_runs_python_in_the_stateful_kernel(
    manager: SandboxManager,
) -> None:
    h = await create(manager, "python", env_vars={"GREETING": "hi"})
    await run(h, "shared = 20")
    # the JS SDK's runIpython sends no language: it is Python, in the kernel /execute uses
    status, body = await call(
        h,
        "POST",
        "/execute/ipython",
        json={"code": "import os\nprint(os.environ['GREETING'])\nshared * 2 + 2", "timeout": 30},
    )
    assert status == 200, body
    assert body["stdout"] == "hi\n" and body["result"] == "42"
    assert (body["success"], body["exit_code"], body["language"]) == (True, 0, "python")
    assert body["execution_time"] >= 0 and datetime.fromisoformat(body["timestamp"])
    # and what it defines, /execute sees
    await call(h, "POST", "/execute/ipython", json={"code": "later = 'kept'"})
    assert (await run(h, "print(later)"))["stdout"] == "kept\n"

    status, body = await call(
        h,
        "POST",
        "/execute/ipython",
        json={"code": "print(os.environ['EXTRA'])", "env": {"EXTRA": "x"}},
    )
    assert body["stdout"] == "x\n"
    status, body = await call(
        h,
        "POST",
        "/execute/ipython",
        json={"code": "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()"},
    )
    assert base64.b64decode(body["png"]).startswith(b"\x89PNG")

    status, body = await call(h, "POST", "/execute/ipython", json={"code": "1 / 0"})
    assert status == 200 and not body["success"] and "ZeroDivisionError" in body["stderr"]
    status, body = await call(
        h, "POST", "/execute/ipython", json={"code": "while True: pass", "timeout": 1}
    )
    assert status == 408 and body["code"] == "EXECUTION_TIMEOUT"
    assert (await run(h, "print(shared)"))["stdout"] == "20\n"  # interrupted, state kept
    status, body = await call(h, "POST", "/execute/ipython", json={"timeout": 5})
    assert status == 400 and body["code"] == "INVALID_REQUEST" and "code" in body["error"]
    await manager.delete(h.id)


async def test_processes_is_the_background_process_list(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    status, body = await call(
        h, "POST", "/execute/background", json={"code": "import time; time.sleep(30)"}
    )
    pid = body["process_id"]
    status, listed = await call(h, "GET", "/processes")
    assert status == 200
    assert [p["status"] for p in listed["processes"] if p["process_id"] == pid] == ["running"]
    same = (await call(h, "GET", "/execute/processes"))[1]["processes"]
    assert [p["process_id"] for p in listed["processes"]] == [p["process_id"] for p in same]

    # the async Python SDK kills through /processes/{id}/kill
    status, killed = await call(h, "POST", f"/processes/{pid}/kill")
    assert status == 200 and killed["success"]
    await asyncio.sleep(0.3)
    listed = (await call(h, "GET", "/processes"))[1]
    assert [p["status"] for p in listed["processes"] if p["process_id"] == pid] == ["killed"]
    status, missing = await call(h, "POST", "/processes/proc_nope/kill")
    assert status == 404 and missing["code"] == "PROCESS_NOT_FOUND"
    await manager.delete(h.id)


async def test_jupyter_sessions_show_the_python_kernel(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    await run(h, "x = 1")  # the kernel exists once Python has run
    status, body = await call(h, "GET", "/jupyter/sessions")
    assert status == 200
    [session] = body["sessions"]
    assert session["execution_state"] == "idle" and session["kernel_id"]
    assert session["name"] == "python3" and session["pid"] > 0

    # while a cell runs, the kernel is busy
    running = asyncio.create_task(run(h, "import time\ntime.sleep(1.5)"))
    state = "idle"
    for _ in range(50):
        await asyncio.sleep(0.05)
        state = (await call(h, "GET", "/jupyter/sessions"))[1]["sessions"][0]["execution_state"]
        if state == "busy":
            break
    assert state == "busy"
    await running
    session = (await call(h, "GET", "/jupyter/sessions"))[1]["sessions"][0]
    assert session["execution_state"] == "idle"

    # a kernel killed by the sandbox's own code is not listed as a session
    await run(h, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    await asyncio.sleep(0.2)
    assert (await call(h, "GET", "/jupyter/sessions"))[1]["sessions"] == []
    await manager.delete(h.id)


async def test_cache_stats_and_clear(manager: SandboxManager) -> None:
    h = await create(manager, "bash")
    status, body = await call(h, "GET", "/cache/stats")
    assert status == 200
    # the shape both SDKs read; agentd caches no execution, so it is empty
    assert body["cache"]["size"] == 0 and body["cache"]["total_hits"] == 0
    assert body["cache"]["max_size"] == 0 and isinstance(body["cache"]["ttl"], str)
    assert datetime.fromisoformat(body["timestamp"])
    status, body = await call(h, "POST", "/cache/clear")
    assert status == 200 and body["success"] and body["entries_removed"] == 0
    assert "cleared" in body["message"].lower()
    await manager.delete(h.id)

"""Regressions for faults of agentd's execution routes, each checked on every route it concerns:
HTTP /execute (python, bash), /execute/background, /commands/run, /commands/background and
the /execute/stream WebSocket."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from agentplex.core.ports import Resources, Template
from agentplex.errors import SandboxStateConflict
from agentplex.sandbox import SandboxHandle, SandboxManager
from agentplex.sandbox.agentd.usage import disk_usage
from tests.sandbox.conftest import call, create, run

pytestmark = pytest.mark.asyncio(loop_scope="module")
MB = 1024 * 1024


async def _stream(handle: SandboxHandle, *messages: dict[str, Any]) -> list[dict[str, Any]]:
    """Send execute messages over /execute/stream; every frame until as many `complete`s."""
    frames: list[dict[str, Any]] = []
    async with handle.websocket("/execute/stream") as ws:
        for msg in messages:
            await ws.send(json.dumps({"type": "execute", **msg}))
        async with asyncio.timeout(30):
            while sum(f["type"] == "complete" for f in frames) < len(messages):
                frames.append(json.loads(await ws.recv()))
    return frames


async def _timed(handle: SandboxHandle, code: str, **extra: Any) -> tuple[float, dict[str, Any]]:
    start = time.monotonic()
    out = await run(handle, code, **extra)
    return time.monotonic() - start, out


# -- 1. a client that goes away stops its execution ---------------------------------------------


async def test_http_client_leaving_interrupts_its_cell(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    await run(h, "kept = 'yes'")
    with pytest.raises(SandboxStateConflict):  # the client's own timeout: it closes the connection
        await h.request(
            "POST", "/execute", json={"code": "import time; time.sleep(30)"}, timeout=0.5
        )
    elapsed, out = await _timed(h, "print(kept)")
    assert out["stdout"] == "yes\n"  # interrupted, not killed: the variables survive
    assert elapsed < 1.5, elapsed  # not queued behind the abandoned 30 s cell
    await manager.delete(h.id)


async def test_http_client_leaving_kills_its_process(manager: SandboxManager) -> None:
    h = await create(manager, "bash")
    late = "sleep 1.5; touch /workspace/{}"
    calls = [
        h.request(
            "POST", "/execute", json={"code": late.format("e"), "language": "bash"}, timeout=0.5
        ),
        h.request("POST", "/commands/run", json={"command": late.format("c")}, timeout=0.5),
    ]
    for result in await asyncio.gather(*calls, return_exceptions=True):
        assert isinstance(result, SandboxStateConflict), result
    await asyncio.sleep(2.0)
    assert not (h.workspace / "e").exists() and not (h.workspace / "c").exists()
    await manager.delete(h.id)


async def test_websocket_dropped_mid_cell_interrupts_it(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    await run(h, "kept = 'yes'")
    code = "print('started', flush=True)\nimport time\ntime.sleep(30)"
    async with h.websocket("/execute/stream") as ws:
        await ws.send(json.dumps({"type": "execute", "code": code}))
        async with asyncio.timeout(10):
            assert json.loads(await ws.recv())["data"] == "started\n"
    elapsed, out = await _timed(h, "print(kept)")
    assert out["stdout"] == "yes\n" and elapsed < 1.5, (elapsed, out)
    await manager.delete(h.id)


# -- 2. a timeout counts from the request's arrival ---------------------------------------------


async def test_timeout_counts_time_queued_behind_another_cell(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    first = asyncio.create_task(run(h, "import time; time.sleep(4)"))
    await asyncio.sleep(0.3)  # the first cell holds the kernel
    start = time.monotonic()
    status, body = await call(h, "POST", "/execute", json={"code": "print(1)", "timeout": 1})
    elapsed = time.monotonic() - start
    assert (status, body["code"]) == (408, "EXECUTION_TIMEOUT")
    assert elapsed < 2.5, elapsed  # answered at its own deadline, not after the first cell
    assert "did not run" in body["details"]["stderr"]
    assert (await first)["exit_code"] == 0

    frames = await _stream(
        h,
        {"code": "import time; time.sleep(3)", "timeout": 30},
        {"code": "print('late')", "timeout": 1},
    )
    results = [f for f in frames if f["type"] == "result"]
    assert [r["timed_out"] for r in results] == [False, True]
    assert not any(f.get("data") == "late\n" for f in frames)
    await manager.delete(h.id)


# -- 3. /env changes reach the Python kernel ----------------------------------------------------


async def test_env_changes_reach_the_python_kernel(manager: SandboxManager) -> None:
    h = await create(manager, "python", env_vars={"A": "1", "B": "2"})
    show = "import os\nprint([os.environ.get(k) for k in ('A', 'B', 'C', 'MINE', 'ONCE')])"
    assert (await run(h, show))["stdout"] == "['1', '2', None, None, None]\n"
    await run(h, "os.environ['MINE'] = 'mine'", env={"ONCE": "1"})
    await call(h, "DELETE", "/env", params={"key": "A"})
    assert (await run(h, show))["stdout"] == "[None, '2', None, 'mine', None]\n"
    await call(h, "PUT", "/env", json={"env_vars": {"C": "3"}})
    assert (await run(h, show))["stdout"] == "[None, None, '3', 'mine', None]\n"
    await call(h, "PATCH", "/env", json={"env_vars": {"C": "4"}})
    assert (await run(h, show))["stdout"] == "[None, None, '4', 'mine', None]\n"
    # a process the kernel starts sees the same as /commands/run
    _, body = await call(h, "POST", "/commands/run", json={"command": "echo ${A:-none} $C"})
    child = "import subprocess\nprint(subprocess.getoutput('echo ${A:-none} $C'))"
    out = await run(h, child)
    assert out["stdout"] == body["stdout"] == "none 4\n"
    await manager.delete(h.id)


# -- 4. exit() and quit() restart the kernel ----------------------------------------------------


@pytest.mark.parametrize("call_", ["exit()", "quit()"])
async def test_exit_restarts_the_kernel(manager: SandboxManager, call_: str) -> None:
    h = await create(manager, "python")
    await run(h, "x = 1")
    out = await run(h, f"print('before')\n{call_}")
    assert out["stdout"] == "before\n"
    assert "ask_exit" not in out["stderr"] and "Traceback" not in out["stderr"]
    assert "restarted" in out["stderr"]
    out = await run(h, "print('x' in globals())")
    assert out["stdout"] == "False\n" and out["exit_code"] == 0
    await manager.delete(h.id)


# -- 5. real exit codes -------------------------------------------------------------------------


async def test_exit_codes_are_real_and_signals_are_128_plus(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    out = await run(h, "import os; os._exit(7)")
    assert out["exit_code"] == 7 and "exited with code 7" in out["stderr"]
    out = await run(h, "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert out["exit_code"] == 128 + 15
    assert (await run(h, "print('fresh')"))["stdout"] == "fresh\n"
    assert (await run(h, "kill -KILL $$", "bash"))["exit_code"] == 137
    _, body = await call(h, "POST", "/commands/run", json={"command": "kill -TERM $$"})
    assert body["exit_code"] == 143
    frames = await _stream(h, {"code": "import os; os._exit(3)"})
    assert [f["exit_code"] for f in frames if f["type"] == "result"] == [3]
    await manager.delete(h.id)


# -- 6. one answer for a working directory that does not exist ----------------------------------


async def test_missing_workdir_is_one_clear_4xx_everywhere(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    await call(h, "POST", "/files/write", json={"path": "afile", "content": "x"})
    for workdir, why in (("/workspace/nope", "does not exist"), ("afile", "not a directory")):
        requests = [
            ("/execute", {"code": "print(1)", "workdir": workdir}),
            ("/execute", {"code": "echo 1", "language": "bash", "working_dir": workdir}),
            ("/execute/background", {"code": "print(1)", "workdir": workdir}),
            ("/commands/run", {"command": "pwd", "workdir": workdir}),
            ("/commands/background", {"command": "pwd", "workdir": workdir}),
        ]
        for path, body in requests:
            status, answer = await call(h, "POST", path, json=body)
            assert (status, answer["code"]) == (400, "INVALID_WORKDIR"), (path, answer)
            assert workdir in answer["error"] and why in answer["error"], answer
            assert answer["details"] == {"workdir": workdir}
        frames = await _stream(h, {"code": "print(1)", "workdir": workdir})
        assert frames[0]["type"] == "error" and frames[0]["code"] == "INVALID_WORKDIR", frames
        assert workdir in frames[0]["error"] and frames[-1] == {
            "type": "complete",
            "success": False,
        }
    assert (await run(h, "import os; print(os.getcwd())"))["stdout"] == "/workspace\n"
    await manager.delete(h.id)


# -- 7. a disk-quota stop says why, on every route; the overshoot is bounded ---------------------


async def test_quota_stop_is_explained_and_bounded(manager: SandboxManager) -> None:
    quota_mb = 256
    quota = Template(
        id="quota",
        name="quota",
        display_name="Quota",
        language="python",
        resources=Resources(vcpu=1.0, memory_mb=512, disk_mb=quota_mb),
    )
    h = await create(manager, quota)
    writer = "i=0; while true; do i=$((i+1)); head -c 32M /dev/zero > f$i; done"
    _, bg = await call(h, "POST", "/commands/background", json={"command": writer})
    sleeper = "sleep 20"
    results = await asyncio.gather(
        call(h, "POST", "/commands/run", json={"command": sleeper}),
        run(h, sleeper, "bash"),
        run(h, "import time; time.sleep(20)"),
        _stream(h, {"code": sleeper, "language": "bash"}),
    )
    peak = disk_usage(h.workspace)
    _, body = results[0]
    assert body["exit_code"] == 137 and "disk quota exceeded" in body["stderr"], body
    for body in results[1:3]:
        assert body["exit_code"] != 0 and "disk quota exceeded" in body["stderr"], body
    frames = results[3]
    said = "".join(f["data"] for f in frames if f["type"] == "stderr")
    assert "disk quota exceeded" in said, frames
    for _ in range(50):
        _, listing = await call(h, "GET", "/execute/processes")
        mine = [p for p in listing["processes"] if p["process_id"] == bg["process_id"]]
        if mine and mine[0]["status"] != "running":
            break
        await asyncio.sleep(0.1)
    assert mine[0]["status"] == "failed" and mine[0]["exit_code"] == 137, mine
    assert "disk quota exceeded" in mine[0]["stderr"]
    # 32 MiB files written at page-cache speed: a fixed 0.5 s period let this reach
    # several times the quota; checks that come sooner near the limit keep it close
    assert peak < (quota_mb + 192) * MB, peak // MB
    await manager.delete(h.id)


# -- 8. the kernel keeps its own working directory (Jupyter) ------------------------------------


async def test_kernel_keeps_its_working_directory(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    await run(h, "import os; os.makedirs('/workspace/sub', exist_ok=True)")
    sdk = {"workdir": "/workspace"}  # what the hopx-ai SDKs send when the caller names none
    await run(h, "os.chdir('/tmp')", **sdk)
    assert (await run(h, "print(os.getcwd())", **sdk))["stdout"] == "/tmp\n"
    assert (await run(h, "print(os.getcwd())"))["stdout"] == "/tmp\n"
    # an explicit, different directory is still honoured, and kept by the next default call
    out = await run(h, "print(os.getcwd())", workdir="/workspace/sub")
    assert out["stdout"] == "/workspace/sub\n"
    assert (await run(h, "%cd /tmp\nprint(os.getcwd())"))["stdout"].endswith("/tmp\n")
    assert (await run(h, "print(os.getcwd())", workdir="/workspace"))["stdout"] == "/workspace\n"
    # other languages run where they are asked to (the workspace by default)
    assert (await run(h, "pwd", "bash"))["stdout"] == "/workspace\n"
    await manager.delete(h.id)


# -- 9. figures whatever the backend -------------------------------------------------------------


async def test_figures_come_back_with_any_backend(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    code = (
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "for n in (2, 3):\n    plt.figure(); plt.plot(range(n)); plt.show()\n"
    )
    out = await run(h, code)
    assert out["exit_code"] == 0 and "cannot be shown" not in out["stderr"], out
    pngs = [o for o in out["rich_outputs"] if o["type"] == "image/png"]
    assert len(pngs) == 2
    assert base64.b64decode(out["png"]).startswith(b"\x89PNG")
    # a figure left open (saved, never shown) comes back too, once
    out = await run(h, "plt.plot([1, 2]); plt.savefig('/workspace/p.png')")
    assert base64.b64decode(out["png"]).startswith(b"\x89PNG")
    assert "png" not in await run(h, "print(1)")
    await manager.delete(h.id)


async def test_the_servers_short_lived_sandboxes_left_by_a_crash_are_removed_at_start(
    tmp_path: Path,
) -> None:
    """A run engine's warm sandbox, a discovery sandbox or a template build's sandbox never
    outlives its server: after a crash, the next start removes what they left on disk. Users'
    sandboxes (Hopx, kept across restarts) stay."""
    sandboxes = tmp_path / "sandboxes"
    for name in ("apx-run-0123", "apx-disc-4567", "bld_89ab", "sbx_users0000"):
        (sandboxes / name / "workspace").mkdir(parents=True)
        (sandboxes / name / "workspace" / "file").write_text("x")
    async with SandboxManager(tmp_path, pool_size=0):
        assert sorted(p.name for p in sandboxes.iterdir()) == ["sbx_users0000"]
    assert (sandboxes / "sbx_users0000" / "workspace" / "file").read_text() == "x"

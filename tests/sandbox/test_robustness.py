"""Regressions for robustness faults of agentd (issue 7): unbounded Python output, FIFOs that
hung the event loop, 500s on odd paths, permission errors, WebSocket messages agentd could
not take, and timeouts it silently misread."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import pytest

from agentplex.errors import SandboxAnswerTooLarge, SandboxStateConflict
from agentplex.sandbox import SandboxHandle, SandboxManager, SandboxState
from agentplex.sandbox.agentd.processes import MAX_CAPTURE
from tests.sandbox.conftest import call, create, run

pytestmark = pytest.mark.asyncio(loop_scope="module")

# 400 MB written by one cell: agentd used to keep all of it (and was OOM-killed)
FLOOD = (
    "import sys\nfor i in range(400): sys.stdout.write('z' * 1_000_000)\n"
    "print('end', file=sys.stderr)"
)


async def _frames(handle: SandboxHandle, path: str, *sent: str, until: str) -> list[dict[str, Any]]:
    """Send text frames to a WebSocket route; the frames answered until one of type `until`
    (or the close)."""
    frames: list[dict[str, Any]] = []
    async with handle.websocket(path) as ws:
        for text in sent:
            await ws.send(text)
        async with asyncio.timeout(60):
            async for raw in ws:
                frames.append(json.loads(raw))
                if frames[-1].get("type") == until:
                    break
    return frames


# -- 1. Python output is bounded -----------------------------------------------------------------


async def test_python_output_is_capped_on_http(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    status, _, body = await h.request("POST", "/execute", json={"code": FLOOD})
    out = json.loads(body)
    assert status == 200, out
    assert len(body) < 2 * MAX_CAPTURE + 1024 * 1024
    assert out["stdout"].endswith("[output truncated]\n")
    assert out["stderr"] == "end\n"  # the cell ran to its end
    assert (await run(h, "print(2 + 2)"))["stdout"] == "4\n"  # agentd is alive
    await manager.delete(h.id)


async def test_python_output_is_capped_on_the_stream(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    msg = json.dumps({"type": "execute", "code": FLOOD})
    frames = await _frames(h, "/execute/stream", msg, until="complete")
    stdout = "".join(f["data"] for f in frames if f["type"] == "stdout")
    assert len(stdout) < MAX_CAPTURE + 1024 * 1024
    assert stdout.endswith("[output truncated]\n")
    assert frames[-1] == {"type": "complete", "success": True}
    await manager.delete(h.id)


async def test_an_answer_too_large_to_relay_is_refused(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    await run(h, "truncate -s 100M /workspace/big", "bash")
    with pytest.raises(SandboxAnswerTooLarge, match="MiB"):
        await h.request("GET", "/files/download", params={"path": "/workspace/big"})
    assert (await run(h, "print(3)"))["stdout"] == "3\n"
    await manager.delete(h.id)


# -- 2. FIFOs and other non-regular files --------------------------------------------------------


async def test_files_routes_refuse_a_fifo_and_agentd_keeps_answering(
    manager: SandboxManager,
) -> None:
    h = await create(manager, "python")
    await run(h, "mkfifo /workspace/fifo", "bash")
    async with asyncio.timeout(20):
        for method, path, kwargs in (
            ("GET", "/files/read", {"params": {"path": "/workspace/fifo"}}),
            ("GET", "/files/download", {"params": {"path": "/workspace/fifo"}}),
            ("POST", "/files/write", {"json": {"path": "/workspace/fifo", "content": "x"}}),
        ):
            status, body = await call(h, method, path, **kwargs)
            assert status == 400, (path, body)
            assert body["code"] == "INVALID_PATH" and "regular file" in body["message"], body
        status, body = await call(h, "GET", "/files/list", params={"path": "/workspace"})
        assert status == 200 and "fifo" in [f["name"] for f in body["files"]]
        assert (await run(h, "print(1)"))["stdout"] == "1\n"
    await manager.delete(h.id)


# -- 3. odd paths and permissions: 4xx, not 500 ----------------------------------------------------


async def test_odd_paths_are_client_errors(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    long_name = "/workspace/" + "n" * 300
    status, body = await call(h, "POST", "/files/write", json={"path": long_name, "content": "x"})
    assert (status, body["code"]) == (400, "INVALID_PATH"), body
    deep = "/workspace/" + "d/" * 3000 + "f"
    status, body = await call(h, "POST", "/files/write", json={"path": deep, "content": "x"})
    assert status == 400, body
    status, body = await call(h, "POST", "/files/mkdir", json={"path": deep})
    assert status == 400, body
    (h.workspace / "plain").write_text("x")
    status, body = await call(h, "POST", "/files/mkdir", json={"path": "/workspace/plain"})
    assert (status, body["code"]) == (409, "FILE_ALREADY_EXISTS"), body
    await manager.delete(h.id)


async def test_permission_errors_say_permission_denied(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    await run(h, "mkdir -p ro && chmod 555 ro && echo x > ro444 && chmod 444 ro444", "bash")
    for path in ("/workspace/ro444", "/workspace/ro/new"):
        status, body = await call(h, "POST", "/files/write", json={"path": path, "content": "y"})
        assert (status, body["code"]) == (403, "PERMISSION_DENIED"), (path, body)
        assert "outside" not in body["message"]
    status, body = await call(h, "POST", "/files/write", json={"path": "/etc/x", "content": "y"})
    assert (status, body["code"]) == (403, "PATH_NOT_ALLOWED"), body
    await manager.delete(h.id)


# -- 5. WebSocket messages agentd cannot take get an error frame --------------------------------


async def test_terminal_refuses_bad_sizes_and_keeps_the_shell(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    async with h.websocket("/terminal") as ws, asyncio.timeout(30):
        errors = []
        for bad in (
            '{"type":"resize","cols":-1,"rows":1e9}',
            '{"type":"resize","cols":NaN,"rows":5}',
            "junk",
        ):
            await ws.send(bad)
            while (frame := json.loads(await ws.recv()))["type"] != "error":
                pass
            errors.append(frame)
        assert [e["code"] for e in errors] == ["INVALID_REQUEST"] * 3
        await ws.send(json.dumps({"type": "input", "data": "echo al$((1+1))ve\n"}))
        seen = ""
        while "al2ve" not in seen:
            frame = json.loads(await ws.recv())
            assert frame["type"] == "output", frame  # the shell did not exit
            seen += frame["data"]
    await manager.delete(h.id)


async def test_stream_without_code_is_an_error(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    frames = await _frames(h, "/execute/stream", '{"type": "execute"}', until="error")
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "INVALID_REQUEST"
    assert not any(f["type"] == "complete" and f.get("success") for f in frames)
    await manager.delete(h.id)


async def test_watch_garbage_gets_an_error_frame(manager: SandboxManager) -> None:
    h = await create(manager, "python")
    frames = await _frames(h, "/files/watch", "not json {", until="error")
    assert frames == [{"type": "error", "code": "INVALID_REQUEST", "error": frames[0]["error"]}]
    await manager.delete(h.id)


# -- 6. timeouts --------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/execute", "/commands/run"])
async def test_timeouts_are_validated(manager: SandboxManager, route: str) -> None:
    h = await create(manager, "python")
    field = "code" if route == "/execute" else "command"
    what = "print(1)" if route == "/execute" else "echo 1"

    async def status_of(raw_timeout: str) -> tuple[int, dict[str, Any]]:
        body = f'{{"{field}": {json.dumps(what)}, "timeout": {raw_timeout}}}'.encode()
        return await call(
            h, "POST", route, content=body, headers={"content-type": "application/json"}
        )

    for ok in ("0", "null", "60", "300", "86400"):
        status, body = await status_of(ok)
        assert status == 200 and body["stdout"] == "1\n", (ok, body)
    for bad in ("-1", "true", "1e20", "86401"):
        status, body = await status_of(bad)
        assert status == 400, (bad, body)
    status, body = await status_of("1e20")
    assert "86400" in body["message"]
    await manager.delete(h.id)


async def test_a_sandbox_whose_agent_died_is_stopped_with_the_reason(
    manager: SandboxManager,
) -> None:
    # agentd alone dying (OOM, a crash) leaves bubblewrap and the code alive: the sandbox must
    # not stay "running" with every call refused
    told: list[tuple[str, str]] = []
    manager.on_exit(lambda sid, reason: told.append((sid, reason)))
    h = await create(manager, "bash")
    os.kill(manager._runtimes[h.id].agentd_pid, signal.SIGKILL)
    with pytest.raises(SandboxStateConflict):
        await manager.request(h.id, "GET", "/health")
    assert h.state is SandboxState.STOPPED and "agent exited" in h.reason
    assert told == [(h.id, h.reason)]
    await manager.start(h.id, h.template, env_vars={}, internet_access=False)
    status, _ = await call(h, "GET", "/health")
    assert status == 200
    await manager.delete(h.id)

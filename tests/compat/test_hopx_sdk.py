"""The official hopx-ai SDK, unchanged, against agentplex."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from hopx_ai import Sandbox
from hopx_ai.errors import HopxError

from tests.compat.conftest import API_KEY as KEY
from tests.conftest import LiveServer


def _create(server: LiveServer, **kwargs: object) -> Sandbox:
    return Sandbox.create(template="python", api_key=KEY, base_url=server.url, **kwargs)


def test_code_state_rich_output_commands_files_env(
    sandbox_server: LiveServer, tmp_path: Path
) -> None:
    sandbox = _create(sandbox_server, timeout_seconds=600, env_vars={"GREETING": "hello"})
    try:
        info = sandbox.get_info()
        assert info.status == "running"
        assert info.template_name == "python"
        assert info.resources is not None and info.resources.memory_mb > 0

        first = sandbox.run_code("x = 41\nprint('ready')")
        assert first.stdout.strip() == "ready" and first.success
        assert sandbox.run_code("print(x + 1)").stdout.strip() == "42"  # state persists

        figure = sandbox.run_code(
            "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"
        )
        assert figure.success and figure.rich_outputs, figure
        frame = sandbox.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2]})")
        assert any(
            "html" in str(o.type).lower() or "dataframe" in str(o.type).lower()
            for o in frame.rich_outputs
        ), frame.rich_outputs

        bash = sandbox.run_code("echo $GREETING from bash", language="bash")
        assert bash.stdout.strip() == "hello from bash"

        command = sandbox.commands.run("ls /workspace && echo done")
        assert command.exit_code == 0 and "done" in command.stdout

        sandbox.files.write("/workspace/notes.txt", "line one\n")
        assert sandbox.files.read("/workspace/notes.txt") == "line one\n"
        assert sandbox.files.exists("/workspace/notes.txt")
        names = [f.name for f in sandbox.files.list("/workspace")]
        assert "notes.txt" in names
        local = tmp_path / "upload.bin"
        local.write_bytes(b"\x00\x01binary")
        sandbox.files.upload(str(local), "/workspace/upload.bin")
        sandbox.files.download("/workspace/upload.bin", str(tmp_path / "back.bin"))
        assert (tmp_path / "back.bin").read_bytes() == b"\x00\x01binary"
        sandbox.files.remove("/workspace/notes.txt")
        assert not sandbox.files.exists("/workspace/notes.txt")
        with pytest.raises(HopxError):
            sandbox.files.read("/etc/shadow")

        sandbox.env.set("MODE", "test")
        assert sandbox.env.get("MODE") == "test"
        assert sandbox.env.get_all()["MODE"] == "test"
    finally:
        sandbox.kill()
    with pytest.raises(HopxError):
        sandbox.get_info()


def test_pause_resume_timeout_and_background(sandbox_server: LiveServer) -> None:
    sandbox = _create(sandbox_server)
    try:
        sandbox.run_code("counter = 1")
        sandbox.pause()
        assert sandbox.get_info().status == "paused"
        sandbox.resume()
        assert sandbox.get_info().status == "running"
        assert sandbox.run_code("print(counter)").stdout.strip() == "1"

        sandbox.set_timeout(120)
        info = sandbox.get_info()
        assert info.timeout_seconds == 120 and info.expires_at is not None

        started = sandbox.run_code_background("import time\ntime.sleep(30)")
        process_id = started.get("process_id") if isinstance(started, dict) else started
        assert process_id
        assert any(p.get("process_id") == process_id for p in sandbox.list_processes())
        killed = sandbox.kill_process(process_id)
        assert killed.get("success") is True, killed
        statuses = {p.get("process_id"): p.get("status") for p in sandbox.list_processes()}
        assert statuses[process_id] == "killed", statuses

        slow = time.monotonic()
        with pytest.raises(HopxError):
            sandbox.run_code("import time\ntime.sleep(30)", timeout=1)
        assert time.monotonic() - slow < 15
        assert sandbox.run_code("print('still usable')").stdout.strip() == "still usable"
    finally:
        sandbox.kill()


def test_websocket_execute_stream_and_terminal(sandbox_server: LiveServer) -> None:
    sandbox = _create(sandbox_server)

    async def stream() -> list[dict[str, object]]:
        messages = []
        code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.05)"
        async for message in sandbox.run_code_stream(code):
            messages.append(message)
        return messages

    async def terminal() -> str:
        ws = await sandbox.terminal.connect()
        await sandbox.terminal.send_input(ws, "echo term-$((40+2))\n")
        seen = ""
        async for message in sandbox.terminal.iter_output(ws):
            seen += str(message.get("data", ""))
            if "term-42" in seen:
                break
        await ws.close()
        return seen

    try:
        messages = asyncio.run(stream())
        stdout = "".join(str(m.get("data", "")) for m in messages if m.get("type") == "stdout")
        assert stdout.split() == ["0", "1", "2"]
        assert messages[-1]["type"] == "complete"
        assert "term-42" in asyncio.run(asyncio.wait_for(terminal(), 20))
    finally:
        sandbox.kill()


def test_listing_and_templates(sandbox_server: LiveServer) -> None:
    with pytest.raises(HopxError) as refused:  # the key is required, and checked
        Sandbox.list(api_key="not-the-key", base_url=sandbox_server.url)
    assert getattr(refused.value, "status_code", None) == 401
    sandbox = _create(sandbox_server)
    try:
        listed = Sandbox.list(api_key=KEY, base_url=sandbox_server.url)
        assert sandbox.sandbox_id in [s.sandbox_id for s in listed]
        names = [t.name for t in Sandbox.list_templates(api_key=KEY, base_url=sandbox_server.url)]
        assert {"python", "bash"} <= set(names)
    finally:
        sandbox.kill()

"""The host's connection to a sandbox's agent over its unix socket, against a stand-in agent
that closes a kept-alive connection the way uvicorn does (after it answered, unannounced)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agentplex.core.ports import Template
from agentplex.sandbox.handle import SandboxHandle
from agentplex.sandbox.state import SandboxState


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


def _answer(text: str) -> bytes:
    body = text.encode()
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def test_a_connection_the_agent_dropped_is_replaced_not_reported(tmp_path: Path) -> None:
    connections = 0

    async def agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_request(reader)
        if connections == 1:
            writer.write(_answer("first"))
            await writer.drain()
            await _read_request(reader)  # the next request arrives on the kept connection...
            writer.transport.abort()  # ...and the agent drops it unanswered
            return
        writer.write(_answer("again"))
        await writer.drain()
        writer.close()

    socket = tmp_path / "agentd.sock"
    server = await asyncio.start_unix_server(agent, path=str(socket))
    template = Template(id="bash", name="bash", display_name="Bash", language="bash")
    handle = SandboxHandle(
        id="sbx_test",
        template=template,
        internet_access=False,
        env_vars={},
        created_at=0.0,
        isolation="none",
        workspace=tmp_path,
        state=SandboxState.RUNNING,
        socket_path=socket,
    )
    try:
        first = await handle.request("POST", "/commands/run", json={"command": "true"})
        assert first[0] == 200 and first[2] == b"first"
        again = await handle.request("POST", "/commands/run", json={"command": "true"})
        assert again[0] == 200 and again[2] == b"again"
        assert connections == 2
    finally:
        await handle.aclose()
        server.close()
        await server.wait_closed()

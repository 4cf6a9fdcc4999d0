"""agentd served by uvicorn on a unix socket, as in a sandbox: an unexpected error is a 500
in the Hopx envelope on a connection that stays open for the host's next request."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentplex.sandbox.agentd.app import build_app
from agentplex.sandbox.agentd.config import AgentConfig


async def _boom(_request: Request) -> Response:
    raise RuntimeError("a fault nobody foresaw")


@pytest.fixture
def agentd_socket(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "agentd.sock")
    cfg = AgentConfig(
        socket_path=path,
        workspace_real=str(tmp_path),
        tmp_real=str(tmp_path),
        state_dir=str(tmp_path),
        isolation="none",
        sandbox_id="sbx_test",
    )
    app = build_app(cfg)
    app.router.routes.append(Route("/boom", _boom, methods=["GET"]))
    config = uvicorn.Config(app, uds=path, http="httptools", lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "agentd did not start"
        time.sleep(0.02)
    yield path
    server.should_exit = True
    thread.join(10)


def _exchange(conn: socket.socket, path: str) -> bytes:
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: sandbox\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_an_unexpected_error_keeps_the_connection(agentd_socket: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(agentd_socket)
        failed = _exchange(conn, "/boom")
        assert failed.startswith(b"HTTP/1.1 500"), failed
        assert b'"code":"INTERNAL_ERROR"' in failed and b"RuntimeError" in failed
        assert b"Traceback" not in failed
        time.sleep(0.2)  # uvicorn closes a connection right after such an answer, if it does
        healthy = _exchange(conn, "/health")  # the same connection
        assert healthy.startswith(b"HTTP/1.1 200"), healthy

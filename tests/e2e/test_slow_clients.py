"""Clients that open connections and never finish a request's headers (slowloris) cannot take
`agentplex serve` down: they are dropped after the header timeout, and past the connection cap
new ones are refused at once instead of eating the server's file descriptors."""

from __future__ import annotations

import selectors
import socket
import time

import httpx
import pytest

from tests.e2e.conftest import ServeFactory

pytestmark = pytest.mark.e2e

SLOW = 300


def _slow_connections(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that each send half a request and then nothing."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        s.setblocking(False)
        socks.append(s)
    return socks


def _closed_by_server(socks: list[socket.socket], within: float) -> set[socket.socket]:
    """The connections the server closed (EOF or reset) within ``within`` seconds."""
    closed: set[socket.socket] = set()
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + within
    while len(closed) < len(socks) and (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(min(left, 0.5)):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(4096)
            except ConnectionError:
                data = b""
            except BlockingIOError:
                continue
            if not data or data.startswith(b"HTTP/1.1 503"):
                closed.add(s)
                sel.unregister(s)
    sel.close()
    return closed


def test_slow_header_connections_are_dropped_and_the_server_keeps_answering(
    serve: ServeFactory,
) -> None:
    server = serve(env={"AGENTPLEX_HEADER_TIMEOUT_SECONDS": "3"})
    socks = _slow_connections(server.port, SLOW)
    try:
        started = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=5) as http:
            for _ in range(5):
                assert http.get("/health/live").status_code == 200
                assert http.get("/openapi.json").status_code == 200
        closed = _closed_by_server(socks, within=30)
        assert len(closed) == SLOW, f"{SLOW - len(closed)} slow connections were kept open"
        # not before the timeout: a client that is merely slow gets its 3 s
        assert time.monotonic() - started >= 2.5
        with httpx.Client(base_url=server.url, timeout=5) as http:
            assert http.get("/health/live").status_code == 200
    finally:
        for s in socks:
            s.close()
    assert server.running


def test_connections_past_the_cap_are_refused_at_once(serve: ServeFactory) -> None:
    server = serve(
        env={"AGENTPLEX_MAX_CONNECTIONS": "50", "AGENTPLEX_HEADER_TIMEOUT_SECONDS": "60"}
    )
    socks = _slow_connections(server.port, 200)
    try:
        refused = _closed_by_server(socks, within=10)
        # the cap holds (a few may be counted while earlier ones are still being accepted)
        assert 150 <= len(refused) <= 160, len(refused)
    finally:
        for s in socks:
            s.close()
    # the held connections are gone: the server answers again at once
    deadline = time.monotonic() + 10
    with httpx.Client(base_url=server.url, timeout=5) as http:
        while http.get("/health/live").status_code != 200:
            assert time.monotonic() < deadline, "the server did not recover"
            time.sleep(0.1)
    assert server.running

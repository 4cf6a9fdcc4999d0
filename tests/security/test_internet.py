"""A sandbox with `internet_access` reaches the internet, and nothing of the host or its
networks: not the host's loopback services (PostgreSQL, the server's port), not its own
interface addresses, not private, link-local or shared ranges (cloud metadata)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from agentplex.sandbox import SandboxHandle, SandboxManager
from tests.sandbox.conftest import create, run

pytestmark = pytest.mark.asyncio(loop_scope="module")

# each target: "host:port" -> "connected" or the error's class and errno, as the sandbox saw it
PROBE = """
import json, socket
out = {}
for host, port in TARGETS:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(5)
    try:
        s.connect((host, port))
        out[f"{host}:{port}"] = "connected"
    except OSError as exc:
        out[f"{host}:{port}"] = f"{type(exc).__name__} {exc.errno}"
    finally:
        s.close()
print(json.dumps(out))
"""


def _host_addresses() -> list[str]:
    """The host's own non-loopback addresses, as `ip -o addr` lists them."""
    text = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in text.splitlines():
        parts = line.split()
        address = parts[3].split("/")[0]
        if parts[2] in ("inet", "inet6") and not address.startswith(("127.", "::1", "fe80")):
            found.append(address)
    return found


async def _probe(h: SandboxHandle, targets: list[tuple[str, int]]) -> dict[str, str]:
    out = await run(h, f"TARGETS = {targets!r}\n{PROBE}")
    assert out["success"], out
    return dict(json.loads(out["stdout"]))


def _accepted(listeners: list[socket.socket]) -> bool:
    """Whether any connection reached one of the host's listeners."""
    for server in listeners:
        server.setblocking(False)
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            continue
        conn.close()
        return True
    return False


async def test_internet_sandbox_reaches_nothing_of_the_host(manager: SandboxManager) -> None:
    loopback = socket.socket()
    loopback.bind(("127.0.0.1", 0))
    loopback.listen()
    everywhere = socket.socket(socket.AF_INET6)  # every address of the host, IPv4 and IPv6
    everywhere.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    everywhere.bind(("::", 0))
    everywhere.listen()
    port, wide = loopback.getsockname()[1], everywhere.getsockname()[1]
    host = _host_addresses()
    assert host, "the host has no non-loopback address to test"
    targets = [
        ("127.0.0.1", port),
        ("127.0.0.1", 5432),  # the host's PostgreSQL
        ("127.0.0.1", wide),
        ("10.0.2.2", wide),  # slirp's gateway: the host
        ("10.0.2.2", 5432),
        ("10.1.2.3", 80),
        ("172.16.0.1", 80),
        ("192.168.1.1", 80),
        ("100.64.0.1", 80),
        ("169.254.169.254", 80),  # cloud metadata services
        *((address, wide) for address in host),
    ]
    try:
        h = await create(manager, "python", internet_access=True)
        seen = await _probe(h, targets)
        assert not any(v == "connected" for v in seen.values()), seen
        # refused or unreachable at once (the filter), not a time-out that might connect later
        assert not any("Timeout" in v for v in seen.values()), seen
        assert not _accepted([loopback, everywhere]), seen
        # the attack of the report: a command run on the host through its PostgreSQL
        marker = Path(f"/tmp/agentplex-escape-{uuid.uuid4().hex}")
        sql = f"COPY (SELECT 1) TO PROGRAM 'id > {marker}'"
        cmd = f'psql -h 127.0.0.1 -U postgres -d test -w -c "{sql}"; echo rc=$?'
        out = await run(h, cmd, "bash")
        assert not out["stdout"].endswith("rc=0\n"), out
        await asyncio.sleep(0.2)
        assert not marker.exists()
        # the code cannot lift the filter: it holds no capability in its network namespace
        out = await run(h, "nft flush ruleset; ip route add 192.0.2.0/24 dev tap0", "bash")
        assert "Operation not permitted" in out["stderr"], out
        seen = await _probe(h, targets)
        assert not any(v == "connected" for v in seen.values()), seen
        assert not _accepted([loopback, everywhere]), seen
        await manager.delete(h.id)
    finally:
        loopback.close()
        everywhere.close()


async def test_internet_sandbox_resolves_and_connects_out(manager: SandboxManager) -> None:
    """DNS goes through slirp's forwarder; a public address is connected to as the host can.
    (Here the only public services are the package registries, e.g. PyPI.)"""
    name = "pypi.org"
    expected = sorted({str(i[4][0]) for i in socket.getaddrinfo(name, 443, socket.AF_INET)})
    try:
        socket.create_connection((expected[0], 443), timeout=5).close()
        host_outcome = "connected"
    except OSError as exc:
        host_outcome = type(exc).__name__
    h = await create(manager, "python", internet_access=True)
    code = (
        "import socket\n"
        f"print(sorted({{i[4][0] for i in socket.getaddrinfo({name!r}, 443, socket.AF_INET)}}))\n"
        "print(open('/etc/resolv.conf').read().strip())"
    )
    out = await run(h, code)
    assert out["stdout"] == f"{expected!r}\nnameserver 10.0.2.3\n", out
    seen = await _probe(h, [(expected[0], 443)])
    if host_outcome == "connected":
        assert seen == {f"{expected[0]}:443": "connected"}, seen
    else:  # no internet at all: the attempt still leaves (slirp's error, not the filter's)
        assert seen[f"{expected[0]}:443"] != "OSError 113", seen
    await manager.delete(h.id)


def _slirp_of(pid1: int) -> list[int]:
    """slirp4netns processes attached to the network namespace of `pid1`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"slirp4netns") and f"/proc/{pid1}/ns/net".encode() in argv:
            found.append(int(entry))
    return found


def _pid1(manager: SandboxManager, h: SandboxHandle) -> int:
    bwrap = manager._runtimes[h.id].bwrap_pid
    with open(f"/proc/{bwrap}/task/{bwrap}/children") as f:
        return int(f.read().split()[0])


async def _gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() and _alive(p) for p in pids):
            return True
        await asyncio.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_slirp_ends_with_its_sandbox(manager: SandboxManager) -> None:
    deleted = await create(manager, "bash", internet_access=True)
    slirp = _slirp_of(_pid1(manager, deleted))
    assert len(slirp) == 1, slirp
    closed = await create(manager, "bash")  # a sandbox without internet has none
    assert _slirp_of(_pid1(manager, closed)) == []
    await manager.delete(closed.id)
    await manager.delete(deleted.id)
    assert await _gone(slirp)

    crashed = await create(manager, "bash", internet_access=True)
    slirp = _slirp_of(_pid1(manager, crashed))
    assert len(slirp) == 1, slirp
    os.kill(manager._runtimes[crashed.id].bwrap_pid, 9)  # the sandbox dies under us
    assert await _gone(slirp)
    await manager.delete(crashed.id)


async def test_pooled_internet_sandboxes_are_filtered_too(tmp_path: Path) -> None:
    """Sandboxes the warm pool starts ahead for `internet_access` get the same network."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        async with SandboxManager(
            tmp_path, pool_size=0, internet_pool_size=1, preload_scientific=False
        ) as pooled:
            await pooled.wait_pool(120)
            assert pooled._pool is not None and pooled._pool.size(True) == 1
            h = await create(pooled, "python", internet_access=True)
            assert pooled._pool.size(True) == 0  # it was the pooled one
            assert len(_slirp_of(_pid1(pooled, h))) == 1
            seen = await _probe(h, [("127.0.0.1", port), ("169.254.169.254", 80)])
            assert not any(v == "connected" for v in seen.values()), seen
            assert not _accepted([server])
            await pooled.delete(h.id)
    finally:
        server.close()

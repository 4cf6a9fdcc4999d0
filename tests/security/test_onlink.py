"""An internet sandbox reaches nothing of the host's own directly attached networks (their
gateway and neighbours, in whatever range), while the public internet stays reachable
(issue 7)."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from agentplex.sandbox import SandboxManager
from tests.sandbox.conftest import create
from tests.security.test_internet import _probe

pytestmark = pytest.mark.asyncio(loop_scope="module")

REFUSED = "OSError 113"  # the filter's reject (admin-prohibited): EHOSTUNREACH at once
REGISTRY = "203.0.113.80"  # this machine's package registry: a documentation range, yet public


def _on_link() -> tuple[str, str]:
    """The default gateway (IPv4) and another address of its on-link network, not the host's."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True)
    gateway = next(
        line.split()[2] for line in routes.stdout.splitlines() if line.startswith("default via")
    )
    addresses = subprocess.run(
        ["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True
    ).stdout
    own = {line.split()[3] for line in addresses.splitlines()}
    network = next(
        n
        for n in (ipaddress.ip_interface(a).network for a in own)
        if ipaddress.ip_address(gateway) in n
    )
    taken = {gateway, *(a.split("/")[0] for a in own)}
    neighbour = next(str(h) for h in network.hosts() if str(h) not in taken)
    return gateway, neighbour


async def test_internet_sandbox_cannot_reach_the_hosts_on_link_networks(
    manager: SandboxManager,
) -> None:
    gateway, neighbour = _on_link()
    h = await create(manager, "python", internet_access=True)
    targets = [(gateway, 80), (gateway, 443), (neighbour, 80)]
    seen = await _probe(h, targets)
    assert seen == {f"{host}:{port}": REFUSED for host, port in targets}, seen
    # documentation ranges are not blocked wholesale: the registry stays reachable
    seen = await _probe(h, [(REGISTRY, 443)])
    assert seen == {f"{REGISTRY}:443": "connected"}, seen
    await manager.delete(h.id)

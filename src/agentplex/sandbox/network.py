"""Outbound-only networking of a sandbox with `internet_access` (used by the zygote).

Such a sandbox has its own network namespace, like every other; what gives it the internet is
a per-sandbox `slirp4netns` (user-mode TCP/IP: it turns the sandbox's packets into ordinary
sockets of the host) attached to that namespace with `--configure` (a `tap0` at 10.0.2.100,
default route via 10.0.2.2, DNS forwarder at 10.0.2.3) and `--disable-host-loopback` (10.0.2.2
does not lead to the host's 127.0.0.1). Because slirp's sockets are the host's, a packet filter
(nftables, installed into the sandbox's namespace by the zygote, which is root, before agentd
exists, so before any of the sandbox's code runs) rejects every destination that is not the
public internet: the private, shared, link-local, loopback and multicast ranges, the host's
own interface addresses and the networks they are on (their on-link prefixes: the gateway and
the host's neighbours, whatever range they are in), except slirp's DNS forwarder. The code
inside holds no capability in that namespace, so it cannot change the rules.

slirp4netns is a child of the zygote that started the sandbox's bubblewrap, in the sandbox's
cgroups (its memory and CPU are the sandbox's; the cgroup kill of stop/delete ends it), and
exits when the pipe given as `--exit-fd` closes: the zygote closes it when bubblewrap exits,
and the kernel does when the zygote itself dies (server death).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass

DNS = "10.0.2.3"  # slirp's DNS forwarder: the nameserver of an internet sandbox's resolv.conf
TAP = "tap0"
READY_TIMEOUT = 10.0  # seconds slirp4netns may take to configure the namespace
# Destinations a sandbox must never reach through slirp (which connects from the host): they
# are the host itself, its networks, its cloud's metadata service and the like.
BLOCKED_V4 = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",
    "100.64.0.0/10",  # carrier-grade NAT (shared address space)
    "127.0.0.0/8",  # the host's loopback, should a route ever lead there
    "169.254.0.0/16",  # link-local: cloud metadata services (169.254.169.254)
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/3",  # multicast and the reserved 240/4 (with the broadcast address)
)
BLOCKED_V6 = (
    "::/127",  # unspecified and loopback
    "::ffff:0:0/96",  # IPv4-mapped: the IPv4 rules decide those
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "ff00::/8",  # multicast
)


class NetworkError(RuntimeError):
    """Setting up a sandbox's network failed (the sandbox must then not start)."""


@dataclass
class Slirp:
    """A running slirp4netns: its pid and the write end of its `--exit-fd` pipe."""

    pid: int
    exit_fd: int

    def stop(self) -> None:
        """Make it exit (closing the pipe is enough; SIGTERM in case it is stuck)."""
        with contextlib.suppress(OSError):
            os.close(self.exit_fd)
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGTERM)


_host_cache: tuple[float, list[str]] = (-1e9, [])


def cached_host_addresses(max_age: float = 30.0) -> list[str]:
    """`host_addresses`, looked up at most every `max_age` seconds (a creates burst runs `ip`
    once)."""
    global _host_cache
    now = time.monotonic()
    if now - _host_cache[0] > max_age:
        _host_cache = (now, host_addresses())
    return _host_cache[1]


def host_addresses() -> list[str]:
    """The host's own interface addresses and their on-link networks (IPv4 and IPv6, no
    loopback; ``192.0.2.2`` and ``192.0.2.0/24`` for ``inet 192.0.2.2/24``), from
    `ip -o addr`: slirp would otherwise reach every service the host listens on at 0.0.0.0,
    and the gateway and other machines of the host's own networks, even when those networks
    are public ranges the fixed list does not block."""
    found: set[str] = set()
    networks: set[str] = set()
    ip = shutil.which("ip") or "/usr/sbin/ip"
    try:
        out = subprocess.run(
            [ip, "-o", "addr", "show"], capture_output=True, text=True, timeout=5, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        parts = line.split()
        for family in ("inet", "inet6"):
            if family in parts[:-1]:
                cidr = parts[parts.index(family) + 1]
                found.add(cidr.split("/")[0])
                with contextlib.suppress(ValueError):
                    network = ipaddress.ip_network(cidr.split("%")[0], strict=False)
                    # a /0 would be the whole internet: never an on-link network to block
                    if network.prefixlen and not network.is_loopback:
                        networks.add(str(network))
    with contextlib.suppress(OSError):  # `ip` missing: at least the addresses of our name
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(info[4][0]))
    out_addresses = []
    for address in found:
        try:
            ip_address = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            continue
        if not ip_address.is_loopback:
            out_addresses.append(str(ip_address))
    return sorted(out_addresses) + sorted(networks)


def ruleset(host: list[str]) -> str:
    """The nftables ruleset of an internet sandbox's namespace: output to its own `lo` and to
    slirp's DNS is accepted; to the blocked ranges and `host` addresses rejected (the
    connecting process sees "No route to host" at once, not a time-out). ``host`` holds
    addresses and networks; overlaps are merged, as nft refuses overlapping set elements."""
    v4 = _merged([*BLOCKED_V4, *(a for a in host if ":" not in a)])
    v6 = _merged([*BLOCKED_V6, *(a for a in host if ":" in a)])
    return (
        "table inet agentplex {\n"
        "  chain out {\n"
        "    type filter hook output priority 0; policy accept;\n"
        '    oifname "lo" accept\n'
        f"    ip daddr {DNS} udp dport 53 accept\n"
        f"    ip daddr {DNS} tcp dport 53 accept\n"
        f"    ip daddr {{ {', '.join(v4)} }} reject with icmpx type admin-prohibited\n"
        f"    ip6 daddr {{ {', '.join(v6)} }} reject with icmpx type admin-prohibited\n"
        "  }\n"
        "}\n"
    )


def _merged(entries: list[str]) -> list[str]:
    """Addresses and networks of one family as the fewest non-overlapping networks."""
    networks = [ipaddress.ip_network(e, strict=False) for e in entries]
    return [str(n) for n in ipaddress.collapse_addresses(networks)]  # type: ignore[type-var]


def _ns_args(pid1: int) -> list[str]:
    """nsenter's namespaces: root holds CAP_NET_ADMIN over every namespace; a server that is
    not root owns the sandbox's user namespace and gets it there by entering it."""
    if os.geteuid() == 0:
        return [f"--net=/proc/{pid1}/ns/net"]
    return [f"--user=/proc/{pid1}/ns/user", "--preserve-credentials", f"--net=/proc/{pid1}/ns/net"]


def install_filter(pid1: int, rules: str) -> None:
    """Load `rules` into the network namespace of `pid1` (raises NetworkError)."""
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    nft = shutil.which("nft") or "/usr/sbin/nft"
    try:
        done = subprocess.run(
            [nsenter, *_ns_args(pid1), nft, "-f", "-"],
            input=rules,
            capture_output=True,
            text=True,
            timeout=10,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise NetworkError(f"installing the sandbox's packet filter failed: {exc!r}") from exc
    if done.returncode != 0:
        raise NetworkError(f"installing the sandbox's packet filter failed: {done.stderr.strip()}")


def start_slirp(pid1: int, cgroup_procs: list[str], log: int) -> Slirp:
    """Start slirp4netns for the network namespace of `pid1`, in the cgroups whose
    `cgroup.procs` files are given, stderr to `log`; returns once `tap0` is configured
    (raises NetworkError, having stopped it, if it is not within READY_TIMEOUT)."""
    binary = shutil.which("slirp4netns") or "/usr/bin/slirp4netns"
    if not os.path.exists(binary):
        raise NetworkError("slirp4netns is not installed (apt-get install slirp4netns)")
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    args = [
        binary,
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        "--enable-sandbox",  # its own empty root, no capabilities
        "--enable-seccomp",
        f"--ready-fd={ready_w}",
        f"--exit-fd={exit_r}",
    ]
    if os.geteuid() != 0:
        args.append(f"--userns-path=/proc/{pid1}/ns/user")
    args += ["--netns-type=path", f"/proc/{pid1}/ns/net", TAP]
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child execs)
        try:
            for path in cgroup_procs:
                with open(path, "w") as f:
                    f.write("0")
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(log, 2)
            low = 3  # close the zygote's descriptors (its control socket above all)
            for fd in sorted((ready_w, exit_r)):
                os.closerange(low, fd)
                low = fd + 1
            os.closerange(low, os.sysconf("SC_OPEN_MAX"))
            os.set_inheritable(ready_w, True)
            os.set_inheritable(exit_r, True)
            os.execve(binary, args, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})  # noqa: S606
        finally:
            os._exit(127)
    os.close(ready_w)
    os.close(exit_r)
    slirp = Slirp(pid, exit_w)
    try:
        readable, _, _ = select.select([ready_r], [], [], READY_TIMEOUT)
        data = os.read(ready_r, 16) if readable else b""
    finally:
        os.close(ready_r)
    if data[:1] != b"1":
        slirp.stop()
        raise NetworkError("slirp4netns did not configure the sandbox's network")
    return slirp

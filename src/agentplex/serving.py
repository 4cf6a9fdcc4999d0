"""The HTTP server `agentplex serve` runs: uvicorn, guarded against clients that hold
connections without sending requests.

uvicorn (0.3x-0.5x) has no timeout for a request's headers: a connection that sends half a
request line and then nothing is kept forever, and its keep-alive timer only starts after a
first response. Thousands of such connections (no key needed: they never reach auth) exhaust
the process's file descriptors and take the server down. `guarded_protocol` wraps uvicorn's
HTTP protocol with two limits:

- a header timeout: a connection must send the complete headers of a request within
  ``header_timeout`` seconds of being opened (or of the previous response), else it is closed;
- a connection cap: past ``max_connections`` open connections (HTTP and WebSocket), a new one
  is answered ``503`` and closed at once, so descriptors stay for the ones being served.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

log = logging.getLogger(__name__)

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 38\r\n\r\n"
    b"server busy: too many open connections"
)
# descriptors kept back from the connection cap: database, sandboxes' sockets, logs, files
_RESERVED_FDS = 512


def connection_limit(wanted: int) -> int:
    """``wanted`` connections, or fewer if the process's descriptor limit cannot hold them
    (the soft limit is raised to the hard one first)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + _RESERVED_FDS
    if soft != resource.RLIM_INFINITY and soft < target:
        new_soft = target if hard == resource.RLIM_INFINITY else min(target, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
            soft = new_soft
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= target:
        return wanted
    allowed = max(soft - _RESERVED_FDS, 16)
    log.warning(
        "server.max_connections lowered from %d to %d: the process may open only %d files "
        "(raise `ulimit -n`)",
        wanted,
        allowed,
        soft,
    )
    return allowed


def guarded_protocol(header_timeout: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (httptools, else h11) with the header timeout and the
    connection cap; pass it as ``uvicorn.Config(http=...)``."""
    base: Any = AutoHTTPProtocol

    class GuardedHTTPProtocol(base):  # type: ignore[misc]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(_BUSY)
                transport.close()
                return
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # the next request's headers are due within the timeout too (a keep-alive
            # connection that starts a request and stalls would otherwise be kept forever)
            self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            if header_timeout > 0:
                self._header_timer = self.loop.call_later(header_timeout, self._header_expired)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_expired(self) -> None:
            self._header_timer = None
            transport: asyncio.Transport = self.transport
            if transport.is_closing() or transport.get_protocol() is not self:
                return  # closed already, or upgraded to a WebSocket (no longer ours)
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                return  # a request's headers came in; it is being served
            transport.close()

    return GuardedHTTPProtocol

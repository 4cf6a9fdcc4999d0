"""SandboxHandle: one sandbox as the HTTP layer sees it.

    status, headers, body = await handle.request("POST", "/execute", json={"code": "print(1)"})
    async with handle.websocket("/execute/stream") as ws:   # a websockets ClientConnection
        await ws.send(json.dumps({"type": "execute", "code": "print(1)"}))
        print(await ws.recv())

`request` forwards one HTTP request to the sandbox's agentd over its unix socket and returns the
answer untouched (status, headers, raw body), so a proxy route can relay it as is. `websocket`
opens a WebSocket to agentd over the same socket; relay frames both ways to proxy
/execute/stream and /terminal. Both raise SandboxStateConflict unless the sandbox is running.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agentplex.core.ports import Template
from agentplex.errors import SandboxStateConflict
from agentplex.sandbox.state import SandboxState


def agentd_client(socket_path: str) -> httpx.AsyncClient:
    """An HTTP client for one agentd's unix socket (~1 ms to build: build it off the hot path)."""
    # verify=False: no TLS on a unix socket, and loading the CA bundle costs ~20 ms
    transport = httpx.AsyncHTTPTransport(uds=socket_path, verify=False)
    return httpx.AsyncClient(transport=transport, base_url="http://sandbox", timeout=None)  # noqa: S113


@dataclass
class SandboxHandle:
    id: str
    template: Template
    internet_access: bool
    env_vars: dict[str, str]
    created_at: float
    isolation: str  # "bubblewrap" or "none"
    workspace: Path  # host path of /workspace
    state: SandboxState = SandboxState.CREATING
    socket_path: Path | None = None
    reason: str = ""  # why the sandbox last stopped on its own (OOM, quota, crash), if it did
    _key: str = field(default="", repr=False)
    _client: httpx.AsyncClient | None = field(default=None, repr=False)

    def _running_socket(self) -> str:
        if self.state is not SandboxState.RUNNING or self.socket_path is None:
            raise SandboxStateConflict(
                f"sandbox {self.id} is {self.state.value}; start or resume it first"
            )
        return str(self.socket_path)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = agentd_client(self._running_socket())
        return self._client

    def adopt(self, client: httpx.AsyncClient | None) -> None:
        """Use a client already connected to this sandbox's agentd (the warm pool's)."""
        if client is not None and self._client is None:
            self._client = client

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> tuple[int, httpx.Headers, bytes]:
        """Send one HTTP request to agentd; (status, headers, body) exactly as agentd answered."""
        self._running_socket()
        try:
            resp = await self._http().request(
                method,
                path,
                json=json,
                params=params,
                content=content,
                headers=headers,
                timeout=timeout,
            )
        except httpx.TransportError as exc:
            raise SandboxStateConflict(
                f"sandbox {self.id}'s agent is not answering ({exc.__class__.__name__});"
                f" {self.reason or 'it may have been killed'}"
            ) from exc
        return resp.status_code, resp.headers, resp.content

    @contextlib.asynccontextmanager
    async def websocket(
        self, path: str, *, headers: dict[str, str] | None = None
    ) -> AsyncIterator[Any]:
        """A `websockets` client connection to agentd's `path` (e.g. /terminal)."""
        from websockets.asyncio.client import unix_connect

        sock = self._running_socket()
        async with unix_connect(
            sock,
            f"ws://sandbox{path}",
            additional_headers=headers,
            max_size=None,
            ping_interval=None,
        ) as ws:
            yield ws

    async def aclose(self) -> None:
        """Drop the pooled connections to agentd (the manager calls this on stop/delete)."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

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
from agentplex.errors import SandboxAnswerTooLarge, SandboxStateConflict
from agentplex.sandbox.state import SandboxState

# The largest answer relayed from agentd, held whole in the server's memory: a /files/read of
# its 50 MiB maximum as base64 JSON fits; /execute's output is capped far below in agentd.
MAX_ANSWER_BYTES = 96 * 1024 * 1024


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
    # host path of a template layer it may write to (a build's), counted against its disk quota
    layer: Path | None = None
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
        """Send one HTTP request to agentd; (status, headers, body) exactly as agentd answered.

        A kept-alive connection agentd closed while it sat in the pool fails before any answer
        arrives: the request goes once more on a new connection. Nothing is sent twice once
        an answer has begun."""
        self._running_socket()
        client = self._http()
        for attempt in (1, 2):
            request = client.build_request(
                method,
                path,
                json=json,
                params=params,
                content=content,
                headers=headers,
                timeout=timeout,
            )
            try:
                resp = await client.send(request, stream=True)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if attempt == 1:
                    continue
                raise self._not_answering(exc) from exc
            except httpx.TransportError as exc:
                raise self._not_answering(exc) from exc
            except RuntimeError as exc:  # the client was closed under us: stopped or deleted
                raise SandboxStateConflict(
                    f"Sandbox {self.id} was {self.state.value} while this request ran"
                ) from exc
            try:
                body = await self._bounded_body(resp)
            except httpx.TransportError as exc:
                raise self._not_answering(exc) from exc
            finally:
                await resp.aclose()
            return resp.status_code, resp.headers, body
        raise AssertionError("unreachable")

    async def _bounded_body(self, resp: httpx.Response) -> bytes:
        """The answer's body, refused past MAX_ANSWER_BYTES: the server holds each answer
        whole, so an unbounded one (a huge download) would grow the server, not the sandbox."""
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
            raise self._too_large()
        parts: list[bytes] = []
        size = 0
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise self._too_large()
            parts.append(chunk)
        return b"".join(parts)

    def _too_large(self) -> SandboxAnswerTooLarge:
        return SandboxAnswerTooLarge(
            f"sandbox {self.id}'s answer is over {MAX_ANSWER_BYTES // 1024 // 1024} MiB, more"
            " than the server relays; read large files in parts (e.g. split them with a"
            " command) or keep output smaller"
        )

    def _not_answering(self, exc: Exception) -> SandboxStateConflict:
        return SandboxStateConflict(
            f"sandbox {self.id}'s agent is not answering ({exc.__class__.__name__});"
            f" {self.reason or 'it may have been killed'}"
        )

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

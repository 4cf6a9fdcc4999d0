"""Outbound callbacks: POST a JSON result to a URL a client gave (Hopx ``/execute/async``).

A callback URL is checked twice, when it is accepted and again just before delivery (its
name may resolve elsewhere by then): http(s) only, and no loopback, private, link-local,
multicast or reserved address unless ``sandbox.callback_allow_private`` allows it, so a client
cannot make the server call into its own network. A body is signed when the client gave a
secret: ``X-HOPX-Timestamp: <unix seconds>`` and ``X-HOPX-Signature: sha256=<hex>``, the
HMAC-SHA256 of ``"<timestamp>.<body>"`` under that secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Awaitable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from agentplex.errors import BadRequest

log = logging.getLogger("agentplex.callbacks")

ATTEMPTS = 3
TIMEOUT_SECONDS = 10.0


async def _addresses(host: str, port: int) -> set[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise BadRequest(f"callback_url host {host!r} does not resolve: {exc}") from None
    return {str(info[4][0]) for info in infos}


async def check_url(url: str, *, allow_private: bool) -> str:
    """``url`` if the server may POST to it; BadRequest saying why not otherwise."""
    if not isinstance(url, str) or not url:
        raise BadRequest("'callback_url' (an http or https URL) is required")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"callback_url must be an http or https URL, not {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BadRequest(f"callback_url has an invalid port: {url!r}") from None
    if allow_private:
        return url
    for address in await _addresses(parts.hostname, port):
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global or ip.is_multicast:
            raise BadRequest(
                f"callback_url {parts.hostname!r} resolves to {ip}, a loopback, private or "
                "reserved address; the server only calls public addresses "
                "(sandbox.callback_allow_private allows others)"
            )
    return url


def signature_headers(body: bytes, secret: str, now: float | None = None) -> dict[str, str]:
    """The headers that let a receiver check ``body`` came from us."""
    stamp = str(int(now if now is not None else time.time()))
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-HOPX-Timestamp": stamp, "X-HOPX-Signature": f"sha256={digest}"}


class Callbacks:
    """Runs background jobs whose result is POSTed to a callback URL; stops them on close."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._tasks: set[asyncio.Task[None]] = set()

    async def check(self, url: str) -> str:
        return await check_url(url, allow_private=self.allow_private)

    def spawn(
        self,
        job: Awaitable[dict[str, Any]],
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        secret: str | None = None,
    ) -> None:
        """Run ``job`` in the background and POST what it returns to ``url``."""

        async def run() -> None:
            payload = await job
            await self.deliver(url, payload, headers=headers, secret=secret)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def deliver(
        self,
        url: str,
        payload: dict[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        secret: str | None = None,
    ) -> bool:
        """POST ``payload``; a few tries with backoff on network errors and 5xx. Whether it
        was delivered (a 2xx)."""
        body = json.dumps(payload, default=str).encode()
        sent = {**(headers or {}), "Content-Type": "application/json"}
        async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False) as client:
            for attempt in range(ATTEMPTS):
                if attempt:
                    await asyncio.sleep(2**attempt)
                try:
                    await self.check(url)
                    if secret:
                        sent.update(signature_headers(body, secret))
                    resp = await client.post(url, content=body, headers=sent)
                except BadRequest as exc:
                    log.warning("callback to %s refused: %s", _where(url), exc.message)
                    return False
                except httpx.HTTPError as exc:
                    log.info("callback to %s failed: %s", _where(url), type(exc).__name__)
                    continue
                if resp.status_code < 500:
                    return resp.is_success
        log.warning("callback to %s not delivered after %d attempts", _where(url), ATTEMPTS)
        return False

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _where(url: str) -> str:
    """The URL without its path and query (they may carry tokens): for logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"

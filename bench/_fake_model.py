"""A minimal, fast OpenAI-compatible Chat Completions server for bench/sessions.py.

    python bench/_fake_model.py --port 18080 [--tokens 200]

Raw asyncio (uvloop when installed), HTTP/1.1 keep-alive, loopback only. Answers:

* ``POST /v1/chat/completions`` with ``"stream": true``: a role chunk, ``--tokens`` text chunks
  (one HTTP chunk and one ``transport.write`` each, no delay), a finish chunk with ``usage``,
  ``data: [DONE]``. A request without ``tools`` (OpenCode's title request) gets one word.
  If the last user message holds ``STAMP``, each token's text is ``t<ns> `` where ``<ns>`` is
  ``time.perf_counter_ns()`` (CLOCK_MONOTONIC, the same clock in every process) read right
  before it is written, and ``GAP=<ms>`` in that message spaces the tokens that many
  milliseconds apart (a token that comes alone, not in a burst).
* ``"stream": false``: one ``chat.completion`` with the same text.
* ``GET /v1/models``: the model ``fake-model``.
* ``GET /bench/requests``: every request body received since the last ``DELETE``, with the
  monotonic ns it arrived at (``[{"at": ns, "body": {...}}]``); ``DELETE /bench/requests``
  clears the list. bench/sessions.py replays those bodies to time the model alone.

Prints ``PORT=<n>`` on stdout once listening (``--port 0`` picks a free one).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder heads sys.path, and bench/http.py would shadow the
# standard library's `http` package for everything imported below.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import asyncio
import json
import re
import time
from typing import Any

MODEL = "fake-model"
_GAP = re.compile(r"GAP=([0-9.]+)")


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Model(asyncio.Protocol):
    tokens = 200
    requests: list[dict[str, Any]] = []  # every connection's

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if len(self.buffer) < end + 4 + length:
            return
        body = self.buffer[end + 4 : end + 4 + length]
        self.buffer = self.buffer[end + 4 + length :]
        method, path = head.split(" ", 2)[:2]
        self.busy = True
        asyncio.get_running_loop().create_task(self._answer(method, path, body))

    def _send(self, status: str, ctype: str, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )

    async def _answer(self, method: str, path: str, raw: bytes) -> None:
        try:
            if path.startswith("/v1/models") or path.startswith("/models"):
                models = {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
                self._send("200 OK", "application/json", json.dumps(models).encode())
            elif path.startswith("/bench/requests"):
                if method == "DELETE":
                    _Model.requests = []
                self._send("200 OK", "application/json", json.dumps(_Model.requests).encode())
            elif path.endswith("/chat/completions") and method == "POST":
                body = json.loads(raw)
                if not path.startswith("/bench-replay"):
                    _Model.requests.append({"at": time.perf_counter_ns(), "body": body})
                await self._completion(body)
            else:
                self._send("404 Not Found", "application/json", b'{"error":"not found"}')
        finally:
            self.busy = False
            if self.buffer and self.transport is not None and not self.transport.is_closing():
                self._next()

    async def _completion(self, body: dict[str, Any]) -> None:
        transport = self.transport
        assert transport is not None
        messages: list[dict[str, Any]] = body.get("messages") or []
        last_user: dict[str, Any] = next(
            (m for m in reversed(messages) if m.get("role") == "user"), {}
        )
        text = _text_of(last_user)
        stamp = "STAMP" in text
        gap = float(match.group(1)) / 1000 if (match := _GAP.search(text)) else 0.0
        count = self.tokens if body.get("tools") or "STAMP" in text or "TOKENS" in text else 1
        created = int(time.time())
        head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created}
        head["model"] = MODEL
        usage = {"prompt_tokens": 10, "completion_tokens": count, "total_tokens": 10 + count}
        if not body.get("stream"):
            answer = {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": created,
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "tok " * count},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
            self._send("200 OK", "application/json", json.dumps(answer).encode())
            return
        role = dict(head)
        role["choices"] = [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        ]
        prefix = json.dumps(head)[:-1].encode() + b',"choices":[{"index":0,"delta":{"content":'
        suffix = b'},"finish_reason":null}]}'
        transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
            + _chunk(b"data: " + json.dumps(role).encode() + b"\n\n")
        )
        for i in range(count):
            if gap:
                await asyncio.sleep(gap)
            token = b'"t%d "' % time.perf_counter_ns() if stamp else b'"tok%d "' % i
            transport.write(_chunk(b"data: " + prefix + token + suffix + b"\n\n"))
        finish = dict(head)
        finish["choices"] = [{"index": 0, "delta": {}, "finish_reason": "stop"}]
        finish["usage"] = usage
        transport.write(
            _chunk(b"data: " + json.dumps(finish).encode() + b"\n\n")
            + _chunk(b"data: [DONE]\n\n")
            + b"0\r\n\r\n"
        )


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Model, "127.0.0.1", port, backlog=1024)
    print(f"PORT={server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    _Model.tokens = args.tokens
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(_serve(args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()

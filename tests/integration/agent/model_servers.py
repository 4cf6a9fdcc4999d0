"""Small loopback model servers (stdlib only) for the behaviours fake_openai.py does not have.

`OpenAIServer` speaks Chat Completions streaming; `AnthropicServer` speaks the Messages
streaming SSE format. Both choose their answer from the last user text (a keyword), record
every request body in ``requests``, and write raw bytes so that a test controls exactly how
the answer is cut into TCP writes: multi-byte characters are split between writes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

BIG_LINE = "línea 日本語 \U0001f600 — ok\n"


def big_answer(size: int = 300 * 1024) -> str:
    """About ``size`` bytes of UTF-8 with multi-byte characters."""
    line = BIG_LINE
    count = size // len(line.encode()) + 1
    return "".join(f"{i:05d} {line}" for i in range(count))


class _Server:
    handler: ClassVar[type[BaseHTTPRequestHandler]]

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.disconnected = threading.Event()
        owner = self
        handler = type("Bound", (self.handler,), {"owner": owner})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.owner.requests.append(body)
        return body

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_sse(self, chunked: bool = False) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _write(self, data: bytes, chunked: bool = False) -> None:
        if chunked:
            data = f"{len(data):x}\r\n".encode() + data + b"\r\n"
        self.wfile.write(data)
        self.wfile.flush()

    def _write_split(self, data: bytes) -> None:
        """Write ``data`` in two TCP writes cut inside its first multi-byte character."""
        cut = next((i + 1 for i, b in enumerate(data) if b >= 0xC0), len(data) // 2)
        self._write(data[:cut])
        time.sleep(0.005)
        self._write(data[cut:])


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class _OpenAIHandler(_Handler):
    def do_POST(self) -> None:
        body = self._body()
        text = _last_user_text(body.get("messages") or [])
        last = (body.get("messages") or [{}])[-1]
        if last.get("role") == "tool":
            self._answer([{"content": f"Tool said: {last.get('content')}"}], "stop")
        elif "RATE" in text:
            self._json(429, {"error": {"message": "slow down", "type": "rate_limit_error"}})
        elif "DROPCHUNKED" in text:
            self._start_sse(chunked=True)
            self._write(self._chunk({"content": "Partial "}), chunked=True)
            self._write(self._chunk({"content": "answer"}), chunked=True)
            self.wfile.flush()  # and then the connection ends mid-body
        elif "DROP" in text:
            self._start_sse()
            self._write(self._chunk({"content": "Partial "}))
            self._write(self._chunk({"content": "answer"}))
        elif "HANG" in text:
            self._start_sse()
            try:
                self._write(self._chunk({"content": "Thinking..."}))
                for _ in range(600):  # about 30 s of keep-alive chunks, until the client leaves
                    time.sleep(0.05)
                    self._write(self._chunk({"content": ""}))
            except (BrokenPipeError, ConnectionResetError):
                self.owner.disconnected.set()
        elif "SILENT" in text:
            self._start_sse()
            time.sleep(3)  # headers, then nothing
        elif "BIG" in text:
            answer = big_answer()
            pieces = [answer[i : i + 1000] for i in range(0, len(answer), 1000)]
            self._answer([{"content": p} for p in pieces], "stop")
        elif "UNICODE" in text:
            pieces = ["caf", "é ", "日本", "語 ", "\U0001f468\u200d", "\U0001f469 ok"]
            self._answer(
                [{"reasoning_content": "思考 \U0001f914"}, *({"content": p} for p in pieces)]
            )
        elif "BADARGS" in text:
            self._answer(
                self._tool_call(0, "call_b", "bash", ['{"command": ', '"ls']), "tool_calls"
            )
        elif "TWOTOOLS" in text:
            first = self._tool_call(0, "call_1", "bash", ['{"command":', ' "ls"}'])
            second = self._tool_call(1, "call_2", "read", ['{"filePath":', ' "a.txt"}'])
            self._answer(
                [first[0], second[0], first[1], second[1], first[2], second[2]], "tool_calls"
            )
        elif "LENGTH" in text:
            self._answer([{"content": "cut"}], "length")
        else:
            self._answer([{"content": "Hi"}], "stop")

    def _tool_call(
        self, index: int, call_id: str, name: str, args: list[str]
    ) -> list[dict[str, Any]]:
        start = {"index": index, "id": call_id, "type": "function",
                 "function": {"name": name, "arguments": ""}}  # fmt: skip
        pieces = [{"index": index, "function": {"arguments": a}} for a in args]
        return [{"tool_calls": [start]}, *({"tool_calls": [p]} for p in pieces)]

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": "chatcmpl-x",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "loop-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"

    def _answer(self, deltas: list[dict[str, Any]], finish: str = "stop") -> None:
        self._start_sse()
        self._write(self._chunk({"role": "assistant", "content": ""}))
        for delta in deltas:
            self._write_split(self._chunk(delta))
        usage = {"prompt_tokens": 11, "completion_tokens": len(deltas), "total_tokens": 11}
        self._write(self._chunk({}, finish, usage))
        self._write(b"data: [DONE]\n\n")


class OpenAIServer(_Server):
    """Chat Completions streaming. Keywords: RATE (429); DROP (the connection closes before
    the answer ends); DROPCHUNKED (the same inside a chunked body); HANG (sends until the
    client leaves, then sets ``disconnected``); SILENT (headers, then 3 s of nothing); BIG
    (~300 KiB); UNICODE; BADARGS (a tool call with broken JSON arguments); TWOTOOLS (two calls,
    interleaved); LENGTH. A tool result last -> ``Tool said: <result>``."""

    handler = _OpenAIHandler


def _anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _block_events(
    index: int, block: dict[str, Any], deltas: list[dict[str, Any]]
) -> Iterator[tuple[str, dict[str, Any]]]:
    yield (
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )
    for delta in deltas:
        yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    yield "content_block_stop", {"type": "content_block_stop", "index": index}


def _anthropic_events(text: str) -> Iterator[tuple[str, dict[str, Any]]]:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 1},
    }
    yield "message_start", {"type": "message_start", "message": message}
    index = 0
    if "THINK" in text:
        thinking = [
            {"type": "thinking_delta", "thinking": "Hmm, "},
            {"type": "thinking_delta", "thinking": "ok."},
            {"type": "signature_delta", "signature": "sig"},
        ]
        block = {"type": "thinking", "thinking": "", "signature": ""}
        yield from _block_events(index, block, thinking)
        index += 1
    words = [{"type": "text_delta", "text": "Héllo "}, {"type": "text_delta", "text": "wörld 😀"}]
    yield from _block_events(index, {"type": "text", "text": ""}, words)
    index += 1
    stop = "end_turn"
    if "TOOL" in text:
        stop = "tool_use"
        block = {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {}}
        pieces = ['{"comm', 'and": "ls', ' -l"}']
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
        yield from _block_events(index, block, deltas)
    delta = {"stop_reason": stop, "stop_sequence": None}
    yield "message_delta", {"type": "message_delta", "delta": delta, "usage": {"output_tokens": 15}}
    yield "message_stop", {"type": "message_stop"}


class _AnthropicHandler(_Handler):
    def do_POST(self) -> None:
        body = self._body()
        text = _last_user_text(body.get("messages") or [])
        if "OVERLOADED" in text:
            self._json(529, _anthropic_error("overloaded_error", "Overloaded"))
            return
        if "BAD" in text:
            self._json(400, _anthropic_error("invalid_request_error", "bad"))
            return
        self._start_sse()
        for name, data in _anthropic_events(text):
            payload = json.dumps(data, ensure_ascii=False).encode()
            self._write_split(b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n")


class AnthropicServer(_Server):
    """Messages streaming; keywords: OVERLOADED (529), BAD (400), THINK (a thinking block
    first), TOOL (a tool_use block whose input arrives in pieces)."""

    handler = _AnthropicHandler

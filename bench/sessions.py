"""Sessions and the built-in agent: per-turn overhead, token latency, SSE fan-out, idle WebSockets.

    python bench/sessions.py [--turns 30] [--sessions 3] [--subscribers 100] [--idle 1000]
                             [--only turn,ws,sse,idle] [--no-opencode]

Four figures from issue 8, each printed with its target and PASS/MISS (see bench/README.md):

1. server time added per turn, p50/p95: wall time of ``POST /session/{id}/message`` minus the
   time the fake model alone takes to answer the very requests the server sent it (replayed
   against it afterwards in the same run). Model: bench/_fake_model.py, an OpenAI-compatible
   server streaming 200 tokens with no delay, for agentplex (``openai:fake-model``) and the
   real OpenCode 1.18.33 server alike; plus agentplex's in-process scripted model. The first
   turn of each session is not counted (OpenCode asks the model for a title then).
   Target <= 2 ms, and below OpenCode's.
2. model token -> WebSocket client latency p50: the fake model writes ``time.perf_counter_ns()``
   into each token (CLOCK_MONOTONIC, shared by every process), the client of ``/ws/v1/agent``
   reads it back from ``message.part.delta``. Tokens 2 ms apart (``--gap-ms``); a burst of 200
   with no gap is shown too. Target <= 1 ms.
3. SSE events/s to ``--subscribers`` clients of ``GET /event`` with the server on one core, as a
   ratio to bench/_bare_sse.py (bare Starlette) fanning out the same frames. Target >= 0.5.
4. memory per idle WebSocket session: ``--idle`` connections to ``/ws/v1/agent``, each with a
   finished execute of a tiny prompt; growth of the server's USS (and RSS). Target <= 50 KiB.

Servers run as users run them (``agentplex serve``, a scratch data directory, an API key),
pinned to CPU 1, this process and the fake model to CPU 0 (when there are two CPUs).
bench/_agentplex_scripted.py (``agentplex serve`` with the scripted model's 200-token mode,
which no setting selects yet) serves the scripted-model figures.
Results go to bench/results/sessions.json.
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
import contextlib
import functools
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results" / "sessions.json"
sys.path.insert(0, str(ROOT))  # bench._common, and the OpenCode home the compat tests use

from bench import _common as common  # noqa: E402
from tests.compat.opencode_home import OPENCODE_BINARY, prepare, serve_command  # noqa: E402

KEY = "bench-sessions-key"
PROMPT = "Answer with TOKENS please."
TARGET_ADDED_MS = 2.0
TARGET_TOKEN_MS = 1.0
TARGET_SSE_RATIO = 0.5
TARGET_IDLE_KIB = 50.0
_STAMP = re.compile(r"t(\d+) ")

Json = Any


# --------------------------------------------------------------------------------------------
# processes


def _pins() -> tuple[list[str], int | None, str]:
    """taskset prefix for servers (CPU 1), the CPU for this process and the fake model."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", "1"], 0, "servers on cpu 1; clients and fake model on cpu 0"
    return [], None, "not pinned (taskset unavailable or a single cpu)"


@dataclass
class Server:
    """A server process under test; ``ready`` is a path answering 200 when it is up."""

    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    headers: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    ready: str = "/health/live"
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, pin: list[str]) -> Server:
        out = self.log.open("wb") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [*pin, *self.command],
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:] if self.log else ""
                sys.exit(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.request("GET", self.ready, timeout=5)[0] == 200:
                    return self
            time.sleep(0.1)
        sys.exit(f"{self.name} did not answer on {self.url} within 60 s")

    def request(
        self, method: str, path: str, body: Json = None, timeout: float = 60
    ) -> tuple[int, Json]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            return _request(conn, method, path, body, self.headers)
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def _request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: Json,
    headers: dict[str, str],
) -> tuple[int, Json]:
    payload = None if body is None else json.dumps(body).encode()
    sent = dict(headers)
    if payload is not None:
        sent["Content-Type"] = "application/json"
    conn.request(method, path, body=payload, headers=sent)
    response = conn.getresponse()
    raw = response.read()
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        return response.status, raw.decode(errors="replace")


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTPLEX_", "OPENAI_"))}
    for name in ("HOTPLEX_API_KEY", "ANTHROPIC_API_KEY"):
        env.pop(name, None)
    return env


def _agentplex(
    name: str, workdir: Path, *, model: str, extra: dict[str, str], tokens: int | None = None
) -> Server:
    """`agentplex serve` on a fresh data directory; with ``tokens`` through the launcher that
    selects the scripted model's N-token mode."""
    port = common.free_port()
    data = workdir / name
    env = _base_env()
    env.update(
        AGENTPLEX_DATA_DIR=str(data),
        AGENTPLEX_API_KEY=KEY,
        AGENTPLEX_MODEL=model,
        AGENTPLEX_AGENT_SCRIPTED_MODEL="true",
        AGENTPLEX_AGENT_LOCAL_MODEL="false",
        AGENTPLEX_SANDBOX_POOL_SIZE="0",
        AGENTPLEX_RATE_LIMIT_DEFAULT="1000000/second",
        AGENTPLEX_LOG_LEVEL="warning",
        AGENTPLEX_LOG_ACCESS_LOG="false",
        AGENTPLEX_SERVER_MAX_CONNECTIONS="20000",
        AGENTPLEX_MAX_CONNECTIONS="20000",
        AGENTPLEX_GIT_SHA="bench",
        **extra,
    )
    serve = ["serve", "--port", str(port), "--data-dir", str(data)]
    if tokens is None:
        agentplex = Path(sys.executable).parent / "agentplex"
        command = [str(agentplex), *serve]
    else:
        env["BENCH_SCRIPTED_TOKENS"] = str(tokens)
        command = [sys.executable, str(BENCH / "_agentplex_scripted.py"), *serve]
    headers = {"Authorization": f"Bearer {KEY}"}
    return Server(name, command, env, port, headers, log=workdir / f"{name}.log")


def _opencode(workdir: Path, model_url: str) -> Server:
    """The real OpenCode server, offline, with the fake model (docs/opencode-protocol.md)."""
    work, env = prepare(workdir / "opencode", model_url)
    port = common.free_port()
    command = serve_command(port)
    return Server(
        "opencode", command, env, port, cwd=work, ready="/session", log=workdir / "opencode.log"
    )


class FakeModel:
    """bench/_fake_model.py in its own process."""

    def __init__(self, tokens: int, cpu: int | None) -> None:
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        self.proc = subprocess.Popen(
            [*pin, sys.executable, str(BENCH / "_fake_model.py"), "--tokens", str(tokens)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=_base_env(),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT="):
            sys.exit(f"the fake model did not start: {line!r}")
        self.port = int(line.strip().split("=")[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def requests(self, clear: bool = False) -> list[Json]:
        status, body = _request(
            self.conn, "DELETE" if clear else "GET", "/bench/requests", None, {}
        )
        assert status == 200
        return list(body)

    def replay(self, body: Json, times: int = 3) -> float:
        """Median ms the model takes to stream its whole answer to ``body`` over a raw
        keep-alive socket (request written -> last chunk read)."""
        payload = json.dumps(body).encode()
        head = (
            b"POST /bench-replay/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload)
        )
        samples = []
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(times):
                t0 = time.perf_counter_ns()
                sock.sendall(head + payload)
                tail = b""
                while not tail.endswith(b"\r\n0\r\n\r\n"):
                    data = sock.recv(1 << 16)
                    if not data:
                        raise RuntimeError("the fake model closed the connection")
                    tail = (tail + data)[-16:]
                samples.append((time.perf_counter_ns() - t0) / 1e6)
        return statistics.median(samples)

    def stop(self) -> None:
        self.conn.close()
        self.proc.terminate()
        self.proc.wait(5)


# --------------------------------------------------------------------------------------------
# 1. server time added per turn


@dataclass
class TurnTarget:
    """One server and what a turn against it is."""

    label: str
    server: Server
    body: Json
    external_model: bool
    walls: list[float] = field(default_factory=list)  # ms, counted turns
    windows: list[tuple[int, int]] = field(default_factory=list)  # perf_counter_ns
    first: list[float] = field(default_factory=list)
    added: list[float] = field(default_factory=list)
    model_ms: list[float] = field(default_factory=list)
    extra_calls: int = 0


def _run_session(target: TurnTarget, turns: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", target.server.port, timeout=120)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        status, session = _request(conn, "POST", "/session", {}, target.server.headers)
        assert status == 200, (status, session)
        path = f"/session/{session['id']}/message"
        for turn in range(turns):
            t0 = time.perf_counter_ns()
            status, answer = _request(conn, "POST", path, target.body, target.server.headers)
            t1 = time.perf_counter_ns()
            if status != 200 or not isinstance(answer, dict):
                sys.exit(f"{target.label}: POST {path} answered {status}: {answer!r:.500}")
            error = (answer.get("info") or {}).get("error")
            if error:
                sys.exit(f"{target.label}: the turn failed: {error!r:.500}")
            text = "".join(p.get("text", "") for p in answer.get("parts", []))
            if turn == 0:
                target.first.append((t1 - t0) / 1e6)
                if not text:
                    sys.exit(f"{target.label}: unexpected answer {answer!r:.800}")
                continue
            target.walls.append((t1 - t0) / 1e6)
            target.windows.append((t0, t1))
    finally:
        conn.close()


def bench_turns(
    targets: list[TurnTarget], model: FakeModel, sessions: int, turns: int
) -> dict[str, Json]:
    model.requests(clear=True)
    for round_no in range(sessions):
        for target in targets:  # alternate servers session by session
            _run_session(target, turns + 1)
        print(f"  session {round_no + 1}/{sessions} done", flush=True)
    received = model.requests()
    print(f"  replaying {len(received)} model requests against the fake model ...", flush=True)
    replayed = [(r["at"], model.replay(r["body"])) for r in received]
    out: dict[str, Json] = {}
    for target in targets:
        for (t0, t1), wall in zip(target.windows, target.walls, strict=True):
            inside = [ms for at, ms in replayed if t0 <= at <= t1]
            model_ms = sum(inside) if target.external_model else 0.0
            if target.external_model and len(inside) != 1:
                target.extra_calls += 1
            target.model_ms.append(model_ms)
            target.added.append(wall - model_ms)
        out[target.label] = {
            "turns": len(target.walls),
            "wall_p50_ms": round(common.pct(target.walls, 0.5), 3),
            "model_p50_ms": round(common.pct(target.model_ms, 0.5), 3),
            "added_p50_ms": round(common.pct(target.added, 0.5), 3),
            "added_p95_ms": round(common.pct(target.added, 0.95), 3),
            "first_turn_ms": [round(x, 1) for x in target.first],
            "turns_with_other_than_one_model_call": target.extra_calls,
        }
    return out


# --------------------------------------------------------------------------------------------
# 2. model token -> WebSocket client latency


async def _ws_turns(server: Server, prompts: list[str]) -> dict[str, list[float]]:
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{server.port}/ws/v1/agent"
    status, session = server.request("POST", "/session", {})
    assert status == 200, session
    latencies: dict[str, list[float]] = {}
    async with connect(url, additional_headers=server.headers, max_size=None) as ws:
        first = json.loads(await ws.recv())
        assert first.get("event") == "server.connected", first
        for n, prompt in enumerate(prompts):
            rid = f"r{n}"
            samples = latencies.setdefault(prompt, [])
            message = {"type": "execute", "session_id": session["id"], "prompt": prompt}
            await ws.send(json.dumps({**message, "request_id": rid}))
            while True:
                raw = await ws.recv()
                now = time.perf_counter_ns()
                frame = json.loads(raw)
                kind = frame.get("event")
                if kind == "message.part.delta":
                    for stamp in _STAMP.findall(frame["data"].get("delta", "")):
                        samples.append((now - int(stamp)) / 1e6)
                elif kind in ("completed", "error", "stopped") and frame.get("request_id") == rid:
                    if kind != "completed":
                        sys.exit(f"WebSocket execute ended with {kind}: {frame!r:.500}")
                    break
    return latencies


def bench_ws(server: Server, turns: int, gap_ms: float) -> dict[str, Json]:
    spaced = f"STAMP GAP={gap_ms} {PROMPT}"
    burst = f"STAMP {PROMPT}"
    prompts = [spaced, burst]  # warm-up
    prompts += [spaced] * turns + [burst] * max(1, turns // 2)
    got = asyncio.run(_ws_turns(server, prompts))
    # drop the warm-up turn's samples: the first 200 of each
    spaced_ms = got[spaced][200:]
    burst_ms = got[burst][200:]
    return {
        "gap_ms": gap_ms,
        "tokens_spaced": len(spaced_ms),
        "spaced_p50_ms": round(common.pct(spaced_ms, 0.5), 3),
        "spaced_p95_ms": round(common.pct(spaced_ms, 0.95), 3),
        "tokens_burst": len(burst_ms),
        "burst_p50_ms": round(common.pct(burst_ms, 0.5), 3),
        "burst_p95_ms": round(common.pct(burst_ms, 0.95), 3),
    }


# --------------------------------------------------------------------------------------------
# 3. SSE fan-out


class _Subscriber(asyncio.Protocol):
    """One ``GET /event`` client: counts frames (and a marker) without parsing them."""

    def __init__(self, request: bytes, marker: bytes, keep: bool) -> None:
        self.request = request
        self.marker = marker
        self.keep = keep
        self.kept = bytearray()
        self.pending = b""
        self.headers_done = False
        self.frames = 0
        self.marks = 0
        self.connected = asyncio.get_running_loop().create_future()
        self.changed: asyncio.Event | None = None
        self.target_marks = 0
        self.done_at = 0
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.pending + data
        if not self.headers_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.pending = buf
                return
            self.headers_done = True
            buf = buf[end + 4 :]
        last = buf.rfind(b"\n\n")
        if last < 0:
            self.pending = buf
            return
        whole, self.pending = buf[: last + 2], buf[last + 2 :]
        self.frames += whole.count(b"\n\n")
        self.marks += whole.count(self.marker)
        if self.keep:
            self.kept += whole
        if not self.connected.done() and b"server.connected" in whole:
            self.connected.set_result(None)
        if self.done is not None and not self.done.done() and self.marks >= self.target_marks:
            self.done_at = time.perf_counter_ns()
            self.done.set_result(None)

    def arm(self, marks: int) -> None:
        self.frames = 0
        self.marks = 0
        self.kept = bytearray()
        self.target_marks = marks
        self.done = asyncio.get_running_loop().create_future()


def _frames_of(raw: bytes) -> list[str]:
    """Whole SSE frames (with their trailing blank line), chunked transfer framing removed."""
    text = raw.decode()
    frames = []
    for frame in text.split("\n\n"):
        lines = [line for line in frame.split("\n") if line.startswith(("id:", "data:", "event:"))]
        if lines:
            frames.append("\n".join(lines) + "\n\n")
    return frames


async def _fan_out(
    server: Server,
    subscribers: int,
    trigger: Any,
    marks: int,
    marker: bytes,
    keep_first: bool = False,
) -> tuple[float, int, bytes]:
    """Connect ``subscribers`` to ``/event``, run ``trigger()``, wait until every one saw
    ``marks`` markers; (events/s delivered in all, frames per subscriber, first one's bytes)."""
    loop = asyncio.get_running_loop()
    head = "".join(f"{k}: {v}\r\n" for k, v in server.headers.items())
    request = (
        f"GET /event HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{head}\r\n"
    ).encode()
    clients: list[_Subscriber] = []
    transports = []
    for n in range(subscribers):
        keep = keep_first and n == 0
        transport, client = await loop.create_connection(
            functools.partial(_Subscriber, request, marker, keep),
            "127.0.0.1",
            server.port,
        )
        transports.append(transport)
        clients.append(client)
    try:
        await asyncio.wait_for(asyncio.gather(*(c.connected for c in clients)), 30)
        await asyncio.sleep(0.3)  # let what connecting caused drain
        for client in clients:
            client.arm(marks)
        t0 = time.perf_counter_ns()
        await loop.run_in_executor(None, trigger)
        await asyncio.wait_for(asyncio.gather(*(c.done for c in clients if c.done)), 300)
        end = max(c.done_at for c in clients)
        counts = {c.frames for c in clients}
        if len(counts) != 1:
            print(f"  note: subscribers saw different frame counts: {sorted(counts)}")
        frames = min(counts)
        rate = frames * subscribers / ((end - t0) / 1e9)
        return rate, frames, bytes(clients[0].kept)
    finally:
        for transport in transports:
            transport.close()


def bench_sse(
    agentplex: Server, workdir: Path, pin: list[str], subscribers: int, turns: int, rounds: int
) -> dict[str, Json]:
    sessions = []
    for _ in range(turns):
        status, session = agentplex.request("POST", "/session", {})
        assert status == 200, session
        sessions.append(session["id"])

    def trigger_agentplex() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", agentplex.port, timeout=60)
        try:
            for sid in sessions:
                body = {"parts": [{"type": "text", "text": "hi"}]}
                status, _ = _request(
                    conn, "POST", f"/session/{sid}/prompt_async", body, agentplex.headers
                )
                assert status in (200, 204), status
        finally:
            conn.close()

    # two warm-up rounds (a new session's first turn has extra events); the second records
    # the frames the bare server will send
    asyncio.run(_fan_out(agentplex, subscribers, trigger_agentplex, turns, b'"session.idle"'))
    _, frames, raw = asyncio.run(
        _fan_out(agentplex, subscribers, trigger_agentplex, turns, b'"session.idle"', True)
    )
    captured = _frames_of(raw)
    frames_file = workdir / "frames.json"
    frames_file.write_text(json.dumps(captured))
    sizes = [len(f.encode()) for f in captured]
    port = common.free_port()
    bare = Server(
        "bare starlette sse",
        [
            sys.executable,
            str(BENCH / "_bare_sse.py"),
            "--port",
            str(port),
            "--frames",
            str(frames_file),
        ],
        _base_env(),
        port,
    )
    _start_bare(bare, pin)

    def trigger_bare() -> None:
        status, _ = bare.request("POST", "/publish")
        assert status == 200

    results: dict[str, list[float]] = {"bare": [], "agentplex": []}
    try:
        asyncio.run(_fan_out(bare, subscribers, trigger_bare, 1, b'"session.idle"'))  # warm-up
        for n in range(rounds):
            rate_b, frames_b, _ = asyncio.run(
                _fan_out(bare, subscribers, trigger_bare, turns, b'"session.idle"')
            )
            rate_a, frames_a, _ = asyncio.run(
                _fan_out(agentplex, subscribers, trigger_agentplex, turns, b'"session.idle"')
            )
            results["bare"].append(rate_b)
            results["agentplex"].append(rate_a)
            print(
                f"  round {n + 1}: bare {rate_b:,.0f} events/s ({frames_b}/subscriber), "
                f"agentplex {rate_a:,.0f} events/s ({frames_a}/subscriber)",
                flush=True,
            )
    finally:
        bare.stop()
    bare_median = statistics.median(results["bare"])
    ours = statistics.median(results["agentplex"])
    return {
        "subscribers": subscribers,
        "turns_per_round": turns,
        "frames_per_subscriber": frames,
        "frame_bytes_median": statistics.median(sizes) if sizes else 0,
        "frame_bytes_total": sum(sizes),
        "bare_events_per_s": [round(x) for x in results["bare"]],
        "agentplex_events_per_s": [round(x) for x in results["agentplex"]],
        "bare_median": round(bare_median),
        "agentplex_median": round(ours),
        "ratio": round(ours / bare_median, 3),
    }


def _start_bare(bare: Server, pin: list[str]) -> None:
    """Start the bare SSE server; it is up once its port accepts connections."""
    bare.proc = subprocess.Popen(
        [*pin, *bare.command],
        env=bare.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", bare.port), timeout=1).close()
            return
        time.sleep(0.1)
    sys.exit("the bare SSE server did not start")


# --------------------------------------------------------------------------------------------
# 4. idle WebSocket sessions


def _memory(pid: int) -> tuple[int, int]:
    """(USS, RSS) bytes of ``pid`` from /proc/PID/smaps_rollup."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        fields[name] = int(value.split()[0]) * 1024
    return fields["Private_Clean"] + fields["Private_Dirty"], fields["Rss"]


async def _idle(server: Server, count: int, batch: int) -> dict[str, Json]:
    from websockets.asyncio.client import ClientConnection, connect

    url = f"ws://127.0.0.1:{server.port}/ws/v1/agent"
    pid = server.pid

    async def open_one() -> ClientConnection:
        ws = await connect(url, additional_headers=server.headers, max_size=None)
        first = json.loads(await ws.recv())
        assert first.get("event") == "server.connected", first
        return ws

    async def execute(ws: ClientConnection, n: int) -> None:
        await ws.send(json.dumps({"type": "execute", "prompt": "hi", "request_id": f"i{n}"}))
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("event") in ("completed", "error", "stopped"):
                assert frame["event"] == "completed", frame
                return

    async def settle() -> tuple[int, int]:
        await asyncio.sleep(1.0)
        return _memory(pid)

    # warm-up: what the first connections and turns load is not per-session memory
    warm = [await open_one() for _ in range(20)]
    await asyncio.gather(*(execute(ws, -i) for i, ws in enumerate(warm)))
    for ws in warm:
        await ws.close()
    uss0, rss0 = await settle()
    conns: list[ClientConnection] = []
    t0 = time.monotonic()
    for start in range(0, count, batch):
        conns += await asyncio.gather(*(open_one() for _ in range(min(batch, count - start))))
    opened_s = time.monotonic() - t0
    uss1, rss1 = await settle()
    t0 = time.monotonic()
    for start in range(0, count, batch):
        group = conns[start : start + batch]
        await asyncio.gather(*(execute(ws, start + i) for i, ws in enumerate(group)))
    executed_s = time.monotonic() - t0
    uss2, rss2 = await settle()
    for ws in conns:
        await ws.close()
    return {
        "connections": count,
        "open_seconds": round(opened_s, 2),
        "execute_seconds": round(executed_s, 2),
        "uss_start_mib": round(uss0 / 2**20, 1),
        "connected_uss_kib_per_conn": round((uss1 - uss0) / count / 1024, 1),
        "connected_rss_kib_per_conn": round((rss1 - rss0) / count / 1024, 1),
        "session_uss_kib_per_conn": round((uss2 - uss0) / count / 1024, 1),
        "session_rss_kib_per_conn": round((rss2 - rss0) / count / 1024, 1),
    }


# --------------------------------------------------------------------------------------------


def _raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = min(hard, max(soft, want)) if hard != resource.RLIM_INFINITY else max(soft, want)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


def _versions() -> dict[str, str]:
    found = common.versions(
        ("agentplex", "uvicorn", "starlette", "uvloop", "httptools", "websockets")
    )
    if OPENCODE_BINARY.exists():
        found["opencode"] = subprocess.run(
            [str(OPENCODE_BINARY), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    return found


@contextlib.contextmanager
def _running(servers: list[Server], pin: list[str]) -> Iterator[None]:
    try:
        for server in servers:
            server.start(pin)
        yield
    finally:
        for server in servers:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=10, help="counted turns per session")
    parser.add_argument("--sessions", type=int, default=3, help="sessions per server (fig. 1)")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per model answer")
    parser.add_argument("--ws-turns", type=int, default=5, help="stamped turns (fig. 2)")
    parser.add_argument("--gap-ms", type=float, default=2.0, help="ms between stamped tokens")
    parser.add_argument("--subscribers", type=int, default=100, help="SSE clients (fig. 3)")
    parser.add_argument("--sse-turns", type=int, default=4, help="turns per SSE round")
    parser.add_argument("--sse-rounds", type=int, default=3, help="SSE rounds per server")
    parser.add_argument("--idle", type=int, default=1000, help="idle WebSockets (fig. 4)")
    parser.add_argument("--only", default="turn,ws,sse,idle", help="figures to run")
    parser.add_argument("--no-opencode", action="store_true", help="skip the OpenCode server")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    only = set(args.only.split(","))

    server_pin, client_cpu, pinning = _pins()
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    nofile = _raise_nofile(args.idle * 2 + 2048)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    print(f"{pinning}; open files {nofile}", flush=True)

    figures: list[tuple[str, str, str, bool]] = []
    report: dict[str, Json] = {}
    model = FakeModel(args.tokens, client_cpu)
    with tempfile.TemporaryDirectory(prefix="agentplex-bench-sessions-") as tmp:
        workdir = Path(tmp)
        try:
            fake = {
                "OPENAI_BASE_URL": model.url,
                "OPENAI_API_KEY": "x",
                "AGENTPLEX_AGENT_OPENAI_MODELS": '["fake-model"]',
            }
            if "turn" in only or "ws" in only:
                openai_ap = _agentplex(
                    "agentplex-openai", workdir, model="openai:fake-model", extra=fake
                )
                scripted_ap = _agentplex(
                    "agentplex-scripted", workdir, model="scripted:scripted-model", extra={}
                )
                scripted200 = _agentplex(
                    "agentplex-scripted200",
                    workdir,
                    model="scripted:scripted-model",
                    extra={},
                    tokens=args.tokens,
                )
                servers = [openai_ap, scripted_ap, scripted200]
                use_opencode = not args.no_opencode and OPENCODE_BINARY.exists()
                if not args.no_opencode and not use_opencode:
                    print(f"OpenCode not installed ({OPENCODE_BINARY}): run scripts/install --test")
                opencode = _opencode(workdir, model.url) if use_opencode else None
                if opencode:
                    servers.append(opencode)
                with _running(servers, server_pin):
                    if "turn" in only:
                        print("1. server time added per turn", flush=True)
                        body = {"parts": [{"type": "text", "text": PROMPT}]}
                        targets = [
                            TurnTarget("agentplex openai-fake", openai_ap, body, True),
                            TurnTarget("agentplex scripted(200)", scripted200, body, False),
                            TurnTarget("agentplex scripted(default)", scripted_ap, body, False),
                        ]
                        if opencode:
                            targets.append(TurnTarget("opencode openai-fake", opencode, body, True))
                        turns = bench_turns(targets, model, args.sessions, args.turns)
                        report["turn"] = turns
                        ours = turns["agentplex openai-fake"]
                        line = (
                            f"p50 {ours['added_p50_ms']:.2f} ms, p95 {ours['added_p95_ms']:.2f} ms"
                        )
                        ok = ours["added_p50_ms"] <= TARGET_ADDED_MS
                        if opencode:
                            theirs = turns["opencode openai-fake"]
                            ratio = ours["added_p50_ms"] / theirs["added_p50_ms"]
                            report["turn"]["ratio_to_opencode_p50"] = round(ratio, 3)
                            line += (
                                f"; OpenCode p50 {theirs['added_p50_ms']:.2f} ms, "
                                f"p95 {theirs['added_p95_ms']:.2f} ms; ratio {ratio:.3f}"
                            )
                            ok = ok and ratio < 1
                        figures.append(
                            (
                                "server time added per turn (openai fake, 200 tok)",
                                line,
                                "<= 2 ms p50 and < OpenCode",
                                ok,
                            )
                        )
                        for label in ("agentplex scripted(200)", "agentplex scripted(default)"):
                            s = turns[label]
                            figures.append(
                                (
                                    f"server time per turn, {label}",
                                    f"p50 {s['added_p50_ms']:.2f} ms, "
                                    f"p95 {s['added_p95_ms']:.2f} ms",
                                    "<= 2 ms p50",
                                    s["added_p50_ms"] <= TARGET_ADDED_MS,
                                )
                            )
                    if "ws" in only:
                        print("2. model token -> WebSocket client latency", flush=True)
                        ws = bench_ws(openai_ap, args.ws_turns, args.gap_ms)
                        report["ws"] = ws
                        figures.append(
                            (
                                f"token -> WS client, tokens {args.gap_ms:g} ms apart",
                                f"p50 {ws['spaced_p50_ms']:.3f} ms, "
                                f"p95 {ws['spaced_p95_ms']:.3f} ms "
                                f"({ws['tokens_spaced']} tokens)",
                                "<= 1 ms p50",
                                ws["spaced_p50_ms"] <= TARGET_TOKEN_MS,
                            )
                        )
                        figures.append(
                            (
                                "token -> WS client, burst of 200 (info)",
                                f"p50 {ws['burst_p50_ms']:.3f} ms, p95 {ws['burst_p95_ms']:.3f} ms",
                                "-",
                                True,
                            )
                        )
            if "sse" in only:
                print(f"3. SSE fan-out to {args.subscribers} subscribers", flush=True)
                sse_ap = _agentplex(
                    "agentplex-sse",
                    workdir,
                    model="scripted:scripted-model",
                    extra={},
                    tokens=args.tokens,
                )
                with _running([sse_ap], server_pin):
                    sse = bench_sse(
                        sse_ap,
                        workdir,
                        server_pin,
                        args.subscribers,
                        args.sse_turns,
                        args.sse_rounds,
                    )
                report["sse"] = sse
                figures.append(
                    (
                        f"SSE events/s to {args.subscribers} subscribers, one core",
                        f"{sse['agentplex_median']:,} vs bare {sse['bare_median']:,}: "
                        f"ratio {sse['ratio']:.3f}",
                        ">= 0.5",
                        sse["ratio"] >= TARGET_SSE_RATIO,
                    )
                )
            if "idle" in only:
                print(f"4. {args.idle} idle WebSocket sessions", flush=True)
                idle_ap = _agentplex(
                    "agentplex-idle", workdir, model="scripted:scripted-model", extra={}
                )
                with _running([idle_ap], server_pin):
                    idle = asyncio.run(_idle(idle_ap, args.idle, 50))
                report["idle"] = idle
                figures.append(
                    (
                        f"memory per idle WebSocket session ({args.idle})",
                        f"USS {idle['session_uss_kib_per_conn']:.1f} KiB "
                        f"(RSS {idle['session_rss_kib_per_conn']:.1f}); connected only: USS "
                        f"{idle['connected_uss_kib_per_conn']:.1f} KiB",
                        "<= 50 KiB",
                        idle["session_uss_kib_per_conn"] <= TARGET_IDLE_KIB,
                    )
                )
        finally:
            model.stop()

    if "turn" in report:
        print("\nper turn (ms):")
        for label, s in report["turn"].items():
            if isinstance(s, dict):
                print(
                    f"  {label:<30} wall p50 {s['wall_p50_ms']:8.2f}  model p50 "
                    f"{s['model_p50_ms']:7.2f}  added p50 {s['added_p50_ms']:7.2f} "
                    f"p95 {s['added_p95_ms']:7.2f}  (n={s['turns']}, first turns "
                    f"{s['first_turn_ms']}, turns with !=1 model call: "
                    f"{s['turns_with_other_than_one_model_call']})"
                )
    return common.report(
        figures,
        RESULTS,
        script="bench/sessions.py",
        argv=sys.argv[1:],
        details=report,
        strict=args.strict,
        pinning=pinning,
        cpus=os.cpu_count(),
        versions=_versions(),
    )


if __name__ == "__main__":
    sys.exit(main())

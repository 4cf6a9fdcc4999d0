"""The real OpenCode server and its fake model, for the OpenCode compat tests.

- ``fake_model()``: ``fixtures/opencode/fake_openai.py`` (a scripted OpenAI-compatible Chat
  Completions server) on a loopback port, in this process; its ``/v1`` URL.
- ``opencode_server(model_url, tmp)``: the real OpenCode 1.18.33 server (the binary npm ships in
  ``opencode-linux-x64``, installed by ``npm ci`` in tests/compat/js) in a scratch directory,
  offline, with the fake model wired in by an ``opencode.json``; its URL.
- ``run_conversation(url, headers)``: one scripted conversation over plain HTTP while ``/event``
  is read, the same against either server; a ``Transcript`` of every answer and of the events
  each step caused.
- ``shape_of`` / ``compare_shapes``: the shape of a JSON value (keys and value types, recursively;
  never the values) flattened to ``path -> types``, and the differences of two of them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.compat.opencode_home import OPENCODE_BINARY, prepare, serve_command

HERE = Path(__file__).parent
FAKE_OPENAI = HERE / "fixtures" / "opencode" / "fake_openai.py"
JS_DIR = HERE / "js"
OPENCODE_VERSION = "1.18.33"

# The fake model's scripted answers (fake_openai.py)
HELLO = "Hello! I am a fake model."
TOOL_OUTPUT = "hello-from-tool"
TOOL_ANSWER = f"The command printed: {TOOL_OUTPUT}"

Json = Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fake_openai_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_fake_openai", FAKE_OPENAI)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def fake_model() -> Iterator[str]:
    """The scripted OpenAI-compatible model on a loopback port; its base URL (``.../v1``)."""
    httpd = _fake_openai_module().serve(0)
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def opencode_binary() -> Path:
    """The real OpenCode server's binary, or a failure saying how to install it."""
    if not OPENCODE_BINARY.exists():
        pytest.fail(
            f"the real OpenCode server is not installed ({OPENCODE_BINARY} is missing): run "
            "scripts/install --test (it runs `npm ci` in tests/compat/js, whose optional "
            "dependency opencode-linux-x64 ships the binary; linux x64 only)"
        )
    return OPENCODE_BINARY


@contextmanager
def opencode_server(model_url: str, scratch: Path) -> Iterator[str]:
    """The real OpenCode server, offline, in ``scratch``; its base URL."""
    opencode_binary()
    work, env = prepare(scratch, model_url)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (scratch / "opencode.log").open("wb")
    process = subprocess.Popen(
        serve_command(port),
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"opencode serve exited {process.returncode}:\n"
                    + (scratch / "opencode.log").read_text(errors="replace")[-3000:]
                )
            try:
                if httpx.get(f"{url}/session", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("opencode serve did not answer within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        # its own process group: the server and anything it started
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log.close()


def node_available() -> bool:
    return shutil.which("node") is not None


# ---------------------------------------------------------------------------------------------
# The event stream


@dataclass
class Frame:
    """One SSE frame of ``/event``: its parsed ``data`` and the step that was running."""

    data: Json
    step: str
    sse_id: str | None
    at: float


class EventReader:
    """Reads ``GET {url}/event`` in a thread; every frame, tagged with the current step."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url, self.headers = url, headers
        self.frames: list[Frame] = []
        self.step = "connect"
        self.raw_lines: list[str] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EventReader:
        self._thread.start()
        self.wait_for(lambda f: f.data.get("type") == "server.connected", 20, "server.connected")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._response is not None:
            with suppress(Exception):
                self._response.close()
        self._thread.join(2)

    def _run(self) -> None:
        timeout = httpx.Timeout(10, read=None)
        try:
            with (
                httpx.Client(timeout=timeout) as client,
                client.stream("GET", f"{self.url}/event", headers=self.headers) as response,
            ):
                self._response = response
                data_lines: list[str] = []
                sse_id: str | None = None
                for line in response.iter_lines():
                    if self._stop.is_set():
                        return
                    self.raw_lines.append(line)
                    if line.startswith("data:"):
                        data_lines.append(line[5:].lstrip())
                    elif line.startswith("id:"):
                        sse_id = line[3:].strip()
                    elif line == "" and data_lines:
                        data = json.loads("\n".join(data_lines))
                        with self._changed:
                            self.frames.append(Frame(data, self.step, sse_id, time.monotonic()))
                            self._changed.notify_all()
                        data_lines, sse_id = [], None
        except Exception as exc:
            # reported by the test that waits for the frames
            if not self._stop.is_set():
                self.errors.append(repr(exc))

    def mark(self, step: str) -> None:
        with self._lock:
            self.step = step

    def wait_for(self, match: Any, seconds: float, what: str, *, since: int = 0) -> Frame:
        """The first frame (at index >= ``since``) that ``match`` accepts; waits for it."""
        deadline = time.monotonic() + seconds
        with self._changed:
            while True:
                for frame in self.frames[since:]:
                    if match(frame):
                        return frame
                left = deadline - time.monotonic()
                if left <= 0 or self.errors:
                    types = [f.data.get("type") for f in self.frames[since:]][-30:]
                    raise AssertionError(
                        f"no {what} on /event within {seconds}s; errors {self.errors}; "
                        f"last types {types}"
                    )
                self._changed.wait(left)

    def count(self) -> int:
        with self._lock:
            return len(self.frames)

    def of_step(self, step: str) -> list[Json]:
        with self._lock:
            return [f.data for f in self.frames if f.step == step]


def _session_of(event: Json) -> str | None:
    props = event.get("properties") or {}
    if "sessionID" in props:
        return str(props["sessionID"])
    for key in ("info", "part"):
        inner = props.get(key)
        if isinstance(inner, dict) and "sessionID" in inner:
            return str(inner["sessionID"])
    return None


# ---------------------------------------------------------------------------------------------
# The scripted conversation


@dataclass
class Answer:
    status: int
    body: Json


@dataclass
class Transcript:
    """What one server answered to the scripted conversation."""

    answers: dict[str, Answer] = field(default_factory=dict)
    events: dict[str, list[Json]] = field(default_factory=dict)  # step -> this session's events
    sse_ids: bool = False  # whether the frames carried SSE ``id:`` lines
    session_id: str = ""


def _json(response: httpx.Response) -> Json:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


SETTLE = 1.5  # seconds of events still collected after a turn's session.idle


def run_conversation(url: str, headers: dict[str, str] | None = None) -> Transcript:
    """create, prompt (text), prompt (TOOL), messages, abort a SLOW prompt, messages, delete."""
    headers = dict(headers or {})
    out = Transcript()
    with (
        httpx.Client(base_url=url, headers=headers, timeout=120) as http,
        EventReader(url, headers) as events,
    ):

        def call(step: str, method: str, path: str, **kwargs: Any) -> Answer:
            response = http.request(method, path, **kwargs)
            answer = Answer(response.status_code, _json(response))
            out.answers[step] = answer
            return answer

        def idle_after(start: int, sid: str, seconds: float = 60) -> None:
            events.wait_for(
                lambda f: f.data.get("type") == "session.idle" and _session_of(f.data) == sid,
                seconds,
                "session.idle",
                since=start,
            )
            time.sleep(SETTLE)

        events.mark("create")
        created = call("create", "POST", "/session", json={})
        assert created.status == 200, f"POST /session answered {created.status}: {created.body}"
        sid = out.session_id = created.body["id"]
        time.sleep(0.5)
        call("list", "GET", "/session")
        call("get_new", "GET", f"/session/{sid}")

        for step, text in (("text", "Hello there"), ("tool", "Please run TOOL now")):
            events.mark(step)
            start = events.count()
            answer = call(
                step,
                "POST",
                f"/session/{sid}/message",
                json={"parts": [{"type": "text", "text": text}]},
            )
            assert answer.status == 200, f"{step}: POST /message answered {answer.status}"
            idle_after(start, sid)

        events.mark("after_turns")
        call("messages", "GET", f"/session/{sid}/message")
        call("get_after_turns", "GET", f"/session/{sid}")
        call("status_idle", "GET", "/session/status")

        # abort while a SLOW answer streams; the blocked POST /message answers the aborted message
        events.mark("slow")
        start = events.count()
        slow: dict[str, Answer] = {}

        def prompt_slow() -> None:
            with httpx.Client(base_url=url, headers=headers, timeout=120) as own:
                response = own.post(
                    f"/session/{sid}/message",
                    json={"parts": [{"type": "text", "text": "Answer SLOW please"}]},
                )
                slow["answer"] = Answer(response.status_code, _json(response))

        thread = threading.Thread(target=prompt_slow, daemon=True)
        thread.start()
        events.wait_for(
            lambda f: _is_text_chunk(f.data),
            60,
            "the SLOW answer's first text chunk",
            since=start,
        )
        call("status_busy", "GET", "/session/status")
        call("abort", "POST", f"/session/{sid}/abort")
        thread.join(30)
        assert "answer" in slow, "the SLOW prompt's POST /message did not answer after abort"
        out.answers["slow"] = slow["answer"]
        idle_after(start, sid)

        events.mark("after_abort")
        call("messages_final", "GET", f"/session/{sid}/message")

        events.mark("delete")
        call("delete", "DELETE", f"/session/{sid}")
        time.sleep(1.0)
        call("get_deleted", "GET", f"/session/{sid}")
        call("delete_again", "DELETE", f"/session/{sid}")

        out.sse_ids = any(f.sse_id for f in events.frames)
        for step in ("create", "text", "tool", "slow", "delete"):
            out.events[step] = [e for e in events.of_step(step) if _session_of(e) in (sid, None)]
    return out


def _is_text_chunk(event: Json) -> bool:
    """A chunk of the answer's text (the prompt's own text part does not count)."""
    props = event.get("properties") or {}
    if event.get("type") == "message.part.delta":
        return bool(props.get("delta"))
    return event.get("type") == "message.part.updated" and bool(props.get("delta"))


# ---------------------------------------------------------------------------------------------
# Shapes

_ID = re.compile(r"^(ses|sess|msg|prt|evt|per|call)_[A-Za-z0-9_]+$")


def _type_name(value: Json) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _tag(item: Json) -> str:
    """How a list element is told apart from its siblings: part type, message role, status."""
    if not isinstance(item, dict):
        return ""
    if isinstance(item.get("type"), str):
        return f"type={item['type']}"
    info = item.get("info")
    if isinstance(info, dict) and isinstance(info.get("role"), str):
        return f"role={info['role']}"
    return ""


def shape_of(value: Json, path: str = "$") -> dict[str, set[str]]:
    """``path -> {types}`` for every value in ``value``; map keys that are ids become ``<id>``."""
    out: dict[str, set[str]] = {}

    def walk(v: Json, p: str) -> None:
        out.setdefault(p, set()).add(_type_name(v))
        if isinstance(v, dict):
            for key, inner in v.items():
                name = "<id>" if _ID.match(key) else key
                walk(inner, f"{p}.{name}")
        elif isinstance(v, list):
            for item in v:
                tag = _tag(item)
                if isinstance(item, dict) and item.get("type") == "tool":
                    status = (item.get("state") or {}).get("status")
                    tag = f"{tag},status={status}"
                walk(item, f"{p}[{tag}]")

    walk(value, path)
    return out


@dataclass
class Difference:
    path: str
    reference: set[str] | None  # None: the path is absent there
    agentplex: set[str] | None

    def __str__(self) -> str:
        ref = "absent" if self.reference is None else "|".join(sorted(self.reference))
        ours = "absent" if self.agentplex is None else "|".join(sorted(self.agentplex))
        return f"{self.path}: OpenCode {ref}, agentplex {ours}"


def compare_shapes(reference: Json, agentplex: Json, path: str = "$") -> list[Difference]:
    """Every path whose types differ between the two values (present on one side only counts)."""
    ref, ours = shape_of(reference, path), shape_of(agentplex, path)
    diffs: list[Difference] = []
    absent: list[tuple[str, bool]] = []  # (path, missing on the reference side)
    for p in sorted(set(ref) | set(ours)):
        if ref.get(p) == ours.get(p):
            continue
        # below a path one side lacks, the lack is already said once
        if any(p.startswith((a + ".", a + "[")) and side == (p not in ref) for a, side in absent):
            continue
        if p not in ref or p not in ours:
            absent.append((p, p not in ref))
        diffs.append(Difference(p, ref.get(p), ours.get(p)))
    return diffs

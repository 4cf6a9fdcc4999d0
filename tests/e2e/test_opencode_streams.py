"""OpenCode's event streams and HotPlex's WebSocket against a real server on a loopback port,
with the scripted model and an in-memory sandbox whose commands can be made slow.

What users of the real OpenCode server report, designed out: a reconnect with
``Last-Event-ID`` loses nothing; twenty subscribers see the same parts in the same order; an
abort during a running tool ends the turn within a second; a delete mid-answer stops it (the
session is not left busy); a second prompt queues; the order of a turn is the same on
``/event``, ``/global/event`` and the WebSocket; keep-alives are data events, never comments.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
import websockets

from agentplex.app import create_app
from agentplex.core.ports import DataPlaneResponse
from agentplex.sandbox.memory import MemoryBackend
from tests.conftest import SettingsFactory, free_port

pytestmark = pytest.mark.e2e

KEEPALIVE = 0.5
TOOL_SECONDS = 30.0


class SlowBackend(MemoryBackend):
    """Commands run for ``TOOL_SECONDS`` (until cancelled): a tool call to abort."""

    async def request(
        self, sandbox_id: str, method: str, path: str, **kw: Any
    ) -> DataPlaneResponse:
        if path.startswith("/commands/run"):
            await asyncio.sleep(TOOL_SECONDS)
        return await super().request(sandbox_id, method, path, **kw)


class Server:
    """The app (scripted model, in-memory sandboxes) served by uvicorn on 127.0.0.1."""

    def __init__(self, make_settings: SettingsFactory, **sections: dict[str, Any]) -> None:
        settings = make_settings(
            agent={"scripted_model": True, "model": "scripted:scripted-model"},
            sandbox={"allow_unisolated": True},
            rate_limit={"enabled": False},
            streams={"keepalive_seconds": KEEPALIVE},
            **sections,
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings, SlowBackend()),
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def server(make_settings: SettingsFactory) -> Iterator[Server]:
    with Server(make_settings) as live:
        yield live


@dataclass
class Frame:
    id: str | None
    data: dict[str, Any]


class Stream:
    """An open SSE stream: frames in arrival order (comment lines fail the test)."""

    def __init__(self, lines: AsyncIterator[str]) -> None:
        self._lines = lines
        self.frames: list[Frame] = []

    async def next(self, timeout: float = 15.0) -> Frame:
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if line.startswith(":"):
                    pytest.fail(f"a comment line on an OpenCode stream: {line!r}")
                if line == "":
                    if fields:
                        assert "data" in fields, f"a frame without data: {fields}"
                        frame = Frame(fields.get("id"), json.loads(fields["data"]))
                        self.frames.append(frame)
                        return frame
                    continue
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        raise AssertionError("the stream ended")

    async def until(self, predicate: Any, timeout: float = 20.0) -> list[Frame]:
        """Frames up to and including the first that satisfies ``predicate(payload)``."""
        seen: list[Frame] = []
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.next(max(0.1, deadline - time.monotonic()))
            seen.append(frame)
            if predicate(_payload(frame)):
                return seen


def _payload(frame: Frame) -> dict[str, Any]:
    payload: dict[str, Any] = frame.data.get("payload", frame.data)
    return payload


@asynccontextmanager
async def sse(
    client: httpx.AsyncClient, path: str = "/event", **headers: str
) -> AsyncIterator[Stream]:
    async with client.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"].startswith("no-cache")
        assert response.headers["x-accel-buffering"] == "no"
        stream = Stream(response.aiter_lines())
        connected = await stream.next()
        assert _payload(connected)["type"] == "server.connected" and connected.id is not None
        yield stream


def _is(kind: str, sid: str) -> Any:
    return lambda p: p["type"] == kind and p["properties"].get("sessionID") == sid


def _signature(payloads: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What a client renders from a turn's events: types, part ids and types, texts, deltas."""
    out: list[tuple[Any, ...]] = []
    for p in payloads:
        props = p["properties"]
        part = props.get("part") or {}
        out.append(
            (
                p["type"],
                part.get("id"),
                part.get("type"),
                part.get("text"),
                props.get("delta"),
                (props.get("info") or {}).get("id"),
            )
        )
    return out


async def _create(client: httpx.AsyncClient) -> str:
    answer = await client.post("/session")
    assert answer.status_code == 200, answer.text
    sid: str = answer.json()["id"]
    return sid


async def _prompt_async(client: httpx.AsyncClient, sid: str, text: str) -> None:
    answer = await client.post(
        f"/session/{sid}/prompt_async", json={"parts": [{"type": "text", "text": text}]}
    )
    assert answer.status_code == 204, answer.text


async def test_reconnect_with_last_event_id_loses_and_repeats_nothing(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        sid = await _create(client)
        async with sse(client) as stream:
            await _prompt_async(client, sid, "SLOW answer please")
            first = await stream.until(_is("message.part.delta", sid))
            first += [await stream.next() for _ in range(3)]
        await asyncio.sleep(1.0)  # several chunks stream while nobody listens
        last_id = first[-1].id
        assert last_id is not None
        async with sse(client, **{"Last-Event-ID": last_id}) as stream:
            rest = await stream.until(_is("session.idle", sid), timeout=30)
        frames = first + rest
        seqs = [int(f.id) for f in frames if f.id is not None]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "an event was lost or repeated"
        assert [f.data["id"] for f in frames] == [f"evt_{s:012x}" for s in seqs]
        deltas = "".join(
            f.data["properties"]["delta"] for f in frames if f.data["type"] == "message.part.delta"
        )
        stored = (await client.get(f"/session/{sid}/message")).json()[-1]
        text = next(p["text"] for p in stored["parts"] if p["type"] == "text")
        assert deltas == text and len(text) > 40


async def test_twenty_subscribers_see_the_same_parts_in_the_same_order(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        sid = await _create(client)

        async def watch(ready: asyncio.Event, count: list[int]) -> list[tuple[Any, ...]]:
            async with sse(client) as stream:
                count[0] += 1
                if count[0] == 20:
                    ready.set()
                frames = await stream.until(_is("session.idle", sid), timeout=30)
            return _signature([_payload(f) for f in frames])

        ready, count = asyncio.Event(), [0]
        watchers = [asyncio.create_task(watch(ready, count)) for _ in range(20)]
        await asyncio.wait_for(ready.wait(), 15)
        await _prompt_async(client, sid, "REASON then answer")
        seen = await asyncio.gather(*watchers)
        assert all(s == seen[0] for s in seen)
        kinds = [s[0] for s in seen[0]]
        assert "message.part.delta" in kinds and kinds[-1] == "session.idle"


async def test_abort_during_a_running_tool_ends_the_turn_within_a_second(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        sid = await _create(client)
        async with sse(client) as stream:
            await _prompt_async(client, sid, "TOOL: run echo for me")
            await stream.until(
                lambda p: (
                    p["type"] == "message.part.updated"
                    and p["properties"]["part"]["type"] == "tool"
                    and p["properties"]["part"]["state"]["status"] == "running"
                )
            )
            assert (await client.get("/session/status")).json() == {sid: {"type": "busy"}}
            started = time.monotonic()
            abort = await client.post(f"/session/{sid}/abort")
            assert (abort.status_code, abort.json()) == (200, True)
            await stream.until(_is("session.idle", sid), timeout=5)
            assert time.monotonic() - started < 1.0
        assert (await client.get("/session/status")).json() == {}
        last = (await client.get(f"/session/{sid}/message")).json()[-1]
        assert last["info"]["error"]["name"] == "MessageAbortedError"
        tool = next(p for p in last["parts"] if p["type"] == "tool")
        assert tool["state"]["status"] == "error"
        # still usable
        again = await client.post(
            f"/session/{sid}/message", json={"parts": [{"type": "text", "text": "Hello"}]}
        )
        assert again.status_code == 200 and again.json()["finish"] == "stop"


async def test_delete_mid_answer_stops_the_turn_and_the_session_is_not_busy(
    server: Server,
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        sid = await _create(client)
        async with sse(client) as stream:
            await _prompt_async(client, sid, "SLOW answer please")
            await stream.until(_is("message.part.delta", sid))
            started = time.monotonic()
            deleted = await client.delete(f"/session/{sid}")
            assert (deleted.status_code, deleted.json()) == (200, True)
            assert time.monotonic() - started < 1.0
            assert (await client.get("/session/status")).json() == {}
            after = await stream.until(_is("session.deleted", sid), timeout=5)
            # nothing streams for it any more: the next frame is a heartbeat
            quiet = await stream.next(timeout=KEEPALIVE * 4)
            assert quiet.data["type"] == "server.heartbeat"
            assert quiet.id == after[-1].id  # the heartbeat carries the cursor
        prompt = await client.post(
            f"/session/{sid}/message", json={"parts": [{"type": "text", "text": "hi"}]}
        )
        assert prompt.status_code == 409


async def test_a_second_prompt_while_busy_queues_and_answers_its_own_message(
    server: Server,
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        sid = await _create(client)
        first = asyncio.create_task(
            client.post(
                f"/session/{sid}/message", json={"parts": [{"type": "text", "text": "REASON one"}]}
            )
        )
        await asyncio.sleep(0.05)
        second = await client.post(
            f"/session/{sid}/message", json={"parts": [{"type": "text", "text": "Hello two"}]}
        )
        answer_one = (await first).json()
        assert second.status_code == 200
        history = (await client.get(f"/session/{sid}/message")).json()
        users = [m["info"]["id"] for m in history if m["info"]["role"] == "user"]
        assert answer_one["parentID"] == users[0]
        assert second.json()["parentID"] == users[1]
        assert second.json()["time"]["created"] >= answer_one["time"]["completed"]


async def test_turn_order_is_the_same_on_event_global_event_and_websocket(
    server: Server,
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        async with sse(client) as plain, sse(client, "/global/event") as wrapped:
            ws_url = server.url.replace("http", "ws") + "/ws/v1/agent"
            async with websockets.connect(ws_url) as ws:
                hello = json.loads(await ws.recv())
                assert hello["event"] == "server.connected"
                await ws.send(
                    json.dumps({"type": "execute", "prompt": "REASON please", "request_id": "r1"})
                )
                from_ws: list[dict[str, Any]] = []
                while True:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 20))
                    assert message["request_id"] == "r1", message
                    if message["event"] in ("completed", "stopped", "error"):
                        break
                    from_ws.append({"type": message["event"], "properties": message["data"]})
                assert message["event"] == "completed"
                sid = message["data"]["session_id"]
                assert message["data"]["info"]["finish"] == "stop"
            on_event = [_payload(f) for f in await plain.until(_is("session.idle", sid))]
            on_global = [_payload(f) for f in await wrapped.until(_is("session.idle", sid))]
        assert wrapped.frames[0].data == {"payload": wrapped.frames[0].data["payload"]}
        assert all({"directory", "project", "payload"} <= set(f.data) for f in wrapped.frames[1:])

        def turn(payloads: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
            mine = [p for p in payloads if p["properties"].get("sessionID") == sid]
            return _signature(mine)

        assert turn(on_event) == turn(on_global) == turn(from_ws)
        kinds = [s[0] for s in turn(on_event)]
        assert kinds[-1] == "session.idle"
        # message.updated before any part of that message
        opened: set[str] = set()
        for p in on_event:
            props = p["properties"]
            if p["type"] == "message.updated":
                opened.add(props["info"]["id"])
            elif p["type"] in ("message.part.updated", "message.part.delta"):
                message_id = props["part"]["messageID"] if "part" in props else props["messageID"]
                assert message_id in opened


async def test_websocket_stop_and_stats(server: Server) -> None:
    ws_url = server.url.replace("http", "ws") + "/ws/v1/agent"
    async with websockets.connect(ws_url) as ws:
        assert json.loads(await ws.recv())["event"] == "server.connected"
        await ws.send(json.dumps({"type": "version", "request_id": 1}))
        version = json.loads(await ws.recv())
        assert version["event"] == "version" and version["request_id"] == 1
        await ws.send(
            json.dumps(
                {
                    "type": "execute",
                    "session_id": "my-own-id",
                    "prompt": "SLOW please",
                    "request_id": "slow",
                }
            )
        )
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 20))
            if message["event"] == "message.part.delta":
                break
        assert message["data"]["sessionID"] == "my-own-id"
        started = time.monotonic()
        await ws.send(json.dumps({"type": "stop", "session_id": "my-own-id"}))
        while message["event"] not in ("stopped", "completed", "error"):
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert message["event"] == "stopped" and message["request_id"] == "slow"
        assert time.monotonic() - started < 1.0
        await ws.send(json.dumps({"type": "stats", "request_id": "s"}))
        while message["event"] != "stats":
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert message["data"]["connection"]["sessions"] == ["my-own-id"]
        assert message["data"]["connection"]["executions"] == 1
        assert set(message["data"]["tokens"]) == {"input", "output", "reasoning"}
        for bad in ("not json", json.dumps({"type": "fly"}), json.dumps({"type": "execute"})):
            await ws.send(bad)
            error = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert error["event"] == "error" and error["data"]["message"]


async def test_websocket_takes_a_token_query_parameter(make_settings: SettingsFactory) -> None:
    with Server(make_settings, auth={"api_key": "hotplex-secret"}) as live:
        ws_url = live.url.replace("http", "ws") + "/ws/v1/agent"
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(ws_url):
                pass
        async with websockets.connect(ws_url + "?token=hotplex-secret") as ws:
            assert json.loads(await ws.recv())["event"] == "server.connected"
        headers = {"Authorization": "Bearer hotplex-secret"}
        async with websockets.connect(ws_url, additional_headers=headers) as ws:
            assert json.loads(await ws.recv())["event"] == "server.connected"


async def test_idle_streams_send_heartbeat_data_events_with_the_cursor(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        await _create(client)
        async with sse(client, "/global/event") as stream:
            connected = stream.frames[0]
            beat = await stream.next(timeout=KEEPALIVE * 4)
            assert beat.data["payload"]["type"] == "server.heartbeat"
            assert beat.id == connected.id  # nothing new: the cursor stays where it was
        # the Python SDK's decoder: a frame without data after an id line breaks it; none here
        assert all(f.data for f in stream.frames)

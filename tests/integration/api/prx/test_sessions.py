"""PRX sessions (``/api/v1/sessions`` and the ``/api`` alias): the page's request and response
shapes, the lifecycle, a conversation with the scripted model, the same session on the
OpenCode surface, and bad input answered with a 400 in PRX's envelope, never a 500."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from agentplex.app import create_app
from agentplex.core import apikeys, environments
from agentplex.db import migrate
from agentplex.db.engine import Database
from agentplex.sandbox.memory import MemoryBackend, MemorySandbox
from agentplex.settings import Settings
from tests.conftest import LiveServer, SettingsFactory

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
JSON = {"Content-Type": "application/json"}
# POST /api/v1/sessions as the page writes its request
PAGE_CREATE = """{
  "channel": "api",
  "user_id": "user_123",
  "metadata": {
    "source": "web-app"
  }
}"""


def _settings(make_settings: SettingsFactory, **sections: dict[str, Any]) -> Settings:
    """The scripted model as the default model; the in-memory sandbox backend runs no code,
    so "unisolated" sandboxes are safe."""
    sections.setdefault("rate_limit", {"enabled": False})
    return make_settings(
        agent={"scripted_model": True, "model": "scripted:scripted-model"},
        sandbox={"allow_unisolated": True},
        **sections,
    )


def _runner(_sandbox: MemorySandbox, _kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The sandbox's answer to a command: ``bash -c "echo x"`` prints x."""
    args = body.get("args") or [body.get("command", "")]
    script = str(args[-1]).splitlines()[-1] if args[-1] else ""
    out = script[5:] + "\n" if script.startswith("echo ") else ""
    return {"stdout": out, "stderr": "", "exit_code": 0}


async def _open(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, MemoryBackend(runner=_runner))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://agentplex", timeout=30
        ) as c:
            yield c


@pytest.fixture
async def client(make_settings: SettingsFactory) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _open(_settings(make_settings)):
        yield c


async def _create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    answer = await client.post("/api/v1/sessions", json=body)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def _prx_error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The PRX envelope ``{error: {code, message, details}}`` with this status and code."""
    assert answer.status_code == status, answer.text
    assert "Traceback" not in answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert set(error) >= {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert error["message"]
    return error


# -- the page's examples ------------------------------------------------------------------------


async def test_create_as_the_page_shows(client: httpx.AsyncClient) -> None:
    answer = await client.post("/api/v1/sessions", content=PAGE_CREATE, headers=JSON)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["id"].startswith("sess_")
    assert body["channel"] == "api"
    assert body["user_id"] == "user_123"
    assert body["status"] == "active"
    assert ISO_Z.match(body["created_at"]), body["created_at"]
    assert body["metadata"] == {"source": "web-app"}


async def test_create_with_nothing_gives_an_api_session(client: httpx.AsyncClient) -> None:
    answer = await client.post("/api/v1/sessions")
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["channel"] == "api" and body["user_id"] is None and body["metadata"] == {}
    assert body["status"] == "active"
    explicit_null = await _create(client, channel=None, user_id=None, metadata=None)
    assert explicit_null["channel"] == "api"


async def test_detail_as_the_page_shows(client: httpx.AsyncClient) -> None:
    created = await _create(client, channel="telegram", user_id="u1", metadata={"a": [1, {"b": 2}]})
    answer = await client.get(f"/api/v1/sessions/{created['id']}")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert {k: body[k] for k in ("id", "channel", "user_id", "status", "created_at")} == {
        k: created[k] for k in ("id", "channel", "user_id", "status", "created_at")
    }
    assert ISO_Z.match(body["last_activity"])
    assert body["turn_count"] == 0
    assert body["token_usage"] == {"input": 0, "output": 0}
    assert body["metadata"] == {"a": [1, {"b": 2}]}


async def test_list_defaults_filters_and_pages(client: httpx.AsyncClient) -> None:
    a = await _create(client, channel="api", user_id="u1")
    b = await _create(client, channel="telegram")
    c = await _create(client, channel="api")
    listed = (await client.get("/api/v1/sessions")).json()
    assert listed["total"] == 3
    assert [s["id"] for s in listed["sessions"]] == [c["id"], b["id"], a["id"]]  # newest first
    first = listed["sessions"][-1]
    assert set(first) >= {"id", "channel", "user_id", "status", "created_at", "last_activity"}
    assert first["user_id"] == "u1" and first["status"] == "active"
    assert ISO_Z.match(first["last_activity"])

    api = (await client.get("/api/v1/sessions", params={"channel": "api"})).json()
    assert [s["id"] for s in api["sessions"]] == [c["id"], a["id"]] and api["total"] == 2
    page = (await client.get("/api/v1/sessions", params={"limit": 1, "offset": 1})).json()
    assert [s["id"] for s in page["sessions"]] == [b["id"]] and page["total"] == 3
    past = (await client.get("/api/v1/sessions", params={"offset": 10})).json()
    assert past == {"sessions": [], "total": 3}
    count = (await client.get("/api/v1/sessions", params={"limit": 0})).json()
    assert count == {"sessions": [], "total": 3}
    none = (await client.get("/api/v1/sessions", params={"status": "idle"})).json()
    assert none == {"sessions": [], "total": 0}


async def test_the_api_alias_is_the_same_surface(client: httpx.AsyncClient) -> None:
    created = (await client.post("/api/sessions", json={"user_id": "alias"})).json()
    assert created["id"].startswith("sess_")
    assert (await client.get(f"/api/v1/sessions/{created['id']}")).json()["user_id"] == "alias"
    listed = (await client.get("/api/sessions")).json()
    assert [s["id"] for s in listed["sessions"]] == [created["id"]]
    assert (await client.delete(f"/api/sessions/{created['id']}")).status_code == 204
    _prx_error(await client.get("/api/sessions/sess_nope"), 404, "not_found")


async def _key(settings: Settings) -> str:
    db = Database(settings.database_url)
    try:
        await migrate.upgrade(db)
        async with db.write() as conn:
            env = await environments.ensure_default(conn)
            return (await apikeys.create(conn, env.id, "prx-sessions"))[1]
    finally:
        await db.dispose()


def _curl(url: str, token: str, *args: str) -> tuple[int, str]:
    """curl as the page writes it; the HTTP status and the body."""
    out = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {token}", *args, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    body, _, status = out.rpartition("\n")
    return int(status), body


def test_the_page_with_curl_on_a_real_server(make_settings: SettingsFactory) -> None:
    settings = _settings(make_settings)
    token = asyncio.run(_key(settings))
    with LiveServer(settings) as server:
        base = f"{server.url}/api/v1/sessions"
        status, body = _curl(
            base, token, "-X", "POST", "-H", "Content-Type: application/json", "-d", PAGE_CREATE
        )
        assert status == 201, body
        created = json.loads(body)
        assert created["id"].startswith("sess_") and created["metadata"] == {"source": "web-app"}
        sid = created["id"]
        status, body = _curl(base, token)
        assert status == 200 and [s["id"] for s in json.loads(body)["sessions"]] == [sid]
        status, body = _curl(f"{base}?status=active&channel=api&limit=50&offset=0", token)
        assert json.loads(body)["total"] == 1
        status, body = _curl(f"{base}/{sid}", token)
        assert status == 200 and json.loads(body)["turn_count"] == 0
        status, body = _curl(
            f"{base}/{sid}/message",
            token,
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"message": "Hello"}',
        )
        assert status == 200 and json.loads(body)["reply"] == "Hello! I am a fake model.", body
        status, body = _curl(f"{base}/{sid}", token, "-X", "DELETE")
        assert (status, body) == (204, "")
        status, body = _curl(f"{base}/{sid}", token, "-X", "DELETE")
        assert status == 409 and json.loads(body)["error"]["code"] == "conflict"
        status, body = _curl(f"{base}/sess_xyz", token)
        assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
        status, body = _curl(base, "wrong-token")
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"


# -- lifecycle ----------------------------------------------------------------------------------


async def test_delete_terminates_once(client: httpx.AsyncClient) -> None:
    created = await _create(client, user_id="u1")
    sid = created["id"]
    gone = await client.delete(f"/api/v1/sessions/{sid}")
    assert gone.status_code == 204 and gone.content == b""

    again = _prx_error(await client.delete(f"/api/v1/sessions/{sid}"), 409, "conflict")
    assert sid in again["message"] or "terminated" in again["message"]
    shown = (await client.get(f"/api/v1/sessions/{sid}")).json()
    assert shown["status"] == "terminated"

    active = (await client.get("/api/v1/sessions")).json()
    assert sid not in [s["id"] for s in active["sessions"]]
    ended = (await client.get("/api/v1/sessions", params={"status": "terminated"})).json()
    assert [s["id"] for s in ended["sessions"]] == [sid] and ended["total"] == 1
    assert ended["sessions"][0]["status"] == "terminated"

    refused = await client.post(f"/api/v1/sessions/{sid}/message", json={"message": "hello"})
    _prx_error(refused, 409, "conflict")


async def _wait_for(client: httpx.AsyncClient, sid: str, status: str) -> dict[str, Any]:
    for _ in range(100):
        shown: dict[str, Any] = (await client.get(f"/api/v1/sessions/{sid}")).json()
        if shown["status"] == status:
            return shown
        await asyncio.sleep(0.1)
    raise AssertionError(f"{sid} never became {status}: {shown}")


async def test_quiet_sessions_go_idle_then_terminated(make_settings: SettingsFactory) -> None:
    settings = _settings(make_settings)
    settings.agent.idle_after_secs = 1
    settings.agent.session_timeout_secs = 4
    async for client in _open(settings):
        sid = (await _create(client))["id"]
        await _wait_for(client, sid, "idle")
        assert (await client.get("/api/v1/sessions")).json()["total"] == 0  # default: active
        idle = (await client.get("/api/v1/sessions", params={"status": "idle"})).json()
        assert [s["id"] for s in idle["sessions"]] == [sid]

        said = await _say(client, sid, "wake up")  # a message makes it active again
        assert said["status"] == "active"
        assert (await client.get("/api/v1/sessions")).json()["total"] == 1

        ended = await _wait_for(client, sid, "terminated")
        assert ended["terminated_at"] and ended["turn_count"] == 1
        refused = await client.post(f"/api/v1/sessions/{sid}/message", json={"message": "hi"})
        _prx_error(refused, 409, "conflict")


async def test_unknown_session_is_404_everywhere(client: httpx.AsyncClient) -> None:
    for method, path, body in (
        ("GET", "/api/v1/sessions/sess_missing", None),
        ("DELETE", "/api/v1/sessions/sess_missing", None),
        ("POST", "/api/v1/sessions/sess_missing/message", {"message": "hi"}),
        ("GET", "/api/v1/sessions/sess_missing/messages", None),
        ("GET", "/api/v1/sessions/ses_notopencode_either", None),
    ):
        answer = await client.request(method, path, json=body)
        error = _prx_error(answer, 404, "not_found")
        assert "session" in error["message"].lower(), (method, path, error)


# -- talking to a session -----------------------------------------------------------------------


async def _say(client: httpx.AsyncClient, sid: str, text: str, **extra: Any) -> dict[str, Any]:
    answer = await client.post(f"/api/v1/sessions/{sid}/message", json={"message": text, **extra})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_a_message_gets_the_agents_reply(client: httpx.AsyncClient) -> None:
    sid = (await _create(client, user_id="u1"))["id"]
    body = await _say(client, sid, "Hello there")
    assert body["reply"] == "Hello! I am a fake model."
    assert body["session_id"] == sid
    assert body["message_id"].startswith("msg_")
    assert body["turn_count"] == 1
    assert body["token_usage"]["input"] > 0 and body["token_usage"]["output"] > 0
    assert body["tool_calls"] == [] and body["error"] is None and body["finish"] == "stop"

    detail = (await client.get(f"/api/v1/sessions/{sid}")).json()
    assert detail["turn_count"] == 1
    assert detail["token_usage"] == body["token_usage"]
    assert detail["last_activity"] >= detail["created_at"]

    second = await _say(client, sid, "And again")
    assert second["turn_count"] == 2
    detail = (await client.get(f"/api/v1/sessions/{sid}")).json()
    assert detail["token_usage"]["output"] == (
        body["token_usage"]["output"] + second["token_usage"]["output"]
    )
    assert detail["token_usage"]["input"] == (
        body["token_usage"]["input"] + second["token_usage"]["input"]
    )

    messages = (await client.get(f"/api/v1/sessions/{sid}/messages")).json()
    assert messages["total"] == 4
    shown = [(m["role"], m["content"]) for m in messages["messages"]]
    assert shown == [
        ("user", "Hello there"),
        ("assistant", "Hello! I am a fake model."),
        ("user", "And again"),
        ("assistant", "Hello! I am a fake model."),
    ]
    first = messages["messages"][0]
    assert first["id"] == body["user_message_id"] and ISO_Z.match(first["created_at"])
    assert messages["messages"][1]["id"] == body["message_id"]
    assert [p["type"] for p in first["parts"]] == ["text"]
    kinds = [p["type"] for p in messages["messages"][1]["parts"]]
    assert kinds == ["step-start", "reasoning", "text", "step-finish"]

    page = await client.get(f"/api/v1/sessions/{sid}/messages", params={"limit": 1, "offset": 2})
    assert [m["content"] for m in page.json()["messages"]] == ["And again"]
    assert page.json()["total"] == 4


async def test_content_and_text_are_accepted_for_message(client: httpx.AsyncClient) -> None:
    sid = (await _create(client))["id"]
    for field in ("content", "text"):
        answer = await client.post(f"/api/v1/sessions/{sid}/message", json={field: "hi"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["reply"] == "Hello! I am a fake model."
    model = await _say(client, sid, "hi", model="scripted:scripted-model")
    assert model["reply"] == "Hello! I am a fake model."
    unknown = await client.post(
        f"/api/v1/sessions/{sid}/message", json={"message": "hi", "model": "nope:nothing"}
    )
    _prx_error(unknown, 400, "bad_request")


async def test_a_tool_call_runs_in_the_sandbox(client: httpx.AsyncClient) -> None:
    sid = (await _create(client))["id"]
    body = await _say(client, sid, "Please run the TOOL")
    assert body["reply"] == "The command printed: hello-from-tool"
    assert body["tool_calls"] == [
        {
            "id": body["tool_calls"][0]["id"],
            "tool": "bash",
            "status": "completed",
            "input": {"command": "echo hello-from-tool"},
            "output": body["tool_calls"][0]["output"],
        }
    ]
    assert "hello-from-tool" in body["tool_calls"][0]["output"]
    assert body["turn_count"] == 1
    messages = (await client.get(f"/api/v1/sessions/{sid}/messages")).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "assistant"]
    tool = next(p for p in messages[1]["parts"] if p["type"] == "tool")
    assert tool["tool"] == "bash" and tool["state"]["status"] == "completed"

    failing = await _say(client, sid, "TOOLERR please")
    assert failing["tool_calls"][0]["status"] == "error"
    assert failing["tool_calls"][0]["error"]
    assert failing["reply"].startswith("The command printed:")


async def test_a_failing_model_answers_an_error_and_the_session_goes_on(
    make_settings: SettingsFactory,
) -> None:
    settings = _settings(make_settings)
    settings.agent.max_retries = 0
    async for client in _open(settings):
        sid = (await _create(client))["id"]
        failed = await _say(client, sid, "BAD request please")
        assert failed["error"] is not None and failed["error"]["message"]
        assert failed["error"]["name"] == "APIError"
        assert (await _say(client, sid, "hello"))["reply"] == "Hello! I am a fake model."
        assert (await client.get(f"/api/v1/sessions/{sid}")).json()["status"] == "active"


async def test_without_a_model_the_reply_says_how_to_configure_one(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(rate_limit={"enabled": False}, agent={"local_model": False})
    async for client in _open(settings):
        sid = (await _create(client))["id"]
        answer = await client.post(f"/api/v1/sessions/{sid}/message", json={"message": "hi"})
        assert answer.status_code in (200, 400), answer.text
        text = answer.text
        assert "OPENAI_API_KEY" in text or "AGENTPLEX_MODEL" in text, text
        assert (await client.get(f"/api/v1/sessions/{sid}")).json()["status"] != "terminated"


async def test_one_session_on_both_surfaces(client: httpx.AsyncClient) -> None:
    prx = await _create(client, user_id="both", metadata={"k": "v"})
    sid = prx["id"]
    said = await _say(client, sid, "Hello from PRX")

    opencode = await client.get(f"/session/{sid}")
    assert opencode.status_code == 200, opencode.text
    assert opencode.json()["id"] == sid
    history = (await client.get(f"/session/{sid}/message")).json()
    assert [m["info"]["id"] for m in history] == [said["user_message_id"], said["message_id"]]
    texts = [p["text"] for m in history for p in m["parts"] if p["type"] == "text"]
    assert texts == ["Hello from PRX", "Hello! I am a fake model."]
    listed = (await client.get("/session")).json()
    assert sid in [s["id"] for s in listed]

    # and the reverse: an OpenCode session, prompted there, read through PRX
    made = (await client.post("/session", json={})).json()
    oc_id = made["id"]
    prompted = await client.post(
        f"/session/{oc_id}/message", json={"parts": [{"type": "text", "text": "Hi OpenCode"}]}
    )
    assert prompted.status_code == 200, prompted.text
    detail = (await client.get(f"/api/v1/sessions/{oc_id}")).json()
    assert detail["id"] == oc_id and detail["turn_count"] == 1
    mine = (await client.get(f"/api/v1/sessions/{oc_id}/messages")).json()
    assert [m["content"] for m in mine["messages"]] == ["Hi OpenCode", "Hello! I am a fake model."]
    assert oc_id in [s["id"] for s in (await client.get("/api/v1/sessions")).json()["sessions"]]

    # deleting on one surface terminates it on the other
    assert (await client.delete(f"/session/{sid}")).status_code == 200
    assert (await client.get(f"/api/v1/sessions/{sid}")).json()["status"] == "terminated"
    _prx_error(await client.delete(f"/api/v1/sessions/{sid}"), 409, "conflict")


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ({"status": "bogus"}, ["active", "idle", "terminated"]),
        ({"status": ""}, ["active"]),
        ({"limit": "-1"}, ["limit"]),
        ({"limit": "abc"}, ["limit"]),
        ({"limit": "1.5"}, ["limit"]),
        ({"limit": str(10**30)}, ["limit"]),
        ({"offset": "-3"}, ["offset"]),
        ({"offset": "x"}, ["offset"]),
        ({"channel": "c" * 500}, ["channel"]),
    ],
)
async def test_bad_list_queries(
    client: httpx.AsyncClient, query: dict[str, str], words: list[str]
) -> None:
    error = _prx_error(await client.get("/api/v1/sessions", params=query), 400, "bad_request")
    for word in words:
        assert word in error["message"], error


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'"text"',
        b"42",
        b"null",
        b"{not json",
        b'{"metadata": "web-app"}',
        b'{"metadata": ["a"]}',
        b'{"metadata": 3}',
        b'{"user_id": 123}',
        b'{"user_id": ""}',
        b'{"user_id": {"id": 1}}',
        b'{"channel": 5}',
        b'{"channel": ""}',
        b'{"channel": true}',
        ('{"channel": "' + "c" * 500 + '"}').encode(),
        b'{"channel": "\\ud800"}',
        b'{"channel": "a\\u0000b"}',
        b'{"user_id": "u\\u0000"}',
    ],
)
async def test_bad_create_bodies(client: httpx.AsyncClient, body: bytes) -> None:
    answer = await client.post("/api/v1/sessions", content=body, headers=JSON)
    _prx_error(answer, 400, "bad_request")
    assert (await client.get("/api/v1/sessions")).json()["total"] == 0


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"message": ""}',
        b'{"message": "   \\n\\t"}',
        b'{"message": null}',
        b'{"message": 42}',
        b'{"message": ["hi"]}',
        b'{"message": {"text": "hi"}}',
        b'{"content": ""}',
        b'{"message": "hi\\u0000there"}',
        b'{"message": "hi", "model": "nocolon"}',
        b'{"message": "hi", "model": ":x"}',
        b'{"message": "hi", "model": 7}',
        b"[]",
        b"{bad",
    ],
)
async def test_bad_message_bodies(client: httpx.AsyncClient, body: bytes) -> None:
    sid = (await _create(client))["id"]
    answer = await client.post(f"/api/v1/sessions/{sid}/message", content=body, headers=JSON)
    _prx_error(answer, 400, "bad_request")
    detail = (await client.get(f"/api/v1/sessions/{sid}")).json()
    assert detail["turn_count"] == 0 and detail["status"] == "active"
    assert (await client.get(f"/api/v1/sessions/{sid}/messages")).json()["total"] == 0


async def test_odd_but_valid_values_are_kept(client: httpx.AsyncClient) -> None:
    metadata = {"nul": "a\u0000b", "\u0000key": [None, 1.5, True], "emoji": "\U0001f600"}
    created = await _create(client, user_id="\u65e5\u672c", channel="telegram", metadata=metadata)
    shown = (await client.get(f"/api/v1/sessions/{created['id']}")).json()
    assert shown["metadata"] == metadata and shown["user_id"] == "\u65e5\u672c"


async def test_bad_messages_queries(client: httpx.AsyncClient) -> None:
    sid = (await _create(client))["id"]
    for query in ({"limit": "-1"}, {"limit": "many"}, {"offset": "-1"}, {"limit": "100000"}):
        answer = await client.get(f"/api/v1/sessions/{sid}/messages", params=query)
        _prx_error(answer, 400, "bad_request")


async def test_odd_ids_and_methods_never_500(client: httpx.AsyncClient) -> None:
    for sid in ("x" * 5000, "%00", "sess_%F0%9F%98%80", "..", "sess_' OR 1=1 --"):
        answer = await client.get(f"/api/v1/sessions/{sid}")
        assert answer.status_code in (404, 400), (sid, answer.status_code, answer.text)
        assert answer.json()["error"]["code"] in ("not_found", "bad_request")
    put = await client.put("/api/v1/sessions")
    assert put.status_code == 405 and put.json()["error"]["code"] == "method_not_allowed"


async def test_rate_limit_groups(make_settings: SettingsFactory) -> None:
    async for client in _open(_settings(make_settings, rate_limit={"enabled": True})):
        created = await client.post("/api/v1/sessions", json={})
        assert created.headers["x-ratelimit-limit"] == "10"
        read = await client.get(f"/api/v1/sessions/{created.json()['id']}")
        assert read.headers["x-ratelimit-limit"] == "50"
        listed = await client.get("/api/v1/sessions")
        assert listed.headers["x-ratelimit-limit"] == "50"
        gone = await client.delete(f"/api/v1/sessions/{created.json()['id']}")
        assert gone.headers["x-ratelimit-limit"] == "10"


async def test_documented_in_openapi(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in (
        "/api/v1/sessions",
        "/api/v1/sessions/{session_id}",
        "/api/v1/sessions/{session_id}/message",
        "/api/v1/sessions/{session_id}/messages",
    ):
        assert path in paths, sorted(paths)
    assert set(paths["/api/v1/sessions"]) >= {"get", "post"}
    assert "/api/sessions" not in paths  # the alias is not documented twice

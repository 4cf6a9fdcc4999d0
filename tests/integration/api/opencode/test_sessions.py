"""The OpenCode/HotPlex REST surface in process: the shapes OpenCode's SDKs and the HotPlex
page read, a conversation with the scripted model, and bad input answered in OpenCode's
envelope (``{name, data: {message}}``) with the right status, never a 500."""

from __future__ import annotations

from typing import Any

import httpx

from agentplex.sandbox.memory import MemoryBackend

SESSION_KEYS = {"id", "slug", "projectID", "directory", "path", "cost", "tokens", "title"}
SESSION_KEYS |= {"version", "time"}
JSON = {"Content-Type": "application/json"}


async def _session(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    answer = await client.post("/session", json=body)
    assert answer.status_code == 200, answer.text
    created: dict[str, Any] = answer.json()
    return created


async def _say(client: httpx.AsyncClient, sid: str, text: str) -> dict[str, Any]:
    answer = await client.post(
        f"/session/{sid}/message", json={"parts": [{"type": "text", "text": text}]}
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _opencode_error(answer: httpx.Response, status: int, name: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    assert body["name"] == name, body
    assert isinstance(body["data"]["message"], str) and body["data"]["message"]
    return body


async def test_create_answers_the_session_and_the_same_under_info(
    client: httpx.AsyncClient,
) -> None:
    # the HotPlex page's curl: no body, no content type
    answer = await client.post("/session")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) >= SESSION_KEYS
    assert body["id"].startswith("ses_") and len(body["id"]) == 30
    assert body["title"].startswith("New session - ")
    assert body["time"]["created"] == body["time"]["updated"]
    info = body.pop("info")
    assert info == body
    listed = (await client.get("/session")).json()
    assert listed[0] == body
    assert (await client.get(f"/session/{body['id']}")).json() == body


async def test_list_is_newest_first_and_takes_opencode_queries(client: httpx.AsyncClient) -> None:
    first = await _session(client, title="one")
    second = await _session(client, title="two")
    child = await _session(client, title="kid", parentID=first["id"])
    assert child["parentID"] == first["id"]
    ids = [s["id"] for s in (await client.get("/session?directory=/x&workspace=w")).json()]
    assert ids[:3] == [child["id"], second["id"], first["id"]]
    roots = [s["id"] for s in (await client.get("/session", params={"roots": "true"})).json()]
    assert child["id"] not in roots
    one = (await client.get("/session", params={"limit": 1})).json()
    assert [s["id"] for s in one] == [child["id"]]
    kids = (await client.get(f"/session/{first['id']}/children")).json()
    assert [k["id"] for k in kids] == [child["id"]]


async def test_patch_renames_and_delete_answers_true(client: httpx.AsyncClient) -> None:
    session = await _session(client)
    renamed = await client.patch(
        f"/session/{session['id']}",
        json={"title": "Captured session"},
        headers={"x-opencode-directory": "%2Ftmp"},
    )
    assert renamed.status_code == 200
    assert renamed.json()["title"] == "Captured session"
    deleted = await client.delete(f"/session/{session['id']}")
    assert (deleted.status_code, deleted.json()) == (200, True)
    assert session["id"] not in [s["id"] for s in (await client.get("/session")).json()]
    again = await client.delete(f"/session/{session['id']}")
    # OpenCode forgets a deleted session: deleting it again is a 404, as on the real server
    assert again.status_code == 404 and again.json()["name"] == "NotFoundError"
    prompt = await client.post(
        f"/session/{session['id']}/message", json={"parts": [{"type": "text", "text": "hi"}]}
    )
    assert prompt.status_code == 409


async def test_a_prompt_answers_info_parts_and_the_message_fields_on_top(
    client: httpx.AsyncClient,
) -> None:
    session = await _session(client)
    body = await _say(client, session["id"], "Hello there")
    info, parts = body["info"], body["parts"]
    assert info["role"] == "assistant" and info["finish"] == "stop"
    assert info["providerID"] == "scripted" and info["modelID"] == "scripted-model"
    assert info["time"]["completed"] >= info["time"]["created"]
    assert info["tokens"]["total"] > 0 and set(info["tokens"]["cache"]) == {"read", "write"}
    # the old Python SDK reads the message's fields at the top level
    for key, value in info.items():
        assert body[key] == value
    assert parts[0]["type"] == "step-start"
    assert parts[-1]["type"] == "step-finish" and parts[-1]["reason"] == "stop"
    text = [p for p in parts if p["type"] == "text"]
    assert text[0]["text"] == "Hello! I am a fake model."
    assert {"id", "sessionID", "messageID"} <= set(text[0])
    assert text[0]["messageID"] == info["id"] and "end" in text[0]["time"]

    history = (await client.get(f"/session/{session['id']}/message")).json()
    assert [m["info"]["role"] for m in history] == ["user", "assistant"]
    user = history[0]
    assert user["info"]["model"] == {"providerID": "scripted", "modelID": "scripted-model"}
    assert user["parts"][0]["text"] == "Hello there"
    assert history[1] == {"info": info, "parts": parts}
    one = await client.get(f"/session/{session['id']}/message/{info['id']}")
    assert one.json() == {"info": info, "parts": parts}
    last = (await client.get(f"/session/{session['id']}/message", params={"limit": 1})).json()
    assert [m["info"]["id"] for m in last] == [info["id"]]
    summed = (await client.get(f"/session/{session['id']}")).json()
    assert summed["tokens"]["output"] == info["tokens"]["output"]


async def test_hotplex_and_old_python_sdk_bodies(client: httpx.AsyncClient) -> None:
    session = await _session(client)
    page_body = (
        '{\n    "prompt": "Hello, help me write a function",\n'
        '    "system_prompt": "You are a helpful coding assistant"\n  }'
    )
    answer = await client.post(f"/session/{session['id']}/message", content=page_body, headers=JSON)
    assert answer.status_code == 200, answer.text
    assert answer.json()["role"] == "assistant"
    user = (await client.get(f"/session/{session['id']}/message")).json()[0]["info"]
    assert user["system"] == "You are a helpful coding assistant"
    old_sdk = await client.post(
        f"/session/{session['id']}/message",
        json={
            "providerID": "scripted",
            "modelID": "scripted-model",
            "mode": "build",
            "parts": [{"type": "text", "text": "hi"}],
        },
    )
    assert old_sdk.status_code == 200 and old_sdk.json()["providerID"] == "scripted"


async def test_prompt_async_is_204_and_the_answer_is_stored(client: httpx.AsyncClient) -> None:
    session = await _session(client)
    answer = await client.post(
        f"/session/{session['id']}/prompt_async",
        json={"parts": [{"type": "text", "text": "Hello"}]},
    )
    assert (answer.status_code, answer.content) == (204, b"")
    # a waiting prompt queues behind it, so both are answered when it returns
    await _say(client, session["id"], "again")
    roles = [
        m["info"]["role"] for m in (await client.get(f"/session/{session['id']}/message")).json()
    ]
    assert roles == ["user", "user", "assistant", "assistant"] or roles == [
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert (await client.get("/session/status")).json() == {}


async def test_errors_are_opencode_envelopes_never_500(client: httpx.AsyncClient) -> None:
    missing = await client.get("/session/ses_doesnotexist")
    assert _opencode_error(missing, 404, "NotFoundError")["data"]["message"] == (
        "Session not found: ses_doesnotexist"
    )
    _opencode_error(await client.get("/session/nope"), 404, "NotFoundError")
    _opencode_error(
        await client.post(
            "/session/ses_doesnotexist/message", json={"parts": [{"type": "text", "text": "x"}]}
        ),
        404,
        "NotFoundError",
    )
    _opencode_error(await client.delete("/session/ses_doesnotexist"), 404, "NotFoundError")
    session = await _session(client)
    sid = session["id"]
    _opencode_error(
        await client.get(f"/session/{sid}/message/msg_doesnotexist"), 404, "NotFoundError"
    )
    bad = _opencode_error(
        await client.post(f"/session/{sid}/message", json={"parts": "not-a-list"}),
        400,
        "BadRequest",
    )
    assert bad["data"]["kind"] == "Payload" and "parts" in bad["data"]["message"]
    for body in (
        b"{not json",
        b'{"parts": [{"type": "text", "text": "   "}]}',
        b'{"parts": []}',
        b'{"parts": [{"type": "subtask", "prompt": "x"}]}',
        b'{"parts": [{"type": "text"}]}',
        b'{"system": "only a system prompt"}',
        b"[1, 2]",
    ):
        answer = await client.post(f"/session/{sid}/message", content=body, headers=JSON)
        _opencode_error(answer, 400, "BadRequest")
        answer = await client.post(f"/session/{sid}/prompt_async", content=body, headers=JSON)
        _opencode_error(answer, 400, "BadRequest")
    _opencode_error(await client.post("/session", json={"title": 5}), 400, "BadRequest")
    _opencode_error(await client.patch(f"/session/{sid}", json={"title": 42}), 400, "BadRequest")
    _opencode_error(
        await client.post(f"/session/{sid}/permissions/per_x", json={"response": "maybe"}),
        400,
        "BadRequest",
    )
    _opencode_error(
        await client.post(
            f"/session/{sid}/permissions/per_doesnotexist", json={"response": "once"}
        ),
        404,
        "NotFoundError",
    )
    _opencode_error(
        await client.post("/session", json={"model": {"providerID": "nope", "id": "x"}}),
        400,
        "BadRequest",
    )
    # abort answers true for anything, as OpenCode does
    abort = await client.post("/session/ses_doesnotexist/abort")
    assert (abort.status_code, abort.json()) == (200, True)


async def test_fork_copies_the_messages(client: httpx.AsyncClient) -> None:
    session = await _session(client, title="extras")
    await _say(client, session["id"], "Hello there")
    fork = await client.post(f"/session/{session['id']}/fork", json={})
    assert fork.status_code == 200, fork.text
    assert fork.json()["title"] == "extras (fork #1)"
    copied = (await client.get(f"/session/{fork.json()['id']}/message")).json()
    original = (await client.get(f"/session/{session['id']}/message")).json()
    assert [m["parts"][-1].get("text") for m in copied] == [
        m["parts"][-1].get("text") for m in original
    ]
    assert copied[0]["info"]["id"] != original[0]["info"]["id"]


async def test_server_info_lists_the_models_but_never_keys(
    client: httpx.AsyncClient,
) -> None:
    config = (await client.get("/config")).json()
    assert config["model"] == "scripted/scripted-model"
    assert "scripted-model" in config["provider"]["scripted"]["models"]
    providers = (await client.get("/config/providers")).json()
    assert providers["default"]["scripted"] == "scripted-model"
    scripted = next(p for p in providers["providers"] if p["id"] == "scripted")
    model = scripted["models"]["scripted-model"]
    assert model["providerID"] == "scripted" and model["capabilities"]["toolcall"] is True
    assert scripted["options"] == {}
    listed = (await client.get("/provider")).json()
    assert "scripted" in listed["connected"] and listed["all"][0]["options"] == {}
    agents = (await client.get("/agent")).json()
    assert agents[0]["name"] == "build" and agents[0]["mode"] == "primary"


async def test_config_never_shows_a_provider_key(make_settings: Any) -> None:
    from asgi_lifespan import LifespanManager

    from agentplex.app import create_app
    from tests.integration.api.opencode.conftest import opencode_settings

    secret = "sk-test-secret-value-123"
    settings = opencode_settings(
        make_settings, agent={"openai_api_key": secret, "openai_base_url": "http://127.0.0.1:9"}
    )
    app = create_app(settings, MemoryBackend())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            for path in ("/config", "/config/providers", "/provider", "/agent"):
                answer = await client.get(path)
                assert answer.status_code == 200
                assert secret not in answer.text and "127.0.0.1:9" not in answer.text


async def test_shell_and_files_use_the_session_sandbox(
    client: httpx.AsyncClient, backend: MemoryBackend
) -> None:
    backend.runner = lambda _s, _k, body: {"stdout": "from-shell\n", "exit_code": 0}
    session = await _session(client)
    answer = await client.post(
        f"/session/{session['id']}/shell", json={"agent": "build", "command": "echo from-shell"}
    )
    assert answer.status_code == 200, answer.text
    tool = answer.json()["parts"][0]
    assert tool["type"] == "tool" and tool["tool"] == "bash"
    assert tool["state"]["status"] == "completed" and tool["state"]["output"] == "from-shell\n"
    sandbox = next(iter(backend.sandboxes.values()))
    sandbox.files["/workspace/README.txt"] = b"hello file"
    files = (await client.get("/file", params={"path": ".", "sessionID": session["id"]})).json()
    assert {"name": "README.txt", "path": "README.txt", "type": "file"}.items() <= files[0].items()
    content = await client.get(
        "/file/content", params={"path": "README.txt", "sessionID": session["id"]}
    )
    assert content.json() == {"type": "text", "content": "hello file"}
    missing = await client.get(
        "/file/content", params={"path": "missing.txt", "sessionID": session["id"]}
    )
    assert missing.json() == {"type": "text", "content": ""}

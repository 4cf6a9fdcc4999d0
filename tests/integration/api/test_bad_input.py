"""Bad input against a real server with real sandboxes and auth on: a 400 that says what was
wrong, never a 500 or a traceback, and the sandbox answers the next valid request as before."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agentplex.core import apikeys, environments
from agentplex.db import migrate
from agentplex.db.engine import Database
from agentplex.settings import Settings
from tests.conftest import LiveServer, SettingsFactory

JSON = {"Content-Type": "application/json"}
DEEP = b"[" * 100_000 + b"]" * 100_000


async def _key(settings: Settings) -> str:
    db = Database(settings.database_url)
    try:
        await migrate.upgrade(db)
        async with db.write() as conn:
            env = await environments.ensure_default(conn)
            return (await apikeys.create(conn, env.id, "bad-input"))[1]
    finally:
        await db.dispose()


@pytest.fixture
def http(make_settings: SettingsFactory) -> Iterator[httpx.Client]:
    settings = make_settings(rate_limit={"enabled": False}, sandbox={"pool_size": 1})
    key = asyncio.run(_key(settings))
    with (
        LiveServer(settings) as server,
        httpx.Client(
            base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {key}"}
        ) as client,
    ):
        yield client


def _refused(answer: httpx.Response, *words: str, what: str = "") -> dict[str, Any]:
    assert answer.status_code == 400, (what, answer.text)
    assert "Traceback" not in answer.text and 'File "' not in answer.text
    body: dict[str, Any] = answer.json()
    assert body["code"] == "INVALID_REQUEST", body
    for word in words:
        assert word in body["message"], body
    return body


def _runs(http: httpx.Client, sandbox: str) -> None:
    ran = http.post(f"/sandboxes/{sandbox}/commands/run", json={"command": "echo still fine"})
    assert ran.status_code == 200, ran.text
    assert ran.json()["stdout"] == "still fine\n"


BAD_DATA_PLANE: list[tuple[str, str, dict[str, Any], tuple[str, ...]]] = [
    ("NaN timeout", "/commands/run", {"content": b'{"command": "echo", "timeout": NaN}'}, ()),
    ("NaN timeout", "/execute", {"content": b'{"code": "1", "timeout": NaN}'}, ()),
    (
        "huge timeout",
        "/commands/run",
        {"content": b'{"command": "echo", "timeout": 1' + b"0" * 400 + b"}"},
        (),
    ),
    (
        "string timeout",
        "/commands/run",
        {"json": {"command": "echo", "timeout": "nan"}},
        ("timeout",),
    ),
    ("NUL in command", "/commands/run", {"json": {"command": "echo a\x00b"}}, ("NUL",)),
    ("NUL in args", "/commands/run", {"json": {"command": "echo", "args": ["a\x00"]}}, ("NUL",)),
    (
        "NUL in env key",
        "/commands/run",
        {"json": {"command": "echo", "env": {"A\x00": "1"}}},
        ("NUL",),
    ),
    (
        "NUL in env value",
        "/commands/run",
        {"json": {"command": "echo", "env": {"A": "1\x00"}}},
        ("NUL",),
    ),
    ("NUL in env value", "/execute", {"json": {"code": "1", "env": {"A": "\x00"}}}, ("NUL",)),
    (
        "env value too big",
        "/commands/run",
        {"json": {"command": "echo", "env": {"A": "x" * 200_000}}},
        ("bytes",),
    ),
    (
        "lone surrogate in a path",
        "/files/write",
        {"content": b'{"path": "/workspace/\\ud800", "content": "x"}'},
        (),
    ),
    ("deep JSON", "/commands/run", {"content": DEEP}, ("JSON",)),
    ("deep JSON", "/execute", {"content": DEEP}, ("JSON",)),
    ("NUL in env", "/env", {"json": {"env_vars": {"B": "x\x00y"}}}, ("NUL",)),
    (
        "not base64",
        "/files/write",
        {"json": {"path": "/workspace/b", "content": "abc", "encoding": "base64"}},
        ("base64",),
    ),
]


def test_the_data_plane_refuses_bad_input_and_stays_usable(http: httpx.Client) -> None:
    created = http.post("/v1/sandboxes", json={"template_name": "bash"})
    assert created.status_code == 200, created.text
    sandbox = created.json()["id"]
    for what, path, request, words in BAD_DATA_PLANE:
        method = "PUT" if path == "/env" else "POST"
        headers = JSON if "content" in request else {}
        answer = http.request(method, f"/sandboxes/{sandbox}{path}", headers=headers, **request)
        _refused(answer, *words, what=what)
        _runs(http, sandbox)  # the connection to the sandbox's agent survived it
    # nothing bad was stored: the sandbox's variables, and commands after a stop and start
    assert http.get(f"/sandboxes/{sandbox}/env").json()["env_vars"] == {}
    assert http.post(f"/v1/sandboxes/{sandbox}/stop").status_code == 200
    assert http.post(f"/v1/sandboxes/{sandbox}/start").status_code == 200
    _runs(http, sandbox)
    http.delete(f"/v1/sandboxes/{sandbox}")


def test_file_names_that_are_not_utf8_are_listed(http: httpx.Client) -> None:
    sandbox = http.post("/v1/sandboxes", json={"template_name": "bash"}).json()["id"]
    made = http.post(
        f"/sandboxes/{sandbox}/commands/run",
        json={"command": "touch \"/workspace/$(printf 'a\\377b')\""},
    )
    assert made.json()["exit_code"] == 0, made.text
    listed = http.get(f"/sandboxes/{sandbox}/files/list", params={"path": "/workspace"})
    assert listed.status_code == 200, listed.text
    assert "a\ufffdb" in [f["name"] for f in listed.json()["files"]]
    _runs(http, sandbox)
    http.delete(f"/v1/sandboxes/{sandbox}")


BAD_CREATES: list[tuple[dict[str, Any], tuple[str, ...]]] = [
    ({"content": DEEP}, ("JSON",)),
    ({"content": b'{"template_name": "bash", "timeout_seconds": NaN}'}, ("JSON",)),
    ({"content": b'{"template_name": "bash", "timeout_seconds": 1' + b"0" * 400 + b"}"}, ()),
    ({"json": {"template_name": "bash", "env_vars": {"X": "a\x00b"}}}, ("NUL",)),
    ({"json": {"template_name": "bash", "env_vars": {"X=Y": "1"}}}, ("'='",)),
    ({"json": {"template_name": "bash", "env_vars": {"X": "a" * (20 << 20)}}}, ("bytes",)),
    (
        {"json": {"template_name": "bash", "env_vars": {f"V{i}": "a" * 100_000 for i in range(8)}}},
        ("total",),
    ),
]


def test_the_control_plane_refuses_bad_input(http: httpx.Client) -> None:
    for request, words in BAD_CREATES:
        headers = JSON if "content" in request else {}
        _refused(http.post("/v1/sandboxes", headers=headers, **request), *words)
    assert http.get("/v1/sandboxes").json()["data"] == []  # none was created

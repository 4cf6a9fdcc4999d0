"""Hot's events through the HTTP app on SQLite and PostgreSQL: publishing answers the seed page's
event (with ``event_time``) and queues one run per handler (one ``call`` run for ``hot:call``),
the list is newest first with pagination, an event's runs, bad input answered in Hot's error
envelope saying what to fix, and another environment's events are not found.

The helpers here (a deployed example project, and runs driven to their end the way a worker
does) serve test_runs.py and test_streams.py too."""

from __future__ import annotations

import hashlib
import io
import json
import re
import uuid
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from agentplex.core import apikeys, environments
from agentplex.core.events import Run, finished_entries, run_from_row, run_snapshot, stream_ends
from agentplex.core.runs import RunService
from agentplex.db.records import runs as run_records
from agentplex.engine.queue import RunQueue
from agentplex.settings import Settings
from tests.conftest import SettingsFactory, open_client

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
KEY = "admin-key"
ADMIN = {"Authorization": f"Bearer {KEY}"}

FILES = {
    "hello/__init__.py": "",
    "hello/handlers.py": "def on_signup(event):\n    return event\n\ndef audit(event):\n    pass\n",
    "hello/math.py": "def add(a, b):\n    return a + b\n",
}
MANIFEST = {
    "handlers": [
        {"event": "user.signup", "function": "hello.handlers:on_signup"},
        {"event": "user.signup", "function": "hello.handlers:audit"},
        {"event": "user.deleted", "function": "hello.handlers:audit"},
    ],
    "functions": ["hello.math:add"],
}


# -- shared helpers ------------------------------------------------------------------------------


def hot_settings(make_settings: SettingsFactory, **sections: dict[str, Any]) -> Settings:
    """Settings with a key, no rate limit, no in-process workers or scheduler (the tests play
    the worker themselves) and no sandboxes (builds declare their handlers in the manifest)."""
    base: dict[str, dict[str, Any]] = {
        "rate_limit": {"enabled": False},
        "auth": {"api_key": KEY},
        "runs": {"workers": 0, "scheduler": False},
        "sandbox": {"enabled": False},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return make_settings(**base)


def run_service(services: Any) -> RunService:
    """The app's RunService."""
    service: RunService = services.runs
    return service


def archive(files: dict[str, str], manifest: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
        zf.writestr("agentplex.json", json.dumps(manifest))
    return buffer.getvalue()


async def deploy(
    client: httpx.AsyncClient,
    project: str = "hello",
    manifest: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Create ``project`` and upload and deploy the example build; the project."""
    created = await client.post("/v1/projects", json={"name": project}, headers=headers)
    assert created.status_code == 201, created.text
    data = archive(FILES, manifest or MANIFEST)
    uploaded = await client.post(
        f"/v1/projects/{project}/builds",
        data={"hash": hashlib.sha256(data).hexdigest()},
        files={"file": ("build.zip", data, "application/zip")},
        headers=headers,
    )
    assert uploaded.status_code == 201, uploaded.text
    build_id = uploaded.json()["data"]["build_id"]
    deployed = await client.post(
        f"/v1/projects/{project}/builds/{build_id}/deploy", headers=headers
    )
    assert deployed.status_code == 200, deployed.text
    project_data: dict[str, Any] = created.json()["data"]
    return project_data


async def publish(
    client: httpx.AsyncClient, event_type: str, event_data: Any = None
) -> dict[str, Any]:
    answer = await client.post(
        "/v1/events", json={"event_type": event_type, "event_data": event_data}
    )
    assert answer.status_code == 201, answer.text
    event: dict[str, Any] = answer.json()["data"]
    return event


class Worker:
    """Plays a worker: claims runs and writes what a worker writes to their streams."""

    def __init__(self, services: Any) -> None:
        self.services = services
        self.queue = RunQueue(services.db)

    async def start(self, limit: int = 100) -> list[Run]:
        runs = await self.queue.claim("test-worker", limit=limit)
        for run in runs:
            await self.append(run.stream_id, {"type": "run:start", "run": run_snapshot(run)})
            await self.append(run.stream_id, {"type": "run:update", "run": run_snapshot(run)})
        return runs

    async def append(self, stream_id: str, data: dict[str, Any]) -> None:
        await self.services.streams.append(stream_id, data)

    async def emit(self, run: Run, text: str) -> None:
        await self.append(
            run.stream_id,
            {
                "type": "stream:data",
                "stream_data_id": str(uuid.uuid4()),
                "run_id": run.run_id,
                "data_type": "text",
                "payload": {"text": text},
                "created_at": "2026-01-01T00:00:00.000Z",
            },
        )

    async def succeed(self, run: Run, value: Any) -> Run:
        assert await self.queue.complete(run.run_id, run.fence, {"$ok": value})
        return await self._finished(run)

    async def fail(self, run: Run, message: str, *, items: bool = True) -> Run:
        error = {"type": "ValueError", "message": message, "traceback": None}
        assert await self.queue.fail(run.run_id, run.fence, error, retry=False) == "failed"
        return await self._finished(run, items=items)

    async def _finished(self, run: Run, *, items: bool = True) -> Run:
        async with self.services.db.write() as conn:
            final = run_from_row(await run_records.get(conn, run.run_id))
            entries = finished_entries(final) + await stream_ends(conn, [final])
            written = await self.services.streams.append_in(conn, entries) if items else []
        await self.services.streams.announce(written)
        return final


async def other_environment(services: Any) -> dict[str, str]:
    """The headers of a key of a second environment."""
    async with services.db.write() as conn:
        env = await environments.create(conn, "elsewhere")
        _key, plaintext = await apikeys.create(conn, env.id, "elsewhere")
    return {"Authorization": f"Bearer {plaintext}"}


def hot_error(answer: httpx.Response, status: int, code: str) -> str:
    """Hot's ``{error: {code, message, request_id}}`` with this status and code; the message."""
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code, error
    assert error["request_id"] and error["message"] and "Traceback" not in answer.text
    return str(error["message"])


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return hot_settings(make_settings)


@pytest.fixture
async def hot(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the in-process app, with the example project deployed."""
    async for client in open_client(settings):
        client.headers.update(ADMIN)
        run_service(services_of(client))
        await deploy(client)
        yield client


def services_of(client: httpx.AsyncClient) -> Any:
    return app_services(client.app)  # type: ignore[attr-defined]


def app_services(app: Any) -> Any:
    """The services of an app made by create_app (the gateway wraps the Starlette app)."""
    while not hasattr(app, "state"):
        app = app.app
    return app.state.services


# -- tests ---------------------------------------------------------------------------------------


async def test_publish_answers_the_event_and_queues_a_run_per_handler(
    hot: httpx.AsyncClient,
) -> None:
    data = {"user_id": "123", "email": "alice@example.com", "name": "Zoë 🚀"}
    answer = await hot.post("/v1/events", json={"event_type": "user.signup", "event_data": data})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert set(body["meta"]) == {"request_id", "timestamp"}
    event = body["data"]
    assert {
        "event_id",
        "env_id",
        "stream_id",
        "event_type",
        "event_data",
        "event_time",
        "created_at",
    } <= set(event)
    assert event["event_type"] == "user.signup" and event["event_data"] == data
    assert ISO_Z.match(event["event_time"]) and ISO_Z.match(event["created_at"])
    uuid.UUID(event["event_id"]), uuid.UUID(event["stream_id"])
    assert event["stream_id"] != event["event_id"]

    got = await hot.get(f"/v1/events/{event['event_id']}")
    assert got.status_code == 200 and got.json()["data"] == event

    runs = (await hot.get(f"/v1/events/{event['event_id']}/runs")).json()
    assert runs["pagination"]["total"] == 2
    assert sorted(r["var"] for r in runs["data"]) == ["audit", "on_signup"]
    for run in runs["data"]:
        assert run["status"] == "queued" and run["run_type"] == "event"
        assert run["event_id"] == event["event_id"] and run["stream_id"] == event["stream_id"]
        assert run["project_name"] == "hello" and run["ns"] == "::hello::handlers"
        assert run["env_id"] == event["env_id"] and run["start_time"] is None


async def test_an_event_no_handler_wants_is_published_with_no_run(hot: httpx.AsyncClient) -> None:
    event = await publish(hot, "nobody.listens", [1, 2, 3])
    assert event["event_data"] == [1, 2, 3]
    runs = (await hot.get(f"/v1/events/{event['event_id']}/runs")).json()
    assert runs["data"] == [] and runs["pagination"]["total"] == 0


async def test_hot_call_queues_one_call_run(hot: httpx.AsyncClient) -> None:
    for fn in ("::hello::math/add", "hello.math:add"):
        event = await publish(hot, "hot:call", {"fn": fn, "args": [2, 3]})
        [run] = (await hot.get(f"/v1/events/{event['event_id']}/runs")).json()["data"]
        assert run["run_type"] == "call" and run["function"] == "hello.math:add"
        assert run["ns"] == "::hello::math" and run["var"] == "add"
        assert run["status"] == "queued"


async def test_the_list_is_newest_first_with_pagination(hot: httpx.AsyncClient) -> None:
    published = [await publish(hot, "user.deleted", {"n": n}) for n in range(23)]
    first = (await hot.get("/v1/events")).json()
    assert first["pagination"] == {"total": 23, "limit": 20, "offset": 0, "has_more": True}
    assert [e["event_data"]["n"] for e in first["data"]] == list(range(22, 2, -1))
    rest = (await hot.get("/v1/events", params={"limit": 5, "offset": 20})).json()
    assert [e["event_data"]["n"] for e in rest["data"]] == [2, 1, 0]
    assert rest["pagination"] == {"total": 23, "limit": 5, "offset": 20, "has_more": False}
    assert rest["data"][-1] == published[0]
    bad = await hot.get("/v1/events", params={"limit": 0})
    assert "limit" in hot_error(bad, 400, "bad_request")


@pytest.mark.parametrize(
    ("body", "fix"),
    [
        ({"event_data": {"a": 1}}, "event_type is required"),
        ({"event_type": "", "event_data": {}}, "event_type is required"),
        ({"event_type": 42}, "event_type"),
        ({"event_type": "x" * 201}, "the limit is 200"),
        ({"event_type": "hot:call", "event_data": "add"}, '"fn"'),
        ({"event_type": "hot:call", "event_data": {"args": []}}, "event_data.fn"),
        ({"event_type": "hot:call", "event_data": {"fn": "::hello::math/nope"}}, "deploy"),
        ({"event_type": "hot:call", "event_data": {"fn": "not a name"}}, "::module::path/fn"),
        ({"event_type": "hot:call", "event_data": {"fn": "hello.math:add", "args": 3}}, "list"),
        # no handler could ever take these (the manifest and the decorators refuse them)
        ({"event_type": "user signup", "event_data": {}}, "not an event type"),
        ({"event_type": "user.\u0000", "event_data": {}}, "not an event type"),
        ({"event_type": "hot:other", "event_data": {}}, "reserved"),
        ({"event_type": "big", "event_data": {"blob": "x" * (1024 * 1024)}}, "at most 1048576"),
    ],
)
async def test_bad_events_are_400_saying_what_to_fix(
    hot: httpx.AsyncClient, body: dict[str, Any], fix: str
) -> None:
    message = hot_error(await hot.post("/v1/events", json=body), 400, "bad_request")
    assert fix in message, message
    assert (await hot.get("/v1/events")).json()["pagination"]["total"] == 0


async def test_malformed_json_is_400(hot: httpx.AsyncClient) -> None:
    answer = await hot.post(
        "/v1/events", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert "JSON" in hot_error(answer, 400, "bad_request")


async def test_unknown_events_are_404(hot: httpx.AsyncClient) -> None:
    for ref in (str(uuid.uuid4()), "not-a-uuid", "x" * 300):
        assert hot_error(await hot.get(f"/v1/events/{ref}"), 404, "not_found") == (
            "Event not found"
        )
        hot_error(await hot.get(f"/v1/events/{ref}/runs"), 404, "not_found")


async def test_another_environment_sees_no_event(hot: httpx.AsyncClient) -> None:
    event = await publish(hot, "user.signup", {"user_id": "1"})
    theirs = await other_environment(services_of(hot))
    hot_error(await hot.get(f"/v1/events/{event['event_id']}", headers=theirs), 404, "not_found")
    hot_error(
        await hot.get(f"/v1/events/{event['event_id']}/runs", headers=theirs), 404, "not_found"
    )
    listed = (await hot.get("/v1/events", headers=theirs)).json()
    assert listed["data"] == [] and listed["pagination"]["total"] == 0
    # their user.signup starts none of this environment's handlers
    mine = await publish(hot, "user.signup", {})
    theirs_event = await hot.post(
        "/v1/events", json={"event_type": "user.signup", "event_data": {}}, headers=theirs
    )
    assert theirs_event.status_code == 201
    their_runs = await hot.get(
        f"/v1/events/{theirs_event.json()['data']['event_id']}/runs", headers=theirs
    )
    assert their_runs.json()["data"] == []
    assert len((await hot.get(f"/v1/events/{mine['event_id']}/runs")).json()["data"]) == 2


async def test_the_routes_need_a_key(hot: httpx.AsyncClient) -> None:
    answer = await hot.get("/v1/events", headers={"Authorization": "Bearer wrong"})
    hot_error(answer, 401, "unauthorized")


async def test_the_routes_are_in_the_openapi_document(hot: httpx.AsyncClient) -> None:
    paths = (await hot.get("/openapi.json")).json()["paths"]
    assert {"get", "post"} <= set(paths["/v1/events"])
    assert "get" in paths["/v1/events/{event_id}"] and "get" in paths["/v1/events/{event_id}/runs"]
    assert "get" in paths["/v1/runs"] and "get" in paths["/v1/runs/stats"]
    assert "post" in paths["/v1/runs/{run_id}/cancel"]
    assert {"get", "post"} <= set(paths["/v1/streams/{stream_id}/subscribe"])
    assert "post" in paths["/v1/streams/subscribe-with-event"]

"""Hot's projects and context variables through the HTTP app on SQLite and PostgreSQL: the seed
page's shapes and codes, pagination, names and ids in URLs, bad input answered in Hot's error
envelope, environments kept apart, and a secret's value in no answer and no log line; then the
same through the official ``hot-dev`` SDK when it is installed."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from agentplex.core import apikeys, environments
from agentplex.settings import Settings
from tests.conftest import SettingsFactory, open_client

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SECRET = "postgres://user:Sup3r-S3cret-9d2b@host/db"
ADMIN = {"X-API-Key": "admin-key"}


class Recorder:
    """Every answer the tests received, to prove no secret value is in any of them."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def __call__(self, response: httpx.Response) -> None:
        await response.aread()
        self.texts.append(response.text + "\n" + str(response.headers))


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(rate_limit={"enabled": False}, auth={"api_key": "admin-key"})


@pytest.fixture
def answers() -> Recorder:
    return Recorder()


@pytest.fixture
async def hot(settings: Settings, answers: Recorder) -> AsyncIterator[httpx.AsyncClient]:
    async for client in open_client(settings):
        client.headers.update(ADMIN)
        client.event_hooks["response"].append(answers)
        yield client


@pytest.fixture(autouse=True)
def _no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert SECRET not in str(record.exc_text or "")


async def create(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    answer = await client.post("/v1/projects", json={"name": name})
    assert answer.status_code == 201, answer.text
    data: dict[str, Any] = answer.json()["data"]
    return data


def hot_error(answer: httpx.Response, status: int, code: str) -> str:
    """Hot's ``{error: {code, message, request_id}}`` with this status and code; the message."""
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code, error
    assert error["request_id"] == answer.headers.get("x-request-id", error["request_id"])
    assert error["message"] and "Traceback" not in answer.text
    return str(error["message"])


def check_meta(body: dict[str, Any]) -> None:
    assert set(body["meta"]) == {"request_id", "timestamp"}
    assert ISO_Z.match(body["meta"]["timestamp"])


# -- projects ----------------------------------------------------------------------------------


async def test_create_get_list_as_the_page_shows(hot: httpx.AsyncClient) -> None:
    answer = await hot.post("/v1/projects", json={"name": "my-project"})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    check_meta(body)
    project = body["data"]
    assert set(project) == {"project_id", "env_id", "name", "active", "created_at", "updated_at"}
    assert uuid.UUID(project["project_id"]) and uuid.UUID(project["env_id"])
    assert project["name"] == "my-project" and project["active"] is True
    assert ISO_Z.match(project["created_at"]) and project["updated_at"] == project["created_at"]
    env = (await hot.get("/v1/env")).json()["data"]
    assert project["env_id"] == env["env_id"]

    for ref in (project["project_id"], "my-project", project["project_id"].upper()):
        got = await hot.get(f"/v1/projects/{ref}")
        assert got.status_code == 200, got.text
        assert got.json()["data"] == project
        check_meta(got.json())

    listed = (await hot.get("/v1/projects")).json()
    assert listed["data"] == [project]
    assert listed["pagination"] == {"total": 1, "limit": 20, "offset": 0, "has_more": False}
    check_meta(listed)


async def test_rename_activate_deactivate_delete(hot: httpx.AsyncClient) -> None:
    project = await create(hot, "old-name")
    pid = project["project_id"]
    renamed = await hot.patch("/v1/projects/old-name", json={"name": "new-project-name"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["data"]["name"] == "new-project-name"
    assert renamed.json()["data"]["project_id"] == pid
    hot_error(await hot.get("/v1/projects/old-name"), 404, "not_found")

    off = await hot.post("/v1/projects/new-project-name/deactivate")
    assert off.status_code == 200 and off.json()["data"]["active"] is False
    assert (await hot.get(f"/v1/projects/{pid}")).json()["data"]["active"] is False
    on = await hot.post(f"/v1/projects/{pid}/activate")
    assert on.status_code == 200 and on.json()["data"]["active"] is True
    patched = await hot.patch(f"/v1/projects/{pid}", json={"active": False})
    assert patched.json()["data"]["active"] is False

    deleted = await hot.delete(f"/v1/projects/{pid}")
    assert deleted.status_code == 204 and deleted.content == b""
    message = hot_error(await hot.get(f"/v1/projects/{pid}"), 404, "not_found")
    assert message == "Project not found"
    hot_error(await hot.delete(f"/v1/projects/{pid}"), 404, "not_found")
    assert (await hot.get("/v1/projects")).json()["pagination"]["total"] == 0


async def test_pagination(hot: httpx.AsyncClient) -> None:
    names = [f"p{i:02d}" for i in range(25)]
    for name in reversed(names):
        await create(hot, name)
    first = (await hot.get("/v1/projects")).json()
    assert [p["name"] for p in first["data"]] == names[:20]
    assert first["pagination"] == {"total": 25, "limit": 20, "offset": 0, "has_more": True}
    rest = (await hot.get("/v1/projects", params={"offset": 20})).json()
    assert [p["name"] for p in rest["data"]] == names[20:]
    assert rest["pagination"] == {"total": 25, "limit": 20, "offset": 20, "has_more": False}
    middle = (await hot.get("/v1/projects", params={"limit": 3, "offset": 5})).json()
    assert [p["name"] for p in middle["data"]] == names[5:8]
    assert middle["pagination"]["has_more"] is True
    for bad in ({"limit": 0}, {"limit": "many"}, {"offset": -1}, {"limit": 100000}):
        message = hot_error(await hot.get("/v1/projects", params=bad), 400, "bad_request")
        assert "limit" in message or "offset" in message


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"name": "has space"}, "letter, a digit, '-', '_' or '.'"),
        ({"name": ""}, "1-100 characters"),
        ({"name": "x" * 101}, "1-100 characters"),
        ({"name": "550e8400-e29b-41d4-a716-446655440000"}, "UUID"),
        ({"name": 42}, "name"),
        ({}, "name"),
    ],
)
async def test_bad_names_are_400_saying_what_to_fix(
    hot: httpx.AsyncClient, body: dict[str, Any], says: str
) -> None:
    assert says in hot_error(await hot.post("/v1/projects", json=body), 400, "bad_request")
    await create(hot, "fine")
    patched = await hot.patch("/v1/projects/fine", json=body)
    if body:
        assert says in hot_error(patched, 400, "bad_request")


async def test_malformed_json_is_400(hot: httpx.AsyncClient) -> None:
    answer = await hot.post(
        "/v1/projects", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    hot_error(answer, 400, "bad_request")


async def test_duplicate_names_are_409(hot: httpx.AsyncClient) -> None:
    await create(hot, "taken")
    await create(hot, "other")
    message = hot_error(await hot.post("/v1/projects", json={"name": "taken"}), 409, "conflict")
    assert "taken" in message and "exists" in message
    hot_error(await hot.patch("/v1/projects/other", json={"name": "taken"}), 409, "conflict")


async def test_unknown_projects_are_404_everywhere(hot: httpx.AsyncClient) -> None:
    for method, path, body in [
        ("GET", "/v1/projects/nope", None),
        ("PATCH", "/v1/projects/nope", {"name": "x"}),
        ("DELETE", "/v1/projects/nope", None),
        ("POST", "/v1/projects/nope/activate", None),
        ("POST", "/v1/projects/nope/deactivate", None),
        ("GET", f"/v1/projects/{uuid.uuid4()}/context", None),
        ("POST", "/v1/projects/nope/context", {"key": "K", "value": SECRET}),
        ("PUT", "/v1/projects/nope/context/K", {"value": SECRET}),
        ("DELETE", "/v1/projects/nope/context/K", None),
    ]:
        answer = await hot.request(method, path, json=body)
        assert hot_error(answer, 404, "not_found") == "Project not found", (method, path)


async def test_another_environment_sees_nothing(hot: httpx.AsyncClient, answers: Recorder) -> None:
    project = await create(hot, "mine")
    await hot.post("/v1/projects/mine/context", json={"key": "K", "value": SECRET})
    services: Any = hot.app.app.state.services  # type: ignore[attr-defined]
    async with services.db.write() as conn:
        env = await environments.create(conn, "elsewhere")
        _key, plaintext = await apikeys.create(conn, env.id, "elsewhere")
    theirs = {"X-API-Key": plaintext}
    for ref in ("mine", project["project_id"]):
        hot_error(await hot.get(f"/v1/projects/{ref}", headers=theirs), 404, "not_found")
        hot_error(await hot.get(f"/v1/projects/{ref}/context", headers=theirs), 404, "not_found")
        hot_error(
            await hot.put(f"/v1/projects/{ref}/context/K", json={"value": "x"}, headers=theirs),
            404,
            "not_found",
        )
        hot_error(await hot.delete(f"/v1/projects/{ref}", headers=theirs), 404, "not_found")
    listed = (await hot.get("/v1/projects", headers=theirs)).json()
    assert listed["data"] == [] and listed["pagination"]["total"] == 0
    # the same name is free there
    made = await hot.post("/v1/projects", json={"name": "mine"}, headers=theirs)
    assert made.status_code == 201 and made.json()["data"]["env_id"] == env.id
    assert (await hot.get("/v1/projects/mine")).json()["data"] == project


async def test_the_routes_need_a_key(hot: httpx.AsyncClient) -> None:
    answer = await hot.get("/v1/projects", headers={"X-API-Key": "wrong"})
    hot_error(answer, 401, "unauthorized")


# -- context variables -------------------------------------------------------------------------


async def test_context_variables_as_the_page_shows(
    hot: httpx.AsyncClient, answers: Recorder
) -> None:
    await create(hot, "my-project")
    created = await hot.post(
        "/v1/projects/my-project/context",
        json={
            "key": "DATABASE_URL",
            "value": SECRET,
            "description": "Production database connection",
        },
    )
    assert created.status_code == 201, created.text
    check_meta(created.json())
    variable = created.json()["data"]
    assert set(variable) == {"key", "description", "created_at", "updated_at"}
    assert variable["key"] == "DATABASE_URL"
    assert variable["description"] == "Production database connection"
    assert ISO_Z.match(variable["created_at"])

    listed = (await hot.get("/v1/projects/my-project/context")).json()
    assert listed["data"] == [variable]
    assert listed["pagination"] == {"total": 1, "limit": 20, "offset": 0, "has_more": False}
    check_meta(listed)

    updated = await hot.put(
        "/v1/projects/my-project/context/DATABASE_URL",
        json={"value": SECRET + "-new", "description": "Updated description"},
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["data"]["description"] == "Updated description"
    assert updated.json()["data"]["created_at"] == variable["created_at"]
    kept = await hot.put(
        "/v1/projects/my-project/context/DATABASE_URL", json={"value": SECRET + "-newer"}
    )
    assert kept.json()["data"]["description"] == "Updated description"
    cleared = await hot.put(
        "/v1/projects/my-project/context/DATABASE_URL", json={"description": None}
    )
    assert cleared.status_code == 200 and cleared.json()["data"]["description"] is None

    fresh = await hot.put("/v1/projects/my-project/context/API_TOKEN", json={"value": SECRET})
    assert fresh.status_code == 201 and fresh.json()["data"]["key"] == "API_TOKEN"
    keys = [v["key"] for v in (await hot.get("/v1/projects/my-project/context")).json()["data"]]
    assert keys == ["API_TOKEN", "DATABASE_URL"]

    deleted = await hot.delete("/v1/projects/my-project/context/API_TOKEN")
    assert deleted.status_code == 204 and deleted.content == b""
    message = hot_error(
        await hot.delete("/v1/projects/my-project/context/API_TOKEN"), 404, "not_found"
    )
    assert message == "Context variable not found"

    # the value went in and is readable for runs, but no answer ever carried it
    services: Any = hot.app.app.state.services  # type: ignore[attr-defined]
    project = (await hot.get("/v1/projects/my-project")).json()["data"]
    values = await services.secrets.values(project["env_id"], project["project_id"])
    assert values == {"DATABASE_URL": SECRET + "-newer"}
    assert answers.texts and not any(SECRET in text for text in answers.texts)


async def test_context_pagination(hot: httpx.AsyncClient) -> None:
    await create(hot, "p")
    for i in range(22):
        posted = await hot.post("/v1/projects/p/context", json={"key": f"K{i:02d}", "value": "v"})
        assert posted.status_code == 201
    first = (await hot.get("/v1/projects/p/context")).json()
    assert len(first["data"]) == 20 and first["pagination"]["has_more"] is True
    rest = (await hot.get("/v1/projects/p/context", params={"offset": 20, "limit": 5})).json()
    assert [v["key"] for v in rest["data"]] == ["K20", "K21"]
    assert rest["pagination"] == {"total": 22, "limit": 5, "offset": 20, "has_more": False}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"key": "1DATABASE", "value": SECRET}, "valid environment variable name"),
        ({"key": "MY-KEY", "value": SECRET}, "valid environment variable name"),
        ({"key": "K" * 129, "value": SECRET}, "at most 128"),
        ({"key": "AGENTPLEX_MASTER_KEY", "value": SECRET}, "reserved"),
        ({"key": "BIG", "value": SECRET + "x" * 65536}, "64 KiB"),
        ({"key": "NUL", "value": SECRET + "\x00"}, "NUL"),
        ({"key": "NUM", "value": 12345}, "value"),
        ({"key": "NOVALUE"}, "value"),
        ({"value": SECRET}, "key"),
        ({"key": "LONG_DESC", "value": SECRET, "description": "d" * 1001}, "description"),
    ],
)
async def test_bad_context_variables_are_400_without_the_value(
    hot: httpx.AsyncClient, answers: Recorder, body: dict[str, Any], says: str
) -> None:
    await create(hot, "p")
    message = hot_error(await hot.post("/v1/projects/p/context", json=body), 400, "bad_request")
    assert says in message
    if "key" in body and "value" in body:
        key = body["key"]
        rest = {k: v for k, v in body.items() if k != "key"}
        put = await hot.put(f"/v1/projects/p/context/{key}", json=rest)
        assert says in hot_error(put, 400, "bad_request")
    assert (await hot.get("/v1/projects/p/context")).json()["data"] == []
    assert not any(SECRET in text for text in answers.texts)


async def test_a_duplicate_key_is_409_pointing_at_put(hot: httpx.AsyncClient) -> None:
    await create(hot, "p")
    body = {"key": "TOKEN", "value": SECRET}
    assert (await hot.post("/v1/projects/p/context", json=body)).status_code == 201
    message = hot_error(await hot.post("/v1/projects/p/context", json=body), 409, "conflict")
    assert "PUT" in message and SECRET not in message
    missing = await hot.put("/v1/projects/p/context/OTHER", json={"description": "d"})
    assert "send a value" in hot_error(missing, 404, "not_found")


async def test_deleting_a_project_deletes_its_context(hot: httpx.AsyncClient) -> None:
    await create(hot, "p")
    await hot.post("/v1/projects/p/context", json={"key": "K", "value": SECRET})
    assert (await hot.delete("/v1/projects/p")).status_code == 204
    again = await create(hot, "p")
    listed = (await hot.get(f"/v1/projects/{again['project_id']}/context")).json()
    assert listed["data"] == []


async def test_the_routes_are_in_the_openapi_document(hot: httpx.AsyncClient) -> None:
    paths = (await hot.get("/openapi.json")).json()["paths"]
    assert {"get", "post"} <= set(paths["/v1/projects"])
    assert {"get", "patch", "delete"} <= set(paths["/v1/projects/{project_id_or_slug}"])
    assert "post" in paths["/v1/projects/{project_id_or_slug}/activate"]
    assert "post" in paths["/v1/projects/{project_id_or_slug}/deactivate"]
    assert {"get", "post"} <= set(paths["/v1/projects/{project_id_or_slug}/context"])
    assert {"put", "delete"} <= set(paths["/v1/projects/{project_id_or_slug}/context/{key}"])


# -- the official SDK --------------------------------------------------------------------------


async def test_the_hot_sdk_drives_projects_and_context(
    hot: httpx.AsyncClient, answers: Recorder
) -> None:
    import hot as sdk

    transport = httpx.ASGITransport(app=hot.app)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport, event_hooks={"response": [answers]}) as http:
        client = sdk.AsyncHotClient(token="admin-key", base_url="http://agentplex/", client=http)
        project = await client.projects.create({"name": "sdk-project"})
        assert project["name"] == "sdk-project" and project["active"] is True
        assert await client.projects.get("sdk-project") == project
        assert await client.projects.get(project["project_id"]) == project
        listed = await client.projects.list(limit=5)
        assert [p["name"] for p in listed["data"]] == ["sdk-project"]
        assert listed["pagination"]["limit"] == 5
        renamed = await client.projects.update("sdk-project", {"name": "sdk-renamed"})
        assert renamed["name"] == "sdk-renamed"
        assert (await client.projects.deactivate("sdk-renamed"))["active"] is False
        assert (await client.projects.activate("sdk-renamed"))["active"] is True

        variable = await client.context.create(
            "sdk-renamed", {"key": "API_KEY", "value": SECRET, "description": "the key"}
        )
        assert variable["key"] == "API_KEY" and "value" not in variable
        updated = await client.context.update("sdk-renamed", "API_KEY", {"value": SECRET + "2"})
        assert updated["description"] == "the key"
        context = await client.context.list("sdk-renamed")
        assert [v["key"] for v in context["data"]] == ["API_KEY"]
        await client.context.delete("sdk-renamed", "API_KEY")
        assert (await client.context.list("sdk-renamed"))["data"] == []

        with pytest.raises(sdk.HotApiError) as caught:
            await client.projects.get("missing")
        assert caught.value.status_code == 404 and caught.value.code == "not_found"
        assert caught.value.message == "Project not found"
        with pytest.raises(sdk.HotApiError) as bad:
            await client.context.create("sdk-renamed", {"key": "1BAD", "value": SECRET})
        assert bad.value.status_code == 400 and bad.value.code == "bad_request"

        await client.projects.delete("sdk-renamed")
        assert (await client.projects.list())["data"] == []
    assert not any(SECRET in text for text in answers.texts)

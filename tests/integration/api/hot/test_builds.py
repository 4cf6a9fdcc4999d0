"""Hot's build endpoints through the HTTP app on SQLite and PostgreSQL: upload (hash verified,
idempotent by build_id), the archive checks, download, deploy replacing the handlers and
schedules, the lists; and the database blob store shared by two servers."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentplex.settings import Settings
from tests.conftest import SettingsFactory, open_client

HELLO = {
    "hello/__init__.py": "",
    "hello/handlers.py": "def on_signup(event):\n    return event\n",
    "hello/tasks.py": "def nightly():\n    pass\n",
    "hello/math.py": "def add(a, b):\n    return a + b\n",
}
MANIFEST = {
    "handlers": [{"event": "user.signup", "function": "hello.handlers:on_signup"}],
    "schedules": [{"cron": "0 0 * * *", "tz": "Europe/Paris", "function": "hello.tasks:nightly"}],
    "functions": ["hello.math:add"],
}


def make_zip(files: dict[str, str | bytes], manifest: dict[str, Any] | None = None) -> bytes:
    import json

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        if manifest is not None:
            archive.writestr("agentplex.json", json.dumps(manifest))
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def hot_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for client in open_client(settings):
        yield client


@pytest.fixture
async def hot(make_settings: SettingsFactory) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(server={"build_max_bytes": 2 * 1024 * 1024})
    async for client in hot_client(settings):
        created = await client.post("/v1/projects", json={"name": "hello"})
        assert created.status_code == 201, created.text
        yield client


async def upload(
    client: httpx.AsyncClient,
    data: bytes,
    *,
    project: str = "hello",
    hash: str | None = None,
    build_id: str | None = None,
) -> httpx.Response:
    form = {"hash": sha(data) if hash is None else hash}
    if build_id:
        form["build_id"] = build_id
    return await client.post(
        f"/v1/projects/{project}/builds",
        data=form,
        files={"file": ("build.zip", data, "application/zip")},
    )


async def test_upload_get_download_round_trip(hot: httpx.AsyncClient) -> None:
    data = make_zip(HELLO, MANIFEST)
    response = await upload(hot, data)
    assert response.status_code == 201, response.text
    build = response.json()["data"]
    assert build["hash"] == sha(data) and build["size"] == len(data)
    assert build["build_type"] == "bundle" and build["deployed"] is False
    assert build["project_name"] == "hello" and build["active"] is True
    assert build["storage_path"].startswith(build["storage_backend"] + "://")
    assert build["manifest"]["functions"] == ["hello.math:add"]

    got = await hot.get(f"/v1/projects/hello/builds/{build['build_id']}")
    assert got.status_code == 200 and got.json()["data"]["build_id"] == build["build_id"]
    by_id = await hot.get(f"/v1/projects/{build['project_id']}/builds/{build['build_id']}")
    assert by_id.status_code == 200

    download = await hot.get(f"/v1/projects/hello/builds/{build['build_id']}/download")
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/zip"
    assert download.content == data


async def test_same_build_id_is_idempotent(hot: httpx.AsyncClient) -> None:
    data = make_zip(HELLO, MANIFEST)
    build_id = str(uuid.uuid4())
    first = await upload(hot, data, build_id=build_id)
    assert first.status_code == 201 and "x-build-exists" not in first.headers
    again = await upload(hot, data, build_id=build_id)
    assert again.status_code == 200
    assert again.headers["x-build-exists"] == "true"
    assert again.json()["data"]["build_id"] == build_id
    listed = (await hot.get("/v1/projects/hello/builds")).json()
    assert listed["pagination"]["total"] == 1
    other = await upload(hot, make_zip({**HELLO, "extra.txt": "x"}, MANIFEST), build_id=build_id)
    assert other.status_code == 409
    assert "new build_id" in other.json()["error"]["message"]


async def test_hash_mismatch_and_bad_fields(hot: httpx.AsyncClient) -> None:
    data = make_zip(HELLO, MANIFEST)
    wrong = await upload(hot, data, hash=sha(b"something else"))
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == "bad_request"
    assert "hash mismatch" in wrong.json()["error"]["message"]
    assert (await upload(hot, data, hash="not-hex")).status_code == 400
    assert (await upload(hot, data, hash="sha256:" + sha(data).upper())).status_code == 201
    bad_id = await upload(hot, data, build_id="nope")
    assert bad_id.status_code == 400 and "UUID" in bad_id.json()["error"]["message"]
    no_file = await hot.post("/v1/projects/hello/builds", data={"hash": sha(data)})
    assert no_file.status_code == 400 and "file" in no_file.json()["error"]["message"]
    as_json = await hot.post("/v1/projects/hello/builds", json={"hash": "x"})
    assert as_json.status_code == 400 and "multipart" in as_json.json()["error"]["message"]
    unknown = await upload(hot, data, project="nope")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    maybe = await hot.post(
        "/v1/projects/hello/builds",
        data={"hash": sha(data), "live": "maybe"},
        files={"file": ("build.zip", data, "application/zip")},
    )
    assert maybe.status_code == 400 and "live must be true or false" in maybe.text


def _zip_with(info: zipfile.ZipInfo, content: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(info, content)
    return buffer.getvalue()


async def test_bad_archives_are_refused_with_the_fix(hot: httpx.AsyncClient) -> None:
    async def refused(data: bytes) -> str:
        response = await upload(hot, data)
        assert response.status_code == 400, response.text
        body = response.json()["error"]
        assert body["code"] == "bad_request"
        return str(body["message"])

    assert "not a zip" in await refused(b"plain text, not a zip")
    assert "outside the archive" in await refused(_zip_with(zipfile.ZipInfo("../evil.py")))
    assert "outside the archive" in await refused(_zip_with(zipfile.ZipInfo("/etc/cron.d/x")))
    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    assert "symbolic link" in await refused(_zip_with(link, b"/etc/passwd"))
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\0" * (20 * 1024 * 1024))
    assert "zip bomb" in await refused(bomb.getvalue())
    bad_cron = {"schedules": [{"cron": "61 * * * *", "function": "hello.tasks:nightly"}]}
    assert "schedules[0].cron" in await refused(make_zip(HELLO, bad_cron))
    bad_tz = {
        "schedules": [{"cron": "0 0 * * *", "tz": "Mars/Base", "function": "hello.tasks:nightly"}]
    }
    assert "schedules[0].tz" in await refused(make_zip(HELLO, bad_tz))
    missing = {"handlers": [{"event": "user.signup", "function": "hello.nothere:fn"}]}
    message = await refused(make_zip(HELLO, missing))
    assert "handlers[0].function" in message and "hello/nothere.py" in message
    too_big = await upload(hot, make_zip({"big.bin": os.urandom(3 * 1024 * 1024)}))
    assert too_big.status_code == 413 and "build_max_bytes" in too_big.json()["error"]["message"]


async def test_deploy_replaces_handlers_and_schedules(hot: httpx.AsyncClient) -> None:
    none = await hot.get("/v1/projects/hello/builds/deployed")
    assert none.status_code == 404 and none.json()["error"]["code"] == "not_found"
    assert (await hot.get("/v1/projects/hello/builds/live")).status_code == 404
    first = (await upload(hot, make_zip(HELLO, MANIFEST))).json()["data"]
    deployed = await hot.post(f"/v1/projects/hello/builds/{first['build_id']}/deploy")
    assert deployed.status_code == 200 and deployed.json()["data"]["deployed"] is True

    handlers = (await hot.get("/v1/projects/hello/event-handlers")).json()
    assert handlers["pagination"]["total"] == 1
    [handler] = handlers["data"]
    assert handler["event_type"] == "user.signup" and handler["build_id"] == first["build_id"]
    assert (handler["ns"], handler["var"]) == ("::hello::handlers", "on_signup")
    [schedule] = (await hot.get("/v1/projects/hello/schedules")).json()["data"]
    assert (schedule["cron"], schedule["tz"]) == ("0 0 * * *", "Europe/Paris")
    assert (schedule["ns"], schedule["var"]) == ("::hello::tasks", "nightly")

    second_manifest = {
        "handlers": [
            {"event": "user.deleted", "function": "hello.handlers:on_signup"},
            {"event": "order.paid", "function": "::hello::math/add"},
        ],
    }
    second = (await upload(hot, make_zip(HELLO, second_manifest))).json()["data"]
    assert (await hot.post(f"/v1/projects/hello/builds/{second['build_id']}/deploy")).is_success
    handlers = (await hot.get("/v1/projects/hello/event-handlers")).json()["data"]
    assert sorted(h["event_type"] for h in handlers) == ["order.paid", "user.deleted"]
    assert {h["build_id"] for h in handlers} == {second["build_id"]}
    assert (await hot.get("/v1/projects/hello/schedules")).json()["data"] == []
    current = (await hot.get("/v1/projects/hello/builds/deployed")).json()["data"]
    assert current["build_id"] == second["build_id"]
    old = (await hot.get(f"/v1/projects/hello/builds/{first['build_id']}")).json()["data"]
    assert old["deployed"] is False

    missing = await hot.post(f"/v1/projects/hello/builds/{uuid.uuid4()}/deploy")
    assert missing.status_code == 404
    assert (await hot.get("/v1/projects/hello/builds/not-a-uuid")).status_code == 404


async def test_lists_span_projects_with_names(hot: httpx.AsyncClient) -> None:
    assert (await hot.post("/v1/projects", json={"name": "other"})).status_code == 201
    for project in ("hello", "other", "hello"):
        assert (await upload(hot, make_zip(HELLO, MANIFEST), project=project)).status_code == 201
    everything = (await hot.get("/v1/builds", params={"limit": 2})).json()
    assert everything["pagination"] == {"total": 3, "limit": 2, "offset": 0, "has_more": True}
    rest = (await hot.get("/v1/builds", params={"limit": 2, "offset": 2})).json()
    names = [b["project_name"] for b in everything["data"] + rest["data"]]
    assert sorted(names) == ["hello", "hello", "other"]
    assert len((await hot.get("/v1/projects/other/builds")).json()["data"]) == 1
    assert (await hot.get("/v1/projects/nope/builds")).status_code == 404


async def test_database_blob_store_is_shared_by_two_servers(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A build uploaded through one server downloads and deploys through another that shares
    only the database (its own data directory)."""
    one = make_settings(server={"data_dir": tmp_path / "one", "blob_store": "database"})
    two = make_settings(server={"data_dir": tmp_path / "two", "blob_store": "database"})
    data = make_zip(HELLO, MANIFEST)
    async for first in hot_client(one):
        assert (await first.post("/v1/projects", json={"name": "shared"})).status_code == 201
        async for second in hot_client(two):
            build = (await upload(first, data, project="shared")).json()["data"]
            assert build["storage_backend"] == "database"
            url = f"/v1/projects/shared/builds/{build['build_id']}"
            assert (await second.get(url + "/download")).content == data
            assert (await second.post(url + "/deploy")).json()["data"]["deployed"] is True
            assert not (tmp_path / "one" / "blobs").exists()


async def test_local_blob_stores_are_not_shared(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Two servers with local stores: the second says what to configure, not a bare 500."""
    one = make_settings(server={"data_dir": tmp_path / "one", "blob_store": "local"})
    two = make_settings(server={"data_dir": tmp_path / "two", "blob_store": "local"})
    async for first in hot_client(one):
        assert (await first.post("/v1/projects", json={"name": "shared"})).status_code == 201
        build = (await upload(first, make_zip(HELLO, MANIFEST), project="shared")).json()["data"]
        async for second in hot_client(two):
            url = f"/v1/projects/shared/builds/{build['build_id']}/download"
            response = await second.get(url)
            assert response.status_code == 503
            assert 'blob_store = "database"' in response.json()["error"]["message"]

"""Events and runs on real SQLite and PostgreSQL: the migration matches tables.py, publishing
writes the event and one queued run per handler atomically, hot:call resolves its function
among the deployed builds, and a schedule's fire key is queued once."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from typing import Any

import pytest
import sqlalchemy as sa

from agentplex.core.blobs import DatabaseBlobStore
from agentplex.core.builds import BuildService
from agentplex.core.events import enqueue, new_run_row, publish
from agentplex.core.manifest import FunctionRef
from agentplex.core.projects import ProjectService
from agentplex.db.engine import Database
from agentplex.db.records import events as event_records
from agentplex.db.records import runs as run_records
from agentplex.db.tables import events, runs
from agentplex.errors import BadRequest

FILES = {
    "hello/__init__.py": "",
    "hello/handlers.py": "def on_signup(e):\n    pass\n\ndef audit(e):\n    pass\n",
    "hello/math.py": "def add(a, b):\n    return a + b\n",
}


def archive(manifest: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in FILES.items():
            zf.writestr(name, content)
        zf.writestr("agentplex.json", json.dumps(manifest))
    return buffer.getvalue()


HELLO = {
    "handlers": [
        {"event": "user.signup", "function": "hello.handlers:on_signup"},
        {"event": "user.signup", "function": "hello.handlers:audit"},
        {"event": "user.deleted", "function": "hello.handlers:audit"},
    ],
    "functions": ["hello.math:add"],
}


async def deploy(db: Database, env_id: str, project: str, manifest: dict[str, Any]) -> str:
    service = BuildService(db, DatabaseBlobStore(db))
    data = archive(manifest)
    upload = await service.upload(env_id, project, data, hashlib.sha256(data).hexdigest())
    await service.deploy(env_id, project, upload.build.build_id)
    return upload.build.build_id


async def count(db: Database, table: sa.Table) -> int:
    async with db.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


async def test_publish_queues_one_run_per_handler(db: Database, env_id: str) -> None:
    project = await ProjectService(db).create(env_id, "hello")
    build_id = await deploy(db, env_id, "hello", HELLO)
    data = {"user_id": "123", "name": "Zoë 🚀"}
    async with db.write() as conn:
        published = await publish(conn, env_id, "user.signup", data, origin_run_id=None)
    event, queued = published.event, published.runs
    assert event.event_type == "user.signup" and event.event_data == data
    assert sorted(r.function for r in queued) == [
        "hello.handlers:audit",
        "hello.handlers:on_signup",
    ]
    for run in queued:
        assert run.status == "queued" and run.run_type == "event"
        assert run.event_id == event.event_id and run.stream_id == event.stream_id
        assert run.build_id == build_id and run.project_id == project.project_id
        assert run.ns == "::hello::handlers" and run.fence == 0 and run.attempt == 0
        assert run.input == {
            "event_id": event.event_id,
            "event_type": "user.signup",
            "event_data": data,
        }
    async with db.read() as conn:
        stored = await run_records.by_event(conn, env_id, event.event_id)
        assert await event_records.get(conn, env_id, event.event_id) is not None
    assert {r["run_id"] for r in stored} == {r.run_id for r in queued}
    assert {r["project_name"] for r in stored} == {"hello"}

    # no handler: the event alone; a deactivated project's handlers do not run
    async with db.write() as conn:
        assert (await publish(conn, env_id, "nobody.listens", {})).runs == ()
    await ProjectService(db).deactivate(env_id, "hello")
    async with db.write() as conn:
        assert (await publish(conn, env_id, "user.signup", {})).runs == ()
    assert await count(db, events) == 3 and await count(db, runs) == 2


async def test_publish_is_atomic(
    db: Database, env_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ProjectService(db).create(env_id, "hello")
    await deploy(db, env_id, "hello", HELLO)

    async def broken_insert(conn: Any, rows: Any) -> None:
        await conn.execute(runs.insert(), [dict(rows[0])])  # the first run is written, then
        raise RuntimeError("the database went away")

    monkeypatch.setattr(run_records, "insert", broken_insert)
    with pytest.raises(RuntimeError):
        async with db.write() as conn:
            await publish(conn, env_id, "user.signup", {"n": 1})
    assert await count(db, events) == 0 and await count(db, runs) == 0

    monkeypatch.undo()
    with pytest.raises(ZeroDivisionError):  # the caller's transaction fails after publishing
        async with db.write() as conn:
            await publish(conn, env_id, "user.signup", {"n": 2})
            _ = 1 / 0
    assert await count(db, events) == 0 and await count(db, runs) == 0


async def test_hot_call_resolves_the_function(db: Database, env_id: str) -> None:
    project = await ProjectService(db).create(env_id, "hello")
    build_id = await deploy(db, env_id, "hello", HELLO)
    for fn in ("::hello::math/add", "hello.math:add"):
        async with db.write() as conn:
            published = await publish(conn, env_id, "hot:call", {"fn": fn, "args": [1, 2]})
        (run,) = published.runs
        assert (run.run_type, run.function, run.ns, run.var) == (
            "call",
            "hello.math:add",
            "::hello::math",
            "add",
        )
        assert run.build_id == build_id and run.input == {"fn": fn, "args": [1, 2]}
        assert published.event.project_id == project.project_id
    # a handler's function is callable too
    async with db.write() as conn:
        published = await publish(conn, env_id, "hot:call", {"fn": "::hello::handlers/audit"})
    assert published.runs[0].input == {"fn": "::hello::handlers/audit", "args": []}

    bad = [
        ({"fn": "::hello::math/sub", "args": []}, "::hello::math/sub"),
        ({"fn": "not a function"}, "not a function"),
        ({"args": [1]}, "event_data.fn"),
        ({"fn": "hello.math:add", "args": "1, 2"}, "args"),
        ("hello.math:add", "event_data"),
    ]
    for data, named in bad:
        with pytest.raises(BadRequest, match=named.replace("(", r"\(")):
            async with db.write() as conn:
                await publish(conn, env_id, "hot:call", data)
    assert await count(db, events) == 3 and await count(db, runs) == 3

    # the same function in two deployed projects is ambiguous
    await ProjectService(db).create(env_id, "other")
    await deploy(db, env_id, "other", {"functions": ["hello.math:add"]})
    with pytest.raises(BadRequest, match="several deployed projects"):
        async with db.write() as conn:
            await publish(conn, env_id, "hot:call", {"fn": "hello.math:add"})


async def test_a_fire_key_is_queued_once(db: Database, env_id: str) -> None:
    project = await ProjectService(db).create(env_id, "hello")

    def fire() -> dict[str, Any]:
        return new_run_row(
            env_id,
            project_id=project.project_id,
            build_id=None,
            run_type="schedule",
            function=FunctionRef("hello.handlers", "audit"),
            input={},
            dedupe_key="schedule-1@2026-01-01T00:00:00Z",
        )

    async with db.write() as conn:
        assert await enqueue(conn, fire()) is True
    async with db.write() as conn:
        assert await enqueue(conn, fire()) is False
    assert await count(db, runs) == 1
    with pytest.raises(BadRequest):
        new_run_row(
            env_id,
            project_id=project.project_id,
            build_id=None,
            run_type="schedule",
            function=FunctionRef("hello.handlers", "audit"),
            input={},
            max_attempts=0,
        )

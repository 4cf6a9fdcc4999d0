"""The worker with the real executor: a build whose handlers are declared only with the SDK's
decorators (discovered in a sandbox at upload), its runs executed in warm bubblewrap sandboxes
of the build, on SQLite and PostgreSQL."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentplex.core.blobs import LocalBlobStore
from agentplex.core.builds import BuildService, read_archive
from agentplex.core.streams import StreamItem
from agentplex.db.engine import Database
from agentplex.db.records import run_vars as var_records
from agentplex.engine.executor import SandboxRunExecutor
from agentplex.sandbox import SandboxManager
from agentplex.settings import RunSettings
from tests.integration.engine.conftest import Engine, deploy

HANDLERS = """
from agentplex import sdk


@sdk.on_event("user.signup")
def on_signup(event):
    user = event["event_data"]["user"]
    print("welcome", user)
    sdk.emit({"step": 1})
    sdk.capture("user", user, {"source": "signup"})
    sdk.publish("user.welcomed", {"user": user})
    return {"welcomed": user}


@sdk.on_event("user.welcomed")
def on_welcomed(event):
    return sdk.current_run()["run_id"]
"""
MATH = """
import os
from agentplex import sdk


@sdk.function
def add(a, b):
    return a + b


@sdk.function
def secret():
    return os.environ.get("API_TOKEN")
"""
FILES = {
    "hello/__init__.py": "",
    "hello/handlers.py": HANDLERS,
    "hello/math.py": MATH,
}


def types(items: list[StreamItem]) -> list[str]:
    return [str(i.data["type"]) for i in items]


def completed(items: list[StreamItem]) -> bool:
    return "stream:complete" in types(items)


@pytest.fixture
async def executor(
    db: Database, tmp_path: Path
) -> AsyncIterator[tuple[SandboxRunExecutor, BuildService]]:
    blobs = LocalBlobStore(tmp_path / "blobs")
    async with SandboxManager(tmp_path / "sandbox-data", pool_size=1) as manager:
        ex = SandboxRunExecutor(
            manager, RunSettings(warm_per_build=2), functools.partial(read_archive, db, blobs)
        )
        builds = BuildService(db, blobs, discover=ex.discover)
        try:
            yield ex, builds
        finally:
            await ex.close()


async def test_sdk_declared_handlers_run_in_sandboxes(
    engine: Engine,
    executor: tuple[SandboxRunExecutor, BuildService],
    db: Database,
    env_id: str,
    project_id: str,
) -> None:
    sandbox_executor, builds = executor
    await engine.secrets.create(env_id, "hello", "API_TOKEN", "s3cret")
    build_id = await deploy(builds, env_id, "hello", None, FILES)  # no agentplex.json
    build = await builds.get(env_id, "hello", build_id)
    assert {h.event for h in build.manifest.handlers} == {"user.signup", "user.welcomed"}
    assert {f.target for f in build.manifest.functions} >= {"hello.math:add"}
    await engine.worker(sandbox_executor, workers=4)

    published = await engine.publish(env_id, "user.signup", {"user": "zoë"})
    (run,) = published.runs
    items = await engine.wait_items(published.event.stream_id, completed, timeout=120)
    assert types(items)[:3] == ["event:published", "run:start", "run:update"]
    assert types(items)[-3:] == ["run:stop", "run:update", "stream:complete"]
    data = [i.data for i in items if i.data["type"] == "stream:data"]
    text = "".join(d["payload"]["text"] for d in data if d["data_type"] == "text")
    assert "welcome zoë" in text
    assert {"step": 1} in [d["payload"] for d in data if d["data_type"] == "json"]
    assert items[-2].data["run"]["result"] == {"$ok": {"welcomed": "zoë"}}
    async with db.read() as conn:
        found, _ = await var_records.page(conn, run.run_id)
    assert [(v["var"], v["value"], v["meta"]) for v in found] == [
        ("user", "zoë", {"source": "signup"})
    ]

    # the event the handler published ran too, with its origin
    child = await _only_child(engine, db, run.run_id)
    items = await engine.wait_items(child["stream_id"], completed, timeout=60)
    assert items[-2].data["run"]["result"] == {"$ok": child["run_id"]}
    assert items[-2].data["run"]["origin_run_id"] == run.run_id

    call = await engine.publish(env_id, "hot:call", {"fn": "::hello::math/add", "args": [2, 3]})
    items = await engine.wait_items(call.event.stream_id, completed, timeout=60)
    assert items[-2].data["run"]["result"] == {"$ok": 5}
    call = await engine.publish(env_id, "hot:call", {"fn": "hello.math:secret"})
    items = await engine.wait_items(call.event.stream_id, completed, timeout=60)
    assert items[-2].data["run"]["result"] == {"$ok": "s3cret"}


async def _only_child(engine: Engine, db: Database, origin: str) -> dict[str, Any]:
    import sqlalchemy as sa

    from agentplex.db.tables import runs

    async with db.read() as conn:
        rows = (await conn.execute(sa.select(runs).where(runs.c.origin_run_id == origin))).all()
    (row,) = rows
    return dict(row._mapping)

"""The run engine as the server wires it: workers, sweeper and scheduler started with the
services, the discover hook of build uploads, and a deploy dropping the replaced build's warm
sandboxes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agentplex.core.blobs import LocalBlobStore
from agentplex.core.builds import BuildService
from agentplex.core.manifest import FunctionRef, HandlerSpec, Manifest
from agentplex.db.engine import Database
from agentplex.engine.worker import UnavailableExecutor
from agentplex.services import build_services
from tests.conftest import SettingsFactory
from tests.integration.engine.conftest import MemoryExecutor, deploy


async def test_the_services_run_the_engine(make_settings: SettingsFactory) -> None:
    settings = make_settings(sandbox={"enabled": False}, runs={"workers": 3})
    services = build_services(settings)
    await services.start()
    try:
        assert services.workers is not None and services.workers.slots == 3
        assert isinstance(services.executor, UnavailableExecutor)
        assert services.queue is services.engine.queue
        await services.projects.create(services.default_env_id, "hello")
        await deploy(
            services.builds,
            services.default_env_id,
            "hello",
            {"functions": ["hello.tasks:run"]},
        )
        published = await services.runs.publish(
            services.default_env_id, "hot:call", {"fn": "hello.tasks:run", "args": []}
        )
        (run,) = published.runs
        for _ in range(200):
            got = await services.runs.get(services.default_env_id, run.run_id)
            if got.terminal:
                break
            await asyncio.sleep(0.02)
        assert got.status == "failed" and got.attempt == 1
        assert "sandbox.enabled = false" in got.error["message"]
    finally:
        await services.stop()

    idle = build_services(make_settings(sandbox={"enabled": False}, runs={"workers": 0}))
    await idle.start()
    try:
        assert idle.workers is None
    finally:
        await idle.stop()


async def test_uploads_merge_discovered_entry_points(
    db: Database, env_id: str, project_id: str, tmp_path: Path
) -> None:
    found = Manifest(handlers=(HandlerSpec("user.signup", FunctionRef("hello.tasks", "run")),))
    asked: list[bytes] = []

    async def discover(archive: bytes) -> Manifest:
        asked.append(archive)
        return found

    executor = MemoryExecutor()
    replaced: list[tuple[str, str | None]] = []

    async def on_deployed(build: object, previous: str | None) -> None:
        replaced.append((build.build_id, previous))
        if previous is not None:
            await executor.forget_build(previous)

    builds = BuildService(
        db, LocalBlobStore(tmp_path / "blobs"), discover=discover, on_deployed=on_deployed
    )
    first = await deploy(builds, env_id, "hello", {"functions": ["hello.tasks:run"]})
    build = await builds.get(env_id, "hello", first)
    assert build.manifest.handlers == found.handlers  # discovered
    assert [f.target for f in build.manifest.functions] == ["hello.tasks:run"]  # declared
    assert len(asked) == 1

    # no Python in the archive: nothing to discover
    second = await deploy(
        builds, env_id, "hello", {"handlers": []}, files={"README.md": "just text"}
    )
    assert len(asked) == 1
    assert replaced == [(first, None), (second, first)] and executor.forgotten == [first]
    assert await builds.archive(env_id, second)

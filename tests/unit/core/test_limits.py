"""Per-environment limits: live sandboxes and concurrent template builds (issue 7)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentplex.core.ports import Template
from agentplex.core.templates import BuildRequest, BuildStep
from agentplex.errors import ResourceLimit
from agentplex.settings import SandboxSettings
from tests.unit.core.conftest import Core


async def _create(core: Core) -> str:
    record, _token = await core.sandboxes.create(
        core.env_id, template=None, timeout_seconds=None, internet_access=False, env_vars={}
    )
    return record.id


async def test_live_sandboxes_per_environment_are_capped(core: Core) -> None:
    core.sandboxes.settings = SandboxSettings(
        sweep_seconds=0.05, default_timeout_seconds=0, max_per_environment=2
    )
    first = await _create(core)
    second = await _create(core)
    await core.sandboxes.pause(core.env_id, second)  # paused still counts
    with pytest.raises(ResourceLimit, match="limit") as refused:
        await _create(core)
    assert refused.value.status == 403 and refused.value.code == "resource_limit"
    assert refused.value.details == {"limit": 2, "current": 2}
    assert len(core.backend.sandboxes) == 2  # nothing was started for the refused one

    # a stopped sandbox frees its slot, and starting it again takes one
    await core.sandboxes.stop(core.env_id, first)
    third = await _create(core)
    with pytest.raises(ResourceLimit):
        await core.sandboxes.start_sandbox(core.env_id, first)
    await core.sandboxes.delete(core.env_id, third)
    assert (await core.sandboxes.start_sandbox(core.env_id, first)).status == "running"


async def test_concurrent_creates_cannot_overrun_the_limit(core: Core) -> None:
    core.sandboxes.settings = SandboxSettings(
        sweep_seconds=0.05, default_timeout_seconds=0, max_per_environment=3
    )
    original = core.backend.create

    async def slow_create(sandbox_id: str, template: Template, **kwargs: Any) -> None:
        await asyncio.sleep(0.05)  # every request is past its check before any record exists
        await original(sandbox_id, template, **kwargs)

    core.backend.create = slow_create  # type: ignore[method-assign]
    results = await asyncio.gather(*(_create(core) for _ in range(6)), return_exceptions=True)
    assert sum(isinstance(r, str) for r in results) == 3
    assert sum(isinstance(r, ResourceLimit) for r in results) == 3


async def test_concurrent_template_builds_per_environment_are_capped(core: Core) -> None:
    core.templates.max_builds = 1
    release = asyncio.Event()
    original = core.backend.create

    async def held_create(sandbox_id: str, template: Template, **kwargs: Any) -> None:
        await release.wait()  # the build stays "building" until the test lets it go
        await original(sandbox_id, template, **kwargs)

    core.backend.create = held_create  # type: ignore[method-assign]
    steps = [BuildStep("true")]
    await core.templates.build(core.env_id, BuildRequest(name="one", base="bash", steps=steps))
    with pytest.raises(ResourceLimit, match="limit") as refused:
        await core.templates.build(core.env_id, BuildRequest(name="two", base="bash", steps=steps))
    assert refused.value.status == 403 and refused.value.details == {"limit": 1, "current": 1}
    assert [t.name for t in await core.templates.custom(core.env_id)] == ["one"]
    release.set()
    for _ in range(200):
        if (await core.templates.build_record(core.env_id, "one")).status != "building":
            break
        await asyncio.sleep(0.01)
    record = await core.templates.build(
        core.env_id, BuildRequest(name="two", base="bash", steps=steps)
    )
    assert record.status == "building"

"""Templates over the in-memory backend: one resolution, custom builds, deletion rules."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentplex.core.templates import BuildRequest, BuildStep, CustomTemplate
from agentplex.errors import BadRequest, Conflict, TemplateNotFound, TemplateNotReady
from agentplex.sandbox.memory import MemorySandbox
from tests.unit.core.conftest import Core


async def _built(core: Core, build_id: str) -> CustomTemplate:
    for _ in range(100):
        record = await core.templates.build_record(core.env_id, build_id)
        if record.status != "building":
            return record
        await asyncio.sleep(0.01)
    raise AssertionError("the build did not finish")


async def test_no_reference_means_the_default_template(core: Core) -> None:
    assert (await core.templates.resolve(core.env_id, None)).id == "python"
    assert (await core.templates.resolve(core.env_id, "bash")).id == "bash"
    with pytest.raises(TemplateNotFound, match="built in: bash, python"):
        await core.templates.resolve(core.env_id, "cobol")


async def test_a_build_runs_its_steps_in_a_sandbox_with_a_writable_layer(core: Core) -> None:
    seen: list[tuple[str, Any]] = []

    def runner(sandbox: MemorySandbox, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        seen.append((body["command"], sandbox.template.layer_writable))
        return {"stdout": f"ran {body['command']}\n"}

    core.backend.runner = runner
    request = BuildRequest(
        name="tools",
        base="python",
        steps=[BuildStep("pip install x"), BuildStep("make", "/src")],
        env={"MODE": "prod"},
        memory_mb=2048,
    )
    record = await core.templates.build(core.env_id, request)
    assert record.status == "building"
    done = await _built(core, record.id)
    assert done.status == "active", done.logs
    assert "Step 2/2: RUN make" in done.logs and "ran make" in done.logs
    assert seen == [("pip install x", True), ("make", True)]
    assert core.backend.sandboxes == {}  # the build sandbox is gone
    template = await core.templates.resolve(core.env_id, "tools")
    assert template.layer_id == record.id and not template.layer_writable
    assert dict(template.env) == {"MODE": "prod"} and template.resources.memory_mb == 2048
    record2, _ = await core.sandboxes.create(
        core.env_id, template="tools", timeout_seconds=None, internet_access=False, env_vars={}
    )
    assert core.backend.sandboxes[record2.id].env == {"MODE": "prod"}
    with pytest.raises(Conflict, match="used by sandboxes"):
        await core.templates.delete(core.env_id, "tools")
    await core.sandboxes.delete(core.env_id, record2.id)
    await core.templates.delete(core.env_id, "tools")
    assert record.id not in core.backend.layers
    with pytest.raises(TemplateNotFound):
        await core.templates.resolve(core.env_id, "tools")


async def test_a_failing_step_fails_the_build_and_names_the_step(core: Core) -> None:
    def runner(_sandbox: MemorySandbox, _kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if body["command"] == "false":
            return {"exit_code": 1, "stderr": "it broke\n"}
        return {}

    core.backend.runner = runner
    request = BuildRequest(name="bad", base="bash", steps=[BuildStep("true"), BuildStep("false")])
    record = await core.templates.build(core.env_id, request)
    done = await _built(core, record.id)
    assert done.status == "failed"
    assert done.error_message is not None and "step 2 `false` failed" in done.error_message
    assert "it broke" in done.error_message
    with pytest.raises(TemplateNotReady, match="failed"):
        await core.templates.resolve(core.env_id, "bad")


async def test_build_requests_that_cannot_work_are_refused(core: Core) -> None:
    with pytest.raises(TemplateNotFound, match="cobol"):
        await core.templates.build(core.env_id, BuildRequest("x", "cobol", []))
    record = await core.templates.build(core.env_id, BuildRequest("x", "bash", []))
    await _built(core, record.id)
    with pytest.raises(BadRequest, match="built-in"):
        await core.templates.build(core.env_id, BuildRequest("y", "x", []))
    with pytest.raises(Conflict, match="exists"):
        await core.templates.build(core.env_id, BuildRequest("x", "bash", []))
    replaced = await core.templates.build(core.env_id, BuildRequest("x", "bash", [], replace=True))
    assert replaced.id != record.id
    await _built(core, replaced.id)
    with pytest.raises(Conflict, match="built in"):
        await core.templates.delete(core.env_id, "python")


async def test_custom_templates_belong_to_their_environment(core: Core) -> None:
    record = await core.templates.build(core.env_id, BuildRequest("mine", "bash", []))
    await _built(core, record.id)
    with pytest.raises(TemplateNotFound):
        await core.templates.resolve("another-env", "mine")
    assert await core.templates.custom("another-env") == []
    assert [t.name for t in await core.templates.custom(core.env_id)] == ["mine"]

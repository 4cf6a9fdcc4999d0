"""The sandbox control plane over the in-memory backend: records, lifecycle, tokens, timeouts."""

from __future__ import annotations

import asyncio
import json

import pytest

from agentplex.errors import (
    BadRequest,
    SandboxNotFound,
    SandboxStateConflict,
    SandboxUnavailable,
    TemplateNotFound,
)
from agentplex.sandbox.state import SandboxState
from tests.unit.core.conftest import Core


async def _create(
    core: Core, template: str | None = None, *, timeout_seconds: int | None = None
) -> str:
    record, _token = await core.sandboxes.create(
        core.env_id,
        template=template,
        timeout_seconds=timeout_seconds,
        internet_access=False,
        env_vars={},
    )
    return record.id


async def test_create_resolves_the_default_template_once_and_records_the_sandbox(
    core: Core,
) -> None:
    record, token = await core.sandboxes.create(
        core.env_id,
        template=None,
        timeout_seconds=60,
        internet_access=False,
        env_vars={"A": "1"},
    )
    assert record.template_id == "python" and record.status == "running"
    assert record.resources.memory_mb == 1024 and record.expires_at is not None
    assert core.backend.sandboxes[record.id].env == {"A": "1"}
    assert token.token.startswith("sbt_")
    assert (await core.sandboxes.get(core.env_id, record.id)).env_vars == {"A": "1"}


async def test_unknown_template_and_bad_timeout_are_refused_before_anything_starts(
    core: Core,
) -> None:
    with pytest.raises(TemplateNotFound, match="cobol"):
        await _create(core, "cobol")
    with pytest.raises(BadRequest, match="timeout_seconds"):
        await _create(core, timeout_seconds=-1)
    assert core.backend.sandboxes == {}


async def test_a_backend_failure_leaves_no_record(core: Core) -> None:
    core.backend.fail_next_create = "no room"
    with pytest.raises(SandboxUnavailable, match="no room"):
        await _create(core)
    rows, _ = await core.sandboxes.page(core.env_id, status=None, limit=10, cursor=None)
    assert rows == []


async def test_lifecycle_follows_the_hopx_states(core: Core) -> None:
    sid = await _create(core, "bash")
    paused = await core.sandboxes.pause(core.env_id, sid)
    assert paused.status == "paused" and core.backend.sandboxes[sid].state is SandboxState.PAUSED
    with pytest.raises(SandboxStateConflict, match="only a running sandbox"):
        await core.sandboxes.pause(core.env_id, sid)
    assert (await core.sandboxes.resume(core.env_id, sid)).status == "running"
    assert (await core.sandboxes.stop(core.env_id, sid)).status == "stopped"
    with pytest.raises(SandboxStateConflict):
        await core.sandboxes.request(sid, "GET", "/health")
    started = await core.sandboxes.start_sandbox(core.env_id, sid)
    assert started.status == "running"
    answer = await core.sandboxes.request(sid, "GET", "/health")
    assert answer.status == 200
    await core.sandboxes.delete(core.env_id, sid)
    with pytest.raises(SandboxNotFound):
        await core.sandboxes.get(core.env_id, sid)
    assert sid not in core.backend.sandboxes


async def test_other_environments_see_nothing(core: Core) -> None:
    sid = await _create(core)
    with pytest.raises(SandboxNotFound):
        await core.sandboxes.get("another-env", sid)
    with pytest.raises(SandboxNotFound):
        await core.sandboxes.check_owner("another-env", sid)
    with pytest.raises(SandboxNotFound):
        await core.sandboxes.delete("another-env", sid)
    rows, _ = await core.sandboxes.page("another-env", status=None, limit=10, cursor=None)
    assert rows == []


async def test_every_issued_token_stays_valid_until_its_own_expiry(core: Core) -> None:
    record, first = await core.sandboxes.create(
        core.env_id, template=None, timeout_seconds=None, internet_access=False, env_vars={}
    )
    _, second = await core.sandboxes.refresh_token(core.env_id, record.id)
    _, third = await core.sandboxes.refresh_token(core.env_id, record.id)
    assert len({first.token, second.token, third.token}) == 3
    fresh = type(core.tokens)(core.db, 3600)  # another process: nothing remembered
    for issued in (first, second, third):
        principal = await fresh.verify(issued.token)
        assert principal is not None and principal.sandbox_id == record.id
    await core.sandboxes.delete(core.env_id, record.id)
    for issued in (first, second, third):
        assert await fresh.verify(issued.token) is None
        assert await core.tokens.verify(issued.token) is None


async def test_an_expired_token_opens_nothing(core: Core) -> None:
    record, _ = await core.sandboxes.create(
        core.env_id, template=None, timeout_seconds=None, internet_access=False, env_vars={}
    )
    short = type(core.tokens)(core.db, ttl_seconds=0)
    issued = await short.issue(core.env_id, record.id)
    assert await short.verify(issued.token) is None  # remembered by its issuer, still refused
    assert await type(core.tokens)(core.db, 3600).verify(issued.token) is None
    assert await short.prune() >= 1


async def test_timeouts_stop_sandboxes_and_a_restart_keeps_the_timeout(core: Core) -> None:
    sid = await _create(core, timeout_seconds=1)
    for _ in range(60):
        if (await core.sandboxes.get(core.env_id, sid)).status == "stopped":
            break
        await asyncio.sleep(0.05)
    record = await core.sandboxes.get(core.env_id, sid)
    assert record.status == "stopped" and record.status_reason == "timeout expired"
    assert core.backend.sandboxes[sid].state is SandboxState.STOPPED
    again = await core.sandboxes.start_sandbox(core.env_id, sid)
    assert again.timeout_seconds == 1 and again.expires_at is not None


async def test_a_sandbox_that_dies_is_recorded_stopped_with_the_reason(core: Core) -> None:
    sid = await _create(core)
    core.backend.crash(sid, "the out-of-memory killer ended 1 process(es)")
    for _ in range(40):
        record = await core.sandboxes.get(core.env_id, sid)
        if record.status == "stopped":
            break
        await asyncio.sleep(0.02)
    assert record.status == "stopped" and "out-of-memory" in (record.status_reason or "")


async def test_restart_marks_live_sandboxes_stopped(core: Core) -> None:
    sid = await _create(core)
    await core.sandboxes.close()
    await core.sandboxes.start()  # what a new server process does first
    record = await core.sandboxes.get(core.env_id, sid)
    assert record.status == "stopped" and "restarted" in (record.status_reason or "")


async def test_the_data_plane_is_the_sandbox_protocol(core: Core) -> None:
    def runner(sandbox: object, kind: str, body: dict[str, object]) -> dict[str, object]:
        return {"stdout": f"{kind}: {body.get('command') or body.get('code')}\n"}

    core.backend.runner = runner
    sid = await _create(core)
    answer = await core.sandboxes.request(sid, "POST", "/commands/run", json={"command": "echo hi"})
    assert json.loads(answer.body)["stdout"] == "command: echo hi\n"
    await core.sandboxes.request(sid, "POST", "/files/write", json={"path": "a", "content": "x"})
    answer = await core.sandboxes.request(sid, "GET", "/files/read?path=/workspace/a")
    assert json.loads(answer.body)["content"] == "x"

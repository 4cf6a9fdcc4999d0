"""One SandboxManager (and so one zygote) per test module: starting it imports the scientific
Python stack once, which is the expensive part; sandboxes themselves are cheap."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agentplex.core.ports import Template
from agentplex.sandbox import SandboxHandle, SandboxManager


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def manager(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SandboxManager]:
    data = tmp_path_factory.mktemp("data")
    async with SandboxManager(data, pool_size=2, quota_interval=0.5) as m:
        await m.wait_pool(120)
        yield m


async def create(
    manager: SandboxManager,
    template: str | Template = "python",
    *,
    env_vars: dict[str, str] | None = None,
    internet_access: bool = False,
) -> SandboxHandle:
    """A new running sandbox of a built-in template (by id) or of ``template`` itself."""
    chosen = template if isinstance(template, Template) else manager.builtin(template)
    sandbox_id = "sbx-" + uuid.uuid4().hex[:16]
    await manager.create(
        sandbox_id, chosen, env_vars=env_vars or {}, internet_access=internet_access
    )
    return manager.get(sandbox_id)


async def call(
    handle: SandboxHandle, method: str, path: str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    status, _, body = await handle.request(method, path, **kwargs)
    return status, json.loads(body) if body else {}


async def run(
    handle: SandboxHandle, code: str, language: str = "python", **extra: Any
) -> dict[str, Any]:
    """POST /execute and return the JSON answer (whatever the status)."""
    _, body = await call(
        handle, "POST", "/execute", json={"code": code, "language": language, **extra}
    )
    return body


def workspace_of(handle: SandboxHandle) -> Path:
    return handle.workspace

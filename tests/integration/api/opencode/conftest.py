"""An in-process app with the scripted model and the in-memory sandbox backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from agentplex.app import create_app
from agentplex.sandbox.memory import MemoryBackend
from tests.conftest import SettingsFactory

SCRIPTED = {"scripted_model": True, "model": "scripted:scripted-model"}


def opencode_settings(make_settings: SettingsFactory, **sections: dict[str, Any]) -> Any:
    """Settings with the scripted model as the default and no rate limits."""
    agent = {**SCRIPTED, **sections.pop("agent", {})}
    # the in-memory backend runs no code, so "unisolated" sandboxes are safe here
    sandbox = {"allow_unisolated": True, **sections.pop("sandbox", {})}
    return make_settings(agent=agent, sandbox=sandbox, rate_limit={"enabled": False}, **sections)


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
async def client(
    make_settings: SettingsFactory, backend: MemoryBackend
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(opencode_settings(make_settings), backend)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://agentplex", timeout=30
        ) as c:
            yield c

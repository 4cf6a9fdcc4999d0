"""Compat tests: the official client libraries against a real server on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agentplex.settings import Settings
from tests.conftest import LiveServer, SettingsFactory

# the SDKs run against a server that requires a key, as every real deployment does
API_KEY = "compat-sdk-key"


@pytest.fixture
def sandbox_settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(sandbox={"pool_size": 1, "warm_on_start": True}, auth={"api_key": API_KEY})


@pytest.fixture
def sandbox_server(sandbox_settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(sandbox_settings) as server:
        yield server

"""Model servers on loopback for the provider tests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agent.model_servers import AnthropicServer, OpenAIServer

FAKE_OPENAI = Path(__file__).parents[2] / "compat" / "fixtures" / "opencode" / "fake_openai.py"


@dataclass
class FakeOpenAI:
    """tests/compat/fixtures/opencode/fake_openai.py running as a subprocess."""

    url: str
    log: Path

    def requests(self) -> list[dict[str, Any]]:
        """The request bodies it received, oldest first."""
        if not self.log.exists():
            return []
        return [json.loads(line)["body"] for line in self.log.read_text().splitlines()]


@pytest.fixture(scope="module")
def fake_openai(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeOpenAI]:
    log = tmp_path_factory.mktemp("fake-openai") / "requests.jsonl"
    process = subprocess.Popen(
        [sys.executable, str(FAKE_OPENAI), "--port", "0", "--log", str(log)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("PORT="), line
        yield FakeOpenAI(f"http://127.0.0.1:{int(line[5:])}/v1", log)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    server = OpenAIServer()
    yield server
    server.close()


@pytest.fixture
def anthropic_server() -> Iterator[AnthropicServer]:
    server = AnthropicServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _no_provider_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)

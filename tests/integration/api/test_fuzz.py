"""Requests generated from our own OpenAPI document by schemathesis: whatever a client sends,
valid or not, the answer is never a 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, SettingsFactory


@pytest.mark.timeout(300)
def test_no_generated_request_gets_a_server_error(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(rate_limit={"enabled": False}, sandbox={"pool_size": 1})
    with LiveServer(settings) as server:
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                f"{server.url}/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "10",
                "--seed",
                "1",
                "--workers",
                "2",
                # the stateful phase chains creates for minutes; these cover the inputs
                "--phases",
                "examples,coverage,fuzzing",
                # SSE streams never end (PRX logs with stream=true is one): their own tests
                # cover them
                "--exclude-path-regex",
                r"stream|^/api/v1/logs$|^/event$|^/global/event$",
            ],
            capture_output=True,
            text=True,
            timeout=280,
            cwd=tmp_path,  # schemathesis keeps its example database in the working directory
        )
        assert server.thread.is_alive()
        assert httpx_get_ok(f"{server.url}/health")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "generated" in run.stdout, run.stdout[-2000:]


def httpx_get_ok(url: str) -> bool:
    return httpx.get(url, timeout=10).status_code == 200

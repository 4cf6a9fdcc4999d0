"""schemathesis against `agentplex serve` as an operator runs it, with a key required and
sent: every operation is reached past auth, and whatever a client sends, nothing is a 5xx."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import ServeFactory

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(400)
def test_no_generated_request_gets_a_server_error_with_auth_on(
    serve: ServeFactory, new_key: Callable[..., str], tmp_path: Path
) -> None:
    key = new_key("fuzz")
    server = serve(
        env={"AGENTPLEX_RATE_LIMIT_ENABLED": "false", "AGENTPLEX_SANDBOX_POOL_SIZE": "1"}
    )
    with server.client() as client:
        assert client.get("/v1/sandboxes").status_code == 401  # auth is on
    workdir = tmp_path / "schemathesis"  # it keeps its example database in the working dir
    workdir.mkdir()
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{server.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {key}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "10",
            "--seed",
            "7",
            "--workers",
            "2",
            "--phases",
            "examples,coverage,fuzzing",
            # SSE streams never end: their own tests cover them
            "--exclude-path-regex",
            r"stream|^/api/v1/logs$|^/event$|^/global/event$",
        ],
        capture_output=True,
        text=True,
        timeout=380,
        cwd=workdir,
    )
    assert server.running, server.stderr[-4000:]
    with server.client(key) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/v1/sandboxes").status_code == 200
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "generated" in run.stdout, run.stdout[-2000:]
    server.stop(timeout=15)

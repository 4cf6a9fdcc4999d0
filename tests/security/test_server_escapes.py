"""Escape attempts through a real server: sandboxed code must not reach the server's port, its
database or keys, nor signal it; after each attempt the server keeps serving."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agentplex.settings import Settings
from tests.conftest import LiveServer, SettingsFactory


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Iterator[Settings]:
    # The data directory where a user keeps it by default: beside the checkout (./.agentplex),
    # not under /tmp, which sandboxes replace with their own anyway.
    data = Path(tempfile.mkdtemp(prefix=".agentplex-escape-", dir=Path.cwd()))
    try:
        yield make_settings(server={"data_dir": data}, auth={"api_key": "admin-key"})
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_code_cannot_reach_the_server_its_data_or_its_process(settings: Settings) -> None:
    data = settings.server.data_dir.resolve()
    with (
        LiveServer(settings) as server,
        httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": "admin-key"}) as http,
    ):
        assert os.stat(data).st_mode & 0o777 == 0o700  # private to the server's user
        created = http.post("/v1/sandboxes", json={"template_name": "python"})
        sandbox = created.json()
        run = f"{sandbox['public_host']}/commands/run"
        port = server.port
        attempts = {
            "the server's port": f"curl -sS -m 3 http://127.0.0.1:{port}/health",
            "the server's port, by python": (
                f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2)\""
            ),
            "the database": f"head -c 16 {data}/agentplex.db",
            "the data directory": f"ls {data}",
            "other sandboxes' files": f"ls {data}/sandboxes",
            "the server's process": f"kill -9 {os.getpid()}",
            "the host's processes": "kill -9 -1; ls /proc | grep -c '^[0-9]'",
        }
        for what, command in attempts.items():
            answer = http.post(run, json={"command": command, "timeout": 10}).json()
            if what == "the host's processes":
                assert int(answer["stdout"].split()[-1]) < 15, answer  # only its own few
            else:
                assert answer["exit_code"] != 0, (what, answer)
                assert "SQLite" not in answer["stdout"] and "healthy" not in answer["stdout"]
            assert http.get("/health").json()["status"] == "healthy", what
        # the server kept serving this sandbox and serves new ones
        again = http.post(run, json={"command": "echo still here"}).json()
        assert again["stdout"].strip() == "still here"
        other = http.post("/v1/sandboxes", json={"template_name": "bash"}).json()
        ran = http.post(f"{other['public_host']}/commands/run", json={"command": "echo ok"})
        assert ran.json()["stdout"].strip() == "ok"

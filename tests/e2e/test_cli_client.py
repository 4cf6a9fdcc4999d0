"""The client commands against `agentplex serve`, as a user runs them: `agentplex deploy` of
examples/hello, `agentplex call`, `agentplex runs list|tail`, and the one-line messages when
the server cannot be reached, refuses the key or has no such run."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Cli, ServeFactory, free_port

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello"
SIGNUP = {"event_type": "user.signup", "event_data": {"name": "Ada", "email": "ada@example.com"}}


def _one_line_error(result: object) -> str:
    """The message of a failed command: exit code 1, one line on stderr, no traceback."""
    assert getattr(result, "returncode", None) == 1, result
    stderr = str(getattr(result, "stderr", ""))
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_deploy_call_list_and_tail_the_example(
    cli: Cli, serve: ServeFactory, new_key: Callable[..., str]
) -> None:
    key = new_key()
    # one attempt per run, so the failing call below fails at once
    server = serve(env={"AGENTPLEX_RUNS_MAX_ATTEMPTS": "1"})
    env = {"AGENTPLEX_URL": server.url, "AGENTPLEX_API_KEY": key}

    deployed = cli("deploy", str(EXAMPLE), env=env)
    assert re.search(r"packaging .*hello: \d+ files, [\d.]+ KiB", deployed.stderr)
    assert "creating project hello" in deployed.stderr
    assert re.search(r"uploading [\d.]+ KiB to project hello", deployed.stderr)
    found = re.search(r"deployed build ([0-9a-f-]{36}) to project hello", deployed.stdout)
    assert found, deployed.stdout
    build_id = found.group(1)
    out = deployed.stdout
    assert "handler   user.signup -> ::hello::handlers/on_signup" in out, out
    assert "schedule  0 9 * * 1-5 (Europe/Paris) -> ::hello::tasks/morning_report" in out, out
    assert "function  ::hello::math/add" in out, out

    # the same tree again is the same build, already deployed
    again = cli("deploy", str(EXAMPLE), "--project", "hello", env=env)
    assert f"build {build_id} of project hello is deployed already" in again.stdout
    assert "creating project" not in again.stderr

    called = cli("call", "::hello::math/add", "[2, 3]", env=env)
    assert called.stdout.strip() == "5", called
    keywords = cli("call", "hello.math:add", '{"a": 1.5, "b": 2}', env=env)
    assert json.loads(keywords.stdout) == 3.5

    failed = cli("call", "::hello::math/add", '["a", 1]', env=env, check=False)
    message = failed.stderr.strip().splitlines()[-1]
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed
    assert "::hello::math/add failed" in message and "TypeError" in message, message
    unknown = cli("call", "::hello::math/sub", "[1, 2]", env=env, check=False)
    assert "not a function of any deployed build" in _one_line_error(unknown)
    bad_args = cli("call", "::hello::math/add", "2, 3", env=env, check=False)
    assert bad_args.returncode == 2 and "ARGS_JSON" in bad_args.stderr

    with server.client(key) as http:
        published = http.post("/v1/events", json=SIGNUP)
        assert published.status_code == 201, published.text
        stream_id = published.json()["data"]["stream_id"]

    tail = cli("runs", "tail", env=env)  # the newest run: the signup's
    assert re.search(r"^following run [0-9a-f-]{36}$", tail.stderr.strip(), re.M), tail.stderr
    lines = tail.stdout.splitlines()
    assert any("run:start" in line and "::hello::handlers/on_signup" in line for line in lines)
    assert any("stream:data" in line and "Welcome, Ada!" in line for line in lines), lines
    assert any("stream:data" in line and "new signup: ada@example.com" in line for line in lines)
    assert any(
        "run:stop" in line and "succeeded" in line and '"welcomed": "ada@example.com"' in line
        for line in lines
    ), lines

    streamed = cli("runs", "tail", "--stream", stream_id, "--json", env=env)
    items = [json.loads(line) for line in streamed.stdout.splitlines()]
    kinds = [item["type"] for item in items]
    assert kinds[0] == "event:published" and kinds[-1] == "stream:complete", kinds
    assert {"run:start", "stream:data", "run:stop"} <= set(kinds), kinds

    listing = cli("runs", "list", env=env)
    rows = listing.stdout.splitlines()
    assert rows[0].split()[:3] == ["RUN_ID", "TYPE", "STATUS"]
    assert rows[1].split()[1:3] == ["event", "succeeded"], rows  # newest first
    assert "::hello::handlers/on_signup" in rows[1]
    assert sum("::hello::math/add" in row for row in rows) == 3, rows
    assert "4 of 4 runs" in listing.stderr
    calls = cli("runs", "list", "--type", "call", "--status", "failed", "--json", env=env)
    assert [r["var"] for r in json.loads(calls.stdout)] == ["add"]


def test_unreachable_server_refused_key_and_unknown_run_say_so_in_one_line(
    cli: Cli, serve: ServeFactory, new_key: Callable[..., str]
) -> None:
    key = new_key()
    server = serve()
    nobody = f"http://127.0.0.1:{free_port()}"

    refused = cli("runs", "list", env={"AGENTPLEX_URL": nobody}, check=False)
    line = _one_line_error(refused)
    assert f"cannot connect to the agentplex server at {nobody}" in line, line
    assert "connection refused" in line and "AGENTPLEX_URL" in line, line
    flag = cli("call", "::hello::math/add", "[2, 3]", "--url", nobody, check=False)
    assert "cannot connect" in _one_line_error(flag)
    nonsense = cli("runs", "list", env={"AGENTPLEX_URL": "127.0.0.1:8080"}, check=False)
    assert "is not a server address" in _one_line_error(nonsense)

    bad_key = {"AGENTPLEX_URL": server.url, "AGENTPLEX_API_KEY": "apx_not-a-real-key"}
    line = _one_line_error(cli("runs", "list", env=bad_key, check=False))
    assert "refused the API key (401)" in line and "AGENTPLEX_API_KEY" in line, line
    deploy = cli("deploy", str(EXAMPLE), env=bad_key, check=False)
    assert deploy.returncode == 1 and "Traceback" not in deploy.stderr
    assert "refused the API key" in deploy.stderr.strip().splitlines()[-1]
    no_key = cli("runs", "list", env={"AGENTPLEX_URL": server.url}, check=False)
    assert "requires an API key" in _one_line_error(no_key)

    good = {"AGENTPLEX_URL": server.url, "AGENTPLEX_API_KEY": key}
    missing = cli("runs", "tail", str(uuid.uuid4()), env=good, check=False)
    assert _one_line_error(missing).startswith("Error: not found:"), missing.stderr
    none_yet = cli("runs", "tail", env=good, check=False)
    assert "no runs yet" in _one_line_error(none_yet)
    assert "0 of 0 runs" in cli("runs", "list", env=good).stderr
    for bad in ("[NaN, 1]", "[1e999, 1]", "[Infinity]"):  # what Python reads and JSON lacks
        refused_args = cli("call", "::hello::math/add", bad, env=good, check=False)
        assert refused_args.returncode == 2 and "Traceback" not in refused_args.stderr
        assert "not JSON" in refused_args.stderr


def test_a_refused_deploy_leaves_no_empty_project_behind(
    cli: Cli, serve: ServeFactory, new_key: Callable[..., str], tmp_path: Path
) -> None:
    key = new_key()
    server = serve()
    env = {"AGENTPLEX_URL": server.url, "AGENTPLEX_API_KEY": key}
    project = tmp_path / "broken"
    (project / "app").mkdir(parents=True)
    (project / "app" / "__init__.py").write_text("")
    (project / "agentplex.json").write_text(
        json.dumps({"schedules": [{"cron": "61 * * * *", "function": "app:nothing"}]})
    )
    refused = cli("deploy", str(project), env=env, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "creating project broken" in refused.stderr
    listing = httpx.get(
        f"{server.url}/v1/projects", headers={"Authorization": f"Bearer {key}"}
    ).json()
    assert [p["name"] for p in listing["data"]] == []
    spaced = tmp_path / "my proj"
    spaced.mkdir()
    (spaced / "main.py").write_text("x = 1\n")
    named = cli("deploy", str(spaced), env=env, check=False)
    assert named.returncode == 1 and "--project NAME" in named.stderr.strip().splitlines()[-1]

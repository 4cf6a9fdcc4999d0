"""The official JavaScript SDK `@hopx-ai/sdk`, unchanged, against agentplex with auth on.

`js/hopx_sdk.mjs` drives the SDK the way its README shows, back to back as a script does, and
writes every step's outcome (value or the SDK's error) as JSON; the tests below assert on what
a user of each step would notice. The script runs once per database backend. The SDK is
installed by `scripts/install --test` (`npm ci` in tests/compat/js).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentplex.core import apikeys, environments
from agentplex.db import migrate
from agentplex.db.engine import Database
from agentplex.settings import Settings, load_settings
from tests.compat import node_scripts
from tests.compat.node_scripts import Result
from tests.conftest import BACKENDS, LiveServer, SettingsFactory, fresh_database

# The script takes about 10 s; much longer on a loaded machine (its steps give up after 60 s).
SCRIPT_TIMEOUT = 400
pytestmark = pytest.mark.timeout(SCRIPT_TIMEOUT + 120)


SDK = "@hopx-ai/sdk"


def run_script(server: LiveServer, key: str, out: Path, script: str, *args: str) -> Result:
    """Run one of the js/ scripts against ``server``; its JSON result."""
    env = {"HOPX_BASE_URL": server.url, "HOPX_API_KEY": key, "HOPX_RESULT_FILE": str(out)}
    return node_scripts.run_script(SDK, script, *args, env=env, out=out, timeout=SCRIPT_TIMEOUT)


async def _create_key(settings: Settings) -> str:
    """A stored API key, as `agentplex auth token` makes one: its existence turns auth on."""
    settings.server.ensure_data_dir()
    db = Database(settings.database_url)
    try:
        await migrate.upgrade(db)
        async with db.write() as conn:
            env = await environments.ensure_default(conn)
            _key, plaintext = await apikeys.create(conn, env.id, "js-sdk")
        return plaintext
    finally:
        await db.dispose()


def new_key(settings: Settings) -> str:
    return asyncio.run(_create_key(settings))


@pytest.fixture(scope="module", params=BACKENDS)
def js(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Result]:
    """The main script's result, against a server with auth on and default rate limits."""
    node_scripts.node(SDK)
    tmp = tmp_path_factory.mktemp("js-sdk")
    with pytest.MonkeyPatch.context() as mp, fresh_database(request.param, tmp) as url:
        for name in list(os.environ):  # a developer's own settings must not leak in
            if name.startswith("AGENTPLEX_") or name == "HOTPLEX_API_KEY":
                mp.delenv(name)
        settings = load_settings(
            None,
            {
                "server": {"data_dir": tmp / "data"},
                "database": {"url": url},
                # the script's callback receiver listens on loopback
                "sandbox": {
                    "pool_size": 1,
                    "warm_on_start": True,
                    "callback_allow_private": True,
                },
            },
        )
        key = new_key(settings)
        with LiveServer(settings) as server:
            yield run_script(server, key, tmp / "result.json", "hopx_sdk.mjs")


def ok(js: Result, name: str) -> Any:
    """The value of a step that must have succeeded."""
    step = js["steps"].get(name)
    assert step is not None, f"step {name!r} did not run (an earlier step stopped the script)"
    assert step["ok"], f"{name} failed: {step['error']}"
    return step["value"]


def raised(js: Result, name: str) -> dict[str, Any]:
    """The SDK error a step expected (it must have raised one)."""
    error: dict[str, Any] = ok(js, name)
    return error


def test_templates_carry_their_resources(js: Result) -> None:
    templates = {t["name"]: t for t in ok(js, "list_templates")}
    assert {"python", "bash"} <= set(templates)
    assert templates["python"]["displayName"]
    for name, t in templates.items():
        default, low, high = t["defaultResources"], t["minResources"], t["maxResources"]
        assert default and low and high, f"template {name} lacks resources: {t}"
        for field in ("vcpu", "memoryMb", "diskGb"):
            assert 0 < low[field] <= default[field] <= high[field], (name, field, t)
    single = ok(js, "get_template")
    assert single["name"] == "python" and single["defaultResources"]["memoryMb"] > 0


def test_create_and_inspect(js: Result) -> None:
    created = ok(js, "create")
    info = ok(js, "get_info")
    assert info["sandboxId"] == created["sandboxId"] == js["sandboxId"]
    assert (info["status"], info["templateName"]) == ("running", "python")
    assert info["publicHost"].endswith("/sandboxes/" + js["sandboxId"])
    assert info["resources"]["memoryMb"] > 0 and info["resources"]["vcpu"] > 0
    assert info["timeoutSeconds"] == 900 and info["expiresAt"]
    assert ok(js, "is_healthy") is True
    assert "python" in ok(js, "agent_info")
    assert ok(js, "metrics_snapshot") == "number"
    assert ok(js, "health_check")["status"] == "healthy"


def test_code_runs_with_state_rich_output_and_errors(js: Result) -> None:
    assert ok(js, "run_code_define") == {"stdout": "ready\n", "success": True, "exitCode": 0}
    assert ok(js, "run_code_state") == "42\n"
    assert ok(js, "run_code_env_from_create") == "hello\n"
    figure = ok(js, "run_code_matplotlib")
    assert figure["success"] and "image/png" in figure["types"] and figure["pngMagic"] == "PNG"
    assert "text/html" in ok(js, "run_code_dataframe")
    assert ok(js, "run_code_bash") == "hello from bash\n"
    assert ok(js, "run_code_error") == {"success": False, "zeroDivision": True}
    timeout = raised(js, "run_code_timeout")
    assert timeout["code"] == "EXECUTION_TIMEOUT" and "timed out" in timeout["message"]
    assert ok(js, "run_code_after_timeout") == "still usable\n"
    ipython = ok(js, "run_ipython")
    assert ipython["success"] and ipython["result"] == "10"


def test_commands(js: Result) -> None:
    command = ok(js, "command_run")
    assert command["exitCode"] == 0 and "done" in command["stdout"]
    assert ok(js, "command_env_workdir") == "js in /tmp\n"
    assert ok(js, "command_background")["processId"]


def test_files(js: Result) -> None:
    assert ok(js, "files_write_read") == "line one\n"
    assert ok(js, "files_exists") is True
    listed = {f["name"]: f for f in ok(js, "files_mkdir_list")}
    assert listed["notes.txt"]["isDir"] is False and listed["notes.txt"]["size"] == 9
    assert listed["sub"]["isDir"] is True
    assert ok(js, "files_bytes") == [0, 1, 2, 255]
    assert ok(js, "files_upload_download") is True
    assert ok(js, "files_remove") is False
    missing = raised(js, "files_read_missing")
    assert (missing["name"], missing["code"]) == ("FileNotFoundError", "FILE_NOT_FOUND")
    outside = raised(js, "files_read_outside")
    assert (outside["code"], outside["statusCode"]) == ("PATH_NOT_ALLOWED", 403)


def test_env(js: Result) -> None:
    assert ok(js, "env_set_get") == "test"
    assert ok(js, "env_update_get_all") == {"MODE": "test", "LEVEL": "debug", "GREETING": "hello"}
    assert ok(js, "env_delete") is False
    assert ok(js, "env_in_code") == "test\n"


def test_background_processes_sessions_and_cache(js: Result) -> None:
    started = ok(js, "run_code_background")
    assert started["processId"] and started["status"] == "running"
    listed = {p["processId"]: p for p in ok(js, "list_processes")}
    assert listed[started["processId"]]["status"] == "running"
    assert listed[started["processId"]]["name"] == "sleeper"
    assert ok(js, "kill_process") == "killed"
    assert ok(js, "list_system_processes")["count"] >= 1
    sessions = ok(js, "jupyter_sessions")
    assert sessions["count"] == 1 and sessions["first"]["execution_state"] in ("idle", "busy")
    stats = ok(js, "cache_stats")
    assert {"size", "max_size", "total_hits", "ttl"} <= set(stats["cache"]) and stats["timestamp"]
    assert ok(js, "cache_clear")["message"]


def test_websockets(js: Result) -> None:
    stream = ok(js, "execute_stream")
    assert stream["stdout"] == "0\n1\n2\n" and stream["last"] == "complete"
    assert ok(js, "terminal") is True
    assert ok(js, "watch_files") == {"type": "change", "event": "created"}


def test_a_second_connect_leaves_the_first_object_working(js: Result) -> None:
    """Sandbox.connect refreshes the token; the objects holding earlier tokens keep working."""
    assert ok(js, "connect_same_process")["sandboxId"] == js["sandboxId"]
    assert ok(js, "twin_sees_state") == "41\n"
    assert ok(js, "first_after_connect") == "82\n"
    assert ok(js, "first_stream_after_connect")["stdout"] == "0\n1\n2\n"

    second = ok(js, "second_process")["steps"]
    for name in ("connect", "state_from_first_process", "read_file_of_first_process"):
        assert second[name]["ok"], f"second process: {name} failed: {second[name]['error']}"
    assert second["state_from_first_process"]["value"] == "41\n"
    assert second["read_file_of_first_process"]["value"] == "first process"

    assert ok(js, "first_stream_after_second_process")["stdout"] == "0\n1\n2\n"
    assert ok(js, "first_after_second_process") == "42\n"
    assert ok(js, "first_reads_second_file") == "second process"
    assert ok(js, "twin_after_second_process") == "twin ok\n"
    # a refused token makes the SDK print "[SDK] Got 401 Unauthorized..." on the user's stdout
    assert js["sdkLogs"] == []


def test_listing_pause_resume_and_timeout(js: Result) -> None:
    assert ok(js, "list_sandboxes") is True
    assert ok(js, "iter_sandboxes") is True
    assert ok(js, "pause") == "paused"
    assert ok(js, "resume") == "running"
    assert ok(js, "state_after_resume") == "41\n"
    timeout = ok(js, "set_timeout")
    assert timeout["timeoutSeconds"] == 300 and 200 < timeout["secondsLeft"] <= 300


def test_async_execution_calls_back(js: Result) -> None:
    started = ok(js, "run_code_async")
    assert started["executionId"] and started["status"]
    assert started["callbackUrl"].endswith("/callback")
    called = ok(js, "async_callback")
    assert called["executionId"] == started["executionId"]
    assert called["stdout"] == "called back\n" and called["status"] == "completed"


def test_a_script_pace_is_not_rate_limited(js: Result) -> None:
    burst = ok(js, "burst_data_plane")
    assert burst["errors"] == {}, f"of {burst['calls']} calls, these failed: {burst['errors']}"
    assert ok(js, "burst_data_plane_parallel") == {}
    assert ok(js, "burst_control_plane")["errors"] == {}
    limited = [f for f in js["http"]["failures"] if f["status"] == 429]
    assert limited == []


def test_errors_come_out_as_sdk_error_classes_with_a_code(js: Result) -> None:
    assert ok(js, "error_is_hopx_error") is True
    missing = raised(js, "connect_missing_sandbox")
    assert missing["name"] != "Error" and missing["code"], missing
    assert "sbx_does_not_exist" in missing["message"] and "not found" in missing["message"]
    wrong = raised(js, "wrong_api_key")
    assert (wrong["name"], wrong["statusCode"]) == ("AuthenticationError", 401)
    unknown = raised(js, "create_unknown_template")
    assert unknown["statusCode"] == 404 and "no-such-template" in unknown["message"]


def test_kill(js: Result) -> None:
    assert ok(js, "kill") is True
    gone = raised(js, "get_info_after_kill")
    assert gone["name"] != "Error" and gone["code"] and "not found" in gone["message"]


# Requests the script makes to see an error on purpose: (method, path pattern, status).
EXPECTED_FAILURES = [
    ("POST", r"/sandboxes/[^/]+/execute", 408),  # the 1 s timeout
    ("GET", r"/sandboxes/[^/]+/files/read", 404),  # a missing file
    ("GET", r"/sandboxes/[^/]+/files/read", 403),  # /etc/shadow
    ("GET", r"/v1/sandboxes/sbx_does_not_exist", 404),
    ("GET", r"/v1/sandboxes", 401),  # a wrong key
    ("POST", r"/v1/sandboxes", 404),  # an unknown template
    ("GET", r"/v1/sandboxes/[^/]+", 404),  # after kill
]


def test_no_request_failed_but_those_meant_to(js: Result) -> None:
    assert js["http"]["requests"] >= 500  # the harness saw the script's requests
    unexpected = []
    for failure in js["http"]["failures"]:
        path = re.sub(r"^https?://[^/]+", "", failure["url"])
        if not any(
            failure["method"] == method
            and re.fullmatch(pattern, path)
            and failure["status"] == status
            for method, pattern, status in EXPECTED_FAILURES
        ):
            unexpected.append(failure)
    assert unexpected == [], json.dumps(unexpected, indent=1)[:6000]


def test_a_low_configured_limit_gives_the_sdk_429_with_retry_after(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    node_scripts.node(SDK)
    monkeypatch.setenv("AGENTPLEX_RATE_LIMIT_HOPX_DATA", "20/second")
    settings = make_settings(sandbox={"pool_size": 0})
    key = new_key(settings)
    with LiveServer(settings) as server:
        result = run_script(server, key, tmp_path / "burst.json", "hopx_burst.mjs", "60")
    burst = ok(result, "burst")
    assert set(burst["errors"]) == {"RateLimitError 429"}, burst
    assert burst["errors"]["RateLimitError 429"] <= 60 - 20  # the window's first 20 went through
    limited = [f for f in result["http"]["failures"] if f["status"] == 429]
    assert limited and all(int(f["retryAfter"]) >= 1 for f in limited)
    # the control plane has a budget of its own: creating and deleting were not refused
    assert ok(result, "create") and ok(result, "kill") is True

"""The official OpenCode JavaScript SDK `@opencode-ai/sdk` (v1 entry), unchanged, against agentplex.

`js/opencode_sdk.mjs` drives the SDK as its README shows (`createOpencodeClient({baseUrl,
headers})` with agentplex's API key as a bearer token) and writes every step's outcome as JSON;
the tests assert what a user of each step would notice. agentplex's model is the scripted fake
OpenAI-compatible server on loopback (`fixtures/opencode/fake_openai.py`), reached through
agentplex's OpenAI provider (`OPENAI_BASE_URL`): the real provider path, end to end. The SDK is
installed by `scripts/install --test` (`npm ci` in tests/compat/js).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentplex.settings import load_settings
from tests.compat import node_scripts
from tests.compat.conftest import API_KEY
from tests.compat.node_scripts import Result
from tests.compat.opencode_reference import HELLO, TOOL_ANSWER, TOOL_OUTPUT, fake_model
from tests.conftest import BACKENDS, LiveServer, fresh_database

SCRIPT_TIMEOUT = 300
pytestmark = pytest.mark.timeout(SCRIPT_TIMEOUT + 120)


SDK = "@opencode-ai/sdk"


def run_script(url: str, out: Path, secret: str) -> Result:
    env = {
        "OPENCODE_BASE_URL": url,
        "OPENCODE_API_KEY": API_KEY,
        "OPENCODE_RESULT_FILE": str(out),
        "OPENCODE_SECRET": secret,
    }
    return node_scripts.run_script(
        SDK, "opencode_sdk.mjs", env=env, out=out, timeout=SCRIPT_TIMEOUT
    )


@pytest.fixture(scope="module", params=BACKENDS)
def js(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Result]:
    """The script's result against agentplex (auth on) with the fake model, per backend."""
    node_scripts.node(SDK)
    tmp = tmp_path_factory.mktemp("opencode-js")
    secret = "sk-compat-" + secrets.token_hex(8)  # the model key agentplex holds
    with (
        pytest.MonkeyPatch.context() as mp,
        fresh_database(request.param, tmp) as url,
        fake_model() as model_url,
    ):
        for name in list(os.environ):  # a developer's own settings must not leak in
            if name.startswith(("AGENTPLEX_", "OPENAI_", "ANTHROPIC_")):
                mp.delenv(name)
        mp.setenv("OPENAI_BASE_URL", model_url)
        mp.setenv("OPENAI_API_KEY", secret)
        mp.setenv("AGENTPLEX_MODEL", "openai:fake-model")
        settings = load_settings(
            None,
            {
                "server": {"data_dir": tmp / "data"},
                "database": {"url": url},
                "sandbox": {"pool_size": 1, "warm_on_start": True},
                "auth": {"api_key": API_KEY},
            },
        )
        with LiveServer(settings) as server:
            result = run_script(server.url, tmp / "result.json", secret)
            result["secret"] = secret
            yield result


def ok(js: Result, name: str) -> Any:
    step = js["steps"].get(name)
    assert step is not None, f"step {name!r} did not run (an earlier step stopped the script)"
    assert step["ok"], f"{name} failed: {step['error']}"
    return step["value"]


def texts(parts: list[dict[str, Any]]) -> list[str]:
    return [p["text"] for p in parts if p["type"] == "text"]


def test_session_crud(js: Result) -> None:
    created = ok(js, "create")
    sid = created["id"]
    assert sid.startswith("ses_") and created["title"] == "js sdk"
    assert created["time"]["created"] > 0 and created["directory"]
    assert sid in ok(js, "list")
    assert ok(js, "get")["id"] == sid
    assert ok(js, "update")["title"] == "renamed by js"
    assert ok(js, "get_after_update") == "renamed by js"
    events = ok(js, "session_events")
    assert events[:1] == ["session.created"] and "session.updated" in events


def test_prompt_answers_info_and_parts(js: Result) -> None:
    answer = ok(js, "prompt")
    info = answer["info"]
    assert info["role"] == "assistant" and info["sessionID"] == js["sessionId"]
    assert info["finish"] == "stop" and info["time"]["completed"] >= info["time"]["created"]
    assert texts(answer["parts"]) == [HELLO]
    assert next(p["type"] for p in answer["parts"]) == "step-start"
    assert answer["parts"][-1]["type"] == "step-finish"


def test_prompt_async_streams_the_turn(js: Result) -> None:
    turn = ok(js, "prompt_async")
    assert turn["status"] == 204
    types = turn["types"]
    assert types[-1] == "session.idle", types
    for kind in ("message.updated", "message.part.updated", "session.status"):
        assert kind in types
    assert turn["finish"] == "stop"
    assert HELLO in turn["deltas"], turn["deltas"]  # the deltas add up to the text
    assert turn["finalText"] == HELLO


def test_messages_list_the_history(js: Result) -> None:
    messages = ok(js, "messages")
    assert [m["info"]["role"] for m in messages] == ["user", "assistant"] * 2
    assert texts(messages[0]["parts"]) == ["Hello there"]
    assert texts(messages[1]["parts"]) == [HELLO]


def test_a_tool_runs_in_the_sandbox(js: Result) -> None:
    tool = ok(js, "tool")
    assert texts(tool["answer"]["parts"]) == [TOOL_ANSWER]
    states = tool["states"]
    assert states[-1] == "completed" and "running" in states, states
    part = tool["toolPart"]
    assert part["callID"] and part["state"]["status"] == "completed"
    assert part["state"]["input"] == {"command": "echo hello-from-tool"}
    assert part["state"]["output"].strip() == TOOL_OUTPUT


def test_abort_ends_a_slow_answer(js: Result) -> None:
    aborted = ok(js, "abort_slow")
    assert aborted["busy"] == {"type": "busy"}
    assert aborted["aborted"] is True
    info = aborted["answer"]["info"]
    assert info["error"]["name"] == "MessageAbortedError", info
    assert "finish" not in info or info["finish"] is None
    assert aborted["answeredMs"] < 1000  # issue 8: abort ends the turn within 1 s
    assert aborted["idle"] == {}  # idle sessions are absent from /session/status
    assert ok(js, "usable_after_abort") == [HELLO]


def test_config_and_providers_keep_the_model_key(js: Result) -> None:
    config = ok(js, "config")
    assert config["hasApiKey"] is False and config["hasSecret"] is False
    providers = ok(js, "providers")
    assert providers["hasApiKey"] is False and providers["hasSecret"] is False
    models = {m for p in providers["providers"] for m in p["models"]}
    assert "fake-model" in models, providers
    assert "fake-model" in providers["default"].values()


def test_a_dropped_stream_resumes_without_losing_events(js: Result) -> None:
    """The SDK resends Last-Event-ID after the connection died mid-answer; nothing is missed."""
    got = ok(js, "reconnect")
    assert got["status"] == 204 and got["cut"] is True
    assert got["errors"], "the SDK never saw the stream fail"
    assert len(got["reconnectHeaders"]) >= 2
    assert got["reconnectHeaders"][0] is None  # the first connection has nothing to resume
    assert got["reconnectHeaders"][1], "the SDK sent no Last-Event-ID when it reconnected"
    assert got["duplicateIds"] == 0
    assert got["proxiedText"] == got["directText"] and got["directText"], got
    assert "".join(got["directText"]) == "".join(f"word{i} " for i in range(40))
    assert got["sawIdle"] is True


def test_delete_and_not_found(js: Result) -> None:
    assert ok(js, "delete") is True
    assert ok(js, "deleted_event") is True
    gone = ok(js, "get_deleted")
    assert gone["status"] == 404 and gone["error"]["name"] == "NotFoundError", gone
    again = ok(js, "delete_again")
    assert again["status"] == 404, again
    unknown = ok(js, "unknown_session")
    assert unknown["status"] == 404 and unknown["error"]["name"] == "NotFoundError"
    assert "ses_doesnotexist" in unknown["error"]["data"]["message"]


def test_a_wrong_key_is_refused(js: Result) -> None:
    assert ok(js, "wrong_key")["status"] == 401
    assert js["streamErrors"] == []

"""The official hot-dev SDK, unchanged, through the whole cycle of deployed code: a project and
its secret, examples/hello uploaded and deployed, an event published and its run waited for,
the run's vars, ``call_hot``, ``subscribe_with_event`` and the environment."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hot import HotApiError, HotClient

from agentplex.cli_client import package
from tests.compat.conftest import API_KEY as KEY
from tests.conftest import LiveServer, SettingsFactory

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello"
SECRET = "s3cret-mailer-token-0f9e"


@pytest.fixture
def hot_server(make_settings: SettingsFactory) -> Iterator[LiveServer]:
    # one attempt per run: the failing call below fails at once instead of after retries
    settings = make_settings(auth={"api_key": KEY}, runs={"max_attempts": 1})
    with LiveServer(settings) as server:
        yield server


@pytest.fixture
def hot(hot_server: LiveServer) -> Iterator[HotClient]:
    with HotClient(token=KEY, base_url=hot_server.url, timeout=60.0) as client:
        yield client


def _signup(name: str) -> dict[str, Any]:
    email = f"{name.lower()}@example.com"
    return {"event_type": "user.signup", "event_data": {"name": name, "email": email}}


def test_create_secret_deploy_publish_wait_call_and_subscribe(hot: HotClient) -> None:
    project = hot.projects.create({"name": "hello"})
    assert project["name"] == "hello" and project["active"] is True
    secret = hot.context.create("hello", {"key": "MAILER_TOKEN", "value": SECRET})
    assert secret["key"] == "MAILER_TOKEN" and "value" not in secret

    built = package(EXAMPLE)
    build = hot.builds.upload(
        "hello", file=("hello.zip", built.data, "application/zip"), hash=built.sha256
    )
    assert build["hash"] == built.sha256 and build["project_id"] == project["project_id"]
    deployed = hot.builds.deploy("hello", build["build_id"])
    assert deployed["deployed"] is True
    assert hot.builds.deployed("hello")["build_id"] == build["build_id"]
    handlers = hot.projects.event_handlers("hello")["data"]
    assert [(h["event_type"], h["ns"], h["var"]) for h in handlers] == [
        ("user.signup", "::hello::handlers", "on_signup")
    ]
    schedules = hot.projects.schedules("hello")["data"]
    assert [(s["cron"], s["tz"], s["ns"], s["var"]) for s in schedules] == [
        ("0 9 * * 1-5", "Europe/Paris", "::hello::tasks", "morning_report")
    ]

    # publish, then wait for the handler's run
    event = hot.events.publish(_signup("Ada"))
    assert event["event_type"] == "user.signup" and event["stream_id"]
    assert hot.events.get(event["event_id"])["event_id"] == event["event_id"]
    runs = hot.events.get_runs(event["event_id"])["data"]
    assert len(runs) == 1 and runs[0]["run_type"] == "event"
    run = hot.runs.wait(runs[0]["run_id"], timeout=60)
    assert run["status"] == "succeeded", run
    assert run["result"] == {"$ok": {"welcomed": "ada@example.com"}}
    assert (run["ns"], run["var"], run["event_id"]) == (
        "::hello::handlers",
        "on_signup",
        event["event_id"],
    )
    assert run["start_time"] and run["stop_time"] and run["error"] is None
    assert hot.runs.get(run["run_id"])["status"] == "succeeded"

    # what the handler captured: the greeting, and that the secret reached it as a variable
    captured = hot.request("GET", f"/runs/{run['run_id']}/vars")["data"]
    by_name = {v["var"]: v for v in captured}
    assert by_name["welcome"]["value"] == "Welcome, Ada!"
    assert by_name["welcome"]["meta"] == {"email": "ada@example.com"}
    assert by_name["mailer_configured"]["value"] is True
    assert {v["ns"] for v in captured} == {"::hello::handlers"}
    assert {v["run_id"] for v in captured} == {run["run_id"]}

    # a function by name, as Hot's SDK calls it
    assert hot.events.call_hot("::hello::math/add", [2, 3]) == 5
    chunks: list[str] = []
    assert hot.events.call_hot("hello.math:add", [0.5, 0.25], on_chunk=chunks.append) == 0.75
    with pytest.raises(RuntimeError, match=r"TypeError|concatenate"):
        hot.events.call_hot("::hello::math/add", ["a", 1])
    with pytest.raises(HotApiError) as unknown:
        hot.events.call_hot("::hello::math/nope", [1])
    assert unknown.value.status_code == 400

    # subscribe-then-publish: the whole life of a run, in order
    items = list(hot.streams.subscribe_with_event(_signup("Grace")))
    kinds = [item["type"] for item in items]
    assert kinds[0] == "event:published", kinds
    published = items[0]
    assert published["event_type"] == "user.signup" and published["stream_id"]
    assert kinds.index("run:start") < kinds.index("stream:data") < kinds.index("run:stop")
    assert kinds[-1] == "run:stop", kinds
    data = [item for item in items if item["type"] == "stream:data"]
    texts = [d["payload"]["text"] for d in data if d["data_type"] == "text"]
    assert "Welcome, Grace!" in texts
    assert any("new signup: grace@example.com" in text for text in texts), texts
    assert {"step": "welcomed", "email": "grace@example.com"} in [
        d["payload"] for d in data if d["data_type"] == "json"
    ]
    start = items[kinds.index("run:start")]["run"]
    assert start["event_id"] == published["event_id"] and start["status"] == "running"
    stop = items[-1]["run"]
    assert stop["status"] == "succeeded"
    assert stop["result"] == {"$ok": {"welcomed": "grace@example.com"}}
    assert {d["run_id"] for d in data} == {stop["run_id"]}
    assert any(
        item["type"] == "run:update" and item["run"]["status"] == "running" for item in items
    )

    # the environment and the figures
    env = hot.env.get()
    assert env["env_id"] == run["env_id"] and env["name"] == "default"
    stats = hot.runs.stats()
    assert stats["total_runs"] == 5 and stats["succeeded"] == 4 and stats["failed"] == 1, stats
    listing = hot.runs.list(type="event", status="succeeded")["data"]
    assert [r["var"] for r in listing] == ["on_signup", "on_signup"]
    assert hot.runs.list(type="call")["pagination"]["total"] == 3

    # the secret's value was in the handler's environment, and nowhere the API shows
    shown = json.dumps([items, run, captured, listing, hot.context.list("hello")])
    assert SECRET not in shown

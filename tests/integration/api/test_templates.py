"""Custom templates: built once from setup commands into a layer every sandbox then mounts."""

from __future__ import annotations

import time

import httpx
import pytest

from agentplex.settings import Settings
from tests.conftest import LiveServer, SettingsFactory

SETUP = [
    {"type": "ENV", "args": ["GREETING", "from-the-template"]},
    {"type": "RUN", "args": ['mkdir -p "$TEMPLATE_LAYER/bin" "$TEMPLATE_LAYER/python"']},
    {
        "type": "RUN",
        "args": ['printf "#!/bin/sh\\necho tool-ok\\n" > "$TEMPLATE_LAYER/bin/mytool"'],
    },
    {"type": "RUN", "args": ['chmod +x "$TEMPLATE_LAYER/bin/mytool"']},
    {"type": "RUN", "args": ['echo "VALUE = 7" > "$TEMPLATE_LAYER/python/mymod.py"']},
]


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(sandbox={"pool_size": 1})


def _wait_built(http: httpx.Client, build_id: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        status = http.get(f"/v1/templates/build/{build_id}/status").json()
        if status["status"] != "building":
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def _run(http: httpx.Client, sandbox: dict, command: str) -> str:
    response = http.post(f"{sandbox['public_host']}/commands/run", json={"command": command})
    return str(response.json()["stdout"])


def test_build_once_use_everywhere(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        started = http.post(
            "/v1/templates/build", json={"name": "tools", "from_template": "python", "steps": SETUP}
        )
        assert started.status_code == 200, started.text
        build = started.json()
        assert build["status"] == "building" and build["logs_url"]
        status = _wait_built(http, build["build_id"])
        assert status["status"] == "active", status
        assert status["build_duration_ms"] is not None
        logs = http.get(f"/v1/templates/build/{build['template_id']}/logs").json()
        assert logs["complete"] is True and "Step 4/4" in logs["logs"]
        assert http.get(build["logs_url"], params={"offset": logs["offset"]}).json()["logs"] == ""

        template = http.get("/v1/templates/tools").json()
        assert template["is_active"] is True and template["language"] == "python"
        assert "tools" in [t["name"] for t in http.get("/v1/templates").json()["data"]]

        one = http.post("/v1/sandboxes", json={"template_name": "tools"}).json()
        two = http.post("/v1/sandboxes", json={"template_id": template["id"]}).json()
        for sandbox in (one, two):
            assert _run(http, sandbox, "mytool").strip() == "tool-ok"
            assert _run(http, sandbox, "echo $GREETING").strip() == "from-the-template"
            code = http.post(
                f"{sandbox['public_host']}/execute",
                json={"language": "python", "code": "import mymod\nprint(mymod.VALUE * 6)"},
            ).json()
            assert code["stdout"].strip() == "42", code
        # the layer is shared and read-only: one sandbox cannot change it for the others
        assert "Read-only" in _run(http, one, 'touch "$TEMPLATE_LAYER/x" 2>&1')

        busy = http.delete("/v1/templates/tools")
        assert busy.status_code == 409
        for sandbox in (one, two):
            http.delete(f"/v1/sandboxes/{sandbox['id']}")
        assert http.delete("/v1/templates/tools").status_code == 200
        gone = http.post("/v1/sandboxes", json={"template_name": "tools"})
        assert gone.status_code == 404 and gone.json()["code"] == "TEMPLATE_NOT_FOUND"


def test_failed_build_reports_the_failing_command(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        steps = [
            {"type": "RUN", "args": ["echo first step fine"]},
            {"type": "RUN", "args": ["echo 'no such package' >&2; exit 3"]},
            {"type": "RUN", "args": ["echo never runs"]},
        ]
        build = http.post("/v1/templates/build", json={"name": "broken", "steps": steps}).json()
        status = _wait_built(http, build["build_id"])
        assert status["status"] == "failed"
        assert "step 2" in status["error_message"] and "exit code 3" in status["error_message"]
        assert "no such package" in status["error_message"]
        logs = http.get(build["logs_url"]).json()["logs"]
        assert "first step fine" in logs and "never runs" not in logs
        refused = http.post("/v1/sandboxes", json={"template_name": "broken"})
        assert refused.status_code == 409 and refused.json()["code"] == "TEMPLATE_NOT_READY"


def test_bad_build_requests(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        assert http.post("/v1/templates/build", json={"steps": []}).status_code == 400
        copy = http.post(
            "/v1/templates/build",
            json={"name": "c", "steps": [{"type": "COPY", "args": ["a", "b"]}]},
        )
        assert copy.status_code == 400 and "COPY" in copy.json()["message"]
        base = http.post("/v1/templates/build", json={"name": "x", "from_template": "cobol"})
        assert base.status_code == 404
        assert http.delete("/v1/templates/bash").status_code == 409
        # wrongly typed fields are refused up front, never a 500 or a build stuck "building"
        for bad in (
            {"diskGB": "abc"},
            {"cpu": "abc"},
            {"memory": -5},
            {"steps": [{"type": "RUN", "args": "echo hi"}]},
            {"setup_commands": "true"},
        ):
            answer = http.post(
                "/v1/templates/build", json={"name": "bad", "setup_commands": ["true"], **bad}
            )
            assert answer.status_code == 400, (bad, answer.text)
            assert answer.json()["code"] == "INVALID_REQUEST", answer.text
        assert "bad" not in [t["name"] for t in http.get("/v1/templates").json()["data"]]


def test_templates_survive_a_restart(settings: Settings) -> None:
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        build = http.post(
            "/v1/templates/build", json={"name": "kept", "from_template": "bash", "steps": SETUP}
        ).json()
        assert _wait_built(http, build["build_id"])["status"] == "active"
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        sandbox = http.post("/v1/sandboxes", json={"template_name": "kept"}).json()
        assert _run(http, sandbox, "mytool").strip() == "tool-ok"
        http.delete(f"/v1/sandboxes/{sandbox['id']}")

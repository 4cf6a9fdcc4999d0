"""``from_image`` picks a built-in base or is refused; never a silent bash build (issue 7)."""

from __future__ import annotations

import time

import httpx
import pytest

from agentplex.settings import Settings
from tests.conftest import LiveServer, SettingsFactory


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(sandbox={"pool_size": 0})


def _wait_built(http: httpx.Client, build_id: str) -> None:
    deadline = time.monotonic() + 90
    while http.get(f"/v1/templates/build/{build_id}/status").json()["status"] == "building":
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_an_image_that_maps_to_no_builtin_is_refused(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        for image in ("totally-not-an-image", "evilpython:1", "registry.example.com/app:latest"):
            answer = http.post(
                "/v1/templates/build",
                json={"name": "img", "from_image": image, "setup_commands": ["true"]},
            )
            assert answer.status_code == 400, (image, answer.text)
            message = answer.json()["message"]
            assert "from_image" in message and "python" in message and "bash" in message
        assert "img" not in [t["name"] for t in http.get("/v1/templates").json()["data"]]

        # the SDKs' own helpers' images still pick their built-in
        for name, image, language in (
            ("img-py", "python:3.11-slim", "python"),
            ("img-ubuntu", "ubuntu:22.04", "bash"),
        ):
            answer = http.post(
                "/v1/templates/build",
                json={"name": name, "from_image": image, "setup_commands": ["true"]},
            )
            assert answer.status_code in (200, 201, 202), answer.text
            _wait_built(http, answer.json()["build_id"])
            template = http.get(f"/v1/templates/{name}").json()
            assert template["language"] == language, template

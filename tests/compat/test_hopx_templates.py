"""The hopx-ai SDK's template builder, unchanged, against agentplex (with auth on)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hopx_ai import Sandbox, Template
from hopx_ai.errors import TemplateBuildError
from hopx_ai.template import BuildOptions

from tests.conftest import LiveServer, SettingsFactory

KEY = "compat-template-key"


@pytest.fixture
def server(make_settings: SettingsFactory) -> Iterator[LiveServer]:
    settings = make_settings(sandbox={"pool_size": 1}, auth={"api_key": KEY})
    with LiveServer(settings) as live:
        yield live


def _build(server: LiveServer, template: Template, name: str, logs: list[Any]) -> Any:
    options = BuildOptions(name=name, api_key=KEY, base_url=server.url, on_log=logs.append)
    return asyncio.run(Template.build(template, options))


def test_build_with_the_sdk_then_create_from_it(server: LiveServer) -> None:
    template = (
        Template()
        .from_python_image("3.11")
        .set_env("GREETING", "built")
        .run_cmd(
            'mkdir -p "$TEMPLATE_LAYER/bin" && printf "#!/bin/sh\\necho hello from the layer\\n"'
            ' > "$TEMPLATE_LAYER/bin/hello" && chmod +x "$TEMPLATE_LAYER/bin/hello"'
        )
    )
    logs: list[Any] = []
    result = _build(server, template, "sdk-built", logs)
    assert result.template_id and result.build_id
    assert any("hello" in entry["message"] for entry in logs), logs  # the step was logged

    listed = Sandbox.list_templates(api_key=KEY, base_url=server.url)
    assert "sdk-built" in [t.name for t in listed]
    sandbox = Sandbox.create(template="sdk-built", api_key=KEY, base_url=server.url)
    try:
        ran = sandbox.commands.run("hello; echo $GREETING")
        assert ran.stdout.split("\n")[:2] == ["hello from the layer", "built"], ran
        assert sandbox.run_code("print(6 * 7)").stdout.strip() == "42"
    finally:
        sandbox.kill()


def test_a_failing_step_fails_the_sdk_build_with_its_output(server: LiveServer) -> None:
    template = Template().from_python_image("3.11").run_cmd("echo about to fail; exit 3")
    with pytest.raises(TemplateBuildError) as failed:
        _build(server, template, "sdk-broken", [])
    assert "failed" in str(failed.value).lower()
    assert "exit 3" in str(failed.value) or "about to fail" in str(failed.value)

"""Per-environment sandbox limit through the Hopx API, on a live server (issue 7)."""

from __future__ import annotations

import httpx
import pytest
from hopx_ai._client import HTTPClient
from hopx_ai.errors import ResourceLimitError

from agentplex.settings import Settings
from tests.conftest import LiveServer, SettingsFactory

ADMIN = "admin-key"


def test_creating_past_the_sandbox_limit_is_a_403_the_sdks_read_as_a_limit(
    make_settings: SettingsFactory,
) -> None:
    settings: Settings = make_settings(
        sandbox={"pool_size": 0, "max_per_environment": 1}, auth={"api_key": ADMIN}
    )
    with (
        LiveServer(settings) as server,
        httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": ADMIN}) as http,
    ):
        first = http.post("/v1/sandboxes", json={"template": "bash"})
        assert first.status_code in (200, 201), first.text
        refused = http.post("/v1/sandboxes", json={"template": "bash"})
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["code"] == "RESOURCE_LIMIT" and "limit" in error["message"].lower()
        assert error["details"] == {"limit": 1, "current": 1}
        # the official SDK's own error mapping reads it as its ResourceLimitError
        client = HTTPClient(api_key=ADMIN, base_url=server.url)
        with pytest.raises(ResourceLimitError) as mapped:
            client._handle_error(refused)
        assert (mapped.value.limit, mapped.value.current) == (1, 1)
        listed = http.get("/v1/sandboxes").json()
        assert len(listed["data"]) == 1
        # once the first is deleted, there is room again
        assert http.delete(f"/v1/sandboxes/{first.json()['id']}").status_code in (200, 204)
        again = http.post("/v1/sandboxes", json={"template": "bash"})
        assert again.status_code in (200, 201), again.text

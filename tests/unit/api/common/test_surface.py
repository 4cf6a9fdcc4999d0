from __future__ import annotations

import pytest

from agentplex.api.common.envelopes import error_body, hot_list, par_ok
from agentplex.api.common.surface import Surface, surface_for


@pytest.mark.parametrize(
    ("path", "surface"),
    [
        ("/api/v1/sessions", Surface.PRX),
        ("/api/status", Surface.PRX),
        ("/v1/projects", Surface.HOT),
        ("/v1/runs/abc", Surface.HOT),
        ("/v1/sandboxes", Surface.HOPX),
        ("/v1/templates/python", Surface.HOPX),
        ("/sandboxes/sbx_1/execute", Surface.HOPX_DATA),
        ("/execute/stream", Surface.HOPX_DATA),
        ("/files/read", Surface.HOPX_DATA),
        ("/metrics/snapshot", Surface.HOPX_DATA),
        ("/agents/a1/invoke", Surface.PAR),
        ("/agent/invoke", Surface.PAR),
        ("/platform/status", Surface.PAR),
        ("/logs", Surface.PAR),
        ("/session", Surface.OPENCODE),
        ("/session/s1/message", Surface.OPENCODE),
        ("/global/event", Surface.OPENCODE),
        ("/ws/v1/agent", Surface.OPENCODE),
        ("/health", Surface.SHARED),
        ("/metrics", Surface.SHARED),
        ("/", Surface.SHARED),
    ],
)
def test_paths_map_to_their_reference(path: str, surface: Surface) -> None:
    assert surface_for(path) is surface


def test_error_envelopes_follow_each_reference() -> None:
    hot = error_body(
        Surface.HOT, code="rate_limited", message="slow", request_id="r1", retry_after=3
    )
    assert hot == {
        "error": {
            "code": "rate_limit_exceeded",
            "message": "slow",
            "request_id": "r1",
            "retry_after": 3,
        }
    }
    prx = error_body(Surface.PRX, code="not_found", message="gone", request_id="r1")
    assert prx == {"error": {"code": "not_found", "message": "gone", "details": None}}
    par = error_body(Surface.PAR, code="bad_request", message="bad", request_id="r1", details="x")
    assert par["success"] is False
    assert par["error"] == {"code": "INVALID_REQUEST", "message": "bad", "details": "x"}
    assert par["request_id"] == "r1" and par["timestamp"].endswith("Z")
    # the control plane: hopx-ai reads error.{code,message,request_id,details}, @hopx-ai/sdk
    # reads code and message at the top level
    control = error_body(Surface.HOPX, code="sandbox_not_found", message="gone", request_id="r1")
    assert control["error"] == {
        "code": "SANDBOX_NOT_FOUND",
        "message": "gone",
        "request_id": "r1",
        "details": {},
    }
    assert (control["code"], control["message"]) == ("SANDBOX_NOT_FOUND", "gone")
    # the data plane: agentd's shape, a string error
    data = error_body(Surface.HOPX_DATA, code="bad_request", message="bad", request_id="r1")
    assert data["error"] == "bad" and data["code"] == "INVALID_REQUEST"
    opencode = error_body(Surface.OPENCODE, code="not_found", message="no session", request_id="r")
    assert opencode == {
        "name": "NotFoundError",
        "data": {"message": "no session"},
    }


def test_success_envelopes() -> None:
    page = hot_list([1, 2], total=5, limit=2, offset=2, request_id="r")
    assert page["pagination"] == {"total": 5, "limit": 2, "offset": 2, "has_more": True}
    assert page["meta"]["request_id"] == "r"
    last = hot_list([5], total=5, limit=2, offset=4, request_id="r")
    assert last["pagination"]["has_more"] is False
    ok = par_ok({"a": 1}, "r")
    assert ok["success"] is True and ok["data"] == {"a": 1} and ok["request_id"] == "r"


def test_route_templates_keep_metric_labels_bounded() -> None:
    from agentplex.api.common.gateway import route_template

    def scope(url_path: str, **params: str) -> dict[str, object]:
        return {"path": url_path, "path_params": params, "route": object()}

    assert route_template(scope("/api/v1/logs")) == "/api/v1/logs"
    assert route_template(scope("/v1/runs/r-1/vars", run_id="r-1")) == "/v1/runs/{run_id}/vars"
    assert route_template(scope("/files/a/b.txt", path="a/b.txt")) == "/files/{path}"
    assert route_template({"path": "/random/x"}) == "unmatched"

"""agentd refuses data-plane fields of the wrong JSON type instead of stringifying them
(issue 7): non-string ``args``, ``env`` values and ``working_dir``."""

from __future__ import annotations

import pytest

from agentplex.sandbox import SandboxManager
from tests.sandbox.conftest import call, create

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_command_args_must_be_strings(manager: SandboxManager) -> None:
    h = await create(manager, "bash")
    for path in ("/commands/run", "/commands/background"):
        status, out = await call(h, "POST", path, json={"command": "echo", "args": [1, 2]})
        assert status == 400, out  # it ran `echo 1 2`
        assert "args" in out["message"] and "strings" in out["message"]
    status, out = await call(h, "POST", "/commands/run", json={"command": "echo", "args": ["a"]})
    assert status == 200 and out["stdout"] == "a\n", out
    await manager.delete(h.id)


async def test_env_values_must_be_strings(manager: SandboxManager) -> None:
    h = await create(manager, "bash")
    for path, body in (
        ("/execute", {"code": "echo $a", "language": "bash", "env": {"a": 1}}),
        ("/commands/run", {"command": "echo $a", "env": {"a": True}}),
        ("/env", {"env_vars": {"a": 1.5}}),
    ):
        method = "PUT" if path == "/env" else "POST"
        status, out = await call(h, method, path, json=body)
        assert status == 400, (path, out)
        assert "strings" in out["message"], out
    status, out = await call(
        h, "POST", "/execute", json={"code": "echo $a", "language": "bash", "env": {"a": "x"}}
    )
    assert status == 200 and out["stdout"] == "x\n", out
    await manager.delete(h.id)


async def test_working_dir_must_be_a_string_path(manager: SandboxManager) -> None:
    h = await create(manager, "bash")
    for field in ("working_dir", "workdir"):
        for path, body in (
            ("/commands/run", {"command": "pwd", field: 123}),
            ("/execute", {"code": "pwd", "language": "bash", field: 123}),
            ("/execute", {"code": "pwd", "language": "bash", field: 0}),  # falsy: was ignored
        ):
            status, out = await call(h, "POST", path, json=body)
            assert status == 400, (path, body, out)
            assert "must be a string path" in out["message"], out
            assert "does not exist" not in out["message"], out
    status, out = await call(h, "POST", "/commands/run", json={"command": "pwd", "workdir": "/tmp"})
    assert status == 200 and out["stdout"] == "/tmp\n", out
    await manager.delete(h.id)

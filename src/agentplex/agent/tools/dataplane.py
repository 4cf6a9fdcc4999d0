"""The tools' side of a sandbox's data plane: JSON requests to agentd and its error answers.

Paths the model names are resolved here the way agentd resolves them: relative to the
workspace, ``..`` folded, so a message can show the absolute path the tool acted on.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import Any

from agentplex.core.ports import DataPlaneResponse, SandboxBackend
from agentplex.errors import (
    BadRequest,
    SandboxAnswerTooLarge,
    SandboxNotFound,
    SandboxStateConflict,
    SandboxUnavailable,
)

WORKSPACE = "/workspace"
"""The sandbox's working directory: relative paths and commands start here."""

SANDBOX_ERRORS = (
    SandboxNotFound,
    SandboxStateConflict,
    SandboxUnavailable,
    SandboxAnswerTooLarge,
    BadRequest,
)
"""What the sandbox layer raises for a call the model should hear failed (not a server bug)."""


class DataPlaneError(Exception):
    """agentd refused a request: ``status``, its error ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def resolve(path: str) -> str:
    """The absolute sandbox path for ``path`` (relative ones are under /workspace)."""
    return posixpath.normpath(posixpath.join(WORKSPACE, path))


def shown(path: str) -> str:
    """``path`` as a title shows it: relative to the workspace when inside it."""
    if path == WORKSPACE:
        return "."
    if path.startswith(WORKSPACE + "/"):
        return path[len(WORKSPACE) + 1 :]
    return path


def decode(response: DataPlaneResponse) -> dict[str, Any]:
    """An answer's JSON object; `DataPlaneError` for an error status or a body that is not
    one."""
    try:
        body = json.loads(response.body) if response.body else {}
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = response.body[:200].decode(errors="replace")
        raise DataPlaneError(response.status, "BAD_ANSWER", f"unexpected answer: {text}")
    if response.status >= 400:
        message = body.get("message") or body.get("error") or f"HTTP {response.status}"
        raise DataPlaneError(
            response.status, str(body.get("code") or ""), str(message), body.get("details")
        )
    return body


async def call(
    backend: SandboxBackend,
    sandbox_id: str,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    params: Mapping[str, str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109
) -> dict[str, Any]:
    """One data-plane request; its JSON answer. Raises `DataPlaneError` or the sandbox
    layer's errors (`SANDBOX_ERRORS`)."""
    response = await backend.request(
        sandbox_id, method, path, json=json_body, params=params, timeout=timeout
    )
    return decode(response)

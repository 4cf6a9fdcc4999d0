"""FastAPI dependencies shared by every surface."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from agentplex.core.auth import Principal
from agentplex.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_request_id(request: Request) -> str:
    state: dict[str, Any] = request.scope.get("state", {})
    return str(state.get("request_id", ""))


def get_principal(request: Request) -> Principal:
    state: dict[str, Any] = request.scope.get("state", {})
    principal: Principal = state["principal"]
    return principal


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]

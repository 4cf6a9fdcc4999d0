"""Routes the official Hopx SDKs call besides the documented ones.

- ``POST /execute/ipython``: Python in the sandbox's stateful kernel (the JS SDK's
  ``runIpython``); the same answer as ``POST /execute`` with ``language: python``.
- ``GET /processes`` and ``POST /processes/{id}/kill``: the SDKs' ``list_system_processes`` /
  ``listSystemProcesses`` and the async Python SDK's ``list_processes``/``kill_process``; the
  same answers as ``/execute/processes`` and ``/execute/kill/{id}``.
- ``GET /jupyter/sessions``: the Python kernel as a Jupyter-style session list.
- ``GET /cache/stats`` and ``POST /cache/clear``: agentd keeps no execution cache (every
  execution runs), so the statistics are zeros and clearing removes nothing; answering keeps
  the SDKs' ``cache`` resource from failing.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentplex.sandbox.agentd import execute
from agentplex.sandbox.agentd.agent import Agent

_KERNEL_NAME = "python3"


def _agent(request: Request) -> Agent:
    agent: Agent = request.app.state.agent
    return agent


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def execute_ipython(request: Request) -> JSONResponse:
    """The JS SDK sends ``{code, timeout, env}`` (no language): it is always Python, run
    exactly as ``/execute`` runs it (timeouts, workdir, a client that leaves)."""
    arrived = time.monotonic()
    body = await execute.json_body(request)
    out = await execute.execute_body(request, body, "python", arrived)
    out["timestamp"] = _now()
    return JSONResponse(out)


def _process_state(pid: int) -> str | None:
    """The one-letter state of `pid` from /proc (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


async def jupyter_sessions(request: Request) -> JSONResponse:
    """The sandbox's one Python kernel, if it is running (it starts on first use); empty
    otherwise, as Jupyter lists no session before a kernel exists."""
    agent = _agent(request)
    kernel = agent.kernel
    sessions: list[dict[str, Any]] = []
    state = _process_state(kernel.pid) if kernel.alive else None
    if state is not None and state not in ("Z", "X"):
        kernel_id = f"{agent.cfg.sandbox_id or 'sandbox'}-{_KERNEL_NAME}"
        sessions.append(
            {
                "id": kernel_id,
                "kernel_id": kernel_id,
                "name": _KERNEL_NAME,
                "language": "python",
                # executions are serialised on the kernel's lock: held means one is running
                "execution_state": "busy" if kernel.lock.locked() else "idle",
                "connections": 1,  # agentd is the kernel's only client
                "pid": kernel.pid,
            }
        )
    return JSONResponse({"sessions": sessions, "count": len(sessions), "timestamp": _now()})


async def cache_stats(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "cache": {
                "enabled": False,
                "size": 0,
                "max_size": 0,
                "total_hits": 0,
                "ttl": "0s",
            },
            "timestamp": _now(),
        }
    )


async def cache_clear(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "success": True,
            "message": "Cache cleared (this sandbox keeps no execution cache)",
            "entries_removed": 0,
            "timestamp": _now(),
        }
    )


routes = [
    Route("/execute/ipython", execute_ipython, methods=["POST"]),
    # the very handlers of /execute/processes and /execute/kill: the answers cannot drift apart
    Route("/processes", execute.list_processes, methods=["GET"]),
    Route("/processes/{process_id}/kill", execute.kill_process, methods=["POST", "DELETE"]),
    Route("/jupyter/sessions", jupyter_sessions, methods=["GET"]),
    Route("/cache/stats", cache_stats, methods=["GET"]),
    Route("/cache/clear", cache_clear, methods=["POST"]),
]

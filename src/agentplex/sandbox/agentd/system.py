"""Routes: /health, /info, /env (GET, PUT, PATCH, DELETE), /metrics/snapshot."""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentplex.sandbox.agentd.agent import Agent, parse_env
from agentplex.sandbox.agentd.errors import invalid
from agentplex.sandbox.agentd.execute import json_body

VERSION = "agentplex-agentd/1"


def _agent(request: Request) -> Agent:
    agent: Agent = request.app.state.agent
    return agent


async def health(request: Request) -> JSONResponse:
    agent = _agent(request)
    return JSONResponse(
        {"status": "healthy", "version": VERSION, "uptime": round(time.time() - agent.started, 3)}
    )


def _languages() -> list[str]:
    langs = ["python", "bash"]
    if shutil.which("node"):
        langs.append("javascript")
    if shutil.which("go"):
        langs.append("go")
    return langs


async def info(request: Request) -> JSONResponse:
    agent = _agent(request)
    return JSONResponse(
        {
            "agent": "agentd",
            "version": VERSION,
            "sandbox_id": agent.cfg.sandbox_id,
            "template": agent.cfg.template,
            "isolation": agent.cfg.isolation,
            "workspace": agent.cfg.workspace,
            "languages": _languages(),
            "python_version": sys.version.split()[0],
            "uptime": round(time.time() - agent.started, 3),
            "features": [
                "execute",
                "commands",
                "files",
                "env",
                "metrics",
                "websocket",
                "terminal",
                "rich_output",
                "background",
            ],
        }
    )


async def get_env(request: Request) -> JSONResponse:
    return JSONResponse({"env_vars": _agent(request).env})


async def put_env(request: Request) -> JSONResponse:
    agent = _agent(request)
    body = await json_body(request)
    if "env_vars" not in body:
        raise invalid("'env_vars' (an object) is required")
    agent.set_env(parse_env(body["env_vars"]))
    return JSONResponse({"env_vars": agent.env, "success": True})


async def patch_env(request: Request) -> JSONResponse:
    agent = _agent(request)
    body = await json_body(request)
    new = parse_env(body.get("env_vars"))
    merged = {**agent.env, **new} if body.get("merge", True) else new
    agent.set_env(parse_env(merged))  # the merged set is bounded too
    return JSONResponse({"env_vars": agent.env, "success": True})


async def delete_env(request: Request) -> JSONResponse:
    agent = _agent(request)
    keys = request.query_params.getlist("key") or request.query_params.getlist("keys")
    agent.set_env({k: v for k, v in agent.env.items() if k not in keys} if keys else {})
    return JSONResponse({"env_vars": agent.env, "success": True})


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _proc_count() -> int:
    return sum(1 for e in os.listdir("/proc") if e.isdigit())


async def metrics(request: Request) -> JSONResponse:
    """The sandbox's own memory, CPU and pids (its cgroups); host-wide figures without them."""
    agent = _agent(request)
    disk = shutil.disk_usage(agent.cfg.workspace_real)
    own = agent.usage.snapshot()
    if own is not None:
        mem = own["memory"]
        system: dict[str, Any] = {
            "cpu": {"usage_percent": own["cpu"]["usage_percent"], "cores": own["cpu"]["cores"]},
            "memory": {
                "total": mem["total"],
                "used": mem["used"],
                "usage_percent": mem["usage_percent"],
            },
        }
        count = own["pids"]["current"]
    else:
        info = _meminfo()
        total = info.get("MemTotal", 0)
        used = total - info.get("MemAvailable", 0)
        cpus = os.cpu_count() or 1
        system = {
            "cpu": {
                "usage_percent": round(min(100.0, os.getloadavg()[0] / cpus * 100), 2),
                "cores": cpus,
            },
            "memory": {
                "total": total,
                "used": used,
                "usage_percent": round(used / total * 100, 2) if total else 0.0,
            },
        }
        count = None
    system["disk"] = {"total": disk.total, "used": disk.used, "free": disk.free}
    body: dict[str, Any] = {
        "timestamp": time.time(),
        "uptime": round(time.time() - agent.started, 3),
        "source": "cgroup" if own is not None else "host",
        "system": system,
        "sandbox": own,
        "process": {"count": count if count is not None else _proc_count()},
        "executions": {"total": agent.executions, "background": len(agent.procs.procs)},
        "cache": {"size": 0},
    }
    return JSONResponse(body)


async def configure(request: Request) -> JSONResponse:
    """Host-only: adopt a pooled sandbox (its id, template and initial environment)."""
    _agent(request).configure(await json_body(request))
    return JSONResponse({"success": True})


async def warm(request: Request) -> JSONResponse:
    """Host-only, for pooled sandboxes: run one throwaway request and kernel cell now, so the
    pages a first request touches (copy-on-write from the zygote) are copied before anyone
    waits for them."""
    agent = _agent(request)
    if agent.cfg.eager_kernel:
        await agent.kernel.execute(
            "print('', end='')",
            workdir=agent.cfg.workspace_real,
            env={},
            base_env=agent.base_env(),
            timeout=30,
            warm=True,
        )
    return JSONResponse({"success": True})


async def reset(request: Request) -> JSONResponse:
    """Host-only: end every process but agentd (quota exceeded), saying why."""
    agent = _agent(request)
    body = await json_body(request)
    reason = str(body.get("reason") or "the host stopped this sandbox's processes")
    if body.get("quota_limit"):
        agent.quota_limit = int(body["quota_limit"])
        agent.entry_limit = int(body.get("entry_limit") or 0)
    killed = agent.reset(reason)
    return JSONResponse({"success": True, "killed": killed})


routes = [
    Route("/_configure", configure, methods=["POST"]),
    Route("/_reset", reset, methods=["POST"]),
    Route("/_warm", warm, methods=["POST"]),
    Route("/health", health, methods=["GET"]),
    Route("/info", info, methods=["GET"]),
    Route("/env", get_env, methods=["GET"]),
    Route("/env", put_env, methods=["PUT", "POST"]),
    Route("/env", patch_env, methods=["PATCH"]),
    Route("/env", delete_env, methods=["DELETE"]),
    Route("/metrics/snapshot", metrics, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]

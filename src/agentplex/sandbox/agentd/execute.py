"""Routes: /execute, /execute/background, /execute/processes, /execute/kill, /commands/*."""

from __future__ import annotations

import shutil
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentplex.sandbox.agentd.agent import Agent, parse_env, parse_timeout
from agentplex.sandbox.agentd.disconnect import while_connected
from agentplex.sandbox.agentd.errors import AgentError, invalid
from agentplex.sandbox.agentd.processes import RunResult


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object; a 400 for anything else. orjson refuses what no route can
    use: NaN and infinities, numbers beyond a double, lone surrogates ("\\ud800") and
    nesting deeper than 1024 (the standard library recurses until it fails)."""
    raw = await request.body()
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise invalid("the request body must be a JSON object")
    return data


def _agent(request: Request) -> Agent:
    agent: Agent = request.app.state.agent
    return agent


def result_body(res: RunResult) -> dict[str, Any]:
    body: dict[str, Any] = {
        "stdout": res.stdout,
        "stderr": res.stderr,
        "exit_code": res.exit_code,
        "execution_time": round(res.execution_time, 6),
        "success": res.exit_code == 0 and not res.timed_out,
    }
    body.update(res.extra)
    return body


def workdir_field(body: dict[str, Any]) -> Any:
    """``workdir`` or, when it is absent or empty, ``working_dir`` (the SDKs' name); a
    non-string stays as it is, for `Agent.requested_workdir` to refuse."""
    value = body.get("workdir")
    return body.get("working_dir") if value is None or value == "" else value


def timeout_error(res: RunResult, timeout: float) -> AgentError:
    details = result_body(res)
    details["timeout"] = timeout
    return AgentError(
        "EXECUTION_TIMEOUT",
        f"execution timed out after {timeout:g}s and was stopped; the sandbox is still usable",
        408,
        details,
    )


async def execute_body(
    request: Request, body: dict[str, Any], lang: str, arrived: float | None = None
) -> dict[str, Any]:
    """Run the code of an /execute-style request; the answer's body. Its timeout counts from
    the request's arrival (time.monotonic(), now if not given) and the execution stops if the
    client leaves."""
    arrived = time.monotonic() if arrived is None else arrived
    agent = _agent(request)
    code = body.get("code")
    if not isinstance(code, str):
        raise invalid("'code' (a string) is required")
    timeout = parse_timeout(body.get("timeout"))
    run = agent.execute(
        lang,
        code,
        workdir=agent.requested_workdir(workdir_field(body)),
        env=parse_env(body.get("env")),
        timeout=timeout,
        arrived=arrived,
    )
    res = await while_connected(request, run)
    if res.timed_out:
        raise timeout_error(res, timeout)
    out = result_body(res)
    out["language"] = lang
    return out


async def execute(request: Request) -> JSONResponse:
    arrived = time.monotonic()
    body = await json_body(request)
    lang = _agent(request).language(body.get("language"))
    return JSONResponse(await execute_body(request, body, lang, arrived))


async def execute_background(request: Request) -> JSONResponse:
    agent = _agent(request)
    body = await json_body(request)
    code = body.get("code")
    if not isinstance(code, str):
        raise invalid("'code' (a string) is required")
    lang = agent.language(body.get("language"))
    cwd = agent.workdir(workdir_field(body))
    argv, tmp = agent.script(lang, code)
    bp = agent.procs.start(
        argv,
        kind="execute",
        name=body.get("name"),
        language=lang,
        command=code[:200],
        cwd=cwd,
        env={**agent.base_env(), **parse_env(body.get("env"))},
        timeout=parse_timeout(body.get("timeout"), 3600.0),
        cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True),
        explain=agent.explainer(),
    )
    return JSONResponse(
        {
            "process_id": bp.process_id,
            "execution_id": bp.execution_id,
            "status": bp.status,
            "name": bp.name,
        }
    )


async def list_processes(request: Request) -> JSONResponse:
    procs = [p.to_dict() for p in _agent(request).procs.procs.values()]
    return JSONResponse({"processes": procs, "count": len(procs)})


async def kill_process(request: Request) -> JSONResponse:
    agent = _agent(request)
    ident = request.path_params["process_id"]
    bp = agent.procs.find(ident)
    if bp is None:
        raise AgentError(
            "PROCESS_NOT_FOUND", f"no background process {ident!r}", 404, {"process_id": ident}
        )
    agent.procs.kill(bp)
    return JSONResponse(
        {
            "success": True,
            "process_id": bp.process_id,
            "status": bp.status,
            "message": f"process {bp.process_id} killed",
        }
    )


def _command_argv(body: dict[str, Any]) -> tuple[list[str], str]:
    command = body.get("command")
    if not isinstance(command, str) or not command:
        raise invalid("'command' (a string) is required")
    args = body.get("args")
    if args is None:
        argv = ["/bin/sh", "-c", command]
    elif not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        # not stringified: [1, 2] running `echo 1 2` would hide the client's bug
        raise invalid("'args' must be a list of strings")
    else:
        argv = [command, *args]
    if any("\x00" in a for a in argv):  # no process can receive one
        raise invalid("'command' and 'args' must not contain a NUL byte")
    return argv, command if args is None else " ".join(argv)


async def run_command(request: Request) -> JSONResponse:
    arrived = time.monotonic()
    agent = _agent(request)
    body = await json_body(request)
    argv, _ = _command_argv(body)
    timeout = parse_timeout(body.get("timeout"), 30.0)
    run = agent.run(
        argv,
        cwd=agent.workdir(workdir_field(body)),
        env=parse_env(body.get("env")),
        timeout=timeout,
        arrived=arrived,
    )
    res = await while_connected(request, run)
    if res.timed_out:
        raise timeout_error(res, timeout)
    out = result_body(res)
    out["pid"] = res.pid
    return JSONResponse(out)


async def run_command_background(request: Request) -> JSONResponse:
    agent = _agent(request)
    body = await json_body(request)
    argv, text = _command_argv(body)
    bp = agent.procs.start(
        argv,
        kind="command",
        name=body.get("name"),
        language=None,
        command=text,
        cwd=agent.workdir(workdir_field(body)),
        env={**agent.base_env(), **parse_env(body.get("env"))},
        timeout=parse_timeout(body.get("timeout"), 3600.0),
        explain=agent.explainer(),
    )
    return JSONResponse(
        {"process_id": bp.process_id, "execution_id": bp.execution_id, "status": bp.status}
    )


routes = [
    Route("/execute", execute, methods=["POST"]),
    Route("/execute/rich", execute, methods=["POST"]),
    Route("/execute/background", execute_background, methods=["POST"]),
    Route("/execute/processes", list_processes, methods=["GET"]),
    Route("/execute/kill/{process_id}", kill_process, methods=["POST", "DELETE"]),
    Route("/commands/run", run_command, methods=["POST"]),
    Route("/commands/background", run_command_background, methods=["POST"]),
]

"""The state of one agentd: its paths, environment, Python kernel and background processes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from agentplex.envvars import EnvVarsInvalid, check_env
from agentplex.sandbox.agentd import identity
from agentplex.sandbox.agentd.config import ADOPT_FILE, AgentConfig
from agentplex.sandbox.agentd.errors import AgentError, bad_workdir, invalid
from agentplex.sandbox.agentd.kernel import PythonKernel
from agentplex.sandbox.agentd.paths import PathMapper
from agentplex.sandbox.agentd.processes import (
    OutputSink,
    ProcessRegistry,
    RunResult,
    expired,
    remaining,
    run_process,
)
from agentplex.sandbox.agentd.usage import CgroupUsage, tree_usage
from agentplex.sandbox.proctree import descendants

LANGUAGES = {
    "python": "python",
    "python3": "python",
    "py": "python",
    "javascript": "javascript",
    "js": "javascript",
    "node": "javascript",
    "nodejs": "javascript",
    "bash": "bash",
    "sh": "bash",
    "shell": "bash",
    "go": "go",
    "golang": "go",
}
_SUFFIX = {"python": ".py", "javascript": ".js", "bash": ".sh", "go": ".go"}
DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 24 * 3600.0


def parse_timeout(value: Any, default: float = DEFAULT_TIMEOUT) -> float:
    """Seconds: absent, null or 0 mean `default` (the hopx-ai SDKs send 60 to 300); a 400 for
    anything else that is not a number in (0, MAX_TIMEOUT] (a day): a boolean, a negative,
    NaN, infinity, more than the maximum (refused, not clamped, so nobody believes a limit
    they do not get), a string of junk."""
    if value is None:
        return default
    try:
        if isinstance(value, bool):
            raise TypeError
        timeout = float(value)
    except (TypeError, ValueError, OverflowError):
        timeout = math.nan
    if not math.isfinite(timeout) or timeout < 0:
        raise invalid(
            f"timeout must be a number of seconds from 0 (the default, {default:g}) to"
            f" {MAX_TIMEOUT:g}",
            timeout=str(value)[:50],
        )
    if timeout > MAX_TIMEOUT:
        raise invalid(
            f"timeout {timeout:g} is over the maximum of {MAX_TIMEOUT:g} seconds",
            timeout=timeout,
            max_timeout=MAX_TIMEOUT,
        )
    return timeout or default


def parse_env(value: Any) -> dict[str, str]:
    """An ``env`` object: names and values as strings (null is ""), within agentplex.envvars'
    bounds, without NUL; else a 400. Numbers and the like are refused, not turned into text:
    a client sending ``{"A": 1}`` has a bug the answer should show (the SDKs send strings)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        v is None or isinstance(v, str) for v in value.values()
    ):
        raise invalid("env must be an object of strings")
    env = {str(k): "" if v is None else v for k, v in value.items()}
    try:
        return check_env(env)
    except EnvVarsInvalid as exc:
        raise invalid(str(exc)) from None


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.paths = PathMapper(cfg.workspace, cfg.workspace_real, cfg.tmp_real)
        self.env: dict[str, str] = dict(cfg.env_vars)
        self.kernel = PythonKernel()
        self.procs = ProcessRegistry()
        self.started = time.time()
        self.executions = 0
        self.notice = ""  # why the host last ended this sandbox's processes (quota)
        self.resets = 0  # how many times it did
        self.reported = 0  # the count when a run last told its client why
        self.quota_limit = 0  # set while the workspace is over its disk quota (bytes)
        self.entry_limit = 0  # with it: the most files and directories it may hold
        self.usage = CgroupUsage(cfg.cgroup_fds)

    def reset(self, reason: str) -> int:
        """End every process of the sandbox except agentd itself; how many were signalled."""
        self.notice = reason
        self.resets += 1
        me = os.getpid()
        if self.cfg.isolation == "none":
            victims = [p for p in descendants(me) if p != me]
        else:  # in our pid namespace: 1 is bwrap's init, below us its payload; keep those
            victims = [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) > me]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return len(victims)

    def check_quota(self) -> None:
        """Refuse writes while the workspace is over quota, in bytes or in files and
        directories (re-measured on each attempt)."""
        if not self.quota_limit:
            return
        used, entries = tree_usage(self.cfg.workspace_real)
        if used <= self.quota_limit and (not self.entry_limit or entries <= self.entry_limit):
            self.quota_limit = self.entry_limit = 0
            return
        what = "disk quota" if used > self.quota_limit else "limit of files and directories"
        raise AgentError(
            "DISK_QUOTA_EXCEEDED",
            f"the workspace is over its {what}; delete files before writing more",
            507,
        )

    def explainer(self, sink: OutputSink | None = None) -> Callable[[RunResult], RunResult]:
        """Call before a run starts; the returned function adds to the run's result why it
        failed if the host ended the sandbox's processes while it ran (or since the last run
        that could have said so), and streams that to `sink`."""
        since = self.resets

        def explain(res: RunResult) -> RunResult:
            told = since == self.resets and self.reported == self.resets
            if res.exit_code == 0 or told or not self.notice:
                return res
            self.reported = self.resets
            text = f"\n{self.notice}\n"
            res.stderr += text
            if sink is not None:
                sink("stderr", text)
            return res

        return explain

    # -- environment -------------------------------------------------------------------------
    def base_env(self) -> dict[str, str]:
        """What every process in the sandbox starts with (the sandbox's variables on top)."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": self.cfg.workspace,
            "LANG": "C.UTF-8",
            "TERM": "xterm-256color",
            "TMPDIR": self.cfg.tmp_real,
            "PYTHONUNBUFFERED": "1",
            "MPLBACKEND": "Agg",
            "SANDBOX_ID": self.cfg.sandbox_id,
        }
        env.update(self.env)
        return env

    def configure(self, body: dict[str, Any]) -> None:
        """Adopt a pooled sandbox: its id, template, initial environment and file-size limit."""
        self.cfg.sandbox_id = str(body.get("sandbox_id", self.cfg.sandbox_id))
        self.cfg.template = str(body.get("template", self.cfg.template))
        self.set_env(parse_env(body.get("env_vars")))
        fsize = body.get("fsize_bytes")
        if isinstance(fsize, int) and fsize > 0:  # only ever lowered: a pooled sandbox starts high
            import resource

            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            if hard == resource.RLIM_INFINITY or fsize <= hard:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    def adopt_if_pending(self) -> None:
        """Before serving anything, a pooled agentd takes the configuration the host left in
        ADOPT_FILE when it handed the sandbox out (a file costs the host no request)."""
        if self.cfg.sandbox_id:
            return
        try:
            with identity.own_files(), open(os.path.join(self.cfg.state_dir, ADOPT_FILE)) as f:
                body = json.load(f)
        except (OSError, ValueError):
            return  # still in the pool
        if isinstance(body, dict):
            self.configure(body)

    def set_env(self, env: dict[str, str]) -> None:
        self.env = env
        with contextlib.suppress(OSError), identity.own_files():
            path = os.path.join(self.cfg.state_dir, "env.json")
            with open(path + ".tmp", "w") as f:
                json.dump(env, f)
            os.replace(path + ".tmp", path)

    def workdir(self, value: Any) -> str:
        """The real path of a requested working directory, the workspace if none is."""
        return self.requested_workdir(value) or self.paths.resolve(self.cfg.workspace)

    def requested_workdir(self, value: Any) -> str | None:
        """The real path of a requested working directory (None if none is); a 4xx unless it
        is an existing directory in the sandbox's areas, the same answer on every route."""
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise invalid("'working_dir' must be a string path, e.g. \"/workspace\"")
        real = self.paths.resolve(value)
        problem = _not_a_dir(real)
        if problem:
            raise bad_workdir(str(value), problem)
        return real

    # -- execution ---------------------------------------------------------------------------
    def language(self, value: Any) -> str:
        lang = LANGUAGES.get(str(value or "python").lower())
        if lang is None:
            raise invalid(
                f"unsupported language {value!r}; use python, javascript, bash or go",
                language=value,
            )
        if lang == "javascript" and not shutil.which("node"):
            raise invalid("javascript is not available: node is not installed in this sandbox")
        if lang == "go" and not shutil.which("go"):
            raise invalid("go is not available: no Go toolchain in this sandbox")
        return lang

    def script(self, lang: str, code: str) -> tuple[list[str], str]:
        """Write `code` to a private temp dir; the argv that runs it and the dir to remove."""
        tmp = tempfile.mkdtemp(prefix=".exec-", dir=self.cfg.tmp_real)
        name = "main" + _SUFFIX[lang]
        path = os.path.join(tmp, name)
        with open(path, "w") as f:
            f.write(code)
        argv = {
            "python": [sys.executable, "-u", path],
            "javascript": ["node", path],
            "bash": ["bash", path] if shutil.which("bash") else ["/bin/sh", path],
            "go": ["go", "run", path],
        }[lang]
        return argv, tmp

    async def execute(
        self,
        lang: str,
        code: str,
        *,
        workdir: str | None,
        env: dict[str, str],
        timeout: float,  # noqa: ASYNC109
        sink: OutputSink | None = None,
        arrived: float | None = None,
    ) -> RunResult:
        """Run `code`; `workdir` None: the kernel's own directory for Python, the workspace
        otherwise. `timeout` counts from `arrived` (time.monotonic()), now if not given."""
        self.executions += 1
        arrived = time.monotonic() if arrived is None else arrived
        if remaining(timeout, arrived) == 0:
            return expired(timeout, arrived)
        if lang != "python":
            argv, tmp = self.script(lang, code)
            try:
                return await self.run(
                    argv, cwd=workdir, env=env, timeout=timeout, arrived=arrived, sink=sink
                )
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        explain = self.explainer(sink)
        res = await self.kernel.execute(
            code,
            workdir=workdir,
            home=self.cfg.workspace_real,
            env=env,
            base_env=self.base_env(),
            timeout=timeout,
            sink=sink,
            arrived=arrived,
        )
        bad = res.extra.pop("bad_workdir", None)
        if bad is not None:  # gone since the request was checked, or not enterable
            where = self.paths.to_client(workdir or self.cfg.workspace_real)
            raise bad_workdir(where, f"cannot be entered ({bad})")
        return explain(res)

    async def run(
        self,
        argv: list[str],
        *,
        cwd: str | None,
        env: dict[str, str],
        timeout: float | None,  # noqa: ASYNC109
        arrived: float | None = None,
        sink: OutputSink | None = None,
    ) -> RunResult:
        """Run a process as the sandbox's code, with the sandbox's environment under `env`."""
        cwd = cwd or self.workdir(None)
        explain = self.explainer(sink)
        try:
            res = await run_process(
                argv,
                cwd=cwd,
                env={**self.base_env(), **env},
                timeout=timeout,
                sink=sink,
                arrived=arrived,
            )
        except OSError as exc:
            problem = _not_a_dir(cwd)
            if problem:  # removed since the request was checked
                raise bad_workdir(self.paths.to_client(cwd), problem) from None
            # what a shell answers for a command it cannot start
            res = RunResult(
                stdout="", stderr=f"{argv[0]}: {exc.strerror}\n", exit_code=127, execution_time=0.0
            )
        return explain(res)

    def close(self) -> None:
        self.kernel.close()


def _not_a_dir(path: str) -> str:
    """Why `path` cannot be a working directory; "" if it can."""
    if os.path.isdir(path):
        return ""
    return "is not a directory" if os.path.lexists(path) else "does not exist"

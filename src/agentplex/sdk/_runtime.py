"""The in-sandbox side of the run executor (`agentplex.engine.executor`).

It runs in a sandbox's stateful Python kernel. The executor sends one cell per step, each a
single call with a JSON spec::

    __import__("agentplex.sdk._runtime", fromlist=["_"]).prepare('{"nonce": ..., "build": ...}')
    __import__("agentplex.sdk._runtime", fromlist=["_"]).run('{"nonce": ..., "function": ...}')
    __import__("agentplex.sdk._runtime", fromlist=["_"]).discover('{"nonce": ..., "build": ...}')
    __import__("agentplex.sdk._runtime", fromlist=["_"]).outcome('{"nonce": ...}')

``build`` is ``{"id", "zip", "dir"}`` (and ``marker``, the file a requirements layer has once
complete): the build's archive uploaded into the sandbox (extracted into ``dir``, then
removed) and where its code lives. Preparing puts ``dir`` first on sys.path,
makes it the working directory and imports every module of the build; `run` prepares again
when the kernel restarted since (a timeout that had to kill it, say). `outcome` sends the last
run's result again, for a run whose output outgrew what agentd keeps of one execution.

Structured messages travel on stdout as control lines the user's prints cannot be taken for:
``"\\x1eapx:" + nonce + " " + JSON + "\\n"``, with a random nonce per step. The executor cuts
them out of the stream (a line may begin with the user's partial output), the rest is text.
Messages: ``{"k": "data", "value", "data_type"}``, ``{"k": "var", "name", "value", "meta"}``,
``{"k": "publish", "event_type", "event_data"}``, then exactly one of ``{"k": "result", "ok":
true, "value"}`` / ``{"k": "result", "ok": false, "error": {"type", "message", "traceback"}}``
(run; with ``"leftovers"`` when the handler left threads or processes running, for which the
executor replaces the sandbox), ``{"k": "ready", "ok", "modules", "error"}`` (prepare) or
``{"k": "registry", "ok", "entries", "modules", "missing", "error"}`` (discover; ``missing``:
the functions of the spec's ``check``, the manifest's, that the code does not define).
What the build prints while prepare or discover imports it is dropped.

Standard library only: this module imports in the sandbox without anything of the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import linecache
import os
import sys
import threading
import traceback
import zipfile
from collections.abc import Callable
from typing import Any

from agentplex import sdk

MARK = "\x1eapx:"
MAX_TRACEBACK = 20_000
MAX_RESULT = 8 * 1024 * 1024 - 4096  # a result line must fit in what agentd keeps of one run


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


# Directories and top-level files of a build that are not imported: tests, environments, tools.
SKIP_DIRS = frozenset({"tests", "test", "venv", "site-packages", "node_modules", "__pycache__"})
SKIP_FILES = frozenset({"setup.py", "conftest.py", "noxfile.py", "manage.py"})

_OUT = sys.stdout  # the kernel's stdout, even if the code replaces sys.stdout later
# "left": what the last run left running (`_leftovers`), for the executor after a cancel
_STATE: dict[str, Any] = {"build": None, "modules": [], "error": None, "left": None}
_LAST: dict[str, str] = {}  # the last run's nonce -> its result line (see `outcome`)
_PARAMS: dict[Any, bool] = {}  # function -> whether it takes a positional parameter


def _send(nonce: str, message: dict[str, Any]) -> None:
    """Write one control line, after whatever the code printed so far."""
    _write(nonce, json.dumps(message, allow_nan=False, default=str))


def _write(nonce: str, line: str) -> None:
    if sys.stdout is not _OUT:
        # a replacement stdout that cannot flush has nothing to put in order
        with contextlib.suppress(Exception):
            sys.stdout.flush()
    _OUT.write(MARK + nonce + " " + line + "\n")
    _OUT.flush()


def _error(exc: BaseException) -> dict[str, Any]:
    """``{"type", "message", "traceback"}`` of ``exc``, without this module's own frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    try:
        message = str(exc)
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:  # an exception whose __str__ fails
        message = f"<{type(exc).__name__} that cannot be shown>"
        text = "".join(traceback.format_tb(tb)) + f"{type(exc).__name__}: {message}\n"
    if len(text) > MAX_TRACEBACK:
        text = "...\n" + text[-MAX_TRACEBACK:]
    return {"type": type(exc).__name__, "message": message, "traceback": text}


def modules_of(root: str) -> list[str]:
    """The importable modules of the build in ``root``, packages before their modules; tests,
    hidden directories, virtualenvs and setup scripts are left out."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        parts = [] if rel == "." else rel.split(os.sep)
        dirnames[:] = sorted(
            d for d in dirnames if d.isidentifier() and d not in SKIP_DIRS and d[0] != "."
        )
        names = sorted(f for f in filenames if f.endswith(".py"))
        if "__init__.py" in names and parts:
            found.append(".".join(parts))
        for name in names:
            stem = name[:-3]
            if stem in ("__init__", "__main__") or not stem.isidentifier():
                continue
            if not parts and (
                name in SKIP_FILES or stem.startswith("test_") or stem.endswith("_test")
            ):
                continue
            found.append(".".join([*parts, stem]))
    return found


def _prepare(build: dict[str, Any]) -> dict[str, Any] | None:
    """Extract and import the build once per kernel; the import error, if there is one."""
    if _STATE["build"] == build["id"] and _STATE["error"] is None:
        return None
    root = build["dir"]
    marker = build.get("marker")
    if marker and not os.path.exists(marker):
        return {
            "type": "LayerIncomplete",
            "message": "the layer of the build's requirements.txt is incomplete",
            "traceback": "",
        }
    try:
        archive = build.get("zip")
        if archive and os.path.exists(archive):
            os.makedirs(root, exist_ok=True)
            with zipfile.ZipFile(archive) as zf:  # checked for escapes and bombs on upload
                zf.extractall(root)
            os.remove(archive)
        if root not in sys.path:
            sys.path.insert(0, root)
        os.chdir(root)
        importlib.invalidate_caches()
        _STATE["build"] = build["id"]
        _STATE["modules"] = modules_of(root)
        for name in _STATE["modules"]:
            importlib.import_module(name)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt in module code too
        _STATE["error"] = _error(exc)
        _STATE["error"]["message"] = (
            f"importing the build's code failed: {type(exc).__name__}: {exc}"
        )
        return dict(_STATE["error"])
    _STATE["error"] = None
    return None


def prepare(spec: str) -> None:
    """Cell entry: make the build ready; a ``ready`` control line."""
    req = json.loads(spec)
    with contextlib.redirect_stdout(_Sink()), contextlib.redirect_stderr(_Sink()):
        error = _prepare(req["build"])
    _send(
        req["nonce"],
        {"k": "ready", "ok": error is None, "modules": _STATE["modules"], "error": error},
    )


class _Sink:
    """Where the build's own prints go while it is imported (prepare, discover): kept up to a
    bound (what it printed last), so that a build printing megabytes cannot crowd out the
    answer."""

    KEEP = 20_000

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text = (self.text + text)[-self.KEEP :]
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _missing(targets: list[str]) -> list[str]:
    """Which of the functions ``module.path:fn`` the manifest names the build lacks."""
    missing = []
    for target in targets:
        module_name, _, name = target.rpartition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            missing.append(f"module {module_name} cannot be imported ({type(exc).__name__})")
            continue
        if not callable(getattr(module, name, None)):
            missing.append(f"module {module_name} has no function {name}")
    return missing


def discover(spec: str) -> None:
    """Cell entry: import the build and report the entry points its code declares, and
    (``missing``) which of the functions in ``check`` (the manifest's) it does not define."""
    req = json.loads(spec)
    sink = _Sink()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        error = _prepare(req["build"])
        missing = _missing(list(req.get("check") or ())) if error is None else []
    root = os.path.realpath(req["build"]["dir"])
    entries = []
    for entry in sdk.registry():
        module = sys.modules.get(entry.module)
        path = os.path.realpath(getattr(module, "__file__", None) or "/")
        if module is None or not path.startswith(root + os.sep):
            continue  # declared by a library, not by the build
        item = entry.to_json()
        if not callable(getattr(module, entry.name, None)):
            item["problem"] = f"{entry.module} has no top-level function {entry.name}"
        entries.append(item)
    _send(
        req["nonce"],
        {
            "k": "registry",
            "ok": error is None,
            "entries": entries,
            "modules": _STATE["modules"],
            "missing": missing,
            "error": error,
            "output": sink.text[-2000:],
        },
    )


def _takes_argument(fn: Any) -> bool:
    known = _PARAMS.get(fn)
    if known is not None:
        return known
    try:
        params = inspect.signature(fn).parameters.values()
        takes = any(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
        )
    except (TypeError, ValueError):  # no signature (a builtin): give it the argument
        takes = True
    with contextlib.suppress(TypeError):  # an unhashable callable is not remembered
        _PARAMS[fn] = takes
    return takes


def _resolve(target: str) -> Callable[..., Any]:
    """The function named ``module.path:fn`` (or Hot's ``::module::path/fn``)."""
    if target.startswith("::") and "/" in target:
        ns, _, name = target.rpartition("/")
        module_name = ns[2:].replace("::", ".")
    else:
        module_name, _, name = target.rpartition(":")
    module = importlib.import_module(module_name)
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        raise LookupError(f"module {module_name} has no function {name!r}")
    return fn  # type: ignore[no-any-return]


def _invoke(fn: Callable[..., Any], run_type: str, data: Any) -> Any:
    """Call ``fn`` by the convention of its run type (see the SDK)."""
    if run_type == "call":
        args = data.get("args") if isinstance(data, dict) else None
        if args is None:
            return fn()
        if isinstance(args, list):
            return fn(*args)
        if isinstance(args, dict):
            return fn(**args)
        return fn(args)
    return fn(data) if _takes_argument(fn) else fn()


async def _await(value: Any) -> Any:
    return await value


def _forget_cells() -> None:
    """IPython keeps every cell's source (In, _iN, linecache) and result (Out): a warm kernel
    runs thousands of runs, whose inputs must neither pile up nor be readable by the next."""
    shell_mod = sys.modules.get("IPython.core.interactiveshell")
    if shell_mod is None:
        return
    # another IPython version: a leak at worst, never a failed run
    with contextlib.suppress(Exception):
        ip = shell_mod.InteractiveShell.instance()
        hm = ip.history_manager
        del hm.input_hist_parsed[1:]
        del hm.input_hist_raw[1:]
        hm.output_hist.clear()
        hm.output_hist_reprs.clear()
        with hm.db_input_cache_lock:
            hm.db_input_cache.clear()
        with hm.db_output_cache_lock:
            hm.db_output_cache.clear()
        hm._i00 = hm._i = hm._ii = hm._iii = ""
        for key in ("_i", "_ii", "_iii", f"_i{ip.execution_count}"):
            ip.user_ns.pop(key, None)
        ip.execution_count = 1  # so the next cell's _iN replaces this one's
        # each cell's source is also kept for tracebacks, under a name of its own
        names = ip.compile._filename_map
        for name in list(names):
            linecache.cache.pop(name, None)
        names.clear()


def _processes() -> int:
    """How many processes the sandbox has (its own pid namespace: a few, cheap to count)."""
    try:
        return sum(name.isdigit() for name in os.listdir("/proc"))
    except OSError:
        return 0


def _leftovers(threads: frozenset[int], processes: int) -> str | None:
    """What the run left running: threads it started that are alive, processes more than
    before it (children that still run, or were never waited for); None if nothing."""
    stray = [t.name for t in threading.enumerate() if t.ident not in threads and t.is_alive()]
    extra = _processes() - processes
    found = []
    if stray:
        found.append(f"{len(stray)} thread(s) ({', '.join(stray[:5])})")
    if extra > 0:
        found.append(f"{extra} process(es)")
    return "; ".join(found) or None


def run(spec: str) -> None:
    """Cell entry: run one handler; its outputs and result as control lines. A result says
    ``leftovers`` when the handler left threads or processes running (the executor then
    replaces the sandbox)."""
    req = json.loads(spec)
    nonce = req["nonce"]
    threads = frozenset(t.ident for t in threading.enumerate() if t.ident is not None)
    processes = _processes()
    _forget_cells()
    error = _prepare(req["build"])
    if error is not None:
        _result(nonce, {"k": "result", "ok": False, "error": error})
        return
    with contextlib.suppress(OSError):  # every run starts in the build's directory
        if os.getcwd() != req["build"]["dir"]:
            os.chdir(req["build"]["dir"])

    live = True

    def channel(kind: str, payload: dict[str, Any]) -> None:
        if live:  # a thread the run left behind speaks to no run once it has ended
            _send(nonce, {"k": kind, **payload})

    sdk._channel = channel
    sdk._current = {
        "run_id": req["run_id"],
        "run_type": req["run_type"],
        "function": req["function"],
    }
    message: dict[str, Any]
    try:
        fn = _resolve(req["function"])
        value = _invoke(fn, req["run_type"], req.get("input"))
        if inspect.isawaitable(value):
            value = asyncio.run(_await(value))
        message = {"k": "result", "ok": True, "value": value}
        try:
            line = json.dumps(message, allow_nan=False)
            if len(line) > MAX_RESULT:  # ASCII: characters are bytes
                raise _TooLarge(len(line))
        except _TooLarge as exc:
            message = {
                "k": "result",
                "ok": False,
                "error": {
                    "type": "ResultTooLarge",
                    "message": (
                        f"the handler's result is {exc.size} bytes as JSON, over the limit of "
                        f"8 MiB ({MAX_RESULT} bytes at most): return less, or store it "
                        "elsewhere and return where it is"
                    ),
                    "traceback": "",
                },
            }
        except (TypeError, ValueError, RecursionError) as exc:
            message = {
                "k": "result",
                "ok": False,
                "error": {
                    "type": "ResultNotSerializable",
                    "message": (
                        f"the handler returned a {type(value).__name__} that is not "
                        f"JSON-serialisable ({exc}); return dicts, lists, strings, numbers, "
                        "booleans or None"
                    ),
                    "traceback": "",
                },
            }
        else:
            live = False
            sdk._channel = None
            sdk._current = None
            left = _STATE["left"] = _leftovers(threads, processes)
            if left is not None:
                message["leftovers"] = left
                line = json.dumps(message, allow_nan=False)
            _result(nonce, message, line)
            return
    except KeyboardInterrupt as exc:  # the executor's interrupt: cancelled or timed out
        message = {"k": "result", "ok": False, "error": _error(exc)}
        message["error"]["message"] = "the handler was interrupted"
    except BaseException as exc:  # SystemExit included: a handler does not end the kernel
        message = {"k": "result", "ok": False, "error": _error(exc)}
    finally:
        live = False
        sdk._channel = None
        sdk._current = None
    left = _STATE["left"] = _leftovers(threads, processes)
    if left is not None:
        message["leftovers"] = left
    _result(nonce, message)


def _result(nonce: str, message: dict[str, Any], line: str | None = None) -> None:
    if line is None:
        line = json.dumps(message, allow_nan=False, default=repr)
    _LAST.clear()
    _LAST[nonce] = line
    _write(nonce, line)


def outcome(spec: str) -> None:
    """Cell entry: send the last run's result again, with its nonce (its first copy was lost
    because the run printed more than the sandbox keeps of one execution)."""
    nonce = json.loads(spec)["nonce"]
    line = _LAST.get(nonce)
    if line is None:
        line = json.dumps(
            {
                "k": "result",
                "ok": False,
                "error": {
                    "type": "ResultLost",
                    "message": "the run's result was lost",
                    "traceback": "",
                },
            }
        )
    _write(nonce, line)

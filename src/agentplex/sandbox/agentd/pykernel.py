"""The stateful Python kernel: an IPython shell driven over a socket, forked from agentd.

The shell is built once in the zygote (`prewarm`), so a sandbox's first Python execution costs a
fork, not an interpreter start plus imports. Display data (matplotlib figures, `display()`, the
value of a cell's last expression) is collected per execution and returned as Hopx rich fields
(png, html, json, dataframe, ...).

Jupyter semantics the kernel keeps between cells: its working directory (a request moves it only
when it names a different directory than the request before), the environment variables a cell
set itself, and `exit()` restarting the kernel.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import resource
import signal
import socket
import sys
from typing import Any, NoReturn

_OUTPUTS: list[dict[str, Any]] = []
_RESULT: dict[str, Any] = {}
_SHELL: Any = None
MAX_DF_ROWS = 1000
# Per kernel process (each is forked from a zygote in which these were never touched):
_BASE_ENV: dict[str, str] = {}  # the sandbox environment (agentd's /env) last applied
_ASKED_DIR: list[str | None] = [None]  # the working directory the last request named
# a cell is running; it called exit(); the kernel has entered a working directory
_STATE = {"running": False, "exit": False, "placed": False}


def _make_shell() -> Any:
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets import Type
    from traitlets.config import Config

    class Publisher(DisplayPublisher):
        def publish(self, data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            _OUTPUTS.append(dict(data))

        def clear_output(self, wait: bool = False) -> None:
            _OUTPUTS.clear()

    class Hook(DisplayHook):
        def __call__(self, result: Any = None) -> None:
            if result is not None:
                _RESULT["obj"] = result
            super().__call__(result)  # type: ignore[no-untyped-call]

        def write_output_prompt(self) -> None:
            pass

        def write_format_data(self, format_dict: dict[str, Any], md_dict: Any = None) -> None:
            _RESULT["data"] = dict(format_dict)

    class Shell(InteractiveShell):
        display_pub_class = Type(Publisher)
        displayhook_class = Type(Hook)

        def _showtraceback(self, etype: Any, evalue: Any, stb: Any) -> None:
            sys.stderr.write(self.InteractiveTB.stb2text(stb) + "\n")
            sys.stderr.flush()

        def ask_exit(self) -> None:
            # what exit()/quit() call; like ipykernel, the rest of the cell still runs and
            # the kernel restarts once it has answered
            _STATE["exit"] = True

    cfg = Config()
    cfg.HistoryManager.enabled = False
    cfg.InteractiveShell.colors = "nocolor"
    cfg.InteractiveShell.autocall = 0
    shell = Shell.instance(config=cfg)
    with contextlib.suppress(Exception):  # matplotlib is optional
        shell.enable_matplotlib("inline")  # type: ignore[no-untyped-call]
        _show_any_backend()
    return shell


def _pyplot() -> Any:
    """matplotlib.pyplot if the kernel has imported it, else None (never imports it)."""
    return sys.modules.get("matplotlib.pyplot")


def _inline(plt: Any) -> bool:
    return "backend_inline" in str(plt.get_backend())


def _show_any_backend() -> None:
    """Make `plt.show()` return figures whatever backend the code switched to.

    Generated code often calls `matplotlib.use("Agg")`, which takes the inline backend (the one
    that turns figures into display data) away; its `show()` then shows nothing.
    """
    import warnings

    import matplotlib.pyplot as plt

    inline_show = plt.show

    def show(*args: Any, **kwargs: Any) -> Any:
        if _inline(plt):
            return inline_show(*args, **kwargs)
        _publish_figures(plt)
        return None

    show.__doc__ = inline_show.__doc__
    plt.show = show
    warnings.filterwarnings("ignore", message=".*non-interactive, and thus cannot be shown")


def _publish_figures(plt: Any) -> None:
    """Every open figure as png display data, then closed (what the inline backend does)."""
    for num in plt.get_fignums():
        fig = plt.figure(num)
        buf = io.BytesIO()
        try:
            fig.savefig(buf, format="png", bbox_inches="tight")
        except Exception as exc:  # a figure that cannot be drawn must not fail the cell
            sys.stderr.write(f"could not render figure {num}: {type(exc).__name__}: {exc}\n")
            continue
        _OUTPUTS.append({"image/png": buf.getvalue(), "text/plain": repr(fig)})
    plt.close("all")


def _flush_figures() -> None:
    """Figures a cell left open under a backend other than inline (inline shows its own)."""
    plt = _pyplot()
    if plt is not None and not _inline(plt) and plt.get_fignums():
        _publish_figures(plt)


def prewarm() -> None:
    """Import IPython (and the scientific stack when present) and build the shell."""
    global _SHELL
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for mod in ("numpy", "pandas", "matplotlib.pyplot"):
        with contextlib.suppress(Exception):
            __import__(mod)
    try:
        _SHELL = _make_shell()
    except ImportError:
        _SHELL = None
        return
    # Run a throwaway cell so the lazy imports and caches of the first execution happen once
    # here, not in every sandbox; then forget it.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        _SHELL.run_cell("import matplotlib.pyplot as _p\n_p.figure(); _p.plot([1])\n{'a': 1}")
        _SHELL.run_cell("1/0")
        _SHELL.reset(new_session=False)
    _SHELL.execution_count = 1
    _OUTPUTS.clear()
    _RESULT.clear()


def _jsonable(obj: Any) -> Any:
    try:
        return json.loads(json.dumps(obj, default=str))
    except (TypeError, ValueError):
        return None


def _rich(outputs: list[dict[str, Any]], result: dict[str, Any]) -> dict[str, Any]:
    rich: dict[str, Any] = {}
    items = [*outputs, result["data"]] if "data" in result else list(outputs)
    listed = []
    for data in items:
        for mime, key in (
            ("image/png", "png"),
            ("text/html", "html"),
            ("image/svg+xml", "svg"),
            ("text/markdown", "markdown"),
            ("application/json", "json"),
        ):
            if mime in data:
                value = data[mime]
                if isinstance(value, bytes):
                    value = base64.b64encode(value).decode()
                rich.setdefault(key, value)
                listed.append({"type": mime, "data": {mime: value}})
    if "data" in result:
        rich["result"] = result["data"].get("text/plain")
    obj = result.get("obj")
    if obj is not None:
        if type(obj).__name__ == "DataFrame" and hasattr(obj, "to_json"):
            frame = json.loads(obj.head(MAX_DF_ROWS).to_json(orient="split", default_handler=str))
            frame["dtypes"] = {str(k): str(v) for k, v in obj.dtypes.items()}
            frame["shape"] = list(obj.shape)
            rich["dataframe"] = frame
            rich.setdefault("json", {k: frame[k] for k in ("columns", "index", "data")})
            listed.append({"type": "application/vnd.dataframe+json", "data": frame})
        elif isinstance(obj, (dict, list)) and "json" not in rich:
            rich["json"] = _jsonable(obj)
    if listed:
        rich["rich_outputs"] = listed
    return rich


def _lower_fsize(limit: Any) -> None:
    """Take agentd's (possibly lowered) file size limit; limits only ever go down."""
    if not isinstance(limit, int) or limit == resource.RLIM_INFINITY or limit < 0:
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft == resource.RLIM_INFINITY or limit < soft:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _change_dir(req: dict[str, Any]) -> str | None:
    """Enter the request's working directory; an error message if that fails.

    Jupyter keeps the kernel's directory from cell to cell (`os.chdir`, `%cd`), but the Hopx
    SDKs send `workdir: "/workspace"` with every call. So once the kernel has a directory, a
    request moves it only when it names another one than the request before it did.
    """
    asked = req.get("workdir")
    if _STATE["placed"] and (asked is None or asked == _ASKED_DIR[0]):
        return None
    target = asked or req.get("home") or "/workspace"
    try:
        os.chdir(target)
    except OSError as exc:
        return f"{target}: {exc.strerror}"
    _STATE["placed"] = True
    _ASKED_DIR[0] = asked
    return None


def _apply_env(base: dict[str, str], env: dict[str, str]) -> dict[str, str | None]:
    """Bring os.environ up to date with the sandbox's environment, then lay the request's own
    variables on top; what to restore after the cell.

    Only what changed in the sandbox's environment since the last cell is applied (removed
    keys are removed), so a variable the code set itself stays, as in Jupyter.
    """
    for key in _BASE_ENV.keys() - base.keys():
        os.environ.pop(key, None)
    for key, value in base.items():
        if _BASE_ENV.get(key) != value:
            os.environ[key] = value
    _BASE_ENV.clear()
    _BASE_ENV.update(base)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return saved


def _restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _execute(req: dict[str, Any]) -> dict[str, Any]:
    _OUTPUTS.clear()
    _RESULT.clear()
    _lower_fsize(req.get("fsize"))
    bad = _change_dir(req)
    if bad is not None:
        return {"success": False, "exit_code": 1, "bad_workdir": bad}
    saved = _apply_env(req.get("base_env", {}), req.get("env", {}))
    # The kernel was forked from a pre-imported interpreter, so PYTHONPATH (a custom template's
    # layer) must be applied to sys.path by hand.
    for entry in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        # a warm-up cell (see agentd's /_warm) leaves no trace: no history, no execution count
        res = _SHELL.run_cell(req["code"], store_history=not req.get("warm"))
        _flush_figures()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        _restore_env(saved)
    err = res.error_before_exec or res.error_in_exec
    out: dict[str, Any] = {"success": err is None, "exit_code": 0 if err is None else 1}
    if err is not None:
        out["error"] = {"ename": type(err).__name__, "evalue": str(err)}
    out.update(_rich(_OUTPUTS, _RESULT))
    return out


def _on_sigint(signum: int, frame: Any) -> None:
    # agentd interrupts a cell (timeout, client gone); one landing after the cell ended (or
    # while its answer is being sent) must not kill the kernel
    if _STATE["running"]:
        raise KeyboardInterrupt


def kernel_main(ctl_fd: int) -> NoReturn:
    """Serve executions on `ctl_fd` (JSON lines) until agentd goes away."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, _on_sigint)
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    sys.stdin = open(os.devnull)  # noqa: SIM115
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
    if _SHELL is None:
        prewarm()
    ctl = socket.socket(fileno=ctl_fd)
    reader = ctl.makefile("rb")
    while True:
        req: dict[str, Any] | None = None
        try:
            line = reader.readline()
            if not line:
                os._exit(0)
            req = json.loads(line)
            if _SHELL is None:
                reply: dict[str, Any] = {
                    "success": False,
                    "exit_code": 1,
                    "error": "IPython is not installed in the sandbox's Python",
                }
            else:
                _STATE["running"] = True
                try:
                    reply = _execute(req)
                finally:
                    _STATE["running"] = False
        except KeyboardInterrupt:
            if req is None:  # an interrupt that arrived between executions: nothing to answer
                continue
            reply = {"success": False, "exit_code": 1, "error": {"ename": "KeyboardInterrupt"}}
        reply["id"] = req.get("id")
        if _STATE["exit"]:
            reply["exit_requested"] = True
        ctl.sendall(json.dumps(reply, default=str).encode() + b"\n")
        if _STATE["exit"]:  # agentd starts a fresh kernel for the next execution
            os._exit(0)

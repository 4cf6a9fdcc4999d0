"""The ``agentplex`` client commands (deploy, call, runs): they talk to a running server over
HTTP, found through ``AGENTPLEX_URL`` and ``AGENTPLEX_API_KEY`` (or ``--url``/``--api-key``).

Whatever goes wrong between the command and the server (nothing listens, the key is refused,
the project or run does not exist) ends the command with one line saying what to do and exit
code 1, never a traceback. Progress and a run's output go to stderr, results to stdout, so
``agentplex call ... | jq`` sees only the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import stat
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx

from agentplex.core.manifest import MANIFEST_NAME, parse_function

DEFAULT_URL = "http://127.0.0.1:8080"
_REQUEST_TIMEOUT = 30.0
_UPLOAD_TIMEOUT = 300.0  # the server imports the code in a sandbox to find its entry points
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed times: the same tree always zips to the same hash
_TERMINAL = ("run:stop", "run:fail", "run:cancel")
_FINISHED = ("succeeded", "failed", "cancelled")
_DATA_WIDTH = 160
_PROJECT_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")

F = TypeVar("F", bound=Callable[..., Any])
Item = dict[str, Any]


# -- packaging ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Package:
    """A project directory zipped for upload."""

    data: bytes
    sha256: str
    files: tuple[str, ...]


def project_files(root: Path) -> list[str]:
    """The files of the project at ``root`` a build carries, as sorted archive paths: dotfiles
    and dot-directories (``.git``, ``.venv``), ``__pycache__``, compiled files and virtualenvs
    (any directory holding ``pyvenv.cfg``) are left out, and so are symbolic links leading
    out of the project (said on stderr): a deploy never uploads a file from elsewhere."""
    found: list[str] = []
    top = root.resolve()
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d != "__pycache__"
            and not (here / d / "pyvenv.cfg").exists()
        )
        for name in sorted(files):
            path = here / name
            if name.startswith(".") or name.endswith((".pyc", ".pyo")) or not path.is_file():
                continue
            if path.is_symlink() and not path.resolve().is_relative_to(top):
                click.echo(f"skipping {path}: a link to {path.resolve()}, outside", err=True)
                continue
            found.append(path.relative_to(root).as_posix())
    return sorted(found)


def package(root: Path) -> Package:
    """Zip the project directory ``root`` (deterministically: one tree, one hash)."""
    files = project_files(root)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for name in files:
            path = root / name
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = 0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            archive.writestr(info, path.read_bytes())
    data = buffer.getvalue()
    return Package(data, hashlib.sha256(data).hexdigest(), tuple(files))


def _project_name(root: Path, given: str | None) -> str:
    """``--project``, else the manifest's ``name``, else the directory's name."""
    if given:
        return given
    manifest = root / MANIFEST_NAME
    if manifest.is_file():
        try:
            name = json.loads(manifest.read_text()).get("name")
        except (ValueError, AttributeError, UnicodeDecodeError, OSError) as exc:
            raise click.ClickException(f"{manifest} is not a JSON object: {exc}") from None
        if isinstance(name, str) and name:
            return name
    return root.resolve().name


def _kib(size: int) -> str:
    return f"{size / 1024:.1f} KiB"


# -- talking to the server ---------------------------------------------------------------------


def _message(response: httpx.Response) -> str:
    """The error message of any surface's envelope, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        for value in (error, body.get("message"), body.get("detail")):
            if isinstance(value, str) and value:
                return value
    return response.text.strip()[:200]


class Client:
    """The server's Hot API, with every failure turned into a `click.ClickException`."""

    def __init__(self, url: str, api_key: str | None, timeout: float = _REQUEST_TIMEOUT):
        self.url = url.rstrip("/")
        self.api_key = api_key or None
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def request(
        self, method: str, path: str, *, allow: tuple[int, ...] = (), **kwargs: Any
    ) -> httpx.Response:
        """The answer, unless it is an error status not in ``allow``."""
        with self._translated():
            response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400 and response.status_code not in allow:
            raise self._refused(method, path, response)
        return response

    def data(self, method: str, path: str, **kwargs: Any) -> Any:
        """The ``data`` of a Hot envelope."""
        body = self.request(method, path, **kwargs).json()
        return body.get("data") if isinstance(body, dict) else body

    @contextlib.contextmanager
    def events(
        self, method: str, path: str, *, read_timeout: float | None = None, **kwargs: Any
    ) -> Iterator[Iterator[Item]]:
        """Open an SSE stream; yields an iterator of its items (JSON objects with a type)."""
        timeout = httpx.Timeout(_REQUEST_TIMEOUT, read=read_timeout)
        headers = {"Accept": "text/event-stream"}
        with (
            self._translated(),
            self.http.stream(method, path, headers=headers, timeout=timeout, **kwargs) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise self._refused(method, path, response)
            yield sse_items(response.iter_lines())

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        where = f"the agentplex server at {self.url}"
        try:
            yield
        except (httpx.UnsupportedProtocol, httpx.InvalidURL):
            raise click.ClickException(
                f"{self.url!r} is not a server address: write it like {DEFAULT_URL} "
                "(AGENTPLEX_URL or --url)"
            ) from None
        except httpx.ConnectError as exc:
            raise click.ClickException(
                f"cannot connect to {where} ({_reason(exc)}): is `agentplex serve` running "
                "there? Point AGENTPLEX_URL or --url at it."
            ) from None
        except httpx.TimeoutException:
            raise click.ClickException(f"{where} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise click.ClickException(
                f"the connection to {where} failed: {_reason(exc)}"
            ) from None

    def _refused(self, method: str, path: str, response: httpx.Response) -> click.ClickException:
        status = response.status_code
        if status == 401:
            if self.api_key is None:
                return click.ClickException(
                    f"the server at {self.url} requires an API key: set AGENTPLEX_API_KEY or "
                    "pass --api-key (the server's admin creates one with `agentplex auth token`)"
                )
            return click.ClickException(
                f"the server at {self.url} refused the API key (401): check AGENTPLEX_API_KEY "
                "or --api-key (a key is made with `agentplex auth token` on the server)"
            )
        message = _message(response)
        if status == 404:
            return click.ClickException(f"not found: {message} ({method} {path})")
        return click.ClickException(f"{message} (HTTP {status} from {method} {path})")


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    return text.splitlines()[0]


def sse_items(lines: Iterator[str]) -> Iterator[Item]:
    """The JSON objects with a string ``type`` of a ``text/event-stream`` (comments and other
    data are skipped, as the Hot SDK does)."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                item = _item("\n".join(data))
                data = []
                if item is not None:
                    yield item
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data and (item := _item("\n".join(data))) is not None:
        yield item


def _item(text: str) -> Item | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("type"), str) else None


def _client_options(command: F) -> F:
    command = click.option(
        "--api-key",
        envvar="AGENTPLEX_API_KEY",
        default=None,
        help="API key (also AGENTPLEX_API_KEY).",
    )(command)
    return click.option(
        "--url",
        envvar="AGENTPLEX_URL",
        default=DEFAULT_URL,
        show_default=True,
        help="The server's address (also AGENTPLEX_URL).",
    )(command)


@contextlib.contextmanager
def _client(url: str, api_key: str | None) -> Iterator[Client]:
    client = Client(url, api_key)
    try:
        yield client
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    finally:
        client.close()


# -- showing runs and stream items -------------------------------------------------------------


def unwrap(result: Any) -> Any:
    """A run's result as the SDK returns it: ``{"$ok": value}`` is ``value``."""
    if isinstance(result, dict) and "$ok" in result:
        return result["$ok"]
    return result


def run_error(run: Item) -> str:
    """What went wrong in a failed or cancelled run, in one line."""
    error = run.get("error")
    result = run.get("result")
    if not isinstance(error, dict) and isinstance(result, dict):
        error = result.get("$err")
    if isinstance(error, dict):
        message = str(error.get("message") or "").strip()
        kind = error.get("type")
        if message:
            return f"{kind}: {message}" if kind and kind not in message else message
    return f"the run is {run.get('status', 'finished')}"


def _entry(run: Item) -> str:
    ns, var = run.get("ns"), run.get("var")
    return f"{ns}/{var}" if ns and var else str(run.get("function") or "?")


def _short(value: Any) -> str:
    return str(value or "")[:8]


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DATA_WIDTH else text[: _DATA_WIDTH - 1] + "…"


def _data_text(item: Item) -> str:
    payload = item.get("payload")
    if item.get("data_type") == "text" and isinstance(payload, dict):
        text = payload.get("text")
        if isinstance(text, str):
            return text
    return json.dumps(payload, ensure_ascii=False)


def _clock(value: Any) -> str:
    """HH:MM:SS.mmm local time of an ISO 8601 time ('' when there is none)."""
    if not isinstance(value, str):
        return ""
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return ""
    return when.astimezone().strftime("%H:%M:%S.%f")[:-3]


def _duration(run: Item) -> str:
    try:
        start = datetime.fromisoformat(str(run["start_time"]).replace("Z", "+00:00"))
        stop = datetime.fromisoformat(str(run["stop_time"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return ""
    ms = (stop - start).total_seconds() * 1000
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def describe(item: Item) -> str:
    """One line for a stream item, as ``runs tail`` prints it."""
    kind = str(item.get("type"))
    run: Item = item["run"] if isinstance(item.get("run"), dict) else {}
    when = ""
    text: str
    if kind == "event:published":
        when = _clock(item.get("created_at"))
        data = json.dumps(item.get("event_data"), ensure_ascii=False)
        text = f"event {_short(item.get('event_id'))} {item.get('event_type')} {_clip(data)}"
    elif kind == "stream:data":
        when = _clock(item.get("created_at"))
        text = f"run {_short(item.get('run_id'))} {_clip(_data_text(item))}"
    elif kind == "stream:complete":
        text = f"stream {item.get('stream_id')} complete"
    elif run:
        status = run.get("status")
        when = _clock(run.get("stop_time") or run.get("start_time") or run.get("created_at"))
        who = f"run {_short(run.get('run_id'))}"
        if kind == "run:start":
            attempt = f"attempt {run.get('attempt')}/{run.get('max_attempts')}"
            text = f"run {run.get('run_id')} {run.get('run_type')} {_entry(run)} {attempt}"
        elif kind == "run:stop":
            result = json.dumps(unwrap(run.get("result")), ensure_ascii=False)
            text = f"{who} {status} in {_duration(run)}: {_clip(result)}"
        elif kind in ("run:fail", "run:cancel"):
            retry = ""
            if status == "queued" and run.get("next_retry_at"):
                retry = f" (retry at {_clock(run['next_retry_at'])})"
            text = f"{who} {status}: {_clip(run_error(run))}{retry}"
        else:
            text = f"{who} {status}"
    else:
        text = _clip(json.dumps({k: v for k, v in item.items() if k != "type"}))
    return f"{when:<12} {kind:<16} {text}".rstrip()


# -- the commands -------------------------------------------------------------------------------


@click.command()
@click.argument(
    "path", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path(".")
)
@click.option(
    "--project",
    default=None,
    help="Project to deploy to (default: the manifest's name, else the directory's); "
    "created if missing.",
)
@_client_options
def deploy(path: Path, project: str | None, url: str, api_key: str | None) -> None:
    """Package the project directory PATH, upload it and deploy it."""
    name = _project_name(path, project)
    built = package(path)
    if not built.files:
        raise click.ClickException(f"{path} holds no files to deploy")
    click.echo(
        f"packaging {path}: {len(built.files)} file{'s' if len(built.files) != 1 else ''}, "
        f"{_kib(len(built.data))} "
        f"(sha256 {built.sha256[:12]})",
        err=True,
    )
    with _client(url, api_key) as client:
        found, created = _ensure_project(client, name)
        project_id = str(found["project_id"])
        # one id per project and contents: deploying an unchanged tree again re-uses its build
        build_id = str(uuid.uuid5(uuid.UUID(project_id), built.sha256))
        click.echo(f"uploading {_kib(len(built.data))} to project {name}", err=True)
        try:
            with _client_timeout(client, _UPLOAD_TIMEOUT):
                response = client.request(
                    "POST",
                    f"/v1/projects/{project_id}/builds",
                    data={"hash": built.sha256, "build_id": build_id},
                    files={"file": (f"{name}.zip", built.data, "application/zip")},
                )
        except click.ClickException:
            if created:  # the build was refused: leave no empty project behind
                client.request("DELETE", f"/v1/projects/{project_id}", allow=(404,))
            raise
        build = response.json()["data"]
        if response.headers.get("X-Build-Exists") == "true":
            click.echo(f"build {build_id} was uploaded before (same contents)", err=True)
        if build.get("deployed"):
            click.echo(f"build {build_id} of project {name} is deployed already")
        else:
            build = client.data("POST", f"/v1/projects/{project_id}/builds/{build_id}/deploy")
            click.echo(f"deployed build {build_id} to project {name}")
    for line in _entry_points(build.get("manifest") or {}):
        click.echo(f"  {line}")


def _ensure_project(client: Client, name: str) -> tuple[Item, bool]:
    """The project named ``name``, and whether this call created it."""
    if _safe_name(name):
        response = client.request("GET", f"/v1/projects/{name}", allow=(404,))
        if response.status_code == 200:
            found: Item = response.json()["data"]
            return found, False
    else:
        raise click.ClickException(
            f"{name!r} cannot be a project name (letters, digits, '.', '_' and '-'): "
            "give one with --project NAME"
        )
    click.echo(f"creating project {name}", err=True)
    created: Item = client.data("POST", "/v1/projects", json={"name": name})
    return created, True


def _safe_name(name: str) -> bool:
    """Whether ``name`` can be a project name, and so a URL path segment as is (if not,
    creating the project reports what is wrong with it)."""
    return bool(_PROJECT_NAME.fullmatch(name)) and name not in (".", "..")


@contextlib.contextmanager
def _client_timeout(client: Client, seconds: float) -> Iterator[None]:
    previous = client.http.timeout
    client.http.timeout = httpx.Timeout(seconds)
    try:
        yield
    finally:
        client.http.timeout = previous


def _entry_points(manifest: Item) -> list[str]:
    def hot(target: str) -> str:
        try:
            ref = parse_function(target)
        except ValueError:
            return target
        return f"{ref.ns}/{ref.var}"

    lines = [
        f"handler   {h['event']} -> {hot(h['function'])}" for h in manifest.get("handlers", [])
    ]
    lines += [
        f"schedule  {s['cron']} ({s.get('tz', 'UTC')}) -> {hot(s['function'])}"
        for s in manifest.get("schedules", [])
    ]
    lines += [f"function  {hot(f)}" for f in manifest.get("functions", [])]
    if not lines:
        lines.append(
            "(no handlers, schedules or functions: decorate them with agentplex.sdk's "
            "@on_event, @schedule and @function, or list them in agentplex.json)"
        )
    return lines


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _call_arguments(text: str) -> Any:
    try:
        args = json.loads(text, parse_constant=_no_constant)
        json.dumps(args, allow_nan=False)  # 1e999 parses as infinity: not JSON either
    except ValueError as exc:
        raise click.BadParameter(
            f"not JSON ({exc}): e.g. '[2, 3]'", param_hint="ARGS_JSON"
        ) from None
    if not isinstance(args, list | dict):
        raise click.BadParameter(
            "a JSON array (positional arguments) or object (keyword arguments), e.g. '[2, 3]'",
            param_hint="ARGS_JSON",
        )
    return args


@click.command()
@click.argument("fn")
@click.argument("args_json", required=False, default="[]")
@click.option(
    "--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait for it."
)
@_client_options
def call(fn: str, args_json: str, timeout: float, url: str, api_key: str | None) -> None:
    """Call the deployed function FN and print its result.

    FN is ::module::path/fn or module.path:fn (e.g. ::hello::math/add); ARGS_JSON a JSON
    array of arguments or an object of keyword arguments (default []). What the function
    prints or emits goes to stderr as it runs; the result, as JSON, to stdout. Exit code 1
    when the run fails or is cancelled.
    """
    args = _call_arguments(args_json)
    body = {"event_type": "hot:call", "event_data": {"fn": fn, "args": args}}
    with (
        _client(url, api_key) as client,
        client.events(
            "POST", "/v1/streams/subscribe-with-event", json=body, read_timeout=timeout
        ) as items,
    ):
        finished = _follow_call(fn, items, time.monotonic() + timeout)
    if not finished:
        raise click.ClickException(
            f"{fn} did not finish within {timeout:g} s, or the server closed the stream "
            "before it did: follow it with `agentplex runs tail`"
        )


def _follow_call(fn: str, items: Iterator[Item], deadline: float) -> bool:
    """Echo the call's output until its run ends (True) or the stream or the time does."""
    event_id: str | None = None
    for item in items:
        kind = item.get("type")
        run = item.get("run") if isinstance(item.get("run"), dict) else None
        if kind == "event:published":
            event_id = item.get("event_id")
        elif kind == "stream:data":
            text = _data_text(item)
            click.echo(text, err=True, nl=not text.endswith("\n"))
        elif kind in _TERMINAL and run and run.get("event_id") == event_id:
            done = _finish(fn, str(kind), run)  # False: it failed and is retried
            if done:
                return True
        if time.monotonic() > deadline:
            break
    return False


def _finish(fn: str, kind: str, run: Item) -> bool:
    """Print the result of a finished call (True), or say a retry comes (False); a failed or
    cancelled call raises."""
    if kind == "run:stop":
        click.echo(json.dumps(unwrap(run.get("result")), indent=2, ensure_ascii=False))
        return True
    if run.get("status") == "queued":  # failed, and retried after a backoff: keep following
        click.echo(f"attempt {run.get('attempt')} failed: {run_error(run)}; retrying", err=True)
        return False
    verb = "was cancelled" if kind == "run:cancel" else "failed"
    raise click.ClickException(f"{fn} {verb} (run {run.get('run_id')}): {run_error(run)}")


@click.group("runs")
def runs_group() -> None:
    """Follow and list runs on a server."""


@runs_group.command("tail")
@click.argument("run_id", required=False)
@click.option("--stream", "stream_id", default=None, help="Follow this stream (an event's).")
@click.option("--json", "as_json", is_flag=True, help="Print each item as a JSON line.")
@_client_options
def runs_tail(
    run_id: str | None, stream_id: str | None, as_json: bool, url: str, api_key: str | None
) -> None:
    """Follow a run (default: the newest run) or a stream, one line per item, until it ends.

    A run that has finished already is shown from its event's stream: its whole history."""
    if run_id and stream_id:
        raise click.UsageError("give a RUN_ID or --stream, not both")
    with _client(url, api_key) as client:
        if stream_id:
            with client.events("GET", f"/v1/streams/{stream_id}/subscribe") as items:
                _print_items(items, as_json)
            return
        if run_id:
            run: Item = client.data("GET", f"/v1/runs/{run_id}")
        else:
            newest = client.data("GET", "/v1/runs", params={"limit": 1})
            if not newest:
                raise click.ClickException(
                    "no runs yet: publish an event or `agentplex call` a function first"
                )
            run = newest[0]
            click.echo(f"following run {run['run_id']}", err=True)
        if run.get("status") in _FINISHED and run.get("stream_id"):
            # the run's own subscription would only show its final state: replay its stream
            with client.events("GET", f"/v1/streams/{run['stream_id']}/subscribe") as items:
                _print_items(_of_run(items, run), as_json)
        else:
            with client.events("GET", f"/v1/runs/{run['run_id']}/subscribe") as items:
                _print_items(items, as_json)


def _print_items(items: Iterable[Item], as_json: bool) -> None:
    for item in items:
        click.echo(json.dumps(item, ensure_ascii=False) if as_json else describe(item))


def _of_run(items: Iterator[Item], run: Item) -> Iterator[Item]:
    """The items of a stream about ``run`` (and its event), until its final state."""
    for item in items:
        about = item.get("run") if isinstance(item.get("run"), dict) else None
        run_id = about.get("run_id") if about else item.get("run_id")
        if item.get("type") == "event:published":
            if item.get("event_id") == run.get("event_id"):
                yield item
        elif item.get("type") == "stream:complete":
            return
        elif run_id == run["run_id"]:
            yield item
            if item.get("type") == "run:update" and about and about.get("status") in _FINISHED:
                return


@runs_group.command("list")
@click.option("--status", default=None, help="queued, running, succeeded, failed, cancelled.")
@click.option("--type", "run_type", default=None, help="call, event or schedule.")
@click.option("--project", default=None, help="Only this project's runs (name or id).")
@click.option("--since", default=None, help="Only runs of this last duration (ISO 8601: PT1H).")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@_client_options
def runs_list(
    status: str | None,
    run_type: str | None,
    project: str | None,
    since: str | None,
    limit: int,
    offset: int,
    as_json: bool,
    url: str,
    api_key: str | None,
) -> None:
    """List runs, newest first."""
    query = {
        "status": status,
        "type": run_type,
        "project": project,
        "time_range": since,
        "limit": limit,
        "offset": offset,
    }
    params = {k: v for k, v in query.items() if v is not None}
    with _client(url, api_key) as client:
        body = client.request("GET", "/v1/runs", params=params).json()
    found = body.get("data") or []
    if as_json:
        click.echo(json.dumps(found, indent=2, ensure_ascii=False))
        return
    click.echo(f"{'RUN_ID':<36}  {'TYPE':<8} {'STATUS':<10} {'CREATED':<24} {'TIME':>8}  FUNCTION")
    for run in found:
        click.echo(
            f"{run.get('run_id', ''):<36}  {run.get('run_type', ''):<8} "
            f"{run.get('status', ''):<10} {run.get('created_at') or '':<24} "
            f"{_duration(run):>8}  {_entry(run)}"
        )
    total = (body.get("pagination") or {}).get("total", len(found))
    click.echo(f"{len(found)} of {total} runs", err=True)


def register(main: click.Group) -> None:
    """Add the client commands to the ``agentplex`` group."""
    main.add_command(deploy)
    main.add_command(call)
    main.add_command(runs_group)

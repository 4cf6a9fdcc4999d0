"""End-to-end fixtures: `agentplex serve` and the `agentplex` CLI as real subprocesses.

Every server runs on a free loopback port with its data directory under ``tmp_path`` and
``AGENTPLEX_DATABASE_URL`` taken from the ``database_url`` fixture, so each test runs once on
SQLite and once on PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


def agentplex_command() -> list[str]:
    """The installed console script, or ``python -m agentplex.cli`` when it is missing."""
    script = Path(sys.executable).parent / "agentplex"
    if script.exists():
        return [str(script)]
    found = shutil.which("agentplex")
    return [found] if found else [sys.executable, "-m", "agentplex.cli"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """``agentplex serve`` in a subprocess: start it, talk to it, stop it with SIGTERM."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        port_flag: bool = True,
        args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.env = env
        self.host = host
        self.port = (
            port if port is not None else free_port("0.0.0.0" if host == "0.0.0.0" else host)
        )
        self.port_flag = port_flag
        self.args = args
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr_path = workdir / f"serve-{self.port}.stderr"

    def command(self) -> list[str]:
        port = ["--port", str(self.port)] if self.port_flag else []
        return [
            *agentplex_command(),
            "serve",
            "--host",
            self.host,
            *port,
            "--data-dir",
            str(self.data_dir),
            *self.args,
        ]

    @property
    def stderr(self) -> str:
        """Everything the server wrote to stderr so far (its console log)."""
        try:
            return self._stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = START_TIMEOUT) -> ServeProcess:
        """Launch the server and wait until ``GET /health/live`` answers 200."""
        # stderr goes to a file, not a pipe: a chatty server must never block on a full pipe.
        with self._stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(
                        f"agentplex serve exited with {self.proc.returncode} before it "
                        f"answered:\n{self.stderr}"
                    )
                try:
                    if client.get("/health/live").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    pytest.fail(
                        f"agentplex serve did not answer within {timeout} s:\n{self.stderr}"
                    )
                time.sleep(0.05)

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        """A client for this server, sending ``key`` as a bearer token if given."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        kwargs.setdefault("timeout", 10.0)
        return httpx.Client(base_url=self.url, headers=headers, **kwargs)

    def terminate(self) -> None:
        """Send SIGTERM without waiting."""
        assert self.proc is not None, "the server was not started"
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to end and assert it exited 0; returns the exit code."""
        assert self.proc is not None, "the server was not started"
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(
                f"agentplex serve did not exit within {timeout} s of SIGTERM:\n{self.stderr}"
            )
        assert code == 0, f"agentplex serve exited with {code}:\n{self.stderr}"
        return code

    def stop(self, timeout: float = STOP_TIMEOUT) -> float:
        """SIGTERM, then assert a clean exit within ``timeout``; returns how long it took."""
        started = time.monotonic()
        self.terminate()
        self.wait(timeout)
        return time.monotonic() - started

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class Cli:
    """Runs ``agentplex`` commands with the test's environment."""

    env: dict[str, str]
    workdir: Path

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*agentplex_command(), *args],
            cwd=self.workdir,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"`agentplex {' '.join(args)}` exited with {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result


@pytest.fixture
def base_env(database_url: str) -> dict[str, str]:
    """The environment every subprocess gets: the test database and nothing of the developer's."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENTPLEX_") and k != "HOTPLEX_API_KEY"
    }
    env.update(
        AGENTPLEX_DATABASE_URL=database_url,
        # Skips a `git rev-parse` per start; the value is what /status reports.
        AGENTPLEX_GIT_SHA="e2e",
        # These tests use no sandbox; do not start the sandbox layer in every server.
        AGENTPLEX_SANDBOX_WARM_ON_START="false",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def cli(base_env: dict[str, str], tmp_path: Path) -> Cli:
    return Cli(base_env, tmp_path)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The data directory every server and CLI call of a test shares."""
    return tmp_path / "data"


@pytest.fixture
def new_key(cli: Cli, data_dir: Path) -> Callable[..., str]:
    """Creates an API key with `agentplex auth token` and returns the plaintext it printed."""

    def create(name: str = "e2e") -> str:
        out = cli("auth", "token", "--name", name, "--data-dir", str(data_dir))
        key = out.stdout.strip()
        assert key and "\n" not in key, f"expected exactly one key on stdout, got {out.stdout!r}"
        return key

    return create


ServeFactory = Callable[..., ServeProcess]


@pytest.fixture
def serve(base_env: dict[str, str], tmp_path: Path) -> Iterator[ServeFactory]:
    """Starts `agentplex serve` (``env`` adds variables; ``port_flag=False`` leaves ``--port``
    out so the port comes from configuration). Servers still alive at teardown are killed."""
    started: list[ServeProcess] = []

    def start(
        *,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        port_flag: bool = True,
        args: tuple[str, ...] = (),
    ) -> ServeProcess:
        server = ServeProcess(
            tmp_path,
            {**base_env, **(env or {})},
            host=host,
            port=port,
            port_flag=port_flag,
            args=args,
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event, or a comment line (``comment`` set, the rest None)."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    comment: str | None = None


def sse_events(lines: Iterator[str], deadline: float) -> Iterator[SseEvent]:
    """Parse ``text/event-stream`` lines; fails the test once ``deadline`` passes."""
    fields: dict[str, str] = {}
    for line in lines:
        if time.monotonic() > deadline:
            pytest.fail("the event stream did not deliver what was expected in time")
        if line == "":
            if fields:
                yield SseEvent(fields.get("id"), fields.get("event"), fields.get("data"))
                fields = {}
        elif line.startswith(":"):
            yield SseEvent(comment=line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = (
                f"{fields[name]}\n{value}" if name == "data" and name in fields else value
            )

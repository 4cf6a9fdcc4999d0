"""Fixtures of the run engine's tests: a project, runs queued directly, builds deployed through
BuildService, and an in-memory `RunExecutor` that runs Python callables of the test (by
function name) in-process, so the worker is tested without sandboxes."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import io
import json
import traceback
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from agentplex.bus.memory import MemoryBus
from agentplex.core.blobs import LocalBlobStore
from agentplex.core.builds import BuildService
from agentplex.core.clock import utcnow
from agentplex.core.events import Published, RunType, enqueue, new_run_row, publish
from agentplex.core.manifest import FunctionRef, Manifest
from agentplex.core.ports import RunExecutor, RunJob, RunOutcome, RunOutput
from agentplex.core.projects import ProjectService
from agentplex.core.secrets import MasterKey, SecretService
from agentplex.core.streams import StreamItem, StreamStore
from agentplex.db.engine import Database
from agentplex.db.tables import environments as environments_table
from agentplex.db.tables import runs
from agentplex.engine.queue import RunQueue
from agentplex.engine.worker import Worker
from agentplex.settings import RunSettings

FN = FunctionRef("hello.tasks", "run")


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def project_id(db: Database, env_id: str) -> str:
    return (await ProjectService(db).create(env_id, "hello")).project_id


async def queue_runs(
    db: Database,
    env_id: str,
    project_id: str,
    n: int,
    *,
    max_attempts: int = 3,
    start: datetime | None = None,
    function: FunctionRef = FN,
    build_id: str | None = None,
    timeout_seconds: float | None = None,
    run_type: RunType = "event",
) -> list[str]:
    """``n`` queued runs (``event`` runs unless told: a ``call``'s code errors are not
    retried), due one millisecond apart (in that order)."""
    start = start or utcnow() - timedelta(seconds=10)
    ids = []
    async with db.write() as conn:
        for i in range(n):
            row = new_run_row(
                env_id,
                project_id=project_id,
                build_id=build_id,
                run_type=run_type,
                function=function,
                input={"fn": function.target, "args": [i]},
                max_attempts=max_attempts,
                timeout_seconds=timeout_seconds,
                now=start + timedelta(milliseconds=i),
            )
            await enqueue(conn, row)
            ids.append(row["run_id"])
    return ids


async def set_max_concurrent(db: Database, env_id: str, limit: int) -> None:
    async with db.write() as conn:
        await conn.execute(
            sa.update(environments_table)
            .where(environments_table.c.id == env_id)
            .values(max_concurrent_runs=limit)
        )


async def statuses(db: Database) -> dict[str, Any]:
    async with db.read() as conn:
        rows = await conn.execute(sa.select(runs.c.run_id, runs.c.status))
        return dict(rows.all())


# -- builds ------------------------------------------------------------------------------------


def archive(files: Mapping[str, str], manifest: Mapping[str, Any] | None) -> bytes:
    """A build zip of ``files`` (path -> text) plus ``agentplex.json`` when given."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
        if manifest is not None:
            zf.writestr("agentplex.json", json.dumps(manifest))
    return buffer.getvalue()


HELLO_FILES = {
    "hello/__init__.py": "",
    "hello/tasks.py": "def run(*args):\n    return args\n",
}


async def deploy(
    builds: BuildService,
    env_id: str,
    project: str,
    manifest: Mapping[str, Any] | None,
    files: Mapping[str, str] = HELLO_FILES,
) -> str:
    """Upload and deploy a build of ``files`` with ``manifest``: its id."""
    data = archive(files, manifest)
    upload = await builds.upload(env_id, project, data, hashlib.sha256(data).hexdigest())
    await builds.deploy(env_id, project, upload.build.build_id)
    return upload.build.build_id


@pytest.fixture
def builds(db: Database, tmp_path: Path) -> BuildService:
    return BuildService(db, LocalBlobStore(tmp_path / "blobs"))


# -- the in-memory executor --------------------------------------------------------------------


class Context:
    """What a test handler gets besides its input: the SDK's calls, in-process."""

    def __init__(self, job: RunJob, emit: Callable[[RunOutput], None]) -> None:
        self.job = job
        self._emit = emit

    def print(self, text: str, stream: str = "stdout") -> None:
        self._emit(RunOutput("text", {"text": text, "stream": stream}, "text"))

    def emit(self, value: Any) -> None:
        if isinstance(value, str):
            self._emit(RunOutput("data", {"text": value}, "text"))
        else:
            self._emit(RunOutput("data", value, "json"))

    def capture(self, name: str, value: Any, meta: Any = None) -> None:
        self._emit(RunOutput("var", {"name": name, "value": value, "meta": meta}))

    def publish(self, event_type: str, event_data: Any) -> None:
        self._emit(RunOutput("publish", {"event_type": event_type, "event_data": event_data}))


Handler = Callable[[Context, Any], Awaitable[Any] | Any]


class MemoryExecutor(RunExecutor):
    """Runs ``functions[job.function](ctx, job.input)`` in-process (tests only)."""

    def __init__(self, functions: Mapping[str, Handler] | None = None) -> None:
        self.functions: dict[str, Handler] = dict(functions or {})
        self.jobs: list[RunJob] = []
        self.started: dict[str, asyncio.Event] = {}
        self.cancelled: list[str] = []
        self.forgotten: list[str] = []

    def started_event(self, run_id: str) -> asyncio.Event:
        return self.started.setdefault(run_id, asyncio.Event())

    async def execute(self, job: RunJob, emit: Callable[[RunOutput], None]) -> RunOutcome:
        self.jobs.append(job)
        self.started_event(job.run_id).set()
        handler = self.functions.get(job.function)
        if handler is None:
            return RunOutcome(
                "failed",
                error={"type": "LookupError", "message": f"no function {job.function}"},
            )

        async def call() -> Any:
            value = handler(Context(job, emit), job.input)
            return await value if inspect.isawaitable(value) else value

        try:
            result = await asyncio.wait_for(call(), job.timeout_seconds)
        except TimeoutError:
            error = {
                "type": "TimeoutError",
                "message": f"the handler ran longer than its timeout of {job.timeout_seconds:g} s",
                "traceback": None,
            }
            return RunOutcome("timed_out", error=error)
        except asyncio.CancelledError:
            self.cancelled.append(job.run_id)
            raise
        except Exception as exc:
            error = {
                "type": type(exc).__name__,
                "message": str(exc),
                "traceback": traceback.format_exc(),
            }
            return RunOutcome("failed", error=error)
        return RunOutcome("succeeded", result=result)

    async def discover(self, archive: bytes) -> Manifest:
        return Manifest()

    async def forget_build(self, build_id: str) -> None:
        self.forgotten.append(build_id)


# -- the worker's world ------------------------------------------------------------------------


class Engine:
    """A queue, a stream store, secrets and an in-memory executor on the test database; makes
    workers on them and stops every worker it made."""

    def __init__(self, db: Database, executor: MemoryExecutor) -> None:
        self.db = db
        self.bus = MemoryBus()
        self.streams = StreamStore(db, self.bus)
        self.queue = RunQueue(db, backoff_base=0.05, backoff_max=1.0)
        self.secrets = SecretService(db, MasterKey.generate())
        self.executor = executor
        self.workers: list[Worker] = []

    def settings(self, **values: Any) -> RunSettings:
        defaults: dict[str, Any] = {
            "workers": 4,
            "lease_seconds": 30,
            "heartbeat_seconds": 10,
            "backoff_base_seconds": 0.05,
            "backoff_max_seconds": 1.0,
            "grace_seconds": 2,
        }
        return RunSettings(**{**defaults, **values})

    async def worker(
        self,
        executor: RunExecutor | None = None,
        *,
        queue: RunQueue | None = None,
        idle_seconds: float | None = None,
        **values: Any,
    ) -> Worker:
        """A started worker (settings override ``values``)."""
        worker = Worker(
            queue or self.queue,
            self.streams,
            self.db,
            self.secrets,
            executor or self.executor,
            self.settings(**values),
            idle_seconds=idle_seconds,
        )
        await worker.start()
        self.workers.append(worker)
        return worker

    async def publish(self, env_id: str, event_type: str, data: Any) -> Published:
        async with self.db.write() as conn:
            published = await publish(conn, env_id, event_type, data)
        await self.streams.announce(published.items)
        self.queue.notify()
        return published

    async def items(self, stream_id: str) -> list[StreamItem]:
        return await self.streams.read(stream_id, 0, 10_000)

    async def wait_items(
        self, stream_id: str, until: Callable[[list[StreamItem]], bool], timeout: float = 10.0
    ) -> list[StreamItem]:
        """The stream's items once ``until`` holds for them (fails after ``timeout``)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            items = await self.items(stream_id)
            if until(items):
                return items
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"stream {stream_id} never got there: {[i.data.get('type') for i in items]}"
                )
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for worker in self.workers:
            await worker.stop(grace=0)
        await self.queue.close()


@pytest.fixture
def executor() -> MemoryExecutor:
    return MemoryExecutor()


@pytest.fixture
async def engine(db: Database, executor: MemoryExecutor) -> AsyncIterator[Engine]:
    world = Engine(db, executor)
    await world.queue.start()
    yield world
    await world.close()


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)

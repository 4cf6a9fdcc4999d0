"""The run engine: dispatch latency, call round trip, sustained runs/s, worker scaling.

    python bench/runs.py [--backends sqlite,postgresql] [--dispatch 100] [--calls 100]
                         [--runs 2000] [--fanout 10] [--only dispatch,call,throughput]

Figures from issue 9, each with its target and PASS/MISS (see bench/README.md), per database:

1. event publish -> run started, p50/p95: ``--dispatch`` events of a type one trivial handler
   takes, one at a time through ``POST /v1/streams/subscribe-with-event``; the run's
   ``start_time`` minus the event's ``created_at`` (server clocks, ms precision), and the time
   from sending the request to reading ``run:start`` (client). Target p50 <= 10 ms.
2. ``call_hot`` round trip of a trivial function, p50: the hot-dev SDK's
   ``events.call_hot("::benchapp::handlers/ping", [1])``, ``--calls`` times. Target <= 25 ms.
3. sustained runs completed per second with a trivial handler: ``--runs`` runs, published as
   events each taken by ``--fanout`` handlers (so HTTP publishing is not what is measured),
   8 concurrent publishers; wall time from the first publish until every run is finished.
   With the in-process workers of ``agentplex serve`` (runs.workers slots), then ``runs.workers=0``
   and 1, then 2 ``agentplex worker --workers 8`` processes: the scaling ratio 2/1, and CPU
   use (machine-wide from /proc/stat, and per process tree). Target >= 300 runs/s.

Baseline, measured in the same run on the same database so figures compare across noisy
machines: single-connection INSERT + UPDATE pairs per second, each statement its own committed
transaction (what a run costs the database at the least: queue it, finish it), and the p50 of
one committed INSERT. PostgreSQL: 127.0.0.1:5432 db ``test`` (AGENTPLEX_TEST_POSTGRES_URL), a
fresh schema per run, dropped afterwards. Servers run as users run them (``agentplex serve``,
a scratch data directory, an API key), not pinned (the workers, the server and the database
share the machine's cores). Results go to bench/results/runs.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder heads sys.path, and bench/http.py would shadow the
# standard library's `http` package for everything imported below.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results" / "runs.json"
sys.path.insert(0, str(ROOT))  # bench._common

from bench import _common as common  # noqa: E402

KEY = "bench-runs-key"
PG_URL = os.environ.get(
    "AGENTPLEX_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
TARGET_DISPATCH_MS = 10.0
TARGET_CALL_MS = 25.0
TARGET_RUNS_PER_S = 300.0
PUBLISHERS = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")

Json = Any


# --------------------------------------------------------------------------------------------
# the project under test


def _project(root: Path, fanout: int) -> Path:
    """benchapp: a trivial handler of bench.one, ``fanout`` trivial handlers of bench.burst,
    and a function ping(x) -> x."""
    package = root / "benchapp"
    (package / "benchapp").mkdir(parents=True)
    (package / "agentplex.json").write_text('{"version": 1, "name": "benchapp"}\n')
    (package / "benchapp" / "__init__.py").write_text("")
    handlers = [
        "from agentplex.sdk import function, on_event",
        "",
        "",
        '@on_event("bench.one")',
        "def one(event):",
        "    return None",
        "",
        "",
        "@function",
        "def ping(x=None):",
        "    return x",
    ]
    for i in range(fanout):
        handlers += ["", "", '@on_event("bench.burst")', f"def burst{i}(event):", "    return None"]
    (package / "benchapp" / "handlers.py").write_text("\n".join(handlers) + "\n")
    return package


# --------------------------------------------------------------------------------------------
# processes


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPLEX_")}
    env.pop("HOTPLEX_API_KEY", None)
    return env


@dataclass
class Proc:
    """A process we started (``agentplex serve`` or ``agentplex worker``), in its own group."""

    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@dataclass
class Backend:
    """One database to run everything against: its URL, and how to drop it afterwards."""

    name: str
    url: str
    data_dir: Path
    schema: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def env(self, **more: str) -> dict[str, str]:
        """The environment of a server or worker: the bench's own settings, then the ``--set``
        ones (``extra``: they win over the bench's), then ``more``, what one figure needs
        (``AGENTPLEX_RUNS_WORKERS=0`` on the server of the worker figures: it wins over a
        ``--set`` of the same variable)."""
        env = _base_env()
        env.update(
            AGENTPLEX_DATA_DIR=str(self.data_dir),
            AGENTPLEX_DATABASE_URL=self.url,
            AGENTPLEX_API_KEY=KEY,
            AGENTPLEX_RATE_LIMIT_ENABLED="false",
            AGENTPLEX_LOG_LEVEL="warning",
            AGENTPLEX_LOG_ACCESS_LOG="false",
            AGENTPLEX_SANDBOX_POOL_SIZE="0",
            AGENTPLEX_GIT_SHA="bench",
        )
        env.update(self.extra)
        env.update(more)
        return env

    @property
    def slots(self) -> int:
        """Run slots of a server's in-process workers and of each ``agentplex worker``: a
        ``--set AGENTPLEX_RUNS_WORKERS=N``, else the server's default."""
        raw = self.extra.get("AGENTPLEX_RUNS_WORKERS")
        return int(raw) if raw else _default_slots()


def _agentplex() -> str:
    return str(Path(sys.executable).parent / "agentplex")


def _serve(backend: Backend, workdir: Path, **env: str) -> tuple[Proc, str]:
    port = common.free_port()
    command = [_agentplex(), "serve", "--port", str(port), "--data-dir", str(backend.data_dir)]
    server = Proc(f"serve-{backend.name}", command, backend.env(**env), workdir / "serve.log")
    server.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    with httpx.Client(timeout=2) as http:
        while time.monotonic() < deadline:
            if not server.alive():
                sys.exit(f"agentplex serve exited:\n{server.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if http.get(f"{url}/health/live").status_code == 200:
                    return server, url
            time.sleep(0.1)
    server.stop()
    sys.exit(f"agentplex serve did not answer within 60 s:\n{server.tail()}")


def _default_slots() -> int:
    from agentplex.settings import RunSettings

    return int(RunSettings.model_fields["workers"].default)


def _worker(backend: Backend, workdir: Path, index: int) -> Proc:
    command = [_agentplex(), "worker", "--workers", str(backend.slots)]
    log = workdir / f"worker-{index}.log"
    return Proc(f"worker-{index}", command, backend.env(), log).start()


# --------------------------------------------------------------------------------------------
# CPU: machine-wide (/proc/stat) and per process tree (/proc/PID/stat)


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime jiffies) of every process."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        rest = raw[raw.rfind(")") + 2 :].split()
        table[int(entry.name)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
    return table


def _tree_cpu(roots: dict[str, int]) -> dict[str, dict[int, int]]:
    """For each named root pid: jiffies of every process of its tree (the root included)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, dict[int, int]] = {}
    for name, root in roots.items():
        seen: dict[int, int] = {}
        stack = [root]
        while stack:
            pid = stack.pop()
            if pid in table and pid not in seen:
                seen[pid] = table[pid][1]
                stack.extend(children.get(pid, ()))
        out[name] = seen
    return out


class CpuMeter:
    """CPU seconds used between `start` and `stop`, machine-wide and per process tree."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.machine0 = _machine_jiffies()
        self.trees0 = _tree_cpu(self.roots)
        self.self0 = os.times()

    def stop(self) -> dict[str, Json]:
        wall = time.monotonic() - self.t0
        busy1, total1 = _machine_jiffies()
        trees1 = _tree_cpu(self.roots)
        self1 = os.times()
        busy, total = busy1 - self.machine0[0], total1 - self.machine0[1]
        cpus = os.cpu_count() or 1
        out: dict[str, Json] = {
            "machine_busy_percent": round(100 * busy / total, 1) if total else 0.0,
            "machine_cpu_s": round(busy / CLK_TCK, 2),
            "capacity_s": round(wall * cpus, 2),
            "bench_client_cpu_s": round(
                (self1.user + self1.system) - (self.self0.user + self.self0.system), 2
            ),
        }
        for name, now in trees1.items():
            before = self.trees0.get(name, {})
            used = sum(j - before.get(pid, 0) for pid, j in now.items())
            out[f"{name}_cpu_s"] = round(used / CLK_TCK, 2)
            root = self.roots[name]  # the Python process alone; the rest are its sandboxes
            own = now.get(root, 0) - before.get(root, 0)
            out[f"{name}_process_cpu_s"] = round(own / CLK_TCK, 2)
        return out


# --------------------------------------------------------------------------------------------
# baseline: the database alone


def baseline(backend: Backend, seconds: float) -> dict[str, float]:
    """INSERT+UPDATE pairs/s on one connection, each statement committed on its own, and the
    p50 of one committed INSERT."""
    row = "x" * 200
    if backend.name == "sqlite":
        path = backend.data_dir / "baseline.db"
        conn = sqlite3.connect(path, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000"):
            conn.execute(f"PRAGMA {pragma}")

        def begin() -> None:
            conn.execute("BEGIN IMMEDIATE")

        def commit() -> None:
            conn.execute("COMMIT")

        execute = conn.execute
        placeholder = "?"
    else:
        import psycopg

        pg = psycopg.connect(PG_URL.replace("+psycopg", ""), autocommit=True)
        pg.execute(f"SET search_path TO {backend.schema}")

        def begin() -> None:
            pg.execute("BEGIN")

        def commit() -> None:
            pg.execute("COMMIT")

        def execute(sql: str, params: Any = ()) -> Any:
            return pg.execute(sql, params)

        placeholder = "%s"
    p = placeholder
    execute("CREATE TABLE bench_baseline (id TEXT PRIMARY KEY, status TEXT, payload TEXT)")
    pairs = 0
    inserts: list[float] = []
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    while time.monotonic() < deadline:
        key = uuid.uuid4().hex
        t0 = time.perf_counter()
        begin()
        execute(
            f"INSERT INTO bench_baseline VALUES ({p}, {p}, {p})",
            (key, "queued", row),
        )
        commit()
        inserts.append((time.perf_counter() - t0) * 1000)
        begin()
        execute(f"UPDATE bench_baseline SET status = {p} WHERE id = {p}", ("done", key))
        commit()
        pairs += 1
    elapsed = time.monotonic() - started
    execute("DROP TABLE bench_baseline")
    if backend.name == "sqlite":
        conn.close()
    else:
        pg.close()
    return {
        "insert_update_pairs_per_s": round(pairs / elapsed, 1),
        "insert_commit_p50_ms": round(statistics.median(inserts), 3),
    }


# --------------------------------------------------------------------------------------------
# the figures


def _client(url: str, timeout: float = 60.0) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=timeout)


def deploy(url: str, project: Path) -> dict[str, Json]:
    from agentplex.cli_client import package

    built = package(project)
    with _client(url, timeout=300) as http:
        http.post("/v1/projects", json={"name": "benchapp"}).raise_for_status()
        upload = http.post(
            "/v1/projects/benchapp/builds",
            data={"hash": built.sha256},
            files={"file": ("benchapp.zip", built.data, "application/zip")},
        )
        if upload.status_code != 201:
            sys.exit(f"upload failed: {upload.status_code} {upload.text}")
        build_id = upload.json()["data"]["build_id"]
        deployed = http.post(f"/v1/projects/benchapp/builds/{build_id}/deploy")
        deployed.raise_for_status()
        manifest: dict[str, Json] = deployed.json()["data"]["manifest"]
        return manifest


def _frames(response: httpx.Response) -> Iterator[dict[str, Json]]:
    from agentplex.cli_client import sse_items

    yield from sse_items(response.iter_lines())


def _ms_between(earlier: str, later: str) -> float:
    a = datetime.fromisoformat(earlier.replace("Z", "+00:00"))
    b = datetime.fromisoformat(later.replace("Z", "+00:00"))
    return (b - a).total_seconds() * 1000


def bench_dispatch(url: str, count: int) -> dict[str, Json]:
    """Publish -> run started, one event at a time through subscribe-with-event."""
    server: list[float] = []
    client: list[float] = []
    body = {"event_type": "bench.one", "event_data": {"n": 0}}
    with _client(url) as http:
        for i in range(count + 3):  # the first 3 warm up
            body["event_data"] = {"n": i}
            t0 = time.perf_counter()
            created = started = None
            seen = 0.0
            with http.stream("POST", "/v1/streams/subscribe-with-event", json=body) as response:
                response.raise_for_status()
                for item in _frames(response):
                    if item["type"] == "event:published":
                        created = item["created_at"]
                    elif item["type"] == "run:start":
                        seen = (time.perf_counter() - t0) * 1000
                        started = item["run"]["start_time"]
                    elif item["type"] in ("run:stop", "run:fail", "run:cancel"):
                        if item["type"] != "run:stop":
                            sys.exit(f"a bench.one run did not succeed: {item}")
                        break
            if created is None or started is None:
                sys.exit("the stream ended without event:published and run:start")
            if i >= 3:
                server.append(_ms_between(created, started))
                client.append(seen)
            time.sleep(0.01)
    return {
        "n": count,
        "server_p50_ms": round(statistics.median(server), 2),
        "server_p95_ms": round(common.pct(server, 0.95), 2),
        "client_p50_ms": round(statistics.median(client), 2),
        "client_p95_ms": round(common.pct(client, 0.95), 2),
    }


def bench_call(url: str, count: int) -> dict[str, Json]:
    """The hot-dev SDK's call_hot of a trivial function."""
    from hot import HotClient

    samples: list[float] = []
    with HotClient(token=KEY, base_url=url, timeout=60.0) as hot:
        for i in range(count + 5):
            t0 = time.perf_counter()
            value = hot.events.call_hot("::benchapp::handlers/ping", [i])
            elapsed = (time.perf_counter() - t0) * 1000
            if value != i:
                sys.exit(f"call_hot returned {value!r}, expected {i}")
            if i >= 5:
                samples.append(elapsed)
    return {
        "n": count,
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(common.pct(samples, 0.95), 2),
    }


def _stats(http: httpx.Client) -> dict[str, int]:
    response = http.get("/v1/runs/stats")
    response.raise_for_status()
    stats: dict[str, int] = response.json()["data"]
    return stats


async def _publish(url: str, events: int) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    limits = httpx.Limits(max_connections=PUBLISHERS)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as http:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(events):
            queue.put_nowait(i)

        async def publisher() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                response = await http.post(
                    "/v1/events", json={"event_type": "bench.burst", "event_data": {"n": i}}
                )
                if response.status_code != 201:
                    raise RuntimeError(f"publish: {response.status_code} {response.text}")

        await asyncio.gather(*(publisher() for _ in range(PUBLISHERS)))


def _last_stop(http: httpx.Client, count: int) -> float:
    """The latest ``stop_time`` (epoch seconds) of the ``count`` newest event runs."""
    latest = 0.0
    offset = 0
    while offset < count:
        page = http.get(
            "/v1/runs",
            params={"type": "event", "limit": min(1000, count - offset), "offset": offset},
        )
        page.raise_for_status()
        runs = page.json()["data"]
        if not runs:
            break
        for run in runs:
            if run["stop_time"]:
                when = datetime.fromisoformat(run["stop_time"].replace("Z", "+00:00"))
                latest = max(latest, when.timestamp())
        offset += len(runs)
    return latest


def bench_throughput(url: str, runs: int, fanout: int, roots: dict[str, int]) -> dict[str, Json]:
    """``runs`` trivial runs (``runs / fanout`` events): wall time from the first publish
    until the last run's ``stop_time``, and the CPU used meanwhile."""
    events = max(1, runs // fanout)
    expected = events * fanout
    with _client(url) as http:
        before = _stats(http)
        meter = CpuMeter(roots)
        meter.start()
        t0 = time.time()
        asyncio.run(_publish(url, events))
        published = time.time() - t0
        done_before = sum(before.get(k, 0) for k in ("succeeded", "failed", "cancelled"))
        deadline = time.monotonic() + max(120.0, expected / 20)
        while True:  # polled gently: the stats query is not free for the server
            now = _stats(http)
            done = sum(now.get(k, 0) for k in ("succeeded", "failed", "cancelled")) - done_before
            if done >= expected:
                break
            if time.monotonic() > deadline:
                sys.exit(f"only {done} of {expected} runs finished in time: {now}")
            time.sleep(0.25)
        cpu = meter.stop()
        wall = _last_stop(http, expected) - t0  # server and bench share the machine's clock
        failed = now.get("failed", 0) - before.get("failed", 0)
    engine_cpu = sum(  # the process trees: server, workers and their sandboxes
        v
        for k, v in cpu.items()
        if k.endswith("_cpu_s")
        and not k.endswith("_process_cpu_s")
        and k not in ("machine_cpu_s", "bench_client_cpu_s")
    )
    return {
        "runs": expected,
        "events": events,
        "fanout": fanout,
        "wall_s": round(wall, 3),
        "publish_s": round(published, 3),
        "runs_per_s": round(expected / wall, 1),
        "failed": failed,
        "cpu_ms_per_run": round(engine_cpu * 1000 / expected, 2),
        "cpu": cpu,
    }


# --------------------------------------------------------------------------------------------
# one backend


@contextlib.contextmanager
def _backend(name: str, workdir: Path) -> Iterator[Backend]:
    data = workdir / name
    data.mkdir()
    if name == "sqlite":
        yield Backend(name, f"sqlite+aiosqlite:///{data / 'agentplex.db'}", data)
        return
    import psycopg

    schema = "bench_" + uuid.uuid4().hex[:12]
    libpq = PG_URL.replace("+psycopg", "")
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield Backend(name, f"{PG_URL}?options=-csearch_path%3D{schema}", data, schema)
    finally:
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _warm_up(url: str, slots: int) -> None:
    """First runs start the build's warm sandboxes: not part of any figure."""
    from hot import HotClient

    with HotClient(token=KEY, base_url=url, timeout=120.0) as hot:
        for i in range(2 * slots):
            hot.events.call_hot("::benchapp::handlers/ping", [i], timeout=120.0)


def run_backend(name: str, args: argparse.Namespace, only: set[str]) -> dict[str, Json]:
    report: dict[str, Json] = {}
    with tempfile.TemporaryDirectory(prefix=f"agentplex-bench-runs-{name}-") as tmp:
        workdir = Path(tmp)
        project = _project(workdir / "project", args.fanout)
        with _backend(name, workdir) as backend:
            backend.extra.update(args.env)
            print(f"[{name}] baseline: INSERT + UPDATE on the database alone", flush=True)
            report["baseline"] = baseline(backend, args.baseline_seconds)
            print(f"  {report['baseline']}", flush=True)

            server, url = _serve(backend, workdir)
            try:
                manifest = deploy(url, project)
                report["entry_points"] = {k: len(v) for k, v in manifest.items() if k != "version"}
                _warm_up(url, backend.slots)
                if "dispatch" in only:
                    print(f"[{name}] 1. publish -> run started", flush=True)
                    report["dispatch"] = bench_dispatch(url, args.dispatch)
                    print(f"  {report['dispatch']}", flush=True)
                if "call" in only:
                    print(f"[{name}] 2. call_hot round trip", flush=True)
                    report["call"] = bench_call(url, args.calls)
                    print(f"  {report['call']}", flush=True)
                if "throughput" in only:
                    print(f"[{name}] 3. runs/s, in-process workers ({backend.slots})", flush=True)
                    report["slots"] = backend.slots
                    report["in_process"] = bench_throughput(
                        url, args.runs, args.fanout, {"serve": server.pid}
                    )
                    print(f"  {report['in_process']}", flush=True)
            finally:
                server.stop()

            if "throughput" in only:
                server, url = _serve(backend, workdir, AGENTPLEX_RUNS_WORKERS="0")
                workers: list[Proc] = []
                try:
                    for count in (1, 2):
                        while len(workers) < count:
                            workers.append(_worker(backend, workdir, len(workers) + 1))
                        time.sleep(2.0)
                        for worker in workers:
                            if not worker.alive():
                                sys.exit(f"{worker.name} exited:\n{worker.tail()}")
                        _warm_up(url, backend.slots)
                        print(f"[{name}] 3. runs/s, {count} agentplex worker(s)", flush=True)
                        roots = {"serve": server.pid} | {w.name: w.pid for w in workers}
                        figure = bench_throughput(url, args.runs, args.fanout, roots)
                        report[f"workers_{count}"] = figure
                        print(f"  {figure}", flush=True)
                finally:
                    for worker in workers:
                        worker.stop()
                    server.stop()
                one = report["workers_1"]["runs_per_s"]
                two = report["workers_2"]["runs_per_s"]
                report["scaling_2_over_1"] = round(two / one, 3) if one else None
    pairs = report["baseline"]["insert_update_pairs_per_s"]
    for key in ("in_process", "workers_1", "workers_2"):
        if key in report:
            report[key]["ratio_to_baseline_pairs"] = round(report[key]["runs_per_s"] / pairs, 3)
    return report


# --------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    found = common.versions(
        ("agentplex", "uvicorn", "starlette", "sqlalchemy", "psycopg", "hot-dev")
    )
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(PG_URL.replace("+psycopg", "")) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            found["postgresql"] = str(row[0]) if row else "?"
    found["sqlite"] = sqlite3.sqlite_version
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--backends", default="sqlite,postgresql", help="databases to use")
    parser.add_argument("--dispatch", type=int, default=100, help="events for figure 1")
    parser.add_argument("--calls", type=int, default=100, help="call_hot calls for figure 2")
    parser.add_argument("--runs", type=int, default=2000, help="runs per throughput figure")
    parser.add_argument("--fanout", type=int, default=10, help="handlers per burst event")
    parser.add_argument("--baseline-seconds", type=float, default=3.0, help="baseline length")
    parser.add_argument("--only", default="dispatch,call,throughput", help="figures to run")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help="an AGENTPLEX_* variable for the servers and workers, e.g. "
        "AGENTPLEX_RUNS_WARM_PER_BUILD=4 (repeatable)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    args.env = dict(item.split("=", 1) for item in args.set)
    only = set(args.only.split(","))

    figures: list[tuple[str, str, str, bool]] = []
    report: dict[str, Json] = {}
    for name in args.backends.split(","):
        result = run_backend(name, args, only)
        report[name] = result
        base = result["baseline"]
        figures.append(
            (
                f"[{name}] baseline INSERT+UPDATE pairs/s (one connection)",
                f"{base['insert_update_pairs_per_s']:,} pairs/s, "
                f"INSERT commit p50 {base['insert_commit_p50_ms']} ms",
                "-",
                True,
            )
        )
        if "dispatch" in result:
            d = result["dispatch"]
            figures.append(
                (
                    f"[{name}] event publish -> run started",
                    f"p50 {d['server_p50_ms']} ms, p95 {d['server_p95_ms']} ms (server clocks); "
                    f"client sees run:start p50 {d['client_p50_ms']} ms, "
                    f"p95 {d['client_p95_ms']} ms",
                    "p50 <= 10 ms",
                    d["server_p50_ms"] <= TARGET_DISPATCH_MS,
                )
            )
        if "call" in result:
            c = result["call"]
            figures.append(
                (
                    f"[{name}] call_hot round trip (hot-dev SDK)",
                    f"p50 {c['p50_ms']} ms, p95 {c['p95_ms']} ms",
                    "p50 <= 25 ms",
                    c["p50_ms"] <= TARGET_CALL_MS,
                )
            )
        for key, label in (
            ("in_process", f"in-process workers ({result.get('slots', '?')} slots)"),
            ("workers_1", "1 agentplex worker"),
            ("workers_2", "2 agentplex workers"),
        ):
            if key not in result:
                continue
            t = result[key]
            cpu = t["cpu"]
            figures.append(
                (
                    f"[{name}] runs/s, {label}",
                    f"{t['runs_per_s']:,} runs/s ({t['runs']} runs in {t['wall_s']} s, "
                    f"{t['failed']} failed; {t['ratio_to_baseline_pairs']} x baseline pairs/s); "
                    f"CPU {t['cpu_ms_per_run']} ms/run; "
                    f"machine {cpu['machine_busy_percent']}% busy, "
                    + ", ".join(
                        f"{k.removesuffix('_cpu_s')} {v} s"
                        for k, v in cpu.items()
                        if k.endswith("_cpu_s") and k != "machine_cpu_s"
                    ),
                    ">= 300 runs/s",
                    t["runs_per_s"] >= TARGET_RUNS_PER_S,
                )
            )
        if result.get("scaling_2_over_1") is not None:
            figures.append(
                (
                    f"[{name}] scaling 2 workers / 1 worker",
                    f"{result['scaling_2_over_1']}",
                    "-",
                    True,
                )
            )

    return common.report(
        figures,
        RESULTS,
        script="bench/runs.py",
        argv=sys.argv[1:],
        details=report,
        strict=args.strict,
        settings=args.env,
        cpus=os.cpu_count(),
        versions=_versions(),
    )


if __name__ == "__main__":
    sys.exit(main())

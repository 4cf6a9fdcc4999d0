"""Crash tests of the run engine with real processes, on SQLite and PostgreSQL.

1. `agentplex serve` SIGKILLed while 500 runs are queued or running, then started again:
   every run ends exactly once (one terminal state, one end item in its stream) and no
   accepted event is lost.
2. Two `agentplex worker` processes beside a `serve` that runs no workers: one worker is
   SIGKILLed mid-way; the runs it held finish on the other within the lease time.

Handlers are a manifest-only build (``agentplex.json``) executed in real sandboxes; leases,
heartbeats and sweeps are shortened through environment variables.
"""

from __future__ import annotations

import hashlib
import io
import json
import signal
import subprocess
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.e2e.conftest import ServeFactory, ServeProcess, agentplex_command

LEASE_SECONDS = 2.0
SWEEP_SECONDS = 0.5
ENGINE_ENV = {
    "AGENTPLEX_RUNS_LEASE_SECONDS": str(LEASE_SECONDS),
    "AGENTPLEX_RUNS_HEARTBEAT_SECONDS": "0.5",
    "AGENTPLEX_RUNS_SWEEP_SECONDS": str(SWEEP_SECONDS),
    "AGENTPLEX_RUNS_WARM_PER_BUILD": "4",
    "AGENTPLEX_RUNS_BACKOFF_BASE_SECONDS": "0.1",
    "AGENTPLEX_RUNS_GRACE_SECONDS": "2",
}
TASKS = """
import time


def on_tick(event):
    time.sleep(0.02)
    return event["event_data"]["i"]
"""
MANIFEST = {"handlers": [{"event": "tick", "function": "crash.tasks:on_tick"}]}
END_ITEMS = ("run:stop", "run:fail", "run:cancel")


def build_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("crash/__init__.py", "")
        zf.writestr("crash/tasks.py", TASKS)
        zf.writestr("agentplex.json", json.dumps(MANIFEST))
    return buffer.getvalue()


def deploy(client: httpx.Client) -> None:
    assert client.post("/v1/projects", json={"name": "crash"}).status_code == 201
    data = build_zip()
    uploaded = client.post(
        "/v1/projects/crash/builds",
        data={"hash": hashlib.sha256(data).hexdigest()},
        files={"file": ("build.zip", data, "application/zip")},
        timeout=120,
    )
    assert uploaded.status_code == 201, uploaded.text
    build_id = uploaded.json()["data"]["build_id"]
    deployed = client.post(f"/v1/projects/crash/builds/{build_id}/deploy")
    assert deployed.status_code == 200, deployed.text


def publish(client: httpx.Client, n: int) -> list[str]:
    """``n`` tick events, each accepted (201): their ids."""
    ids = []
    for i in range(n):
        response = client.post("/v1/events", json={"event_type": "tick", "event_data": {"i": i}})
        assert response.status_code == 201, response.text
        ids.append(response.json()["data"]["event_id"])
    return ids


@pytest.fixture
def store(database_url: str) -> Iterator[sa.Engine]:
    """The test database, read directly (synchronously)."""
    engine = sa.create_engine(database_url.replace("+aiosqlite", ""))
    yield engine
    engine.dispose()


def counts(store: sa.Engine) -> Counter[str]:
    with store.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, COUNT(*) FROM runs GROUP BY status"))
        return Counter({str(s): int(n) for s, n in rows})


def wait_until(what: str, predicate: Any, timeout: float) -> float:
    """Seconds it took for ``predicate()`` to hold; fails after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def assert_each_run_ended_once(store: sa.Engine, event_ids: list[str]) -> list[dict[str, Any]]:
    """Every accepted event is stored with its one run; each run succeeded, and its stream
    holds exactly one end item, a final ``run:update`` and one ``stream:complete``."""
    with store.connect() as conn:
        events = {str(e) for (e,) in conn.execute(sa.text("SELECT event_id FROM events"))}
        runs = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM runs"))]
        items = conn.execute(sa.text("SELECT stream_id, data FROM stream_items ORDER BY id"))
        by_stream: dict[str, list[dict[str, Any]]] = {}
        for stream_id, data in items:
            by_stream.setdefault(str(stream_id), []).append(
                data if isinstance(data, dict) else json.loads(data)
            )
    assert set(event_ids) <= events, "an accepted event was lost"
    assert Counter(str(r["event_id"]) for r in runs) == Counter(set(event_ids))
    assert Counter(r["status"] for r in runs) == Counter({"succeeded": len(event_ids)})
    for run in runs:
        stream = by_stream[str(run["stream_id"])]
        kinds = [item["type"] for item in stream]
        ends = [k for k in kinds if k in END_ITEMS]
        assert ends == ["run:stop"], (run["run_id"], kinds)
        assert kinds.count("stream:complete") == 1 and kinds[-1] == "stream:complete", kinds
        final = [i for i in stream if i["type"] == "run:update"][-1]["run"]
        assert final["status"] == "succeeded" and final["attempt"] == run["attempt"]
        stop = next(i for i in stream if i["type"] == "run:stop")["run"]
        expected = {"$ok": _json(run["input"])["event_data"]["i"]}
        assert stop["result"] == _json(run["result"]) == expected
    return runs


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def test_a_server_killed_with_500_runs_in_flight_loses_none(
    serve: ServeFactory, store: sa.Engine
) -> None:
    server = serve(env={**ENGINE_ENV, "AGENTPLEX_RUNS_WORKERS": "8"})
    with server.client(timeout=30) as client:
        deploy(client)
        event_ids = publish(client, 500)
    wait_until("a first share of the runs", lambda: counts(store)["succeeded"] >= 50, 120)
    in_flight = counts(store)
    server.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    server.proc.wait(10)  # type: ignore[union-attr]
    at_kill = counts(store)
    assert at_kill["queued"] + at_kill["running"] > 0, f"nothing was in flight: {in_flight}"

    again = serve(env={**ENGINE_ENV, "AGENTPLEX_RUNS_WORKERS": "8"})
    wait_until(
        "every run to end", lambda: counts(store)["succeeded"] == len(event_ids), timeout=180
    )
    runs = assert_each_run_ended_once(store, event_ids)
    if at_kill["running"]:
        assert any(r["attempt"] == 2 for r in runs), "no run was taken back from the dead server"
    assert max(r["attempt"] for r in runs) <= 2
    again.stop(timeout=15)


class WorkerProcess:
    """``agentplex worker`` in a subprocess."""

    def __init__(self, workdir: Path, env: dict[str, str], name: str, slots: int) -> None:
        self.stderr_path = workdir / f"worker-{name}.stderr"
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    *agentplex_command(),
                    "worker",
                    "--data-dir",
                    str(workdir / "data"),
                    "--workers",
                    str(slots),
                ],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def started(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"agentplex worker exited with {self.proc.returncode}:\n{self.stderr}")
        return "agentplex worker " in self.stderr and "started" in self.stderr

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_a_killed_workers_runs_finish_on_the_other_within_the_lease(
    serve: ServeFactory,
    store: sa.Engine,
    base_env: dict[str, str],
    tmp_path: Path,
) -> None:
    server: ServeProcess = serve(env={**ENGINE_ENV, "AGENTPLEX_RUNS_WORKERS": "0"})
    env = {**base_env, **ENGINE_ENV}
    workers = [WorkerProcess(tmp_path, env, name, 4) for name in ("a", "b")]
    try:
        for worker in workers:
            wait_until("the worker to start", worker.started, 60)
        with server.client(timeout=30) as client:
            deploy(client)
            event_ids = publish(client, 300)
        victim, survivor = workers
        pattern = f"%:{victim.proc.pid}:%"

        def victim_runs() -> list[str]:
            with store.connect() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT run_id FROM runs WHERE status = 'running' AND lease_owner LIKE :p"
                    ),
                    {"p": pattern},
                )
                return [str(r) for (r,) in rows]

        wait_until("the victim to hold runs", lambda: len(victim_runs()) > 0, 120)
        held = victim_runs()
        victim.kill()
        held = sorted(set(held) | set(victim_runs()))  # what it held when it died

        def finished() -> bool:
            with store.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT status FROM runs WHERE run_id IN :ids").bindparams(
                        sa.bindparam("ids", expanding=True)
                    ),
                    {"ids": held},
                )
                return all(s in ("succeeded", "failed", "cancelled") for (s,) in rows)

        took = wait_until("the dead worker's runs to finish elsewhere", finished, 60)
        # the lease runs out, a sweep takes the runs back, the survivor claims them
        assert took <= LEASE_SECONDS + SWEEP_SECONDS + 4.0, f"took {took:.1f} s"
        wait_until("every run to end", lambda: counts(store)["succeeded"] == len(event_ids), 180)
        runs = assert_each_run_ended_once(store, event_ids)
        retaken = [r for r in runs if r["run_id"] in held]
        assert retaken and all(r["attempt"] == 2 for r in retaken)
        survivor.proc.send_signal(signal.SIGTERM)
        assert survivor.proc.wait(15) == 0, survivor.stderr
        assert "agentplex worker stopped" in survivor.stderr
    finally:
        for worker in workers:
            worker.kill()

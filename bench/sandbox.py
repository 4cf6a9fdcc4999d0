"""Sandboxes through the HTTP server and the official hopx-ai SDK: `python bench/sandbox.py`.

Starts `agentplex serve` on a loopback port (SQLite in a temporary data directory, with an API
key, as in production: the control plane takes the key, the data plane each sandbox's token)
once with a warm pool of 2, once with a pool of 50 and once without, and prints, in one run:

0. baselines on this machine, now: a bare `bwrap --unshare-all` start, `python3 -c
   print(1)` (what "start an interpreter" costs) and building one `httpx.Client` (the SDK
   builds a few per sandbox, each loading the CA bundle: most of its figure in 5);
1. create -> first `print(1)` result, p50 and p95, warm pool and no pool (HTTP: POST
   /v1/sandboxes, then POST {public_host}/execute);
2. 50 concurrent creates, p95 until each answers `running`: no pool, and a pool of 50;
3. memory per idle Python sandbox as the server creates them (agentd and a forked kernel):
   USS/PSS summed over 20 sandboxes' processes, and the drop of MemAvailable per sandbox,
   from which how many fit in 4 GiB;
4. execute round trip p50, python and bash, on a running sandbox;
5. create -> first execute through the official hopx-ai SDK.

Targets (issue 3): warm p50 <= 10 ms, no pool <= 80 ms, 50 concurrent p95 <= 150 ms,
idle sandbox <= 10 MiB. Results also go to bench/results/sandbox.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]  # bench/http.py would shadow the standard library's http

import asyncio
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "sandbox.json"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(pool_size: int, source: Path | None = None) -> Iterator[tuple[str, str]]:
    """`agentplex serve` with this pool size and one API key; yields (base URL, key) once the
    pool is full. `source`: run the code of another checkout's `src/` (a baseline release)."""
    data = tempfile.mkdtemp(prefix="agentplex-bench-")
    port = _port()
    env = {
        **os.environ,
        "AGENTPLEX_SANDBOX_POOL_SIZE": str(pool_size),
        "AGENTPLEX_LOG_LEVEL": "warning",
        "AGENTPLEX_RATE_LIMIT_ENABLED": "false",
    }
    if source is not None:
        env["PYTHONPATH"] = str(source / "src")
    exe = str(Path(sys.executable).parent / "agentplex")
    key = subprocess.run(
        [exe, "auth", "token", "--name", "bench", "--data-dir", data],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    proc = subprocess.Popen(
        [exe, "serve", "--port", str(port), "--data-dir", data],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                # the sandbox details of /status are for key holders
                status = httpx.get(f"{url}/status", timeout=1, headers={"X-API-Key": key}).json()
                pool = (status.get("sandbox") or {}).get("pool", {})
                if pool.get("ready", 0) >= pool_size:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.2)
        _KEYS[url] = key
        yield url, key
    finally:
        proc.terminate()
        proc.wait(20)


_KEYS: dict[str, str] = {}  # base URL -> its key, for the pool probe


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": key})


def _pool_ready(url: str) -> int:
    status = httpx.get(f"{url}/status", headers={"X-API-Key": _KEYS[url]}).json()
    return int(status["sandbox"]["pool"]["ready"])


def baselines(rounds: int) -> dict[str, float]:
    """What a process start costs on this machine right now, for scale."""

    def timed(cmd: list[str]) -> float:
        samples = []
        for _ in range(rounds):
            started = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            samples.append((time.perf_counter() - started) * 1000)
        return statistics.median(samples)

    clients = []
    for _ in range(5):
        started = time.perf_counter()
        httpx.Client().close()  # what each client the SDK builds costs (it loads the CA bundle)
        clients.append((time.perf_counter() - started) * 1000)
    return {
        "bwrap_true_p50_ms": timed(["bwrap", "--unshare-all", "--ro-bind", "/", "/", "true"]),
        "python_print_p50_ms": timed([sys.executable, "-c", "print(1)"]),
        "httpx_client_p50_ms": statistics.median(clients),
    }


def create_and_first_exec(http: httpx.Client, data: httpx.Client, wait_pool: str | None) -> float:
    started = time.perf_counter()
    sandbox = http.post("/v1/sandboxes", json={"template_name": "python"}).json()
    result = data.post(
        f"{sandbox['public_host']}/execute",
        headers={"Authorization": f"Bearer {sandbox['auth_token']}"},
        json={"language": "python", "code": "print(1)"},
    ).json()
    elapsed = time.perf_counter() - started
    assert result["stdout"] == "1\n", result
    http.delete(f"/v1/sandboxes/{sandbox['id']}")
    if wait_pool:  # let the pool refill, so every sample starts from a full pool
        while _pool_ready(wait_pool) < 1:
            time.sleep(0.05)
    return elapsed * 1000


def create_exec_series(url: str, key: str, rounds: int, warm: bool) -> dict[str, float]:
    pool = url if warm else None
    with _client(url, key) as http, httpx.Client(timeout=60) as data:
        create_and_first_exec(http, data, pool)  # warm-up
        samples = [create_and_first_exec(http, data, pool) for _ in range(rounds)]
    return {"p50_ms": statistics.median(samples), "p95_ms": _pct(samples, 0.95)}


async def concurrent_creates(url: str, key: str, count: int) -> dict[str, float]:
    async with httpx.AsyncClient(
        base_url=url,
        timeout=120,
        headers={"X-API-Key": key},
        limits=httpx.Limits(max_connections=count),
    ) as http:

        async def one() -> tuple[float, str]:
            started = time.perf_counter()
            body = (await http.post("/v1/sandboxes", json={"template_name": "bash"})).json()
            assert body["status"] == "running", body
            return (time.perf_counter() - started) * 1000, body["id"]

        results = await asyncio.gather(*(one() for _ in range(count)))
        await asyncio.gather(*(http.delete(f"/v1/sandboxes/{sid}") for _, sid in results))
    times = [t for t, _ in results]
    return {"p50_ms": statistics.median(times), "p95_ms": _pct(times, 0.95)}


def round_trips(url: str, key: str, rounds: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with _client(url, key) as http:
        sandbox = http.post("/v1/sandboxes", json={"template_name": "python"}).json()
        auth = {"Authorization": f"Bearer {sandbox['auth_token']}"}
        with httpx.Client(timeout=60, headers=auth) as data:
            for language, code in (("python", "print(1)"), ("bash", "echo 1")):
                samples = []
                for _ in range(rounds + 3):
                    started = time.perf_counter()
                    data.post(
                        f"{sandbox['public_host']}/execute",
                        json={"language": language, "code": code},
                    )
                    samples.append((time.perf_counter() - started) * 1000)
                out[f"{language}_p50_ms"] = statistics.median(samples[3:])
        http.delete(f"/v1/sandboxes/{sandbox['id']}")
    return out


def sdk_create_exec(url: str, key: str, rounds: int) -> dict[str, float]:
    from hopx_ai import Sandbox

    samples = []
    for _ in range(rounds + 1):
        started = time.perf_counter()
        sandbox = Sandbox.create(template="python", api_key=key, base_url=url)
        assert sandbox.run_code("print(1)").stdout == "1\n"
        samples.append((time.perf_counter() - started) * 1000)
        sandbox.kill()
        while _pool_ready(url) < 1:
            time.sleep(0.05)
    return {"p50_ms": statistics.median(samples[1:]), "p95_ms": _pct(samples[1:], 0.95)}


def _mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def idle_memory(count: int = 20) -> dict[str, float]:
    """Idle Python sandboxes as the server makes them (agentd plus an eagerly forked kernel):
    USS/PSS of their processes, and what MemAvailable lost per sandbox."""
    sys.path.insert(0, str(BENCH))
    import sandbox_layer

    from agentplex.sandbox import SandboxManager

    async def measure() -> dict[str, float]:
        with tempfile.TemporaryDirectory() as data:
            async with SandboxManager(Path(data), pool_size=0) as manager:
                warm = await sandbox_layer.new_sandbox(
                    manager, "python"
                )  # the zygotes' pages are counted before
                await asyncio.sleep(1.0)
                before = _mem_available_kib()
                handles = [await sandbox_layer.new_sandbox(manager, "python") for _ in range(count)]
                await asyncio.sleep(2.0)  # eager kernels forked and settled
                drop = (before - _mem_available_kib()) / count / 1024
                uss = pss = 0
                for handle in handles:
                    for pid in sandbox_layer._sandbox_pids(manager, handle):
                        u, p = sandbox_layer._mem(pid)
                        uss, pss = uss + u, pss + p
                await manager.delete(warm.id)
                per_uss, per_pss = uss / count / 1024, pss / count / 1024
                return {
                    "uss_mib": per_uss,
                    "pss_mib": per_pss,
                    "mem_available_drop_mib": drop,
                    "fit_in_4gib": int(4096 // max(drop, per_uss, 0.001)),
                }

    return asyncio.run(measure())


SANDBOX_UIDS = (10000, 10001)  # the code's uid and agentd's (sandbox.manager)


def _sandbox_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid in SANDBOX_UIDS:
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


def idle_memory_via_server(url: str, key: str, count: int = 20) -> dict[str, float]:
    """The same figure as `idle_memory`, through a server (pool 0) of any version: USS/PSS of
    the processes the new sandboxes brought (found by the sandbox uids) and the drop of
    MemAvailable, per sandbox."""
    sys.path.insert(0, str(BENCH))
    import sandbox_layer

    with _client(url, key) as http:
        first = http.post("/v1/sandboxes", json={"template_name": "python"}).json()
        time.sleep(1.0)
        before, pids = _mem_available_kib(), _sandbox_pids()
        made = [
            http.post("/v1/sandboxes", json={"template_name": "python"}).json()["id"]
            for _ in range(count)
        ]
        time.sleep(2.0)  # eager kernels forked and settled
        drop = (before - _mem_available_kib()) / count / 1024
        uss = pss = 0
        for pid in _sandbox_pids() - pids:
            u, p = sandbox_layer._mem(pid)
            uss, pss = uss + u, pss + p
        for sid in [first["id"], *made]:
            http.delete(f"/v1/sandboxes/{sid}")
    return {"uss_mib": uss / count / 1024, "pss_mib": pss / count / 1024, "drop_mib": drop}


def compare(baseline: str, rounds: int) -> None:
    """This checkout against the code of commit `baseline`, in one run: warm create + first
    execute and idle memory per sandbox, alternating the two servers, medians and ratios."""
    checkout = Path(tempfile.mkdtemp(prefix="agentplex-baseline-"))
    subprocess.run(
        ["git", "-C", str(BENCH.parent), "worktree", "add", "--detach", str(checkout), baseline],
        check=True,
        capture_output=True,
    )
    figures: dict[str, dict[str, list[float]]] = {"current": {}, "baseline": {}}
    try:
        for _ in range(2):
            for name, source in (("current", None), ("baseline", checkout)):
                with serve(pool_size=2, source=source) as (url, key):
                    warm = create_exec_series(url, key, rounds, warm=True)
                with serve(pool_size=0, source=source) as (url, key):
                    memory = idle_memory_via_server(url, key)
                for metric, value in {
                    **{f"warm_{k}": v for k, v in warm.items()},
                    **memory,
                }.items():
                    figures[name].setdefault(metric, []).append(value)
                print(
                    f"{name:<9} " + ", ".join(f"{k} {v:.1f}" for k, v in {**warm, **memory}.items())
                )
    finally:
        subprocess.run(
            ["git", "-C", str(BENCH.parent), "worktree", "remove", "--force", str(checkout)],
            check=False,
            capture_output=True,
        )
    print(f"\nmedians of 2 rounds each; ratio = this checkout / {baseline}")
    summary: dict[str, Any] = {"baseline": baseline}
    for metric in figures["current"]:
        now = statistics.median(figures["current"][metric])
        then = statistics.median(figures["baseline"][metric])
        summary[metric] = {"current": now, "baseline": then, "ratio": now / then if then else None}
        print(f"{metric:<16} {now:8.2f} vs {then:8.2f}   ratio {now / then:5.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    (RESULTS.parent / "sandbox_compare.json").write_text(json.dumps(summary, indent=2))


def main() -> None:
    rounds = 20
    if len(sys.argv) == 3 and sys.argv[1] == "--baseline":
        compare(sys.argv[2], rounds)
        return
    results: dict[str, Any] = {"baseline": baselines(rounds)}
    with serve(pool_size=2) as (url, key):
        results["warm_create_exec"] = create_exec_series(url, key, rounds, warm=True)
        results["execute_round_trip"] = round_trips(url, key, rounds)
        results["sdk_create_exec"] = sdk_create_exec(url, key, 10)
    with serve(pool_size=0) as (url, key):
        results["nopool_create_exec"] = create_exec_series(url, key, rounds, warm=False)
        results["concurrent_50_create_nopool"] = asyncio.run(concurrent_creates(url, key, 50))
    with serve(pool_size=50) as (url, key):
        results["concurrent_50_create_pool50"] = asyncio.run(concurrent_creates(url, key, 50))
    results["idle_sandbox_memory"] = idle_memory()

    verdicts = {
        "warm_create_exec": ("p50_ms", 10),
        "nopool_create_exec": ("p50_ms", 80),
        "concurrent_50_create_nopool": ("p95_ms", 150),
        "concurrent_50_create_pool50": ("p95_ms", 150),
        "idle_sandbox_memory": ("uss_mib", 10),
    }
    for name, figures in results.items():
        text = ", ".join(f"{k} {v:.1f}" for k, v in figures.items())
        verdict = ""
        if name in verdicts:
            field, target = verdicts[name]
            ok = figures[field] <= target
            verdict = "  ok" if ok else f"  MISSES {field} <= {target}"
        print(f"{name:<28} {text}{verdict}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"written to {RESULTS.relative_to(BENCH.parent)}")


if __name__ == "__main__":
    main()

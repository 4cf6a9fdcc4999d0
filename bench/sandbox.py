"""Sandboxes through the HTTP server and the official hopx-ai SDK: `python bench/sandbox.py`.

Starts `agentplex serve` on a loopback port (SQLite in a temporary data directory, auth off)
once with a warm pool and once without, and prints, in one run:

1. create -> first `print(1)` result, p50 and p95, warm pool and no pool (HTTP: POST
   /v1/sandboxes, then POST {public_host}/execute);
2. 50 concurrent creates, p95 until each answers `running`;
3. resident memory per idle sandbox and how many fit in 4 GiB (from bench/sandbox_layer.py's
   USS/PSS measurement of the same sandbox layer, in-process);
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
def serve(pool_size: int) -> Iterator[str]:
    """`agentplex serve` with this pool size; yields its base URL once the pool is full."""
    data = tempfile.mkdtemp(prefix="agentplex-bench-")
    port = _port()
    env = {
        **os.environ,
        "AGENTPLEX_SANDBOX_POOL_SIZE": str(pool_size),
        "AGENTPLEX_LOG_LEVEL": "warning",
        "AGENTPLEX_RATE_LIMIT_ENABLED": "false",
    }
    exe = Path(sys.executable).parent / "agentplex"
    proc = subprocess.Popen(
        [str(exe), "serve", "--port", str(port), "--data-dir", data],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status = httpx.get(f"{url}/status", timeout=1).json()
                pool = (status.get("sandbox") or {}).get("pool", {})
                if pool.get("ready", 0) >= pool_size:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def create_and_first_exec(http: httpx.Client, wait_pool: str | None) -> float:
    started = time.perf_counter()
    sandbox = http.post("/v1/sandboxes", json={"template_name": "python"}).json()
    result = http.post(
        f"{sandbox['public_host']}/execute",
        headers={"Authorization": f"Bearer {sandbox['auth_token']}"},
        json={"language": "python", "code": "print(1)"},
    ).json()
    elapsed = time.perf_counter() - started
    assert result["stdout"] == "1\n", result
    http.delete(f"/v1/sandboxes/{sandbox['id']}")
    if wait_pool:  # let the pool refill, so every sample starts from a full pool
        while httpx.get(f"{wait_pool}/status").json()["sandbox"]["pool"]["ready"] < 1:
            time.sleep(0.05)
    return elapsed * 1000


def create_exec_series(url: str, rounds: int, warm: bool) -> dict[str, float]:
    with httpx.Client(base_url=url, timeout=60) as http:
        create_and_first_exec(http, url if warm else None)  # warm-up
        samples = [create_and_first_exec(http, url if warm else None) for _ in range(rounds)]
    return {"p50_ms": statistics.median(samples), "p95_ms": _pct(samples, 0.95)}


async def concurrent_creates(url: str, count: int) -> dict[str, float]:
    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=httpx.Limits(max_connections=count)
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


def round_trips(url: str, rounds: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with httpx.Client(base_url=url, timeout=60) as http:
        sandbox = http.post("/v1/sandboxes", json={"template_name": "python"}).json()
        auth = {"Authorization": f"Bearer {sandbox['auth_token']}"}
        for language, code in (("python", "print(1)"), ("bash", "echo 1")):
            samples = []
            for _ in range(rounds + 3):
                started = time.perf_counter()
                http.post(
                    f"{sandbox['public_host']}/execute",
                    headers=auth,
                    json={"language": language, "code": code},
                )
                samples.append((time.perf_counter() - started) * 1000)
            out[f"{language}_p50_ms"] = statistics.median(samples[3:])
        http.delete(f"/v1/sandboxes/{sandbox['id']}")
    return out


def sdk_create_exec(url: str, rounds: int) -> dict[str, float]:
    from hopx_ai import Sandbox

    samples = []
    for _ in range(rounds + 1):
        started = time.perf_counter()
        sandbox = Sandbox.create(template="python", api_key="bench", base_url=url)
        assert sandbox.run_code("print(1)").stdout == "1\n"
        samples.append((time.perf_counter() - started) * 1000)
        sandbox.kill()
        while httpx.get(f"{url}/status").json()["sandbox"]["pool"]["ready"] < 1:
            time.sleep(0.05)
    return {"p50_ms": statistics.median(samples[1:]), "p95_ms": _pct(samples[1:], 0.95)}


def idle_memory() -> dict[str, float]:
    """USS/PSS of idle sandboxes, measured by the sandbox layer's own benchmark code."""
    sys.path.insert(0, str(BENCH))
    import sandbox_layer

    from agentplex.sandbox import SandboxManager

    async def measure() -> dict[str, float]:
        with tempfile.TemporaryDirectory() as data:
            async with SandboxManager(Path(data), pool_size=0, eager_kernel=False) as manager:
                handles = [await manager.create("python") for _ in range(10)]
                uss = pss = 0
                for handle in handles:
                    for pid in sandbox_layer._sandbox_pids(manager, handle):
                        u, p = sandbox_layer._mem(pid)
                        uss, pss = uss + u, pss + p
                per_uss, per_pss = uss / len(handles) / 1024, pss / len(handles) / 1024
                return {
                    "uss_mib": per_uss,
                    "pss_mib": per_pss,
                    "fit_in_4gib": int(4096 // max(per_pss, 0.001)),
                }

    return asyncio.run(measure())


def main() -> None:
    rounds = 20
    results: dict[str, Any] = {}
    with serve(pool_size=2) as url:
        results["warm_create_exec"] = create_exec_series(url, rounds, warm=True)
        results["execute_round_trip"] = round_trips(url, rounds)
        results["sdk_create_exec"] = sdk_create_exec(url, 10)
    with serve(pool_size=0) as url:
        results["nopool_create_exec"] = create_exec_series(url, rounds, warm=False)
        results["concurrent_50_create"] = asyncio.run(concurrent_creates(url, 50))
    results["idle_sandbox_memory"] = idle_memory()

    targets = {"warm_create_exec": 10, "nopool_create_exec": 80}
    for name, figures in results.items():
        text = ", ".join(f"{k} {v:.1f}" for k, v in figures.items())
        target = targets.get(name)
        verdict = ""
        if target is not None:
            verdict = "  ok" if figures["p50_ms"] <= target else f"  MISSES p50 <= {target} ms"
        if name == "concurrent_50_create":
            verdict = "  ok" if figures["p95_ms"] <= 150 else "  MISSES p95 <= 150 ms"
        if name == "idle_sandbox_memory":
            verdict = "  ok" if figures["pss_mib"] <= 10 else "  MISSES <= 10 MiB"
        print(f"{name:<24} {text}{verdict}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"written to {RESULTS.relative_to(BENCH.parent)}")


if __name__ == "__main__":
    main()

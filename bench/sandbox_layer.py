"""Micro-benchmark of the sandbox layer (no HTTP server): run `python bench/sandbox_layer.py`.

Prints create -> first print(1) (warm pool and no pool), 50 concurrent creates, idle memory per
sandbox (USS and PSS from /proc/<pid>/smaps_rollup, summed over the sandbox's processes) and the
execute round trip for python and bash. Targets (issue 3): warm p50 <= 10 ms, no pool <= 80 ms,
50 concurrent p95 <= 150 ms, idle sandbox <= 10 MiB.
"""

from __future__ import annotations

import sys

if sys.path and sys.path[0].endswith("bench"):
    del sys.path[0]  # bench/http.py would shadow the standard library's http

import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from agentplex.sandbox import SandboxHandle, SandboxManager


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _mem(pid: int) -> tuple[int, int]:
    uss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key == "Pss":
                pss += int(rest.split()[0])
            elif key in ("Private_Clean", "Private_Dirty"):
                uss += int(rest.split()[0])
    except OSError:
        pass
    return uss, pss


async def new_sandbox(manager: SandboxManager, template: str = "python") -> SandboxHandle:
    """A running sandbox of a built-in template, as core asks the manager for one."""
    sandbox_id = "sbx-" + uuid.uuid4().hex[:16]
    await manager.create(sandbox_id, manager.builtin(template), env_vars={}, internet_access=False)
    return manager.get(sandbox_id)


def _sandbox_pids(manager: SandboxManager, handle: SandboxHandle) -> list[int]:
    from agentplex.sandbox.proctree import descendants as _descendants

    rt = manager._runtimes[handle.id]
    pids = set(_descendants(rt.bwrap_pid)) | set(_descendants(rt.agentd_pid))
    return sorted(p for p in pids if p)


async def _first_exec(manager: SandboxManager) -> float:
    start = time.perf_counter()
    handle = await new_sandbox(manager, "python")
    status, _, body = await handle.request("POST", "/execute", json={"code": "print(1)"})
    elapsed = (time.perf_counter() - start) * 1000
    assert status == 200 and json.loads(body)["stdout"] == "1\n", body
    await manager.delete(handle.id)
    return elapsed


async def main(rounds: int = 20) -> None:
    base = Path(tempfile.mkdtemp(prefix="apx-bench-"))
    async with SandboxManager(base / "warm", pool_size=4, quota_interval=0) as manager:
        warm = []
        for _ in range(rounds):
            await manager.wait_pool(60)
            warm.append(await _first_exec(manager))
        print(
            f"warm pool  create+print(1): p50 {statistics.median(warm):6.1f} ms"
            f"  p95 {_pct(warm, 0.95):6.1f} ms"
        )
        h = await new_sandbox(manager, "python")
        for lang, code in (("python", "print(1)"), ("bash", "echo 1")):
            times = []
            for _ in range(rounds):
                t = time.perf_counter()
                await h.request("POST", "/execute", json={"code": code, "language": lang})
                times.append((time.perf_counter() - t) * 1000)
            print(f"execute round trip {lang:6}: p50 {statistics.median(times):6.2f} ms")
        await manager.delete(h.id)

    async with SandboxManager(base / "cold", pool_size=0, quota_interval=0) as manager:
        cold = [await _first_exec(manager) for _ in range(rounds)]
        print(
            f"no pool    create+print(1): p50 {statistics.median(cold):6.1f} ms"
            f"  p95 {_pct(cold, 0.95):6.1f} ms"
        )

        async def timed() -> tuple[float, SandboxHandle]:
            t = time.perf_counter()
            handle = await new_sandbox(manager, "bash")
            return (time.perf_counter() - t) * 1000, handle

        results = await asyncio.gather(*(timed() for _ in range(50)))
        lat = [r[0] for r in results]
        print(
            f"50 concurrent creates (no pool): p50 {statistics.median(lat):6.1f} ms"
            f"  p95 {_pct(lat, 0.95):6.1f} ms"
        )
        await asyncio.sleep(1.0)
        for label, handles in (("idle, never executed", [r[1] for r in results[:20]]),):
            uss = [sum(_mem(p)[0] for p in _sandbox_pids(manager, x)) for x in handles]
            pss = [sum(_mem(p)[1] for p in _sandbox_pids(manager, x)) for x in handles]
            print(
                f"memory per sandbox ({label}, {len(results)} alive): "
                f"USS {statistics.median(uss) / 1024:5.1f} MiB, "
                f"PSS {statistics.median(pss) / 1024:5.1f} MiB;"
                f" fit in 4 GiB by PSS: {int(4 * 1024 * 1024 / statistics.median(pss))}"
            )
        for handle in [r[1] for r in results[:20]]:
            await handle.request("POST", "/execute", json={"code": "x = 1"})
        await asyncio.sleep(0.5)
        handles = [r[1] for r in results[:20]]
        uss = [sum(_mem(p)[0] for p in _sandbox_pids(manager, x)) for x in handles]
        pss = [sum(_mem(p)[1] for p in _sandbox_pids(manager, x)) for x in handles]
        print(
            "memory per sandbox (with a Python kernel): "
            f"USS {statistics.median(uss) / 1024:5.1f} MiB,"
            f" PSS {statistics.median(pss) / 1024:5.1f} MiB"
        )


if __name__ == "__main__":
    asyncio.run(main())

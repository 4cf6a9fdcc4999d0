"""SandboxRunExecutor in real sandboxes: no run inherits another's leftovers (threads,
processes), bursts of one build do not hold up another's runs, forgetting a build stops its
sandboxes, discover() checks agentplex.json against the code, clear errors, a standard PATH."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from agentplex.core.ports import RunOutput
from agentplex.engine.executor import ExecutorConfig, SandboxRunExecutor
from agentplex.errors import BadRequest
from agentplex.sandbox import SandboxManager

from .test_run_executor import APP, Archives, collector, job, make_zip, texts

pytestmark = pytest.mark.asyncio(loop_scope="module")

LEAKY = """
import os, subprocess, sys, threading, time
from agentplex import sdk

def sandbox_id():
    return os.environ.get("SANDBOX_ID")

def path():
    return os.environ.get("PATH")

def spawn_emitter():
    def loop():
        while True:
            try:
                sdk.emit("leak")
            except Exception:
                pass
            time.sleep(0.2)
    threading.Thread(target=loop, daemon=True).start()
    return "started"

def spawn_and_sleep():
    spawn_emitter()
    time.sleep(30)

def fork(n):
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        pids.append(pid)
    return len(pids)

def finished_thread():
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    out = subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, text=True)
    return out.stdout.strip()

def run_child():
    out = subprocess.run(["true"])
    return out.returncode

def sleeper(seconds):
    time.sleep(seconds)
    return os.environ.get("SANDBOX_ID")

def huge():
    return "x" * (9 * 1024 * 1024)

def check_cost():
    from agentplex.sdk import _runtime
    threads = frozenset(t.ident for t in threading.enumerate())
    processes = _runtime._processes()
    start = time.perf_counter()
    for _ in range(200):
        _runtime._leftovers(threads, processes)
        _runtime._processes()
    return (time.perf_counter() - start) / 200
"""

LEAKY_APP = make_zip({"leaky/__init__.py": "", "leaky/h.py": LEAKY})


@pytest_asyncio.fixture(loop_scope="module")
async def archives() -> Archives:
    found = Archives()
    found.by_build.update({"b1": APP, "b2": APP, "leaky": LEAKY_APP, "leaky2": LEAKY_APP})
    return found


@pytest_asyncio.fixture(loop_scope="module")
async def executor(
    manager: SandboxManager, archives: Archives
) -> AsyncIterator[SandboxRunExecutor]:
    ex = SandboxRunExecutor(manager, ExecutorConfig(), archives)
    yield ex
    await ex.close()


ignore: Callable[[RunOutput], None] = lambda _: None  # noqa: E731


# -- 1. leftovers ------------------------------------------------------------------------------


async def test_a_stray_thread_is_not_inherited_by_later_runs(
    executor: SandboxRunExecutor,
) -> None:
    first = await executor.execute(job("leaky.h:sandbox_id", build="leaky"), ignore)
    again = await executor.execute(job("leaky.h:sandbox_id", build="leaky"), ignore)
    assert first.result == again.result  # the common path keeps its warm sandbox
    _, emit = collector()
    started = await executor.execute(job("leaky.h:spawn_emitter", build="leaky"), emit)
    assert started.result == "started"
    await asyncio.sleep(0.5)
    later, collect = collector()
    outcome = await executor.execute(job("leaky.h:sleeper", data=[1.0], build="leaky"), collect)
    assert outcome.status == "succeeded"
    assert outcome.result != first.result  # a fresh sandbox
    assert not [o for o in later if o.kind == "data"], later
    assert "leak" not in texts(later)
    assert executor.status()["builds"]["leaky"] == 1


async def test_forked_children_are_not_inherited_by_later_runs(
    executor: SandboxRunExecutor,
) -> None:
    before = await executor.execute(job("leaky.h:sandbox_id", build="leaky2"), ignore)
    forked = await executor.execute(job("leaky.h:fork", data=[251], build="leaky2"), ignore)
    assert forked.status == "succeeded" and forked.result == 251, forked
    for _ in range(3):
        outcome = await executor.execute(job("leaky.h:run_child", build="leaky2"), ignore)
        assert outcome.status == "succeeded" and outcome.result == 0, outcome
    after = await executor.execute(job("leaky.h:sandbox_id", build="leaky2"), ignore)
    assert after.result != before.result
    # threads and processes a run waited for are no leftovers: the sandbox stays
    one = await executor.execute(job("leaky.h:finished_thread", build="leaky2"), ignore)
    assert one.result == "1"
    same = await executor.execute(job("leaky.h:sandbox_id", build="leaky2"), ignore)
    assert same.result == after.result


async def test_a_cancelled_run_that_left_a_thread_gets_its_sandbox_replaced(
    executor: SandboxRunExecutor,
) -> None:
    before = await executor.execute(job("leaky.h:sandbox_id", build="leaky"), ignore)
    task = asyncio.ensure_future(
        executor.execute(job("leaky.h:spawn_and_sleep", build="leaky"), ignore)
    )
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    later, collect = collector()
    after = await executor.execute(job("leaky.h:sleeper", data=[0.6], build="leaky"), collect)
    assert after.status == "succeeded" and after.result != before.result
    assert not [o for o in later if o.kind == "data"] and "leak" not in texts(later)
    # a cancelled run that left nothing keeps its sandbox
    task = asyncio.ensure_future(
        executor.execute(job("leaky.h:sleeper", data=[30], build="leaky"), ignore)
    )
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    again = await executor.execute(job("leaky.h:sandbox_id", build="leaky"), ignore)
    assert again.result == after.result


async def test_the_leftovers_check_is_cheap(executor: SandboxRunExecutor) -> None:
    outcome = await executor.execute(job("leaky.h:check_cost", build="leaky"), ignore)
    assert outcome.status == "succeeded" and outcome.result < 0.0005, outcome


# -- 2. bursts ---------------------------------------------------------------------------------


async def test_a_busy_build_does_not_hold_up_another_builds_runs(
    manager: SandboxManager, archives: Archives
) -> None:
    config = ExecutorConfig(
        warm_per_build=1, max_warm_sandboxes=5, warm_idle_seconds=60, burst_idle_seconds=0.5
    )
    ex = SandboxRunExecutor(manager, config, archives)
    try:
        await ex.execute(job("leaky.h:sandbox_id", build="leaky"), ignore)
        await ex.execute(job("app.handlers:add", data=[1, 2], build="b1"), ignore)
        start = time.monotonic()
        busy = [
            asyncio.ensure_future(
                ex.execute(job("leaky.h:sleeper", data=[4.0], build="leaky"), ignore)
            )
            for _ in range(3)
        ]
        await asyncio.sleep(0.5)
        other = await ex.execute(job("app.handlers:add", data=[1, 2], build="b1"), ignore)
        assert other.result == 3
        assert time.monotonic() - start < 3.0  # not after the busy build's runs
        results = await asyncio.gather(*busy)
        assert all(r.status == "succeeded" for r in results)
        assert len({r.result for r in results}) == 3  # each in a sandbox of its own, at once
        assert time.monotonic() - start < 8.0
        assert ex.status()["builds"]["leaky"] == 3
        await asyncio.sleep(1.5)  # the burst is over: the build keeps warm_per_build
        assert ex.status()["builds"] == {"leaky": 1, "b1": 1}
    finally:
        await ex.close()


async def test_a_burst_evicts_idle_sandboxes_of_other_builds_within_the_limit(
    manager: SandboxManager, archives: Archives
) -> None:
    config = ExecutorConfig(warm_per_build=1, max_warm_sandboxes=2, warm_idle_seconds=60)
    ex = SandboxRunExecutor(manager, config, archives)
    try:
        await ex.execute(job("app.handlers:add", data=[1, 2], build="b1"), ignore)
        sleepers = [
            ex.execute(job("leaky.h:sleeper", data=[0.5], build="leaky"), ignore) for _ in range(3)
        ]
        results = await asyncio.gather(*sleepers)
        assert all(r.status == "succeeded" for r in results)
        assert len({r.result for r in results}) == 2  # two at most: the third waited
        assert ex.status()["builds"] == {"leaky": 2}
    finally:
        await ex.close()


# -- 3. forget_build ---------------------------------------------------------------------------


async def test_forget_build_stops_idle_sandboxes_now_and_busy_ones_after_their_run(
    manager: SandboxManager, archives: Archives
) -> None:
    ex = SandboxRunExecutor(manager, ExecutorConfig(warm_per_build=2), archives)
    try:
        running = asyncio.ensure_future(
            ex.execute(job("leaky.h:sleeper", data=[2.5], build="leaky"), ignore)
        )
        await asyncio.sleep(0.2)  # the sleeper has the first sandbox: this run gets another
        idle = (await ex.execute(job("leaky.h:sandbox_id", build="leaky"), ignore)).result
        assert idle in manager.sandbox_ids() and ex.status()["busy"] == 1
        await ex.forget_build("leaky")
        await asyncio.sleep(0.3)
        assert idle not in manager.sandbox_ids()
        busy = [s.sandbox_id for s in ex._slots[("e1", "p1", "leaky")]]
        assert len(busy) == 1 and busy[0] in manager.sandbox_ids()
        outcome = await running
        assert outcome.status == "succeeded" and outcome.result == busy[0]
        await asyncio.sleep(0.3)
        assert busy[0] not in manager.sandbox_ids()
        assert "leaky" not in ex.status()["builds"]
    finally:
        await ex.close()


async def test_forget_project_stops_its_builds_sandboxes_and_no_others(
    manager: SandboxManager, archives: Archives
) -> None:
    ex = SandboxRunExecutor(manager, ExecutorConfig(warm_per_build=1), archives)
    try:
        mine = (await ex.execute(job("leaky.h:sandbox_id", build="leaky"), ignore)).result
        other_job = job("leaky.h:sandbox_id", build="leaky", project="p2")
        other = (await ex.execute(other_job, ignore)).result
        await ex.forget_project("p1")
        await asyncio.sleep(0.3)
        assert mine not in manager.sandbox_ids() and other in manager.sandbox_ids()
    finally:
        await ex.close()


# -- 4. discover checks the manifest -------------------------------------------------------------


async def test_discover_refuses_a_manifest_naming_missing_functions(
    executor: SandboxRunExecutor,
) -> None:
    manifest = {
        "functions": ["tp.m:ghost", "tp.m:real", "tp.m:VALUE"],
        "handlers": [{"event": "x.y", "function": "tp.m:real"}],
    }
    files = {
        "tp/__init__.py": "",
        "tp/m.py": "VALUE = 1\ndef real():\n    return 1\n",
        "agentplex.json": json.dumps(manifest),
    }
    with pytest.raises(BadRequest) as caught:
        await executor.discover(make_zip(files))
    message = caught.value.message
    assert "module tp.m has no function ghost" in message
    assert "module tp.m has no function VALUE" in message
    assert "real" not in message.replace("tp.m:real", "")
    manifest["functions"] = ["tp.m:real"]
    files["agentplex.json"] = json.dumps(manifest)
    await executor.discover(make_zip(files))  # all there


# -- 5. clear errors ---------------------------------------------------------------------------


async def test_a_result_over_the_limit_says_so(executor: SandboxRunExecutor) -> None:
    outputs, emit = collector()
    outcome = await executor.execute(job("leaky.h:huge", build="leaky", timeout=60), emit)
    assert outcome.status == "failed"
    assert outcome.error["type"] == "ResultTooLarge", outcome.error
    assert "8 MiB" in outcome.error["message"]
    assert "[output truncated]" not in texts(outputs) + texts(outputs, "stderr")


async def test_discover_of_code_printing_megabytes_at_import(
    executor: SandboxRunExecutor,
) -> None:
    code = (
        "import sys\nfrom agentplex import sdk\n"
        "for _ in range(50 * 1024):\n    sys.stdout.write('y' * 1023 + '\\n')\n"
        "@sdk.function\ndef f():\n    return 1\n"
    )
    manifest = await executor.discover(make_zip({"loud.py": code}))
    assert [f.target for f in manifest.functions] == ["loud:f"]


async def test_discover_of_a_nan_timeout_says_what_to_write(
    executor: SandboxRunExecutor,
) -> None:
    code = "from agentplex import sdk\n@sdk.function(timeout=float('nan'))\ndef f():\n    pass\n"
    with pytest.raises(BadRequest) as caught:
        await executor.discover(make_zip({"nan.py": code}))
    assert "timeout=30" in caught.value.message, caught.value.message


async def test_discover_of_an_import_that_hangs(
    manager: SandboxManager, archives: Archives
) -> None:
    ex = SandboxRunExecutor(manager, ExecutorConfig(), archives, discover_timeout=1.0)
    try:
        with pytest.raises(BadRequest) as caught:
            await ex.discover(make_zip({"hang.py": "import time\ntime.sleep(60)\n"}))
        assert "importing the build's code took longer than 1 s" in caught.value.message
        assert "KeyboardInterrupt" not in caught.value.message
    finally:
        await ex.close()


# -- 6. PATH -----------------------------------------------------------------------------------


async def test_run_sandboxes_have_a_standard_path(executor: SandboxRunExecutor) -> None:
    outcome = await executor.execute(job("leaky.h:path", build="leaky"), ignore)
    path = outcome.result.split(":")
    assert path[:2] == ["/run/template/bin", "/run/template/python/bin"], path
    assert path[-3:] == ["/usr/local/bin", "/usr/bin", "/bin"], path
    assert len(path) == 6 and not any(".cargo" in p or "shims" in p for p in path), path

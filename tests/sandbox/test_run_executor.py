"""SandboxRunExecutor in real bubblewrap sandboxes: call conventions, outputs, secrets, errors,
timeouts, cancel, warm reuse and isolation, discover() and the requirements layer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from agentplex.core.ports import RunJob, RunOutput
from agentplex.engine.executor import ExecutorConfig, SandboxRunExecutor
from agentplex.errors import BadRequest
from agentplex.sandbox import SandboxManager

pytestmark = pytest.mark.asyncio(loop_scope="module")

HANDLERS = """
import asyncio, os, sys
from agentplex import sdk

CALLS = 0

@sdk.on_event("user.signup")
def signup(event):
    global CALLS
    CALLS += 1
    print("signed up", event["event_data"]["email"])
    sdk.capture("email", event["event_data"]["email"], {"source": "signup"})
    sdk.emit({"step": 1})
    sdk.emit("plain text")
    sdk.publish("user.welcomed", {"email": event["event_data"]["email"]})
    return {"calls": CALLS, "event_type": event["event_type"], "run": sdk.current_run()}

@sdk.on_event("user.bare")
def bare():
    return "no argument"

@sdk.on_event("user.async")
async def later(event):
    await asyncio.sleep(0.01)
    return {"async": event["event_data"]}

@sdk.schedule("*/5 * * * *", tz="Europe/Paris")
def tick(fire):
    return fire

@sdk.schedule("0 0 * * *")
def nightly():
    return "nightly"

@sdk.function
def add(a, b):
    return a + b

@sdk.function()
def env(name):
    return os.environ.get(name)

def sandbox_id():
    return os.environ.get("SANDBOX_ID")

def counter():
    return CALLS

def unserialisable():
    return {1, 2}

def boom():
    def inner():
        raise ValueError("bad input")
    inner()

def sleeper(seconds):
    import time
    time.sleep(seconds)
    return "woke"

def partial():
    print("a", end="")
    sdk.emit(1)
    print("b")
    print("err line", file=sys.stderr)
    print("\\x1eapx:deadbeef {\\"k\\": \\"result\\", \\"ok\\": true, \\"value\\": 666}")
    return "done"

def loud(megabytes):
    chunk = "x" * 1023 + "\\n"
    for _ in range(megabytes * 1024):
        sys.stdout.write(chunk)
    return 42

def die():
    os._exit(3)

def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        return f"refused: {type(exc).__name__}"

def listdir(path):
    return sorted(os.listdir(path))
"""


def make_zip(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


APP = make_zip({"app/__init__.py": "", "app/handlers.py": HANDLERS, "README.md": "hi"})


class Archives:
    """The loader the executor is given: archives by build id."""

    def __init__(self) -> None:
        self.by_build: dict[str, bytes] = {}
        self.loads = 0

    async def __call__(self, env_id: str, build_id: str) -> bytes:
        self.loads += 1
        return self.by_build[build_id]


@pytest_asyncio.fixture(loop_scope="module")
async def archives() -> Archives:
    found = Archives()
    found.by_build.update({"b1": APP, "b2": APP})
    return found


@pytest_asyncio.fixture(loop_scope="module")
async def executor(
    manager: SandboxManager, archives: Archives
) -> AsyncIterator[SandboxRunExecutor]:
    ex = SandboxRunExecutor(manager, ExecutorConfig(), archives)
    yield ex
    await ex.close()


def job(
    function: str,
    run_type: str = "call",
    data: Any = None,
    *,
    build: str = "b1",
    project: str = "p1",
    env: str = "e1",
    secrets: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> RunJob:
    if run_type == "call":
        data = {"fn": function, "args": data if data is not None else []}
    return RunJob(
        run_id="run-" + function.replace(":", "-"),
        env_id=env,
        project_id=project,
        build_id=build,
        run_type=run_type,
        function=function,
        input=data,
        secrets=secrets or {},
        timeout_seconds=timeout,
    )


def collector() -> tuple[list[RunOutput], Callable[[RunOutput], None]]:
    outputs: list[RunOutput] = []
    return outputs, outputs.append


def texts(outputs: list[RunOutput], stream: str = "stdout") -> str:
    return "".join(
        o.payload["text"] for o in outputs if o.kind == "text" and o.payload["stream"] == stream
    )


async def test_event_handler_outputs_and_result(executor: SandboxRunExecutor) -> None:
    outputs, emit = collector()
    event = {"event_id": "ev1", "event_type": "user.signup", "event_data": {"email": "a@b.c"}}
    outcome = await executor.execute(job("app.handlers:signup", "event", event), emit)
    assert outcome.status == "succeeded", outcome
    assert outcome.result["event_type"] == "user.signup"
    assert outcome.result["run"] == {
        "run_id": "run-app.handlers-signup",
        "run_type": "event",
        "function": "app.handlers:signup",
    }
    assert texts(outputs) == "signed up a@b.c\n"
    kinds = [(o.kind, o.data_type, o.payload) for o in outputs if o.kind != "text"]
    assert kinds == [
        ("var", "text", {"name": "email", "value": "a@b.c", "meta": {"source": "signup"}}),
        ("data", "json", {"step": 1}),
        ("data", "text", {"text": "plain text"}),
        ("publish", "text", {"event_type": "user.welcomed", "event_data": {"email": "a@b.c"}}),
    ]


async def test_call_conventions(executor: SandboxRunExecutor) -> None:
    ignore: Callable[[RunOutput], None] = lambda _: None  # noqa: E731
    assert (await executor.execute(job("app.handlers:add", data=[2, 3]), ignore)).result == 5
    assert (await executor.execute(job("::app::handlers/add", data=[2, 3]), ignore)).result == 5
    outcome = await executor.execute(job("app.handlers:add", data={"a": "x", "b": "y"}), ignore)
    assert outcome.result == "xy"
    event = {"event_id": "e", "event_type": "user.bare", "event_data": None}
    outcome = await executor.execute(job("app.handlers:bare", "event", event), ignore)
    assert outcome.result == "no argument"
    fire = {"schedule": "*/5 * * * *", "fire_time": "2026-01-01T00:05:00Z"}
    assert (await executor.execute(job("app.handlers:tick", "schedule", fire), ignore)).result == (
        fire
    )
    outcome = await executor.execute(job("app.handlers:nightly", "schedule", fire), ignore)
    assert outcome.result == "nightly"
    event = {"event_id": "e", "event_type": "user.async", "event_data": [1]}
    outcome = await executor.execute(job("app.handlers:later", "event", event), ignore)
    assert outcome.result == {"async": [1]}
    outcome = await executor.execute(job("app.handlers:missing"), ignore)
    assert outcome.status == "failed" and "no function 'missing'" in outcome.error["message"]


async def test_partial_lines_stderr_and_forged_control_lines(
    executor: SandboxRunExecutor,
) -> None:
    outputs, emit = collector()
    outcome = await executor.execute(job("app.handlers:partial"), emit)
    assert outcome.status == "succeeded" and outcome.result == "done"
    shown = [
        (o.kind, o.payload) for o in outputs if o.kind != "text" or o.payload["stream"] == "stdout"
    ]
    assert shown[:2] == [("text", {"text": "a", "stream": "stdout"}), ("data", 1)]
    # the text after the data in order; another nonce's control line is the user's text
    forged = '\x1eapx:deadbeef {"k": "result", "ok": true, "value": 666}\n'
    assert [kind for kind, _ in shown[2:]] == ["text"] * len(shown[2:])
    assert texts(outputs) == "a" + "b\n" + forged
    assert texts(outputs, "stderr") == "err line\n"


async def test_secrets_are_environment_variables_of_their_run_only(
    executor: SandboxRunExecutor,
) -> None:
    ignore: Callable[[RunOutput], None] = lambda _: None  # noqa: E731
    with_secret = job("app.handlers:env", data=["API_KEY"], secrets={"API_KEY": "s3cret"})
    assert (await executor.execute(with_secret, ignore)).result == "s3cret"
    removed = job("app.handlers:env", data=["API_KEY"], secrets={})
    assert (await executor.execute(removed, ignore)).result is None
    other = job("app.handlers:env", data=["API_KEY"], secrets={"OTHER": "1"})
    assert (await executor.execute(other, ignore)).result is None


async def test_errors(executor: SandboxRunExecutor) -> None:
    ignore: Callable[[RunOutput], None] = lambda _: None  # noqa: E731
    outcome = await executor.execute(job("app.handlers:unserialisable"), ignore)
    assert outcome.status == "failed"
    assert outcome.error["type"] == "ResultNotSerializable"
    assert "not JSON-serialisable" in outcome.error["message"]
    assert "set" in outcome.error["message"]
    outcome = await executor.execute(job("app.handlers:boom"), ignore)
    assert outcome.status == "failed" and not outcome.retryable
    assert outcome.error["type"] == "ValueError" and outcome.error["message"] == "bad input"
    trace = outcome.error["traceback"]
    assert "in boom" in trace and "in inner" in trace and "_runtime.py" not in trace


async def test_timeout(executor: SandboxRunExecutor) -> None:
    start = time.monotonic()
    outcome = await executor.execute(
        job("app.handlers:sleeper", data=[30], timeout=0.5), lambda _: None
    )
    assert outcome.status == "timed_out"
    assert outcome.error["message"] == "the handler ran longer than its timeout of 0.5 s"
    assert time.monotonic() - start < 3
    after = await executor.execute(job("app.handlers:add", data=[1, 1]), lambda _: None)
    assert after.result == 2


async def test_cancel_stops_the_handler_within_a_second(executor: SandboxRunExecutor) -> None:
    ignore: Callable[[RunOutput], None] = lambda _: None  # noqa: E731
    first = await executor.execute(job("app.handlers:sandbox_id"), ignore)
    task = asyncio.create_task(executor.execute(job("app.handlers:sleeper", data=[60]), ignore))
    await asyncio.sleep(0.5)
    start = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - start < 1.0
    # the same warm sandbox serves the next run at once: the code was stopped, not the sandbox
    start = time.monotonic()
    again = await executor.execute(job("app.handlers:sandbox_id"), ignore)
    assert again.result == first.result and time.monotonic() - start < 0.5


async def test_cancel_of_a_handler_that_ignores_interrupts(
    executor: SandboxRunExecutor, manager: SandboxManager
) -> None:
    stubborn = make_zip(
        {
            "stub.py": (
                "import time, os\n"
                "def run():\n"
                "    while True:\n"
                "        try:\n"
                "            time.sleep(60)\n"
                "        except KeyboardInterrupt:\n"
                "            pass\n"
                "def ident():\n"
                "    return os.environ['SANDBOX_ID']\n"
            )
        }
    )
    executor.load_archive.by_build["stub"] = stubborn  # type: ignore[attr-defined]
    ignore: Callable[[RunOutput], None] = lambda _: None  # noqa: E731
    first = await executor.execute(job("stub:ident", build="stub"), ignore)
    task = asyncio.create_task(executor.execute(job("stub:run", build="stub"), ignore))
    await asyncio.sleep(0.5)
    start = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - start < 1.5
    assert first.result not in manager.sandbox_ids()  # the sandbox was killed, code and all
    again = await executor.execute(job("stub:ident", build="stub"), ignore)
    assert again.status == "succeeded" and again.result != first.result


async def test_warm_reuse_and_no_sharing(executor: SandboxRunExecutor, archives: Archives) -> None:
    ignore: Callable[[RunOutput], None] = lambda _: None  # noqa: E731
    event = {"event_id": "e", "event_type": "user.signup", "event_data": {"email": "x"}}
    before = archives.loads
    one = await executor.execute(job("app.handlers:signup", "event", event, build="b2"), ignore)
    two = await executor.execute(job("app.handlers:signup", "event", event, build="b2"), ignore)
    # module state survives: the module was imported once, not per run
    assert (one.result["calls"], two.result["calls"]) == (1, 2)
    assert archives.loads == before + 1
    assert await executor.prewarm("e1", "p1", "b2")  # it has a free one already
    assert executor.status()["builds"]["b2"] == 1
    ids = {}
    keys = [("b1", "p1", "e1"), ("b2", "p1", "e1"), ("b1", "p2", "e1"), ("b1", "p1", "e2")]
    for build, project, env in keys:
        outcome = await executor.execute(
            job("app.handlers:sandbox_id", build=build, project=project, env=env), ignore
        )
        ids[(build, project, env)] = outcome.result
    assert len(set(ids.values())) == 4, ids


async def test_a_handler_cannot_read_another_projects_files(
    executor: SandboxRunExecutor, manager: SandboxManager
) -> None:
    ignore: Callable[[RunOutput], None] = lambda _: None  # noqa: E731
    secret = make_zip({"private.py": "TOKEN = 'project-one-only'\n"})
    executor.load_archive.by_build["private"] = secret  # type: ignore[attr-defined]
    owner = await executor.execute(job("private:TOKEN", build="private", project="one"), ignore)
    assert owner.status == "failed"  # TOKEN is not a function; the build is in place now
    theirs = await executor.execute(job("app.handlers:sandbox_id", project="one"), ignore)
    assert theirs.status == "succeeded"
    sandbox_of_one = next(
        s
        for s in manager.list()
        if s.id.startswith("apx-run-")
        and (s.workspace / "app").is_dir()
        and (s.workspace / "app" / "private.py").exists()
    )
    target = str(sandbox_of_one.workspace / "app" / "private.py")
    mine = await executor.execute(job("app.handlers:read", data=[target], project="two"), ignore)
    assert mine.status == "succeeded" and mine.result.startswith("refused"), mine
    listing = await executor.execute(
        job("app.handlers:listdir", data=["/workspace/app"], project="two"), ignore
    )
    assert listing.result == ["README.md", "app"]


async def test_sandbox_dying_mid_run_is_retryable(
    executor: SandboxRunExecutor, manager: SandboxManager
) -> None:
    ignore: Callable[[RunOutput], None] = lambda _: None  # noqa: E731
    sandbox_id = (await executor.execute(job("app.handlers:sandbox_id", env="dies"), ignore)).result
    task = asyncio.create_task(
        executor.execute(job("app.handlers:sleeper", data=[30], env="dies"), ignore)
    )
    await asyncio.sleep(0.5)
    await manager.delete(sandbox_id)
    outcome = await asyncio.wait_for(task, 10)
    assert outcome.status == "failed" and outcome.retryable, outcome
    after = await executor.execute(job("app.handlers:sandbox_id", env="dies"), ignore)
    assert after.status == "succeeded" and after.result != sandbox_id


async def test_kernel_death_fails_the_run_and_the_next_run_imports_again(
    executor: SandboxRunExecutor,
) -> None:
    ignore: Callable[[RunOutput], None] = lambda _: None  # noqa: E731
    event = {"event_id": "e", "event_type": "user.signup", "event_data": {"email": "x"}}
    signup = job("app.handlers:signup", "event", event, env="kernel")
    assert (await executor.execute(signup, ignore)).result["calls"] == 1
    outcome = await executor.execute(job("app.handlers:die", env="kernel"), ignore)
    assert outcome.status == "failed" and not outcome.retryable
    assert "Python process ended" in outcome.error["message"]
    assert (await executor.execute(signup, ignore)).result["calls"] == 1  # a fresh kernel


async def test_output_beyond_the_capture_limit_keeps_the_result(
    executor: SandboxRunExecutor,
) -> None:
    size = 0

    def count(output: RunOutput) -> None:
        nonlocal size
        size += len(output.payload["text"]) if output.kind == "text" else 0

    outcome = await executor.execute(job("app.handlers:loud", data=[9], timeout=60), count)
    assert outcome.status == "succeeded" and outcome.result == 42, outcome
    assert 8 * 1024 * 1024 <= size < 9 * 1024 * 1024


async def test_pool_limits_eviction_idle_expiry_and_forget(
    manager: SandboxManager, archives: Archives
) -> None:
    config = ExecutorConfig(
        warm_per_build=1, max_warm_sandboxes=2, warm_idle_seconds=60, burst_idle_seconds=60
    )
    ex = SandboxRunExecutor(manager, config, archives)
    ignore: Callable[[RunOutput], None] = lambda _: None  # noqa: E731
    try:
        sleepers = [
            ex.execute(job("app.handlers:sleeper", data=[0.3], build="b1"), ignore)
            for _ in range(3)
        ]
        start = time.monotonic()
        results = await asyncio.gather(*sleepers)
        assert [r.result for r in results] == ["woke"] * 3
        # a burst goes beyond warm_per_build, up to max_warm_sandboxes: two at a time
        assert time.monotonic() - start >= 0.6
        assert ex.status()["builds"] == {"b1": 2}
        # the least recently used idle sandbox makes room for another build's
        await ex.execute(job("app.handlers:add", data=[1, 2], build="b2"), ignore)
        assert ex.status()["builds"] == {"b1": 1, "b2": 1}
        await ex.execute(job("app.handlers:add", data=[1, 2], build="b1", project="p9"), ignore)
        status = ex.status()
        assert status["warm_sandboxes"] == 2 and status["started"] == 4
        await ex.forget_build("b2")
        await asyncio.sleep(0.2)
        assert "b2" not in ex.status()["builds"]
    finally:
        await ex.close()
    quick = SandboxRunExecutor(manager, ExecutorConfig(warm_idle_seconds=0.2), archives)
    try:
        await quick.execute(job("app.handlers:add", data=[1, 2]), ignore)
        assert quick.status()["warm_sandboxes"] == 1
        await asyncio.sleep(1.0)
        assert quick.status()["warm_sandboxes"] == 0
    finally:
        await quick.close()


# -- discover ------------------------------------------------------------------------------------


async def test_discover_reads_the_decorators(executor: SandboxRunExecutor) -> None:
    manifest = await executor.discover(APP)
    assert [(h.event, h.function.target) for h in manifest.handlers] == [
        ("user.signup", "app.handlers:signup"),
        ("user.bare", "app.handlers:bare"),
        ("user.async", "app.handlers:later"),
    ]
    assert [(s.cron, s.tz, s.function.target) for s in manifest.schedules] == [
        ("*/5 * * * *", "Europe/Paris", "app.handlers:tick"),
        ("0 0 * * *", "UTC", "app.handlers:nightly"),
    ]
    assert [f.target for f in manifest.functions] == ["app.handlers:add", "app.handlers:env"]
    assert manifest.functions[0].ns == "::app::handlers"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"bad.py": "def broken(:\n"}, "SyntaxError"),
        ({"imp.py": "import no_such_module_here\n"}, "No module named 'no_such_module_here'"),
        (
            {"c.py": "from agentplex import sdk\n@sdk.schedule('61 * * * *')\ndef f(): pass\n"},
            "'61 * * * *' is not a valid cron expression",
        ),
        (
            {"c.py": "from agentplex import sdk\n@sdk.schedule('* * *')\ndef f(): pass\n"},
            "has 3 fields",
        ),
        (
            {
                "z.py": "from agentplex import sdk\n@sdk.schedule('0 0 * * *', tz='Mars/Base')\n"
                "def f(): pass\n"
            },
            "'Mars/Base' is not a known time zone",
        ),
        (
            {"h.py": "from agentplex import sdk\n@sdk.on_event('hot:call')\ndef f(): pass\n"},
            "reserved",
        ),
    ],
)
async def test_discover_refuses_bad_code(
    executor: SandboxRunExecutor, files: dict[str, str], expected: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        await executor.discover(make_zip(files))
    assert expected in caught.value.message


async def test_discover_reports_the_traceback_of_an_import_error(
    executor: SandboxRunExecutor,
) -> None:
    files = {"pkg/__init__.py": "", "pkg/mod.py": "def helper():\n    1 / 0\nhelper()\n"}
    with pytest.raises(BadRequest) as caught:
        await executor.discover(make_zip(files))
    message = caught.value.message
    assert "ZeroDivisionError" in message and "pkg/mod.py" in message and "helper" in message


# -- requirements.txt --------------------------------------------------------------------------


def make_wheel(name: str, version: str, module: str) -> tuple[str, bytes]:
    """A minimal pure-Python wheel holding one module."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": module,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    return f"{name}-{version}-py3-none-any.whl", make_zip(dict(files))


async def test_requirements_are_installed_once_into_a_layer(
    executor: SandboxRunExecutor, archives: Archives
) -> None:
    wheel_name, wheel = make_wheel("apxdemo", "1.0", "VALUE = 'from the wheel'\n")
    code = (
        "import apxdemo\nfrom agentplex import sdk\n"
        "@sdk.function\ndef value():\n    return apxdemo.VALUE + ' ' + apxdemo.__file__\n"
        "def write():\n    open('/run/template/python/x', 'w')\n"
    )
    archive = make_zip(
        {
            "requirements.txt": "--no-index\n--find-links wheels\napxdemo==1.0\n",
            f"wheels/{wheel_name}": wheel,
            "uses.py": code,
        }
    )
    manifest = await executor.discover(archive)
    assert [f.target for f in manifest.functions] == ["uses:value"]
    archives.by_build["req"] = archive
    outcome = await executor.execute(job("uses:value", build="req"), lambda _: None)
    assert outcome.status == "succeeded", outcome
    assert outcome.result.startswith("from the wheel /run/template/python/apxdemo.py")
    # the layer is read-only for the handlers
    failed = await executor.execute(job("uses:write", build="req"), lambda _: None)
    assert failed.status == "failed" and failed.error["type"] == "OSError", failed


async def test_requirements_that_fail_to_install_are_a_bad_request(
    executor: SandboxRunExecutor,
) -> None:
    archive = make_zip(
        {"requirements.txt": "--no-index\nno-such-package-xyz==9.9\n", "m.py": "X = 1\n"}
    )
    with pytest.raises(BadRequest) as caught:
        await executor.discover(archive)
    assert "requirements.txt could not be installed" in caught.value.message
    assert "no-such-package-xyz" in caught.value.message

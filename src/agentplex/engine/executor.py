"""Runs handlers of deployed builds in warm sandboxes (`SandboxRunExecutor`).

A *warm sandbox* belongs to one (environment, project, build): it has the build's files
extracted in ``/workspace/app`` (its working directory, first on sys.path) and every module
imported by `agentplex.sdk._runtime` in its Python kernel, and it is never given to another
build, project or environment. Each run is one kernel execution over a WebSocket
(``/execute/stream``) kept open across the sandbox's runs; the project's secrets are that
execution's environment variables only. Structured outputs (``sdk.emit``, ``capture``,
``publish``, the result) come back as nonce-marked control lines on stdout (see the runtime).

Limits: ``max_warm_sandboxes`` in all (the least recently used idle one is stopped to make
room; when all are busy, runs wait for one). A build whose runs find none of its sandboxes
free gets another, even beyond ``warm_per_build`` (so a busy build does not hold up the
others' runs in the worker's slots); once idle, a build keeps ``warm_per_build`` of them, the
extras stop after ``burst_idle_seconds``, and any sandbox idle for ``warm_idle_seconds`` is
stopped. A run that leaves threads or processes running gets its sandbox replaced, so that
no later run inherits them. A build whose archive has a
``requirements.txt`` gets its packages installed once, into a template layer keyed by the
archive's SHA-256, which its sandboxes then see read-only.

Discovering a build's entry points imports its code in a short-lived sandbox, never here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import sys
import time
import uuid
import zipfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from agentplex.core.manifest import MANIFEST_NAME, Manifest, from_declarations, parse_manifest
from agentplex.core.ports import (
    DataPlaneSocket,
    RunExecutor,
    RunJob,
    RunOutcome,
    RunOutput,
    SandboxBackend,
    Template,
)
from agentplex.errors import AgentplexError, BadRequest, SandboxUnavailable

log = logging.getLogger("agentplex.executor")

ArchiveLoader = Callable[[str, str], Awaitable[bytes]]
"""``(env_id, build_id) -> the build's archive bytes`` (the lead wires it to the blob store)."""

APP_DIR = "/workspace/app"
APP_ZIP = "/workspace/.app.zip"
LAYER_MARKER = "/run/template/.agentplex-ready"
MARK = "\x1eapx:"  # agentplex.sdk._runtime.MARK (not imported: the runtime is sandbox code)
_RUNTIME = "__import__('agentplex.sdk._runtime', fromlist=['_'])"
# after a cancel: whether the run left threads or processes running (see _runtime.run)
_LEFT = (
    "import sys as _s\n"
    "if (getattr(_s.modules.get('agentplex.sdk._runtime'), '_STATE', None) or {}).get('left'):"
    " print('left')"
)
STOP_BUDGET = 0.6  # after an interrupt, how long the kernel may take to come free
INTERRUPT_GRACE = 2.0  # agentd's own (kernel.INTERRUPT_GRACE): a timeout's kill comes after it
MAX_PARTIAL = 16 * 1024  # a line longer than this is streamed without waiting for its end
_AGENT_NOTES = ("\nExecution timed out after ", "\nThe Python kernel ")
# A standard PATH for run sandboxes (not the server's): the requirements layer's programs,
# the sandbox interpreter's, then the system's.
SANDBOX_PATH = ":".join(
    [
        "/run/template/bin",
        "/run/template/python/bin",
        os.path.dirname(sys.executable),
        "/usr/local/bin",
        "/usr/bin",
        "/bin",
    ]
)


class SandboxBroken(Exception):
    """The sandbox stopped answering (it died, or its agent did)."""


@dataclass(frozen=True, slots=True)
class ExecutorConfig:
    """What `SandboxRunExecutor` reads from its configuration (`RunSettings` has these)."""

    warm_per_build: int = 4
    max_warm_sandboxes: int = 16
    warm_idle_seconds: float = 600.0
    internet_access: bool = False
    burst_idle_seconds: float = 30.0  # how long a sandbox beyond warm_per_build may idle

    @classmethod
    def of(cls, settings: Any) -> ExecutorConfig:
        """From any object with these attributes (missing ones take the default)."""
        if isinstance(settings, ExecutorConfig):
            return settings
        default = cls()
        return cls(
            warm_per_build=int(getattr(settings, "warm_per_build", default.warm_per_build)),
            max_warm_sandboxes=int(
                getattr(settings, "max_warm_sandboxes", default.max_warm_sandboxes)
            ),
            warm_idle_seconds=float(
                getattr(settings, "warm_idle_seconds", default.warm_idle_seconds)
            ),
            internet_access=bool(getattr(settings, "internet_access", default.internet_access)),
            burst_idle_seconds=float(
                getattr(settings, "burst_idle_seconds", default.burst_idle_seconds)
            ),
        )


# -- what comes out of an execution -----------------------------------------------------------


class _Output:
    """Splits an execution's stdout into the user's text and the runtime's control messages.

    The user's text goes out a line at a time (a partial line waits for its end, a control
    line, or the end of the execution), so a control marker split across frames is never
    taken for text."""

    def __init__(self, nonce: str, emit: Callable[[RunOutput], None] | None) -> None:
        self.marker = MARK + nonce + " "
        self.emit = emit
        self.buffers = {"stdout": "", "stderr": ""}
        self.messages: list[dict[str, Any]] = []
        self.result: dict[str, Any] | None = None
        self.notes: list[str] = []

    def feed(self, stream: str, text: str) -> None:
        if stream == "stderr" and text.startswith(_AGENT_NOTES):
            self.notes.append(text.strip())
            return
        buf = self.buffers[stream] + text
        limit = len(buf)
        if stream == "stdout":
            while (start := buf.find(self.marker)) != -1:
                end = buf.find("\n", start)
                if end == -1:
                    break
                if start:
                    self._text("stdout", buf[:start])
                self._control(buf[start + len(self.marker) : end])
                buf = buf[end + 1 :]
            limit = self._pending(buf)
        if limit < len(buf):  # a control line (or the start of one) waits for its end
            cut = limit
        else:
            cut = buf.rfind("\n") + 1
            if cut == 0 and len(buf) > MAX_PARTIAL:
                cut = len(buf)
        if cut:
            self._text(stream, buf[:cut])
            buf = buf[cut:]
        self.buffers[stream] = buf

    def _pending(self, buf: str) -> int:
        """Where a control line that has not ended (or may be starting) begins in ``buf``."""
        at = buf.find("\x1e")
        while at != -1:
            if self.marker.startswith(buf[at : at + len(self.marker)]):
                return at
            at = buf.find("\x1e", at + 1)
        return len(buf)

    def close(self) -> None:
        """The execution ended: what is left is text."""
        for stream, buf in self.buffers.items():
            if buf:
                self._text(stream, buf)
        self.buffers = {"stdout": "", "stderr": ""}

    def _text(self, stream: str, text: str) -> None:
        if self.emit is not None and text:
            self._out(RunOutput("text", {"text": text, "stream": stream}))

    def _out(self, output: RunOutput) -> None:
        assert self.emit is not None
        try:
            self.emit(output)
        except Exception:  # the consumer's failure must not break the run
            log.exception("a run output could not be delivered")

    def _control(self, raw: str) -> None:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if not isinstance(msg, dict):
            return
        kind = msg.get("k")
        if kind == "data" and self.emit is not None:
            data_type = msg.get("data_type", "json")
            value = msg.get("value")
            payload = {"text": value} if data_type == "text" else value
            self._out(RunOutput("data", payload, data_type))
        elif kind == "var" and self.emit is not None:
            payload = {"name": msg.get("name"), "value": msg.get("value"), "meta": msg.get("meta")}
            self._out(RunOutput("var", payload))
        elif kind == "publish" and self.emit is not None:
            payload = {"event_type": msg.get("event_type"), "event_data": msg.get("event_data")}
            self._out(RunOutput("publish", payload))
        elif kind in ("result", "ready", "registry"):
            self.result = msg
        else:
            self.messages.append(msg)


@dataclass(slots=True)
class _Execution:
    """How one kernel execution ended."""

    result: dict[str, Any] | None  # the runtime's result / ready / registry message
    timed_out: bool = False
    kernel_died: bool = False
    error: str | None = None  # agentd refused the execution
    notes: list[str] = field(default_factory=list)


# -- warm sandboxes ---------------------------------------------------------------------------


Key = tuple[str, str, str]  # (env_id, project_id, build_id)


@dataclass(eq=False, slots=True)
class _Warm:
    sandbox_id: str
    key: Key
    secrets_digest: str
    template: Template | None = None
    busy: bool = True
    ready: bool = False
    retire: bool = False
    last_used: float = field(default_factory=time.monotonic)
    runs: int = 0
    ws: DataPlaneSocket | None = None
    stack: contextlib.AsyncExitStack | None = None


def _digest(values: Mapping[str, str]) -> str:
    if not values:
        return ""
    return hashlib.sha256(orjson.dumps(dict(values), option=orjson.OPT_SORT_KEYS)).hexdigest()


def _requirements(archive: bytes) -> bytes | None:
    """The archive's top-level requirements.txt, if it has one that is not blank."""
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            raw = zf.read("requirements.txt")
    except KeyError:
        return None
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise BadRequest(f"The build archive cannot be read ({exc})") from None
    lines = [ln.split("#", 1)[0].strip() for ln in raw.decode(errors="replace").splitlines()]
    return raw if any(lines) else None


def _multipart(path: str, name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "apx" + uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\n{path}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), boundary


class SandboxRunExecutor(RunExecutor):
    """Executes runs in warm sandboxes of their build (see the module's docstring).

    ``backend`` makes the sandboxes; ``config`` is `RunSettings` or anything with
    ``warm_per_build``, ``max_warm_sandboxes``, ``warm_idle_seconds`` and ``internet_access``;
    ``load_archive(env_id, build_id)`` returns a build's archive bytes."""

    def __init__(
        self,
        backend: SandboxBackend,
        config: Any,
        load_archive: ArchiveLoader,
        *,
        prepare_timeout: float = 120.0,
        discover_timeout: float = 60.0,
        install_timeout: float = 900.0,
    ) -> None:
        self.backend = backend
        self.config = ExecutorConfig.of(config)
        self.load_archive = load_archive
        self.prepare_timeout = prepare_timeout
        self.discover_timeout = discover_timeout
        self.install_timeout = install_timeout
        self._slots: dict[Key, list[_Warm]] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._layer_locks: dict[str, asyncio.Lock] = {}
        self._layers_ready: set[str] = set()
        self._discovering = asyncio.Semaphore(2)
        self._closed = False
        self._listening = False
        self.started = 0  # sandboxes started for runs, since this executor was made

    # -- the port ------------------------------------------------------------------------------

    async def execute(self, job: RunJob, emit: Callable[[RunOutput], None]) -> RunOutcome:
        """Run ``job`` in a warm sandbox of its build (started if none is free)."""
        try:
            slot = await self._acquire(job)
        except _PrepareFailed as exc:
            return RunOutcome("failed", error=exc.error)
        except BadRequest as exc:  # the build's requirements cannot be installed, say
            return _failed("BuildError", exc.message)
        except AgentplexError as exc:
            return _failed("SandboxUnavailable", exc.message, retryable=True)
        except Exception as exc:
            log.exception("could not start a sandbox for run %s", job.run_id)
            return _failed(
                "SandboxUnavailable", f"the sandbox could not start: {exc}", retryable=True
            )
        try:
            return await self._run(slot, job, emit)
        finally:
            self._release(slot)

    async def discover(self, archive: bytes) -> Manifest:
        """Import the archive's code in a fresh sandbox and read what its SDK decorators
        declared; BadRequest for code that cannot be imported or declares something invalid."""
        digest = hashlib.sha256(archive).hexdigest()
        async with self._discovering:
            template = await self._template(digest, archive)
            sandbox_id = "apx-disc-" + uuid.uuid4().hex[:20]
            try:
                await self._create(sandbox_id, template)
                await self._upload(sandbox_id, archive)
                async with (
                    asyncio.timeout(self.discover_timeout + INTERRUPT_GRACE + 5.0),
                    self.backend.websocket(sandbox_id, "/execute/stream") as ws,
                ):
                    spec = {
                        "nonce": secrets.token_hex(8),
                        "build": _build_spec(digest),
                        "check": _declared(archive),
                    }
                    done = await self._execute(
                        ws, "discover", spec, env={}, timeout=self.discover_timeout
                    )
            except (SandboxBroken, TimeoutError) as exc:
                raise SandboxUnavailable(
                    f"The sandbox reading the build's entry points failed: {exc}"
                ) from None
            finally:
                await self._delete(sandbox_id)
        msg = done.result
        error = (msg or {}).get("error") or {}
        if done.timed_out or error.get("type") == "KeyboardInterrupt":
            raise BadRequest(
                f"The build's code cannot be imported: importing the build's code took longer "
                f"than {self.discover_timeout:g} s (does a module wait for something, or run "
                "its work, at import? Put that in a function)"
            )
        if msg is None:
            why = done.error or " ".join(done.notes) or "no answer from the sandbox"
            raise BadRequest(f"Reading the build's entry points failed: {why}")
        if not msg.get("ok"):
            raise _import_error(error)
        missing = [str(m) for m in msg.get("missing") or ()]
        if missing:
            raise BadRequest(
                f"{MANIFEST_NAME} names functions the build's code does not define: "
                + "; ".join(missing),
                details=missing,
            )
        return from_declarations(msg.get("entries") or [])

    async def prewarm(
        self,
        env_id: str,
        project_id: str,
        build_id: str,
        secrets: Mapping[str, str] | None = None,
    ) -> bool:
        """Start a warm sandbox of the build now, if it has none free, so that its first run
        does not wait for one (call it on deploy); False if that failed (logged)."""
        job = RunJob("prewarm", env_id, project_id, build_id, "call", "", None, secrets or {}, 0)
        try:
            slot = await self._acquire(job)
        except Exception as exc:  # the build cannot start: its runs will say why
            log.warning("could not prewarm build %s: %s", build_id, exc)
            return False
        self._release(slot)
        return True

    async def forget_build(self, build_id: str) -> None:
        """Stop the build's warm sandboxes (busy ones once their run ends)."""
        self._retire_where(lambda key: key[2] == build_id)

    async def forget_project(self, project_id: str) -> None:
        """Stop the warm sandboxes of the project's builds (busy ones once their run ends)."""
        self._retire_where(lambda key: key[1] == project_id)

    def _retire_where(self, which: Callable[[Any], bool]) -> None:
        for key, slots in list(self._slots.items()):
            if not which(key):
                continue
            for slot in list(slots):
                if slot.busy:
                    slot.retire = True
                else:
                    self._discard(slot)

    async def close(self) -> None:
        """Stop every warm sandbox and what runs in the background."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        slots = [s for slots in self._slots.values() for s in slots]
        self._slots.clear()
        for slot in slots:
            self._spawn(self._dispose(slot))
        tasks = list(self._tasks)
        for task in tasks:
            if task is not self._reaper:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(task), 10)
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """Warm sandboxes: how many, how many busy, per build; and the limits."""
        slots = [s for slots in self._slots.values() for s in slots]
        per_build: dict[str, int] = {}
        for slot in slots:
            per_build[slot.key[2]] = per_build.get(slot.key[2], 0) + 1
        return {
            "warm_sandboxes": len(slots),
            "busy": sum(s.busy for s in slots),
            "builds": per_build,
            "started": self.started,
            "requirement_layers": len(self._layers_ready),
            "warm_per_build": self.config.warm_per_build,
            "max_warm_sandboxes": self.config.max_warm_sandboxes,
            "warm_idle_seconds": self.config.warm_idle_seconds,
        }

    # -- one run -------------------------------------------------------------------------------

    async def _run(self, slot: _Warm, job: RunJob, emit: Callable[[RunOutput], None]) -> RunOutcome:
        timeout = min(max(float(job.timeout_seconds), 0.001), 86_400.0)
        spec = {
            "nonce": secrets.token_hex(8),
            "run_id": job.run_id,
            "run_type": job.run_type,
            "function": job.function,
            "input": job.input,
            "build": _build_spec(job.build_id),
        }
        assert slot.ws is not None
        slot.runs += 1
        try:
            async with asyncio.timeout(timeout + INTERRUPT_GRACE + 3.0):
                done = await self._execute(
                    slot.ws, "run", spec, env=dict(job.secrets), timeout=timeout, emit=emit
                )
            if done.result is None and not (done.timed_out or done.kernel_died or done.error):
                # more output than agentd keeps of one execution: the result line was dropped
                again = {"nonce": spec["nonce"]}
                done.result = (
                    await self._execute(slot.ws, "outcome", again, env={}, timeout=30.0)
                ).result
        except asyncio.CancelledError:
            await self._stop(slot)
            raise
        except TimeoutError:  # agentd did not end the execution itself: it is stuck
            await self._stop(slot)
            return _timed_out(job.timeout_seconds)
        except SandboxBroken as exc:
            slot.retire = True
            return _failed(
                "SandboxError", f"the sandbox running the handler stopped: {exc}", retryable=True
            )
        left = (done.result or {}).get("leftovers")
        if left:  # what it left running must not reach the next run: a fresh sandbox
            log.info("run %s left %s running: its sandbox is replaced", job.run_id, left)
            slot.retire = True
        elif done.kernel_died or (done.timed_out and done.result is None):
            slot.retire = True  # the processes of a killed kernel may live on
        return _outcome(done, job.timeout_seconds)

    async def _execute(
        self,
        ws: DataPlaneSocket,
        entry: str,
        spec: dict[str, Any],
        *,
        env: dict[str, str],
        timeout: float,  # noqa: ASYNC109 - agentd's own limit for the execution
        emit: Callable[[RunOutput], None] | None = None,
    ) -> _Execution:
        """One kernel execution of ``_runtime.<entry>(spec)`` on ``ws``."""
        code = f"{_RUNTIME}.{entry}({json.dumps(spec)!r})"
        message: dict[str, Any] = {"type": "execute", "code": code, "timeout": timeout}
        if env:
            message["env"] = env
        out = _Output(spec["nonce"], emit)
        done = _Execution(None)
        try:
            await ws.send(orjson.dumps(message).decode())
            while True:
                frame = orjson.loads(await ws.recv())
                kind = frame.get("type")
                if kind == "stdout" or kind == "stderr":
                    out.feed(kind, str(frame.get("data", "")))
                elif kind == "result":
                    done.timed_out = bool(frame.get("timed_out"))
                    done.kernel_died = bool(frame.get("kernel_died"))
                elif kind == "error" and frame.get("code") != "EXECUTION_TIMEOUT":
                    done.error = str(frame.get("message") or frame.get("error"))
                elif kind == "complete":
                    break
        except (asyncio.CancelledError, TimeoutError):
            raise
        except Exception as exc:
            raise SandboxBroken(f"{type(exc).__name__}: {exc}") from None
        out.close()
        done.result = out.result
        done.notes = out.notes
        return done

    async def _stop(self, slot: _Warm) -> None:
        """The run was cancelled (or is stuck): end its code within about a second. Closing
        the connection makes agentd interrupt the kernel; if the kernel is not free again
        within STOP_BUDGET, the sandbox goes. Shielded: a second cancel does not leave the
        sandbox half-stopped."""
        task = self._spawn(self._interrupt(slot))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:  # cancelled again: the sandbox is not reused
            slot.retire = True
            raise
        except Exception:
            slot.retire = True

    async def _interrupt(self, slot: _Warm) -> None:
        start = time.monotonic()
        stack, slot.ws, slot.stack = slot.stack, None, None
        if stack is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(stack.aclose(), 0.2)
        try:
            async with asyncio.timeout(max(STOP_BUDGET - (time.monotonic() - start), 0.05)):
                await self._connect(slot)
                assert slot.ws is not None
                await slot.ws.send(orjson.dumps({"type": "execute", "code": _LEFT}).decode())
                said = ""
                while (frame := orjson.loads(await slot.ws.recv())).get("type") != "complete":
                    if frame.get("type") == "stdout":
                        said += str(frame.get("data", ""))
                if "left" in said:  # the cancelled run left threads or processes running
                    slot.retire = True
        except (TimeoutError, Exception):
            log.info("sandbox %s did not stop its run in time: replaced", slot.sandbox_id)
            slot.retire = True
            await self._close_ws(slot)
            await self._delete(slot.sandbox_id)
            slot.sandbox_id = ""

    # -- the pool ------------------------------------------------------------------------------

    async def _acquire(self, job: RunJob) -> _Warm:
        key = (job.env_id, job.project_id, job.build_id)
        digest = _digest(job.secrets)
        if not self._closed:
            self._start_reaper()
        while True:
            if self._closed:
                raise _Unavailable("the run executor is shutting down")
            slots = self._slots.setdefault(key, [])
            for slot in slots:
                if slot.busy or slot.retire:
                    continue
                if slot.secrets_digest != digest:
                    # its modules were imported with other secrets: start over with these
                    self._discard(slot)
                    break
                slot.busy = True
                return slot
            else:
                # Beyond warm_per_build while runs of the build wait for one (a burst): the
                # extras stop once idle (see _reap), other builds' idle ones make room.
                if self._make_room():
                    slot = _Warm("apx-run-" + uuid.uuid4().hex[:20], key, digest)
                    slots.append(slot)
                    try:
                        await self._start(slot, job)
                    except BaseException:
                        self._forget(slot)
                        self._spawn(self._dispose(slot))
                        raise
                    return slot
                wake = self._wake
                await wake.wait()

    def _make_room(self) -> bool:
        """Whether one more sandbox fits, stopping the least recently used idle one if need be."""
        slots = [s for slots in self._slots.values() for s in slots]
        if len(slots) < self.config.max_warm_sandboxes:
            return True
        idle = [s for s in slots if not s.busy]
        if not idle:
            return False
        self._discard(min(idle, key=lambda s: s.last_used))
        return True

    def _release(self, slot: _Warm) -> None:
        slot.busy = False
        slot.last_used = time.monotonic()
        if slot.retire or not slot.sandbox_id or slot.ws is None or not self.config.warm_per_build:
            self._discard(slot)
        self._notify()

    def _discard(self, slot: _Warm) -> None:
        self._forget(slot)
        self._spawn(self._dispose(slot))
        self._notify()

    def _forget(self, slot: _Warm) -> None:
        slots = self._slots.get(slot.key)
        if slots is not None and slot in slots:
            slots.remove(slot)
            if not slots:
                del self._slots[slot.key]

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    async def _dispose(self, slot: _Warm) -> None:
        await self._close_ws(slot)
        if slot.sandbox_id:
            await self._delete(slot.sandbox_id)

    async def _close_ws(self, slot: _Warm) -> None:
        stack, slot.ws, slot.stack = slot.stack, None, None
        if stack is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(stack.aclose(), 1.0)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = self._spawn(self._reap())
        if not self._listening:
            self._listening = True
            self.backend.on_exit(self._on_exit)

    def _on_exit(self, sandbox_id: str, reason: str) -> None:
        for slots in list(self._slots.values()):
            for slot in list(slots):
                if slot.sandbox_id == sandbox_id:
                    slot.retire = True
                    if not slot.busy:
                        self._discard(slot)

    async def _reap(self) -> None:
        """Stop sandboxes idle longer than warm_idle_seconds, and those a build has beyond
        warm_per_build (after a burst) idle longer than burst_idle_seconds."""
        idle_for = self.config.warm_idle_seconds
        extra_for = min(self.config.burst_idle_seconds, idle_for)
        while not self._closed:
            await asyncio.sleep(min(max(extra_for / 4, 0.05), 30.0))
            now = time.monotonic()
            for slots in list(self._slots.values()):
                extra = len(slots) - self.config.warm_per_build
                for slot in sorted(slots, key=lambda s: s.last_used):
                    if slot.busy:
                        continue
                    idle = now - slot.last_used
                    if idle >= idle_for or (extra > 0 and idle >= extra_for):
                        extra -= 1
                        self._discard(slot)

    # -- starting a sandbox ----------------------------------------------------------------------

    async def _start(self, slot: _Warm, job: RunJob) -> None:
        """Create the sandbox, put the build in it, import its code (with the job's secrets in
        the environment, for modules that read them at import)."""
        archive = await self.load_archive(job.env_id, job.build_id)
        digest = hashlib.sha256(archive).hexdigest()
        for attempt in range(2):
            slot.template = await self._template(digest, archive)
            await self._create(slot.sandbox_id, slot.template)
            self.started += 1
            await self._upload(slot.sandbox_id, archive)
            await self._connect(slot)
            assert slot.ws is not None
            spec = {
                "nonce": secrets.token_hex(8),
                "build": _build_spec(job.build_id, layer=slot.template.layer_id is not None),
            }
            try:
                done = await self._execute(
                    slot.ws, "prepare", spec, env=dict(job.secrets), timeout=self.prepare_timeout
                )
            except SandboxBroken as exc:
                raise _Unavailable(
                    f"the sandbox stopped while importing the build: {exc}"
                ) from None
            msg = done.result or {}
            error = msg.get("error") or {}
            if msg.get("ok"):
                slot.ready = True
                return
            if error.get("type") == "LayerIncomplete" and attempt == 0:
                layer = slot.template.layer_id or ""
                self._layers_ready.discard(layer)
                await self._close_ws(slot)
                await self._delete(slot.sandbox_id)
                await self.backend.remove_layer(layer)
                continue
            if not msg:
                why = " ".join(done.notes) or done.error or "no answer from the sandbox"
                error = {"type": "SandboxError", "message": f"importing the build failed: {why}"}
            raise _PrepareFailed(error)

    async def _create(self, sandbox_id: str, template: Template) -> None:
        await self.backend.create(
            sandbox_id,
            template,
            env_vars={"PATH": SANDBOX_PATH},
            internet_access=self.config.internet_access,
        )

    async def _connect(self, slot: _Warm) -> None:
        stack = contextlib.AsyncExitStack()
        try:
            slot.ws = await stack.enter_async_context(
                self.backend.websocket(slot.sandbox_id, "/execute/stream")
            )
        except BaseException:
            await stack.aclose()
            raise
        slot.stack = stack

    async def _upload(self, sandbox_id: str, archive: bytes) -> None:
        body, boundary = _multipart(APP_ZIP, "app.zip", archive)
        answer = await self.backend.request(
            sandbox_id,
            "POST",
            "/files/upload",
            content=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            timeout=120.0,
        )
        if answer.status >= 400:
            raise _Unavailable(
                f"the build could not be copied into the sandbox ({answer.status}: "
                f"{answer.body[:300].decode(errors='replace')})"
            )

    async def _delete(self, sandbox_id: str) -> None:
        try:
            await self.backend.delete(sandbox_id)
        except Exception:
            log.exception("could not delete sandbox %s", sandbox_id)

    # -- requirements layers ---------------------------------------------------------------------

    def _python(self) -> Template:
        for template in self.backend.builtin_templates():
            if template.id == "python":
                return template
        raise _Unavailable("this host has no python sandbox template")

    async def _template(self, digest: str, archive: bytes) -> Template:
        """The python template, with the layer of the archive's requirements if it has any
        (installed first if this process has not seen it ready yet)."""
        base = self._python()
        requirements = _requirements(archive)
        if requirements is None:
            return base
        if not self.backend.builds_layers:
            raise BadRequest(
                "This build has a requirements.txt, but its packages cannot be installed here: "
                "installing them needs sandbox isolation (bubblewrap). Vendor them in the build "
                "or remove requirements.txt."
            )
        layer_id = "apx-req-" + digest[:40]
        template = Template(
            id=layer_id,
            name=layer_id,
            display_name=f"{base.display_name} + requirements.txt",
            language="python",
            resources=base.resources,
            builtin=False,
            layer_id=layer_id,
        )
        lock = self._layer_locks.setdefault(layer_id, asyncio.Lock())
        async with lock:
            if layer_id not in self._layers_ready:
                await self._install(template, archive)
                self._layers_ready.add(layer_id)
        return template

    async def _install(self, template: Template, archive: bytes) -> None:
        """pip-install the archive's requirements.txt into the template's layer, unless an
        earlier process did (the marker file is written last)."""
        building = Template(
            id=template.id,
            name=template.name,
            display_name=template.display_name,
            language="python",
            resources=template.resources,
            builtin=False,
            layer_id=template.layer_id,
            layer_writable=True,
        )
        sandbox_id = "apx-pip-" + uuid.uuid4().hex[:20]
        # One script under a lock on the layer (other processes may build the same one): the
        # marker, written last, says an earlier build finished.
        script = (
            "exec 9>/run/template/.agentplex-lock; "
            "if command -v flock >/dev/null; then flock -w 900 9 || exit 75; fi; "
            f"test -f {LAYER_MARKER} && exit 0; "
            f"python -m zipfile -e {APP_ZIP} {APP_DIR} && cd {APP_DIR} && "
            "python -m pip install --no-input --no-warn-script-location "
            "--disable-pip-version-check -r requirements.txt && "
            f"touch {LAYER_MARKER}"
        )
        try:
            await self.backend.create(sandbox_id, building, env_vars={}, internet_access=True)
            await self._upload(sandbox_id, archive)
            code, output = await self._command(sandbox_id, script)
            if code != 0:
                raise BadRequest(
                    f"requirements.txt could not be installed (exit code {code}):\n"
                    f"{_tail(output, 30)}",
                    details={"output": output[-20_000:]},
                )
        except BaseException:
            with contextlib.suppress(Exception):
                await self.backend.delete(sandbox_id)
            sandbox_id = ""
            await self.backend.remove_layer(template.layer_id or "")
            raise
        finally:
            if sandbox_id:
                await self._delete(sandbox_id)

    async def _command(self, sandbox_id: str, command: str) -> tuple[int, str]:
        answer = await self.backend.request(
            sandbox_id,
            "POST",
            "/commands/run",
            json={"command": command, "timeout": self.install_timeout},
            timeout=self.install_timeout + 30,
        )
        try:
            body = json.loads(answer.body or b"{}")
        except ValueError:
            return 1, answer.body[:2000].decode(errors="replace")
        details = body.get("details") if isinstance(body.get("details"), dict) else {}
        output = "".join(
            str(src.get(k, "")) for src in (body, details) for k in ("stdout", "stderr")
        )
        code = body.get("exit_code", details.get("exit_code"))
        if answer.status >= 400 and not isinstance(code, int):
            return 1, output + str(body.get("message", ""))
        return (code if isinstance(code, int) else 1), output


# -- helpers ------------------------------------------------------------------------------------


class _Unavailable(AgentplexError):
    """A sandbox for the run could not be made ready."""

    status = 503
    code = "sandbox_unavailable"


class _PrepareFailed(Exception):
    """The build's code could not be imported."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", ""))
        self.error = error


def _build_spec(build_id: str, *, layer: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"id": build_id, "zip": APP_ZIP, "dir": APP_DIR}
    if layer:
        spec["marker"] = LAYER_MARKER
    return spec


def _declared(archive: bytes) -> list[str]:
    """The functions (``module.path:fn``) the archive's agentplex.json names, if it has a
    valid one (an invalid one is the upload's to report)."""
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            raw = zf.read(MANIFEST_NAME)
            manifest = parse_manifest(raw, zf.namelist())
    except (KeyError, zipfile.BadZipFile, ValueError, OSError, BadRequest):
        return []
    targets = [h.function.target for h in manifest.handlers]
    targets += [s.function.target for s in manifest.schedules]
    targets += [f.target for f in manifest.functions]
    return list(dict.fromkeys(targets))


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _failed(kind: str, message: str, *, retryable: bool = False) -> RunOutcome:
    return RunOutcome(
        "failed", error={"type": kind, "message": message, "traceback": ""}, retryable=retryable
    )


def _timed_out(seconds: float) -> RunOutcome:
    return RunOutcome(
        "timed_out",
        error={
            "type": "TimeoutError",
            "message": f"the handler ran longer than its timeout of {seconds:g} s",
            "traceback": "",
        },
    )


def _outcome(done: _Execution, timeout: float) -> RunOutcome:
    if done.timed_out:
        return _timed_out(timeout)
    msg = done.result
    if msg is not None and msg.get("ok"):
        return RunOutcome("succeeded", result=msg.get("value"))
    if msg is not None:
        error = dict(msg.get("error") or {})
        error.setdefault("type", "Error")
        error.setdefault("message", "the handler failed")
        error.setdefault("traceback", "")
        return RunOutcome("failed", error=error)
    if done.kernel_died:
        why = " ".join(done.notes) or "the Python process running the handler died"
        return _failed("ProcessDied", f"the handler's Python process ended: {why}")
    if done.error:
        return _failed("ExecutionRefused", done.error)
    return _failed("ResultLost", "the handler ended without a result")


def _import_error(error: Mapping[str, Any]) -> BadRequest:
    trace = str(error.get("traceback") or "")
    message = str(error.get("message") or "importing the build's code failed")
    text = f"The build's code cannot be imported: {message}"
    if trace:
        text += "\n" + _tail(trace, 12)
    return BadRequest(text, details={"type": error.get("type"), "traceback": trace})

"""Ports: what core needs from infrastructure, and the value types they speak.

Core sees the sandbox layer only through `SandboxBackend`. Two adapters implement it: the
bubblewrap manager (`agentplex.sandbox.SandboxManager`, real isolation) and the in-memory one
(`agentplex.sandbox.memory.MemoryBackend`, for fast tests of everything above it). Every method
raises domain errors only (`agentplex.errors`): `SandboxNotFound`, `SandboxStateConflict`,
`SandboxUnavailable`.

A sandbox's data plane is the Hopx data-plane protocol (``POST /execute``, ``/commands/run``,
``/files/*``, ``/env``, WebSockets ``/execute/stream`` and ``/terminal``) spoken by the agent
inside it; `SandboxBackend.request` and `SandboxBackend.websocket` carry it unchanged, so the
Hopx surface can relay it byte for byte and core's own callers (template builds, and next the
agent's tools and the run engine) use the same protocol.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

DEFAULT_TEMPLATE = "python"
"""The template a sandbox is created from when the request names none (Hopx's default)."""

EPHEMERAL_SANDBOX_PREFIXES = ("apx-", "bld_")
"""Ids of the server's own short-lived sandboxes (the run engine's warm environments and
discovery sandboxes, template builds). Nothing outlives the process that made them, so a
backend removes any it finds when it opens (a crash left them)."""


@dataclass(frozen=True, slots=True)
class Resources:
    """What a sandbox of a template may use: CPUs, memory (MiB), workspace disk (MiB), and
    processes."""

    vcpu: float = 1.0
    memory_mb: int = 512
    disk_mb: int = 1024
    max_pids: int = 256

    def to_json(self) -> dict[str, Any]:
        """``{vcpu, memory_mb, disk_mb}``, as records store them."""
        return {"vcpu": self.vcpu, "memory_mb": self.memory_mb, "disk_mb": self.disk_mb}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Resources:
        """The inverse of `to_json`; what is missing takes the default."""
        return cls(
            vcpu=float(data.get("vcpu", 1.0)),
            memory_mb=int(data.get("memory_mb", 512)),
            disk_mb=int(data.get("disk_mb", 1024)),
        )


@dataclass(frozen=True, slots=True)
class Template:
    """A sandbox template: a language runtime and the resources its sandboxes get.

    Built-in templates come from the backend (what this host can run). A custom template adds
    a *layer* of its own, built once from setup commands: ``layer_id`` names it (the backend
    keeps its files; a sandbox sees it read-only, or writable while the template is being
    built), and ``env`` holds the variables its build steps set.
    """

    id: str
    name: str
    display_name: str
    language: str
    resources: Resources = field(default_factory=Resources)
    description: str = ""
    builtin: bool = True
    layer_id: str | None = None
    layer_writable: bool = False
    env: tuple[tuple[str, str], ...] = ()


IsolationKind = Literal["bubblewrap", "none"]


@dataclass(frozen=True, slots=True)
class IsolationInfo:
    """Which isolation sandboxes get on this host, and why."""

    kind: IsolationKind
    reason: str

    @property
    def isolated(self) -> bool:
        return self.kind != "none"


class DataPlaneResponse(NamedTuple):
    """One answer of a sandbox's data plane, exactly as its agent gave it."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class DataPlaneSocket(Protocol):
    """A WebSocket connection to a sandbox's agent (frames are relayed unchanged)."""

    async def send(self, message: str | bytes) -> None: ...

    async def recv(self) -> str | bytes: ...

    def __aiter__(self) -> AsyncIterator[str | bytes]: ...


ExitListener = Callable[[str, str], None]
"""Told ``(sandbox_id, reason)`` when a running sandbox stops on its own (crash, OOM)."""


class SandboxBackend(abc.ABC):
    """Runs sandboxes. Ids are chosen by the caller; templates are passed whole on every call
    that starts processes, so the backend keeps no catalogue of its own beyond the built-ins."""

    isolation: IsolationInfo
    builds_layers: bool
    """Whether custom templates' layers can be built here (the bubblewrap backend needs
    isolation for that)."""

    @abc.abstractmethod
    def builtin_templates(self) -> list[Template]:
        """The templates this host can run without a build (python, bash, node when installed)."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Start what sandboxes need (zygotes, warm pool); idempotent. Raises
        SandboxUnavailable if the backend cannot start."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop every sandbox (files stay) and what `open` started."""

    @abc.abstractmethod
    def status(self) -> dict[str, Any]:
        """JSON-ready state for /status: isolation, limits, pool."""

    @abc.abstractmethod
    def problem(self) -> str | None:
        """Why sandboxes cannot be created right now (for health checks), or None."""

    @abc.abstractmethod
    def on_exit(self, listener: ExitListener) -> None:
        """Call ``listener`` when a running sandbox stops on its own."""

    @abc.abstractmethod
    async def create(
        self,
        sandbox_id: str,
        template: Template,
        *,
        env_vars: Mapping[str, str],
        internet_access: bool,
    ) -> None:
        """Start a new sandbox; returns once its data plane answers."""

    @abc.abstractmethod
    async def start(
        self,
        sandbox_id: str,
        template: Template,
        *,
        env_vars: Mapping[str, str],
        internet_access: bool,
    ) -> None:
        """Start a stopped sandbox again with its files (and the environment it last had;
        ``env_vars`` when it never had one). Also after a server restart."""

    @abc.abstractmethod
    async def stop(self, sandbox_id: str) -> None:
        """End the sandbox's processes; its files stay. Stopping a stopped sandbox is a no-op."""

    @abc.abstractmethod
    async def pause(self, sandbox_id: str) -> None:
        """Freeze every process of a running sandbox."""

    @abc.abstractmethod
    async def resume(self, sandbox_id: str) -> None:
        """Thaw a paused sandbox."""

    @abc.abstractmethod
    async def delete(self, sandbox_id: str) -> None:
        """Remove the sandbox and its files, whatever its state (unknown ids are a no-op)."""

    @abc.abstractmethod
    async def remove_layer(self, template_id: str) -> None:
        """Delete a custom template's layer (nothing may be using it)."""

    @abc.abstractmethod
    def sandbox_ids(self) -> set[str]:
        """Ids of the sandboxes that have processes now (running or paused)."""

    @abc.abstractmethod
    async def request(
        self,
        sandbox_id: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> DataPlaneResponse:
        """One HTTP request to the sandbox's data plane. ``path`` may carry percent-encoded
        characters, forwarded as they are. Raises SandboxStateConflict unless it is running,
        BadRequest for a path or query that cannot be sent."""

    @abc.abstractmethod
    def websocket(
        self, sandbox_id: str, path: str, *, headers: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[DataPlaneSocket]:
        """A WebSocket to the sandbox's data plane at ``path`` (with its query string)."""


# --- the model boundary ----------------------------------------------------------------------
#
# The built-in agent talks to language models through `ModelProvider`. Adapters: the
# pydantic-ai one (OpenAI-compatible Chat Completions, Anthropic Messages), the embedded local
# model (llama-cpp-python), and the scripted one that drives tests (`agentplex.agent.scripted`).
# A provider streams one model *step*: text, reasoning and tool calls as they arrive, then the
# usage and why the step ended. It raises `ModelProviderError` (errors.py), marked retryable
# when trying again may help (HTTP 408/429/5xx, a dropped connection).


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model a provider offers. Costs are USD per million tokens; limits are tokens."""

    id: str
    name: str
    context: int = 0
    output: int = 0
    reasoning: bool = False
    tool_call: bool = True
    cost_input: float = 0.0
    cost_output: float = 0.0


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as the model sees it: ``parameters`` is a JSON Schema object."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call the model made (``arguments`` already parsed from its JSON)."""

    call_id: str
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One entry of the history sent to a model.

    ``user``: ``text``. ``assistant``: ``text``, ``reasoning`` and ``tool_calls``. ``tool``: the
    result of the call ``call_id`` of tool ``tool_name`` in ``text`` (``is_error`` when it
    failed).
    """

    role: Literal["user", "assistant", "tool"]
    text: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    call_id: str = ""
    tool_name: str = ""
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One model step: the system prompt, the history, the tools offered."""

    model_id: str
    system: str
    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...] = ()
    max_output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    """More of the answer's text."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """More of the model's reasoning (providers that return it)."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    """The model began a tool call; its arguments follow as `ToolCallDelta`."""

    call_id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call's JSON arguments, as it arrived."""

    call_id: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCallReady:
    """A tool call whose arguments are complete."""

    call: ToolCall


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one model step (sent once, at its end)."""

    input: int = 0
    output: int = 0
    reasoning: int = 0
    cache_read: int = 0
    cache_write: int = 0


@dataclass(frozen=True, slots=True)
class StepFinished:
    """The step ended: ``stop`` (answered), ``tool-calls`` (wants tool results), ``length``."""

    reason: Literal["stop", "tool-calls", "length", "other"]
    usage: Usage = field(default_factory=Usage)


ModelEvent = (
    TextDelta | ReasoningDelta | ToolCallStarted | ToolCallDelta | ToolCallReady | StepFinished
)


class ModelProvider(abc.ABC):
    """A source of language models (OpenCode's "provider")."""

    id: str
    """The provider's id (OpenCode ``providerID``): ``openai``, ``anthropic``, ``local``, ..."""
    name: str
    """Its display name."""
    env: tuple[str, ...] = ()
    """Environment variables that configure it (shown by ``/config/providers``; never values)."""

    @abc.abstractmethod
    def models(self) -> tuple[ModelInfo, ...]:
        """The models it offers, the default first."""

    @abc.abstractmethod
    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Run one step, yielding its events as they arrive and `StepFinished` last.

        Raises `ModelProviderError` (``retryable`` when trying again may help). Cancelling the
        iteration cancels the call to the model.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# --- the tool boundary -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool call returned: ``output`` goes back to the model; ``error`` set means it
    failed (the model sees the error text instead); ``title`` and ``metadata`` are shown."""

    output: str = ""
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Where a tool call runs.

    ``sandbox`` returns the session's sandbox id, creating the sandbox on first use;
    ``progress`` publishes output produced so far (shown as the running tool's
    ``metadata.output``). Cancelling the call (abort, delete) must stop what it started.
    """

    env_id: str
    session_id: str
    message_id: str
    call_id: str
    sandbox: Callable[[], Awaitable[str]]
    progress: Callable[[str], Awaitable[None]]
    timeout: float = 120.0


class ToolSource(abc.ABC):
    """A set of tools the agent can call: the sandbox tools now; MCP servers, WASM plugins and
    skills later."""

    @abc.abstractmethod
    def specs(self) -> tuple[ToolSpec, ...]:
        """The tools, as offered to the model."""

    @abc.abstractmethod
    async def call(self, ctx: ToolContext, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        """Run tool ``name``. A failure the model should see is a `ToolResult` with ``error``;
        bad arguments too (never an exception for something the model sent)."""

    def pattern(self, name: str, arguments: Mapping[str, Any]) -> str:
        """What a permission for this call is about (the command for ``bash``, the path for a
        file tool); ``*`` by default."""
        return "*"


# --- the blob boundary -----------------------------------------------------------------------
#
# Build archives (and later other large immutable files) live in a `BlobStore`. Adapters
# (`agentplex.core.blobs`): `LocalBlobStore`, files under the data directory, and
# `DatabaseBlobStore`, a table that every API replica sharing the database reads.


class BlobStore(abc.ABC):
    """Immutable bytes by key. A key is ``/``-separated segments of ``[a-z0-9._-]`` (each
    starting with a letter or digit); callers make keys from the content's SHA-256, so writing
    a key again writes the same bytes."""

    kind: str
    """``local`` or ``database`` (shown as a build's ``storage_backend``)."""

    @abc.abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (replacing what was there), atomically: a reader sees
        the old bytes or the new, never part of them."""

    @abc.abstractmethod
    async def get(self, key: str) -> bytes:
        """The bytes under ``key``; raises `BlobNotFound` when there are none."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds bytes."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key`` (an unknown key is a no-op)."""


# --- the run executor --------------------------------------------------------------------------
#
# A run of a deployed build executes its handler through `RunExecutor`. The adapter
# (`agentplex.engine.executor.SandboxRunExecutor`) keeps a few warm sandboxes per deployed build
# with the build's code imported, and never shares one between projects or environments; tests
# of the worker use an in-memory one. Results follow Hot's convention (see `RunOutcome`).


@dataclass(frozen=True, slots=True)
class RunJob:
    """One attempt of a run, as the executor needs it.

    ``input`` is ``{"event_id", "event_type", "event_data"}`` for an event run, ``{"fn",
    "args"}`` for a call (``args`` a list of positional or an object of keyword arguments) and
    ``{"schedule_id", "cron", "tz", "fire_time"}`` for a schedule's fire. ``secrets`` are the
    project's context variables, given to the handler as environment variables."""

    run_id: str
    env_id: str
    project_id: str
    build_id: str
    run_type: str
    function: str
    input: Any
    secrets: Mapping[str, str]
    timeout_seconds: float


@dataclass(frozen=True, slots=True)
class RunOutput:
    """Something a running handler produced, as it happened.

    ``kind``: ``text`` (what it printed: payload ``{"text", "stream": "stdout"|"stderr"}``),
    ``data`` (``sdk.emit``: payload the value, ``data_type`` ``json`` or ``text``), ``var``
    (``sdk.capture``: payload ``{"name", "value", "meta"}``) or ``publish`` (``sdk.publish``:
    payload ``{"event_type", "event_data"}``)."""

    kind: Literal["text", "data", "var", "publish"]
    payload: Any
    data_type: str = "text"


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How an attempt ended: ``succeeded`` with the handler's JSON-ready ``result``, or
    ``failed`` / ``timed_out`` / ``cancelled`` with ``error`` ``{"type", "message",
    "traceback"}``. ``retryable`` marks a failure of the environment (the sandbox died or could
    not start), not of the code."""

    status: Literal["succeeded", "failed", "timed_out", "cancelled"]
    result: Any = None
    error: Mapping[str, Any] | None = None
    retryable: bool = False


class RunExecutor(abc.ABC):
    """Runs handlers of deployed builds somewhere isolated, and reads what a build declares."""

    @abc.abstractmethod
    async def execute(self, job: RunJob, emit: Callable[[RunOutput], None]) -> RunOutcome:
        """Run ``job``'s handler, calling ``emit`` with each output as it happens. Cancelling
        the calling task stops the user code within 1 s, then CancelledError propagates."""

    @abc.abstractmethod
    async def discover(self, archive: bytes) -> Any:
        """The entry points the archive's code declares with the SDK's decorators, as a
        `agentplex.core.manifest.Manifest`; BadRequest (with the error and its traceback) when
        the code cannot be imported or declares something invalid (a bad cron, say)."""

    async def forget_build(self, build_id: str) -> None:  # noqa: B027 - optional hook
        """Drop the build's warm environments (it is no longer deployed)."""

    async def forget_project(self, project_id: str) -> None:  # noqa: B027 - optional hook
        """Drop the warm environments of every build of the project (it is being deleted)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop every warm environment."""

    def status(self) -> dict[str, Any]:
        """JSON-ready state for /status (warm environments and the like)."""
        return {}

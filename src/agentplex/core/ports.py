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
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

DEFAULT_TEMPLATE = "python"
"""The template a sandbox is created from when the request names none (Hopx's default)."""


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

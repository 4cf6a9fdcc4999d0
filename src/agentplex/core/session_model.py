"""Sessions, messages and parts: the conversation model every surface shares.

A session is a stateful conversation with an agent. It holds messages; a message (``user`` or
``assistant``) is made of parts: ``text``, ``reasoning``, ``tool`` (a tool call with its state
``pending -> running -> completed | error``), ``step-start``/``step-finish`` (one model step:
OpenCode makes one assistant message per step), ``file``.

The vocabulary is OpenCode's, the protocol this concept comes from (see
``docs/opencode-protocol.md``): a part's type-specific fields (``text``, ``time``, ``callID``,
``tool``, ``state``, ``reason``, ``tokens``, ``cost``, ``synthetic``) are kept under those names
in `Part.data`. Surfaces render these objects into their own wire shapes.

Times are epoch milliseconds.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

SessionStatus = Literal["active", "idle", "terminated"]
Role = Literal["user", "assistant"]
PartType = Literal["text", "reasoning", "tool", "step-start", "step-finish", "file"]
PART_TYPES: frozenset[str] = frozenset(
    {"text", "reasoning", "tool", "step-start", "step-finish", "file"}
)

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_lock = threading.Lock()
_last = 0


def now_ms() -> int:
    """The wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def new_id(prefix: str, *, descending: bool = False) -> str:
    """An OpenCode-style id: ``prefix_`` + 12 hex digits of (ms * 4096 + counter) + 14 random
    base62 characters, so ids of one process sort by creation (``descending`` inverts the hex,
    as OpenCode does for sessions: the newest sorts first). Source: OpenCode's ``Identifier``.
    """
    global _last
    with _lock:
        value = max(now_ms() * 4096, _last + 1)
        _last = value
    stamp = value & 0xFFFF_FFFF_FFFF
    if descending:
        stamp = ~stamp & 0xFFFF_FFFF_FFFF
    tail = "".join(_BASE62[b % 62] for b in os.urandom(14))
    return f"{prefix}_{stamp:012x}{tail}"


def new_slug() -> str:
    """A short random ``adjective-noun`` name, as OpenCode gives every session."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}"


_ADJECTIVES = (
    "quiet",
    "brave",
    "calm",
    "eager",
    "gentle",
    "hidden",
    "lucky",
    "misty",
    "proud",
    "swift",
    "bright",
    "clever",
    "silent",
    "steady",
    "wild",
    "young",
)
_NOUNS = (
    "meadow",
    "river",
    "forest",
    "harbor",
    "canyon",
    "island",
    "lantern",
    "comet",
    "garden",
    "falcon",
    "willow",
    "summit",
    "orchard",
    "glacier",
    "beacon",
    "valley",
)


@dataclass(slots=True)
class Tokens:
    """Token counts of a message (one model step) or a whole session."""

    input: int = 0
    output: int = 0
    reasoning: int = 0
    cache_read: int = 0
    cache_write: int = 0

    def add(self, other: Tokens) -> None:
        self.input += other.input
        self.output += other.output
        self.reasoning += other.reasoning
        self.cache_read += other.cache_read
        self.cache_write += other.cache_write

    @property
    def total(self) -> int:
        return self.input + self.output + self.reasoning + self.cache_read + self.cache_write

    def to_json(self, *, with_total: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "input": self.input,
            "output": self.output,
            "reasoning": self.reasoning,
            "cache": {"read": self.cache_read, "write": self.cache_write},
        }
        if with_total:
            data = {"total": self.total, **data}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Tokens:
        data = data or {}
        cache = data.get("cache") or {}
        return cls(
            int(data.get("input", 0)),
            int(data.get("output", 0)),
            int(data.get("reasoning", 0)),
            int(cache.get("read", 0)),
            int(cache.get("write", 0)),
        )


@dataclass(frozen=True, slots=True)
class ModelRef:
    """Which model answers: OpenCode's ``{providerID, modelID}``."""

    provider_id: str
    model_id: str

    def __str__(self) -> str:
        return f"{self.provider_id}:{self.model_id}"


@dataclass(slots=True)
class Session:
    """A conversation. ``status`` is PRX's lifecycle (active -> idle -> terminated)."""

    id: str
    env_id: str
    title: str
    directory: str
    created: int
    updated: int
    slug: str = ""
    project_id: str = "global"
    parent_id: str | None = None
    status: SessionStatus = "active"
    channel: str = "api"
    user_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    last_activity: int = 0
    terminated: int | None = None
    model: ModelRef | None = None
    sandbox_id: str | None = None
    tokens: Tokens = field(default_factory=Tokens)
    cost: float = 0.0
    turn_count: int = 0
    permission: dict[str, str] = field(default_factory=dict)

    def snapshot(self) -> Session:
        """A copy that later changes to this session do not touch (for events)."""
        copy = dataclasses.replace(self)
        copy.metadata = _copy(self.metadata)
        copy.permission = dict(self.permission)
        copy.tokens = dataclasses.replace(self.tokens)
        return copy


@dataclass(slots=True)
class Part:
    """One piece of a message; ``data`` holds the type's own fields (OpenCode's names)."""

    id: str
    session_id: str
    message_id: str
    type: str
    data: dict[str, Any] = field(default_factory=dict)

    def snapshot(self) -> Part:
        """A copy that later changes to this part do not touch (for events)."""
        return Part(self.id, self.session_id, self.message_id, self.type, _copy(self.data))


@dataclass(slots=True)
class Message:
    """A user prompt or one assistant model step, with its parts in order.

    Assistant messages: ``parent_id`` is the user message they answer; ``completed`` is set when
    the step ends (also on abort and error); ``finish`` is ``stop``/``tool-calls`` (absent when
    aborted or failed); ``error`` is ``{name, data: {message, ...}}`` (OpenCode's error names:
    ``MessageAbortedError``, ``APIError``, ``ProviderModelNotFoundError``, ``UnknownError``).
    """

    id: str
    session_id: str
    role: Role
    created: int
    parts: list[Part] = field(default_factory=list)
    completed: int | None = None
    parent_id: str | None = None
    model: ModelRef | None = None
    system: str | None = None
    agent: str = "build"
    tokens: Tokens = field(default_factory=Tokens)
    cost: float = 0.0
    finish: str | None = None
    error: dict[str, Any] | None = None
    synthetic: bool = False
    cwd: str = "/workspace"

    def snapshot(self, *, with_parts: bool = False) -> Message:
        """A copy for events: the parts list is left empty unless ``with_parts``."""
        return Message(
            self.id,
            self.session_id,
            self.role,
            self.created,
            [p.snapshot() for p in self.parts] if with_parts else [],
            self.completed,
            self.parent_id,
            self.model,
            self.system,
            self.agent,
            Tokens(
                self.tokens.input,
                self.tokens.output,
                self.tokens.reasoning,
                self.tokens.cache_read,
                self.tokens.cache_write,
            ),
            self.cost,
            self.finish,
            _copy(self.error),
            self.synthetic,
            self.cwd,
        )

    def text(self) -> str:
        """The message's visible text: its non-synthetic text parts, joined."""
        return "".join(
            str(p.data.get("text", ""))
            for p in self.parts
            if p.type == "text" and not p.data.get("synthetic")
        )


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value

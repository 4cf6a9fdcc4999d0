"""The execution plane's lower layer: adapters of core's `SandboxBackend` port.

`SandboxManager` runs real sandboxes (bubblewrap namespaces, cgroups, a warm pool, and agentd
inside each); `MemoryBackend` keeps sandboxes as records for fast tests; `DisabledBackend`
refuses everything. `SandboxHandle` is the manager's view of one sandbox (tests and benchmarks
use it to reach agentd directly).
"""

from __future__ import annotations

from agentplex.sandbox.handle import SandboxHandle
from agentplex.sandbox.isolation import detect_isolation
from agentplex.sandbox.manager import SandboxManager
from agentplex.sandbox.memory import DisabledBackend, MemoryBackend
from agentplex.sandbox.state import SandboxState
from agentplex.sandbox.templates import builtin_templates

__all__ = [
    "DisabledBackend",
    "MemoryBackend",
    "SandboxHandle",
    "SandboxManager",
    "SandboxState",
    "builtin_templates",
    "detect_isolation",
]

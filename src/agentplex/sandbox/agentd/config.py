"""What one agentd needs to know about its sandbox."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# in the state dir: the host writes it when it hands a pooled sandbox out (Agent.adopt_if_pending)
ADOPT_FILE = "adopt.json"


@dataclass
class AgentConfig:
    """Paths are as agentd sees them (inside the sandbox when isolated)."""

    socket_path: str
    workspace: str = "/workspace"  # the path clients use
    workspace_real: str = "/workspace"  # where it is for agentd (differs only when unisolated)
    tmp_real: str = "/tmp"  # noqa: S108
    state_dir: str = "/run/agentd"  # env.json lives here so env survives stop/start
    env_vars: dict[str, str] = field(default_factory=dict)
    isolation: str = "bubblewrap"
    sandbox_id: str = ""
    template: str = "python"
    eager_kernel: bool = False  # fork the Python kernel right away instead of on first use
    user_uid: int | None = None  # the code's uid when it differs from agentd's (identity.py)
    cgroup_fds: dict[str, int] = field(default_factory=dict)  # see usage.py
    started_at: float = field(default_factory=time.time)

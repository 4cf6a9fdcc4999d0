"""The sandbox lifecycle state machine (Hopx states: creating, running, paused, stopped)."""

from __future__ import annotations

from enum import StrEnum

from agentplex.errors import SandboxStateConflict


class SandboxState(StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    DELETED = "deleted"


_S = SandboxState

# action -> (states it is allowed from, state it leads to)
_TRANSITIONS: dict[str, tuple[frozenset[SandboxState], SandboxState]] = {
    "ready": (frozenset({_S.CREATING}), _S.RUNNING),
    "pause": (frozenset({_S.RUNNING}), _S.PAUSED),
    "resume": (frozenset({_S.PAUSED}), _S.RUNNING),
    "stop": (frozenset({_S.CREATING, _S.RUNNING, _S.PAUSED, _S.STOPPED}), _S.STOPPED),
    "start": (frozenset({_S.STOPPED}), _S.CREATING),
    "delete": (frozenset({_S.CREATING, _S.RUNNING, _S.PAUSED, _S.STOPPED}), _S.DELETED),
}


def next_state(current: SandboxState, action: str) -> SandboxState:
    """The state `action` leads to from `current`; InvalidTransition if it is not allowed."""
    allowed, target = _TRANSITIONS[action]
    if current not in allowed:
        raise SandboxStateConflict(
            f"cannot {action} a sandbox that is {current.value}"
            f" (allowed from: {', '.join(sorted(s.value for s in allowed))})"
        )
    return target

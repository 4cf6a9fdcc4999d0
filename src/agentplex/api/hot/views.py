"""Hot's JSON views of events, runs and run vars (the seed page's fields)."""

from __future__ import annotations

from typing import Any

from agentplex.core.clock import iso
from agentplex.core.events import Event, Run, run_snapshot
from agentplex.core.runs import RunVar


def event_view(event: Event) -> dict[str, Any]:
    """An event as ``POST /v1/events`` and ``GET /v1/events`` show it; ``event_time`` is when
    it was published."""
    return {
        "event_id": event.event_id,
        "env_id": event.env_id,
        "project_id": event.project_id,
        "stream_id": event.stream_id,
        "event_type": event.event_type,
        "event_data": event.event_data,
        "origin_run_id": event.origin_run_id,
        "event_time": iso(event.created_at),
        "created_at": iso(event.created_at),
    }


def run_view(run: Run) -> dict[str, Any]:
    """A run: the same snapshot its stream items carry (``project_name`` where joined)."""
    return run_snapshot(run)


def var_view(var: RunVar) -> dict[str, Any]:
    return {
        "var_id": var.var_id,
        "run_id": var.run_id,
        "ns": var.ns,
        "var": var.var,
        "value": var.value,
        "meta": var.meta,
        "start_time": iso(var.start_time),
        "stop_time": iso(var.stop_time),
    }

"""The pub/sub bus port and its adapters (memory for one process, Redis for scale-out)."""

from __future__ import annotations

from agentplex.bus.base import Bus, SubscriberLagged, Subscription


def create_bus(url: str) -> Bus:
    """Pick the adapter a URL names: ``memory://`` or ``redis://...``."""
    if url.startswith("memory:"):
        from agentplex.bus.memory import MemoryBus

        return MemoryBus()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from agentplex.bus.redis import RedisBus

        return RedisBus(url)
    raise ValueError(f"unsupported bus URL {url!r}: use memory:// or redis://host:port/db")


__all__ = ["Bus", "SubscriberLagged", "Subscription", "create_bus"]

from __future__ import annotations

import pytest

from agentplex.bus import SubscriberLagged, create_bus
from agentplex.bus.base import _QUEUE_SIZE


async def test_subscribers_receive_messages_of_their_channel_only() -> None:
    bus = create_bus("memory://")
    async with bus.subscribe("a") as a1, bus.subscribe("a") as a2, bus.subscribe("b") as b:
        await bus.publish("a", {"n": 1})
        assert await a1.get(1) == {"n": 1}
        assert await a2.get(1) == {"n": 1}
        assert await b.get(0.05) is None
    await bus.publish("a", {"n": 2})  # nobody listening: dropped, no error


async def test_a_slow_subscriber_is_told_it_lagged() -> None:
    bus = create_bus("memory://")
    async with bus.subscribe("a") as sub:
        for n in range(_QUEUE_SIZE + 1):
            await bus.publish("a", {"n": n})
        with pytest.raises(SubscriberLagged):
            await sub.get(1)
        await bus.publish("a", {"n": "after"})
        assert await sub.get(1) == {"n": "after"}


def test_unknown_bus_url_is_rejected() -> None:
    with pytest.raises(ValueError, match="memory:// or redis://"):
        create_bus("kafka://x")

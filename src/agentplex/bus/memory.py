"""In-process bus: the default for a single ``agentplex serve``."""

from __future__ import annotations

from collections import defaultdict

from agentplex.bus.base import Bus, Message, Subscription


class MemoryBus(Bus):
    """Fans messages out to subscribers of this process."""

    def __init__(self) -> None:
        self._subscribers: defaultdict[str, set[Subscription]] = defaultdict(set)

    async def publish(self, channel: str, message: Message) -> None:
        for subscription in tuple(self._subscribers.get(channel, ())):
            subscription.deliver(message)

    async def _add(self, subscription: Subscription) -> None:
        self._subscribers[subscription.channel].add(subscription)

    async def _remove(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.channel)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.channel]

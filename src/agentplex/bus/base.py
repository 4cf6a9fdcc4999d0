"""The bus port: publish a JSON message on a channel, subscribe to a channel.

Delivery is at-most-once and only to current subscribers: anything that must not be lost is
written to a store first (see ``agentplex.core.streams``) and the bus only wakes followers.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

Message = dict[str, Any]

_QUEUE_SIZE = 4096


class SubscriberLagged(Exception):
    """The subscriber fell too far behind and missed messages; re-read from the store."""


class Subscription:
    """Messages of one channel, in publish order, as an async iterator."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._queue: asyncio.Queue[Message] = asyncio.Queue(_QUEUE_SIZE)
        self._lagged = False

    def deliver(self, message: Message) -> None:
        """Hand a message to this subscriber without waiting (marks it lagged when full)."""
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self._lagged = True

    async def get(self, within: float | None = None) -> Message | None:
        """The next message, or None if ``within`` seconds pass first."""
        if self._lagged:
            self._lagged = False
            self._drain()
            raise SubscriberLagged(self.channel)
        try:
            if within is None:
                return await self._queue.get()
            return await asyncio.wait_for(self._queue.get(), within)
        except TimeoutError:
            return None

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            message = await self.get()
            if message is not None:
                yield message


class Bus(ABC):
    """Publish/subscribe by channel name."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect, if the adapter needs to."""

    @abstractmethod
    async def publish(self, channel: str, message: Message) -> None:
        """Send ``message`` to every current subscriber of ``channel``."""

    @abstractmethod
    async def _add(self, subscription: Subscription) -> None: ...

    @abstractmethod
    async def _remove(self, subscription: Subscription) -> None: ...

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        """Receive the messages published on ``channel`` while the context is open."""
        subscription = Subscription(channel)
        await self._add(subscription)
        try:
            yield subscription
        finally:
            await self._remove(subscription)

    async def ping(self) -> None:  # noqa: B027 - optional hook
        """Raise if the bus cannot be reached."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

"""Redis bus: every replica publishes to and hears from the same Redis server.

One pub/sub connection per process carries every channel this process listens to; a reader
task fans incoming messages out to local subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from typing import Any

import redis.asyncio as aioredis

from agentplex.bus.base import Bus, Message, Subscription

log = logging.getLogger("agentplex.bus")


class RedisBus(Bus):
    """Publish/subscribe through Redis PUBLISH/SUBSCRIBE."""

    def __init__(self, url: str, prefix: str = "agentplex:") -> None:
        self._client: aioredis.Redis = aioredis.Redis.from_url(url)
        self._prefix = prefix
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._subscribers: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self._client.ping()
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        # A pub/sub connection needs at least one channel before it can be read from.
        await self._pubsub.subscribe(self._prefix + "_control")
        self._reader = asyncio.create_task(self._read(), name="redis-bus-reader")

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("redis bus: read failed; retrying in 1 s")
                await asyncio.sleep(1.0)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"].decode()[len(self._prefix) :]
            try:
                payload = json.loads(message["data"])
            except ValueError:
                log.warning("redis bus: dropped a non-JSON message on %s", channel)
                continue
            for subscription in tuple(self._subscribers.get(channel, ())):
                subscription.deliver(payload)

    async def publish(self, channel: str, message: Message) -> None:
        await self._client.publish(self._prefix + channel, json.dumps(message, default=str))

    async def _add(self, subscription: Subscription) -> None:
        async with self._lock:
            first = subscription.channel not in self._subscribers
            self._subscribers[subscription.channel].add(subscription)
            if first:
                await self._pubsub.subscribe(self._prefix + subscription.channel)

    async def _remove(self, subscription: Subscription) -> None:
        async with self._lock:
            subscribers = self._subscribers.get(subscription.channel)
            if subscribers is None:
                return
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.channel]
                with contextlib.suppress(Exception):
                    await self._pubsub.unsubscribe(self._prefix + subscription.channel)

    async def ping(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            await self._pubsub.aclose()
        await self._client.aclose()

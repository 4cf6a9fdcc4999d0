"""The Redis adapters against the real Redis server."""

from __future__ import annotations

import asyncio
import math
import time
import uuid

import pytest

from agentplex.api.common.ratelimit import RateLimiter
from agentplex.bus import create_bus
from agentplex.core.streams import StreamStore
from agentplex.db import migrate
from agentplex.db.engine import Database
from agentplex.settings import RateLimitSettings
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.redis


async def test_redis_bus_fans_out_between_two_bus_instances() -> None:
    publisher, listener = create_bus(REDIS_URL), create_bus(REDIS_URL)
    await publisher.start()
    await listener.start()
    channel = "test-" + uuid.uuid4().hex
    try:
        async with listener.subscribe(channel) as sub, listener.subscribe(channel) as sub2:
            await publisher.publish(channel, {"n": 1, "text": "héllo"})
            assert await sub.get(5) == {"n": 1, "text": "héllo"}
            assert await sub2.get(5) == {"n": 1, "text": "héllo"}
        await listener.ping()
    finally:
        await publisher.close()
        await listener.close()


async def test_stream_follower_on_one_replica_sees_appends_of_another(tmp_path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}")
    await migrate.upgrade(db)
    bus_a, bus_b = create_bus(REDIS_URL), create_bus(REDIS_URL)
    await bus_a.start()
    await bus_b.start()
    replica_a, replica_b = StreamStore(db, bus_a), StreamStore(db, bus_b)
    stream = "s-" + uuid.uuid4().hex
    try:
        await replica_a.append(stream, {"n": 0})
        received: list[int] = []

        async def follow() -> None:
            async for item in replica_b.follow(stream):
                received.append(item.data["n"])
                if len(received) == 3:
                    return

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.2)
        await replica_a.append(stream, {"n": 1})
        await replica_a.append(stream, {"n": 2})
        await asyncio.wait_for(task, 5)
        assert received == [0, 1, 2]
    finally:
        await bus_a.close()
        await bus_b.close()
        await db.dispose()


async def test_rate_limits_are_shared_through_redis() -> None:
    settings = RateLimitSettings(storage_url=REDIS_URL, default="2/minute")
    one, two = RateLimiter(settings), RateLimiter(settings)
    await one.ping()
    subject = "key-" + uuid.uuid4().hex
    assert (await one.hit(subject, "default")).allowed
    assert (await two.hit(subject, "default")).allowed
    denied = await one.hit(subject, "default")
    assert not denied.allowed and denied.remaining == 0


async def test_redis_windows_open_at_the_first_hit_too() -> None:
    """As in memory: a burst straddling a wall-clock second boundary gets the limit once."""
    limiter = RateLimiter(RateLimitSettings(storage_url=REDIS_URL, default="3/second"))
    for _ in range(5):  # a loaded machine may miss the timing; then measure again
        subject = "key-" + uuid.uuid4().hex
        while not 0.5 <= time.time() % 1 < 0.7:  # late in a second
            await asyncio.sleep(0.01)
        first = time.time()
        burst = [await limiter.hit(subject, "default") for _ in range(3)]
        await asyncio.sleep(max(0.0, math.floor(first) + 1.05 - time.time()))  # past the boundary
        late = await limiter.hit(subject, "default")
        if time.time() - first < 0.9:  # still inside the window the first hit opened
            assert all(d.allowed for d in burst)
            assert not late.allowed and late.remaining == 0
            return
    pytest.fail("could not make 4 hits within 0.9 s of each other")

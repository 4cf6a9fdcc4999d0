"""Streams on real databases: persisted items replay after a cursor, then follow live."""

from __future__ import annotations

import asyncio

import pytest

from agentplex.bus import create_bus
from agentplex.core.streams import StreamStore
from agentplex.db import migrate
from agentplex.db.engine import Database


@pytest.fixture
async def store(database_url: str):
    db = Database(database_url)
    await migrate.upgrade(db)
    bus = create_bus("memory://")
    await bus.start()
    yield StreamStore(db, bus, ring_size=5)
    await bus.close()
    await db.dispose()


async def _collect(store: StreamStore, stream_id: str, after: int, count: int) -> list[int]:
    out: list[int] = []
    async for item in store.follow(stream_id, after):
        out.append(item.data["n"])
        if len(out) == count:
            return out
    return out


async def test_persisted_stream_replays_then_follows(store: StreamStore) -> None:
    first = [await store.append("run-1", {"n": n}) for n in range(3)]
    await store.append("run-2", {"n": 99})
    ids = [i.id for i in first]
    assert ids == sorted(ids)
    assert [i.data["n"] for i in await store.read("run-1")] == [0, 1, 2]
    assert [i.data["n"] for i in await store.read("run-1", after=ids[0])] == [1, 2]

    follower = asyncio.create_task(_collect(store, "run-1", ids[0], 4))
    await asyncio.sleep(0.1)
    for n in range(3, 5):
        await store.append("run-1", {"n": n})
    assert await asyncio.wait_for(follower, 5) == [1, 2, 3, 4]


async def test_concurrent_appends_reach_a_follower_exactly_once(store: StreamStore) -> None:
    follower = asyncio.create_task(_collect(store, "busy", 0, 40))
    await asyncio.sleep(0.05)
    await asyncio.gather(*(store.append("busy", {"n": n}) for n in range(40)))
    received = await asyncio.wait_for(follower, 10)
    assert sorted(received) == list(range(40))


async def test_ephemeral_stream_is_a_bounded_ring(store: StreamStore) -> None:
    for n in range(8):
        await store.append("eph", {"n": n}, ephemeral=True)
    items = await store.read("eph")
    assert [i.data["n"] for i in items] == [3, 4, 5, 6, 7]
    follower = asyncio.create_task(_collect(store, "eph", items[-2].id, 2))
    await asyncio.sleep(0.05)
    await store.append("eph", {"n": 8}, ephemeral=True)
    assert await asyncio.wait_for(follower, 5) == [7, 8]

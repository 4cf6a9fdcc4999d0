"""Streams: append-only, ordered, replayable logs of items that clients subscribe to.

An item is written first (to the database, or to a bounded in-memory ring for ephemeral
streams) and then published on the bus. A follower subscribes to the bus *before* it replays
from its cursor, so nothing committed between the replay and the live phase is missed; items
seen in both phases are de-duplicated by id.

Several items can be written in a caller's transaction (`StreamStore.append_in`, or
`write_items` where no store is at hand) and announced on the bus once it committed
(`StreamStore.announce`), so a follower never hears of an item it cannot read yet.

A follower also reads the store every ``poll_seconds`` while the bus is quiet: items written
by another process reach it even on the in-process bus. Such a read looks back a little
before its cursor, because ids are taken at insert and transactions of several writers (on
PostgreSQL) commit out of id order; what it already delivered is skipped by id.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from agentplex.bus import Bus, SubscriberLagged
from agentplex.core.clock import iso, utcnow
from agentplex.db.engine import Database
from agentplex.db.tables import stream_items

_PAGE = 500
_SEEN_WINDOW = 4096
# how far (in ids, shared by every stream) a poll reads back before its cursor: commits of
# concurrent writers land out of id order within about this many ids
_LOOKBACK = 2048
_INSERT_CHUNK = 200

_INSERT_ITEMS = stream_items.insert().returning(stream_items.c.id)

Entry = tuple[str, dict[str, Any]]
"""An item to append: (stream_id, data)."""


@dataclass(frozen=True, slots=True)
class StreamItem:
    id: int
    stream_id: str
    data: dict[str, Any]
    created_at: datetime

    def to_message(self) -> dict[str, Any]:
        return {"id": self.id, "data": self.data, "created_at": iso(self.created_at)}

    @classmethod
    def from_message(cls, stream_id: str, message: dict[str, Any]) -> StreamItem:
        created = datetime.fromisoformat(str(message["created_at"]).replace("Z", "+00:00"))
        return cls(int(message["id"]), stream_id, dict(message["data"]), created)


class Ring:
    """A bounded, in-memory, ordered log with its own increasing ids."""

    def __init__(self, size: int) -> None:
        self._items: deque[StreamItem] = deque(maxlen=size)
        self._next_id = 1

    def append(self, stream_id: str, data: dict[str, Any]) -> StreamItem:
        item = StreamItem(self._next_id, stream_id, data, utcnow())
        self._next_id += 1
        self._items.append(item)
        return item

    def after(self, cursor: int, limit: int) -> list[StreamItem]:
        """Items with an id above ``cursor``, oldest first."""
        items = self._items
        if not items or items[-1].id <= cursor:
            return []
        # ids are contiguous within the ring, so the position is arithmetic.
        start = max(0, cursor - items[0].id + 1)
        return [items[i] for i in range(start, min(len(items), start + limit))]

    def newest_first(self) -> Iterator[StreamItem]:
        return reversed(self._items)

    def __len__(self) -> int:
        return len(self._items)


async def write_items(conn: AsyncConnection, entries: Sequence[Entry]) -> list[StreamItem]:
    """Insert these items (in order) in the caller's transaction; announce them with
    `StreamStore.announce` once it committed."""
    if not entries:
        return []
    created = utcnow()
    ids: list[int] = []
    for start in range(0, len(entries), _INSERT_CHUNK):
        rows = [
            {"stream_id": sid, "data": data, "created_at": created}
            for sid, data in entries[start : start + _INSERT_CHUNK]
        ]
        # one statement per chunk (SQLAlchemy's "insertmanyvalues" makes the rows one
        # multi-row INSERT ... RETURNING, from a statement compiled once); ids are given in
        # the order of the rows, so their sorted values map back to them
        result = await conn.execute(_INSERT_ITEMS, rows)
        ids.extend(sorted(int(i) for i in result.scalars()))
    return [
        StreamItem(item_id, sid, data, created)
        for item_id, (sid, data) in zip(ids, entries, strict=True)
    ]


class StreamStore:
    """Append to, read from and follow streams."""

    def __init__(
        self, db: Database, bus: Bus, ring_size: int = 1000, *, poll_seconds: float | None = 1.0
    ) -> None:
        self._db = db
        self._bus = bus
        self._ring_size = ring_size
        self._rings: dict[str, Ring] = {}
        self._poll = poll_seconds

    @staticmethod
    def channel(stream_id: str) -> str:
        return "stream:" + stream_id

    async def append(
        self, stream_id: str, data: dict[str, Any], *, ephemeral: bool = False
    ) -> StreamItem:
        """Add an item to the end of a stream and wake its followers."""
        if ephemeral:
            ring = self._rings.get(stream_id)
            if ring is None:
                ring = self._rings[stream_id] = Ring(self._ring_size)
            item = ring.append(stream_id, data)
        else:
            created = utcnow()
            async with self._db.write() as conn:
                result = await conn.execute(
                    stream_items.insert()
                    .values(stream_id=stream_id, data=data, created_at=created)
                    .returning(stream_items.c.id)
                )
                item = StreamItem(int(result.scalar_one()), stream_id, data, created)
        await self._bus.publish(self.channel(stream_id), item.to_message())
        return item

    async def append_in(self, conn: AsyncConnection, entries: Sequence[Entry]) -> list[StreamItem]:
        """Add several items (in order) in the caller's write transaction. Nothing is
        announced: call `announce` with what this returns once the transaction committed."""
        return await write_items(conn, entries)

    async def announce(self, items: Iterable[StreamItem]) -> None:
        """Wake the followers of committed items (from `append_in` or `write_items`)."""
        for item in items:
            await self._bus.publish(self.channel(item.stream_id), item.to_message())

    async def read(self, stream_id: str, after: int = 0, limit: int = _PAGE) -> list[StreamItem]:
        """Items after the cursor ``after``, oldest first."""
        ring = self._rings.get(stream_id)
        if ring is not None:
            return ring.after(after, limit)
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(stream_items)
                .where(stream_items.c.stream_id == stream_id, stream_items.c.id > after)
                .order_by(stream_items.c.id)
                .limit(limit)
            )
            return [StreamItem(r.id, r.stream_id, r.data, r.created_at) for r in rows]

    async def follow(self, stream_id: str, after: int = 0) -> AsyncIterator[StreamItem]:
        """Every item after ``after``: first the stored ones, then live ones, forever."""
        seen = _SeenIds()
        async with self._bus.subscribe(self.channel(stream_id)) as subscription:
            cursor = after
            start = after
            while True:
                async for item in self._replay(stream_id, start):
                    if seen.add(item.id):
                        cursor = max(cursor, item.id)
                        yield item
                try:
                    while True:
                        message = await subscription.get(self._poll)
                        if message is None:
                            break  # quiet: read the store for other processes' items
                        item = StreamItem.from_message(stream_id, message)
                        if item.id > after and seen.add(item.id):
                            cursor = max(cursor, item.id)
                            yield item
                except SubscriberLagged:
                    pass  # fell behind the bus: catch up from the store
                start = max(after, cursor - _LOOKBACK)

    async def _replay(self, stream_id: str, cursor: int) -> AsyncIterator[StreamItem]:
        while True:
            page = await self.read(stream_id, cursor, _PAGE)
            for item in page:
                yield item
            if len(page) < _PAGE:
                return
            cursor = page[-1].id


class _SeenIds:
    """Ids already delivered, remembered over a bounded window."""

    def __init__(self) -> None:
        self._ids: list[int] = []

    def add(self, item_id: int) -> bool:
        index = bisect.bisect_left(self._ids, item_id)
        if index < len(self._ids) and self._ids[index] == item_id:
            return False
        self._ids.insert(index, item_id)
        if len(self._ids) > _SEEN_WINDOW:
            del self._ids[: len(self._ids) - _SEEN_WINDOW]
        return True

"""The warm pool: sandboxes started ahead of demand, handed out by `take`, refilled behind.

Pooled sandboxes are template-agnostic (every built-in template shares the same root and
agentd); the manager retargets one to a template (limits, id, env) when it hands it out. There
is one pool per `internet_access` value, since the network namespace is fixed at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class WarmPool(Generic[T]):
    def __init__(
        self,
        sizes: dict[bool, int],
        spawn: Callable[[bool], Awaitable[T]],
        discard: Callable[[T], Awaitable[None]],
        *,
        parallel: int = 2,
        retry_delay: float = 2.0,
        refill_delay: float = 0.05,
        max_refill_wait: float = 0.5,
    ) -> None:
        self.refill_delay = refill_delay
        self.max_refill_wait = max_refill_wait
        self._timer: asyncio.TimerHandle | None = None
        self._first_take: float | None = None
        self.sizes = sizes
        self._spawn = spawn
        self._discard = discard
        self.parallel = parallel
        self.retry_delay = retry_delay
        self.ready: dict[bool, deque[T]] = {flag: deque() for flag in sizes}
        self.pending: dict[bool, int] = dict.fromkeys(sizes, 0)
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.last_error: str | None = None
        self._changed = asyncio.Event()

    def take(self, internet: bool) -> T | None:
        """A ready sandbox, or None when the pool is empty (the caller starts one itself)."""
        queue = self.ready.get(internet)
        item = queue.popleft() if queue else None
        self._refill_soon()
        return item

    def _refill_soon(self) -> None:
        """Refill once takes pause for `refill_delay` (a burst of creates is answered from the
        pool before any fork competes with it for the CPU), but never later than
        `max_refill_wait` after the first take that emptied a slot."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._first_take is None:
            self._first_take = now
        if self._timer is not None:
            self._timer.cancel()
        at = min(now + self.refill_delay, self._first_take + self.max_refill_wait)
        self._timer = loop.call_at(at, self._refill_now)

    def _refill_now(self) -> None:
        self._timer = self._first_take = None
        self.kick()

    def kick(self) -> None:
        """Start refills until every pool is (or will be) full, `parallel` at a time."""
        if self.closed:
            return
        for flag, size in self.sizes.items():
            while (
                len(self.ready[flag]) + self.pending[flag] < size
                and len(self.tasks) < self.parallel
            ):
                self.pending[flag] += 1
                task = asyncio.get_running_loop().create_task(self._fill(flag))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _fill(self, flag: bool) -> None:
        failed = False
        try:
            item = await self._spawn(flag)
        except Exception as exc:  # a failed refill must not kill the pool; retry later
            failed = True
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("warm pool refill failed: %s", self.last_error)
        else:
            if self.closed:
                await self._discard(item)
            else:
                self.ready[flag].append(item)
        finally:
            self.pending[flag] -= 1
            self._changed.set()
        if failed:
            await asyncio.sleep(self.retry_delay)
        asyncio.get_running_loop().call_soon(self.kick)

    def size(self, internet: bool = False) -> int:
        return len(self.ready.get(internet, ()))

    async def wait_full(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Wait until every pool holds its target number of ready sandboxes."""

        async def _full() -> None:
            while any(len(self.ready[f]) < s for f, s in self.sizes.items()):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_full(), timeout)

    async def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(BaseException):
                await task
        for queue in self.ready.values():
            while queue:
                await self._discard(queue.popleft())

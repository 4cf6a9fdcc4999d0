"""Rate limits per caller and endpoint group, counted by the `limits` library.

Each protocol surface has groups of its own, so that one client's pace on one API never eats
another API's budget, and so that the official SDKs, which call back to back (a few hundred
requests a second from one script), stay inside the defaults. PRX keeps the groups and numbers its
reference documents (session writes 10/s, session reads 50/s, config writes 5/s, everything
else 30/s); everything that belongs to no surface shares PRX's "everything else" (`default`).
The Hopx data plane counts per sandbox: a key driving several sandboxes has a budget for each.

Windows are fixed and open at a caller's first hit in a group (not at a wall-clock boundary,
which would let a burst straddling the boundary through twice). Counters live in memory (one
process) or in Redis through `limits`' fixed-window scheme, which opens windows the same way:
its counter key carries no time bucket and gets its expiry when the first hit creates it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.storage import storage_from_string

from agentplex.api.common.surface import Surface, surface_for
from agentplex.settings import RATE_LIMIT_GROUPS, RateLimitSettings

_KEY_CACHE_LIMIT = 100_000
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_BY_SURFACE = {Surface.HOT: "hot", Surface.OPENCODE: "opencode", Surface.PAR: "par"}


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_time: float  # epoch seconds at which the window resets

    @property
    def reset(self) -> int:
        return math.ceil(self.reset_time)

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.reset_time - time.time()))

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(self.reset).encode()),
        ]


def group_for(method: str, path: str) -> str:
    """The endpoint group a request counts against."""
    surface = surface_for(path)
    if surface is Surface.HOPX_DATA:
        return "hopx_data"
    if surface is Surface.HOPX:
        return "hopx_control"
    if surface is Surface.PRX:
        segments = set(path.split("/")[2:4])  # /api/v1/sessions or the alias /api/sessions
        if "sessions" in segments or "session" in segments:
            return "sessions_write" if method in _WRITE_METHODS else "sessions_read"
        if "config" in segments and method in _WRITE_METHODS:
            return "config_write"
        return "default"
    return _BY_SURFACE.get(surface, "default")


def bucket_for(subject: str, method: str, path: str) -> tuple[str, str]:
    """The (counter subject, group) a request is charged to."""
    group = group_for(method, path)
    if group == "hopx_data" and path.startswith("/sandboxes/"):
        # per sandbox: /sandboxes/{id}/... (a sandbox token is already per sandbox; a key is not)
        sandbox_id = path.split("/", 3)[2]
        return subject + "\x00" + sandbox_id, group
    return subject, group


class RateLimiter:
    """Counts hits per (caller, group) in fixed windows that open at the first hit."""

    def __init__(self, settings: RateLimitSettings) -> None:
        self.enabled = settings.enabled
        self._items: dict[str, RateLimitItem] = {
            group: parse(getattr(settings, group)) for group in RATE_LIMIT_GROUPS
        }
        url = settings.storage_url
        # In one process a plain dict of fixed windows does the job of `limits`' memory
        # storage without its per-key asyncio locks; shared counters (Redis) go through `limits`.
        self._local: dict[str, list[float]] | None = {} if url.startswith("memory:") else None
        options: dict[str, str] = {}
        if url.startswith(("redis://", "rediss://")):
            options["implementation"] = "redispy"
        storage = storage_from_string("async+" + url, **options)
        assert isinstance(storage, Storage)
        self._storage: Storage = storage
        self._keys: dict[tuple[str, str], str] = {}

    async def hit(self, subject: str, group: str) -> Decision:
        """Count one request and say whether it may go ahead."""
        # The fixed-window strategy of `limits`, minus its per-call key formatting and the
        # extra read of the counter: the increment already returns it.
        item = self._items[group]
        if self._local is not None:
            return self._hit_local(item, subject, group)
        key = self._keys.get((subject, group))
        if key is None:
            if len(self._keys) > _KEY_CACHE_LIMIT:
                self._keys.clear()
            key = self._keys[(subject, group)] = item.key_for(subject, group)
        count = await self._storage.incr(key, item.get_expiry())
        reset_time = await self._storage.get_expiry(key)
        return Decision(count <= item.amount, item.amount, max(0, item.amount - count), reset_time)

    def _hit_local(self, item: RateLimitItem, subject: str, group: str) -> Decision:
        assert self._local is not None
        now = time.time()
        key = subject + "\x00" + group
        window = self._local.get(key)
        if window is None or window[1] <= now:
            if len(self._local) > _KEY_CACHE_LIMIT:
                self._expire(now)
            window = self._local[key] = [0.0, now + item.get_expiry()]
        window[0] += 1
        count = int(window[0])
        return Decision(count <= item.amount, item.amount, max(0, item.amount - count), window[1])

    def _expire(self, now: float) -> None:
        assert self._local is not None
        for key in [k for k, w in self._local.items() if w[1] <= now]:
            del self._local[key]

    async def ping(self) -> None:
        """Raise if the counter storage cannot be reached."""
        if not await self._storage.check():
            raise ConnectionError("rate-limit storage is unreachable")

    async def reset(self) -> None:
        if self._local is not None:
            self._local.clear()
        await self._storage.reset()

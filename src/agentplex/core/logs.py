"""The log store: every log record, kept in a bounded ring, queryable and followable.

Records arrive from the ``logging`` module (any thread); followers are asyncio tasks woken
through their loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import sys
import threading
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from agentplex.core.clock import iso, utcnow
from agentplex.core.streams import Ring, StreamItem

LEVELS = {"trace": 5, "debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40}
logging.addLevelName(5, "TRACE")

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_STREAM_ID = "logs"

# The environment of the request being served (set by the gateway once it knows the caller):
# records logged while serving it, and by tasks it starts, belong to that environment.
log_env: ContextVar[str | None] = ContextVar("agentplex_log_env", default=None)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# A URL's query string (tokens ride in them: ?token=, ?auth_token=) and the credentials this
# server issues, wherever they appear in a message.
_URL_QUERY = re.compile(r"((?:https?|wss?)://[^\s?#\"']*|\s/[^\s?#\"']*)\?[^\s\"']*")
_SECRET = re.compile(r"\b(apx|sbt)_[A-Za-z0-9_-]{6,}")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}")


def redact(text: str) -> str:
    """``text`` without colour codes, query strings, bearer tokens or this server's keys."""
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    if "?" in text:
        text = _URL_QUERY.sub(r"\1?<redacted>", text)
    if "_" in text:
        text = _SECRET.sub(r"\1_<redacted>", text)
    return _BEARER.sub(r"\1 <redacted>", text) if "earer" in text else text


def parse_level(value: str) -> int:
    """A level name (trace, debug, info, warn, error) as a number."""
    try:
        return LEVELS[value.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown level {value!r}; use one of trace, debug, info, warn, error"
        ) from None


@functools.lru_cache(maxsize=64)
def _duration_seconds(value: str) -> int | None:
    match = _DURATION.match(value)
    if not match:
        return None
    return int(timedelta(**{_UNITS[match.group(2)]: int(match.group(1))}).total_seconds())


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time or a duration back from now (``90s``, ``30m``, ``1h``, ``2d``)."""
    now = now or utcnow()
    seconds = _duration_seconds(value)
    if seconds is not None:
        return now - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"invalid since {value!r}; use an ISO 8601 time or a duration like 30m or 1h"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(slots=True)
class LogQuery:
    """Which entries to return."""

    min_level: int = LEVELS["info"]
    module: str | None = None
    since: datetime | None = None
    session_id: str | None = None
    agent_id: str | None = None
    limit: int = 100
    env_id: str | None = None  # only this environment's entries (None: every entry)
    server_lines: bool = True  # and the entries of no environment (startup, pool, ...)
    since_ts: float = 0.0

    only_level: bool = False

    def __post_init__(self) -> None:
        self.since_ts = self.since.timestamp() if self.since is not None else 0.0
        self.only_level = not (self.module or self.session_id or self.agent_id)

    def matches(self, entry: dict[str, Any]) -> bool:
        if entry["levelno"] < self.min_level:
            return False
        if self.env_id is not None:
            owner = entry.get("env_id")
            if owner != self.env_id and (owner is not None or not self.server_lines):
                return False
        if self.only_level:
            return self.since is None or entry["ts"] >= self.since_ts
        if self.module and not _module_matches(entry["module"], self.module):
            return False
        if self.session_id and entry.get("session_id") != self.session_id:
            return False
        if self.agent_id and entry.get("agent_id") != self.agent_id:
            return False
        return self.since is None or entry["ts"] >= self.since_ts


def _module_matches(module: str, wanted: str) -> bool:
    # PRX names modules like "channel::telegram"; Python loggers use dots. Accept both.
    wanted = wanted.replace("::", ".")
    module = module.replace("::", ".")
    return (
        module == wanted
        or module.startswith(wanted + ".")
        or module.startswith("agentplex." + wanted)
    )


class LogStore:
    """A bounded ring of structured log entries."""

    def __init__(self, size: int) -> None:
        self._ring = Ring(size)
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def add(self, entry: dict[str, Any]) -> StreamItem:
        with self._lock:
            item = self._ring.append(_STREAM_ID, entry)
            # Rendered once here rather than on every query of it.
            entry["public"] = _render(item.id, entry)
            waiters = tuple(self._waiters)
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed
                self._waiters.discard((loop, event))
        return item

    def __len__(self) -> int:
        return len(self._ring)

    def _after(self, cursor: int) -> list[StreamItem]:
        with self._lock:
            return self._ring.after(cursor, len(self._ring))

    def query(self, query: LogQuery) -> list[dict[str, Any]]:
        """The newest ``limit`` matching entries, oldest first."""
        found: list[StreamItem] = []
        with self._lock:  # held briefly: the scan stops at `limit` or at `since`
            for item in self._ring.newest_first():
                if len(found) >= query.limit:
                    break
                if query.since is not None and item.data["ts"] < query.since_ts:
                    break  # everything further back is older still
                if query.matches(item.data):
                    found.append(item)
        return [public_entry(item) for item in reversed(found)]

    async def follow(self, query: LogQuery, after: int = 0) -> AsyncIterator[StreamItem]:
        """Matching entries after the cursor, then live ones as they are logged."""
        event = asyncio.Event()
        waiter = (asyncio.get_running_loop(), event)
        self._waiters.add(waiter)
        try:
            cursor = after
            while True:
                event.clear()
                for item in self._after(cursor):
                    cursor = item.id
                    if query.matches(item.data):
                        yield item
                await event.wait()
        finally:
            self._waiters.discard(waiter)


def public_entry(item: StreamItem) -> dict[str, Any]:
    """An entry as the APIs show it (shared: copy it before changing it)."""
    public: dict[str, Any] = item.data["public"]
    return public


def _render(item_id: int, data: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": item_id,
        "timestamp": iso(data["time"]),
        "level": data["level"],
        "module": data["module"],
        "message": data["message"],
    }
    for key in ("session_id", "request_id", "agent_id"):
        if data.get(key) is not None:
            entry[key] = data[key]
    if data.get("fields"):
        entry["fields"] = data["fields"]
    return entry


_LEVEL_NAMES = {5: "trace", 10: "debug", 20: "info", 30: "warn", 40: "error", 50: "error"}
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _entry(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in record.__dict__.items() if k not in _RESERVED}
    fields.pop("color_message", None)  # uvicorn's copy of the message with colour codes
    env_id = fields.pop("env_id", None) or log_env.get()
    message = record.getMessage()
    if record.exc_info:
        message += "\n" + redact(logging.Formatter().formatException(record.exc_info))
    return {
        "time": datetime.fromtimestamp(record.created, UTC),
        "ts": record.created,
        "levelno": record.levelno,
        "level": _LEVEL_NAMES.get(record.levelno, record.levelname.lower()),
        "module": record.name,
        "message": message,
        "session_id": fields.pop("session_id", None),
        "request_id": fields.pop("request_id", None),
        "agent_id": fields.pop("agent_id", None),
        "env_id": env_id,
        "fields": {k: _jsonable(v) for k, v in fields.items()},
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


class RedactFilter(logging.Filter):
    """Formats each record once and strips what must never be logged (see ``redact``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_agentplex_redacted", False):
            return True
        record._agentplex_redacted = True
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            # (client, method, path with its query string, http version, status)
            record.args = tuple(
                a.partition("?")[0] if i == 2 and isinstance(a, str) else a
                for i, a in enumerate(record.args)
            )
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_RESERVED.add("_agentplex_redacted")


class _WebSocketChatter(logging.Filter):
    """Drops uvicorn's per-WebSocket INFO lines ("connection open", "[accepted]", "connection
    closed"): they are access-log lines (``log.access_log`` keeps them), and with thousands of
    open WebSockets they would crowd everything else out of the log store."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        message = record.msg if isinstance(record.msg, str) else ""
        return not (
            message in ("connection open", "connection closed")
            or (message.endswith("[accepted]") and "WebSocket" in message)
        )


class StoreHandler(logging.Handler):
    """Copies every record into a LogStore."""

    def __init__(self, store: LogStore) -> None:
        super().__init__()
        self.store = store

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.store.add(_entry(record))
        except Exception:  # a log handler must never raise into the caller
            self.handleError(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(record)
        out = {
            "timestamp": iso(entry["time"]),
            "level": entry["level"],
            "module": entry["module"],
            "message": entry["message"],
        }
        out.update({k: entry[k] for k in ("session_id", "request_id") if entry[k]})
        out.update(entry["fields"])
        return json.dumps(out, default=str)


class _TextFormatter(logging.Formatter):
    """The console's lines; tracebacks redacted too (an error's text may quote a URL)."""

    def formatException(self, ei: Any) -> str:
        return redact(super().formatException(ei))


def configure_logging(store: LogStore, level: str, fmt: str, access_log: bool = False) -> None:
    """Send agentplex's (and uvicorn's) records to the console and to ``store``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, StoreHandler) or getattr(handler, "_agentplex", False):
            root.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console._agentplex = True  # type: ignore[attr-defined]
    console.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else _TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    store_handler = StoreHandler(store)
    for handler in (console, store_handler):
        handler.addFilter(RedactFilter())
        root.addHandler(handler)
    root.setLevel(parse_level(level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = name != "uvicorn.access" or access_log
    uvicorn_error = logging.getLogger("uvicorn.error")
    for old in [f for f in uvicorn_error.filters if isinstance(f, _WebSocketChatter)]:
        uvicorn_error.removeFilter(old)
    if not access_log:
        uvicorn_error.addFilter(_WebSocketChatter())
    # Alembic narrates every migration context at INFO, httpx every request (each sandbox call,
    # with its URL): only their warnings matter here.
    for name in ("alembic", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Scope(TypedDict):
    env_id: str
    server_lines: bool


def caller_scope(env_id: str, default_env_id: str) -> Scope:
    """What a caller of ``env_id`` may read: its environment's entries, and the server's own
    (those of no environment) only if it is the operator's default environment."""
    return {"env_id": env_id, "server_lines": env_id == default_env_id}


def build_query(
    *,
    level: str | None,
    module: str | None = None,
    since: str | None = None,
    session_id: str | None = None,
    agent_id: str | None = None,
    limit: int = 100,
    default_since: str | None = None,
    env_id: str | None = None,
    server_lines: bool = True,
) -> LogQuery:
    """A LogQuery from API parameters; bad values raise BadRequest naming the parameter.
    ``env_id`` limits it to that environment's entries, plus those of no environment when
    ``server_lines`` (the operator's environment sees the server's own lines)."""
    from agentplex.errors import BadRequest

    try:
        min_level = parse_level(level or "info")
        since_value = since or default_since
        since_time = parse_since(since_value) if since_value else None
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if limit < 0:
        raise BadRequest(f"limit must not be negative (got {limit})")
    return LogQuery(
        min_level=min_level,
        module=module or None,
        since=since_time,
        session_id=session_id or None,
        agent_id=agent_id or None,
        limit=limit,
        env_id=env_id,
        server_lines=server_lines,
    )

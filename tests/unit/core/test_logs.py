from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest

from agentplex.core.logs import (
    LogQuery,
    LogStore,
    StoreHandler,
    build_query,
    parse_level,
    parse_since,
)
from agentplex.errors import BadRequest


def test_parse_since_accepts_durations_and_iso_times() -> None:
    now = datetime(2026, 3, 21, 10, 0, tzinfo=UTC)
    assert parse_since("1h", now) == now - timedelta(hours=1)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("2026-03-21T09:00:00Z", now) == datetime(2026, 3, 21, 9, tzinfo=UTC)
    with pytest.raises(ValueError, match="duration like 30m"):
        parse_since("yesterday", now)


def test_parse_level() -> None:
    assert parse_level("warn") == parse_level("WARNING") == logging.WARNING
    with pytest.raises(ValueError, match="trace, debug, info, warn, error"):
        parse_level("loud")


def test_bad_query_parameters_are_bad_requests() -> None:
    with pytest.raises(BadRequest):
        build_query(level="loud")
    with pytest.raises(BadRequest):
        build_query(level="info", since="last tuesday")


def _logger(store: LogStore) -> logging.Logger:
    logger = logging.getLogger("agentplex.test.logs")
    logger.handlers = [StoreHandler(store)]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger


def test_query_filters_by_level_module_session_and_limit() -> None:
    store = LogStore(100)
    log = _logger(store)
    log.debug("quiet")
    log.info("hello", extra={"session_id": "s1"})
    log.warning("careful", extra={"session_id": "s2", "tool": "shell"})
    logging.getLogger("other.module").handlers = [StoreHandler(store)]
    logging.getLogger("other.module").propagate = False
    logging.getLogger("other.module").error("boom")

    entries = store.query(LogQuery())
    assert [e["message"] for e in entries] == ["hello", "careful", "boom"]
    warn = store.query(LogQuery(min_level=logging.WARNING))
    assert [e["level"] for e in warn] == ["warn", "error"]
    mine = store.query(LogQuery(module="test.logs", min_level=logging.DEBUG))
    assert len(mine) == 3
    s1 = store.query(LogQuery(session_id="s1"))
    assert [e["message"] for e in s1] == ["hello"]
    assert s1[0]["session_id"] == "s1"
    newest = store.query(LogQuery(limit=1))
    assert [e["message"] for e in newest] == ["boom"]
    careful = store.query(LogQuery(session_id="s2"))[0]
    assert careful["fields"] == {"tool": "shell"}


def test_store_is_bounded() -> None:
    store = LogStore(10)
    log = _logger(store)
    for n in range(25):
        log.info("n=%d", n)
    entries = store.query(LogQuery(limit=100))
    assert len(entries) == 10
    assert entries[0]["message"] == "n=15"


async def test_follow_replays_then_goes_live() -> None:
    store = LogStore(100)
    log = _logger(store)
    log.info("one")
    log.info("two")
    received: list[str] = []

    async def follow() -> None:
        async for item in store.follow(LogQuery(), after=1):
            received.append(item.data["message"])
            if len(received) == 3:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    log.info("three")
    log.info("four")
    await asyncio.wait_for(task, 2)
    assert received == ["two", "three", "four"]

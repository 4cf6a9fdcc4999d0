"""Fire times of cron schedules in a time zone, and the DST rule: a fire time in the skipped
hour fires once at the first valid instant after it, one in the repeated hour fires once, at
its first occurrence (Europe/Paris and America/New_York)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise

import pytest

from agentplex.engine.scheduler import (
    dedupe_key,
    fires_back,
    fires_between,
    instant,
    next_fire,
    schedule_key,
    zone,
)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


# 2026: Paris springs forward on March 29 (02:00 CET -> 03:00 CEST, at 01:00Z) and falls back
# on October 25 (03:00 CEST -> 02:00 CET, at 01:00Z); New York on March 8 (02:00 EST -> 03:00
# EDT, at 07:00Z) and November 1 (02:00 EDT -> 01:00 EST, at 06:00Z).


def test_plain_days_fire_at_the_local_time() -> None:
    fires = fires_between("0 9 * * *", "Europe/Paris", utc(2026, 1, 1), utc(2026, 1, 3, 23))
    assert fires == [utc(2026, 1, 1, 8), utc(2026, 1, 2, 8), utc(2026, 1, 3, 8)]
    summer = fires_between("0 9 * * *", "Europe/Paris", utc(2026, 7, 1), utc(2026, 7, 1, 23))
    assert summer == [utc(2026, 7, 1, 7)]


@pytest.mark.parametrize(
    ("tz", "day", "transition"),
    [
        ("Europe/Paris", (2026, 3, 29), utc(2026, 3, 29, 1)),
        ("America/New_York", (2026, 3, 8), utc(2026, 3, 8, 7)),
    ],
)
def test_a_fire_time_in_the_skipped_hour_fires_once_when_it_ends(
    tz: str, day: tuple[int, int, int], transition: datetime
) -> None:
    start = datetime(*day, tzinfo=UTC) - timedelta(days=1)
    fires = fires_between("30 2 * * *", tz, start, start + timedelta(days=3))
    assert len(fires) == 3  # one a day, the day of the change included
    assert fires[1] == transition  # 02:30 does not exist: the first valid instant, 03:00
    assert fires[1].astimezone(zone(tz)).hour == 3
    assert fires[0].astimezone(zone(tz)).hour == 2 and fires[2].astimezone(zone(tz)).hour == 2
    # fire times landing on the same instant are one fire
    many = fires_between(
        "0,30 2,3 * * *", tz, start + timedelta(days=1), transition + timedelta(hours=2)
    )
    assert many == [transition, transition + timedelta(minutes=30)]
    # a seconds field too: 02:30:15 fires at 03:00:00, the first valid instant
    assert next_fire("15 30 2 * * *", tz, transition - timedelta(hours=1)) == transition


@pytest.mark.parametrize(
    ("tz", "cron", "day", "first"),
    [
        ("Europe/Paris", "30 2 * * *", (2026, 10, 25), utc(2026, 10, 25, 0, 30)),  # CEST
        ("America/New_York", "30 1 * * *", (2026, 11, 1), utc(2026, 11, 1, 5, 30)),  # EDT
    ],
)
def test_a_fire_time_in_the_repeated_hour_fires_once_at_its_first_occurrence(
    tz: str, cron: str, day: tuple[int, int, int], first: datetime
) -> None:
    start = datetime(*day, tzinfo=UTC)
    fires = fires_between(cron, tz, start - timedelta(days=1), start + timedelta(days=2))
    assert len(fires) == 3
    assert fires[1] == first
    assert fires[1].astimezone(zone(tz)).fold == 0
    # the second occurrence (an hour later) does not fire, from any vantage point
    second = first + timedelta(hours=1)
    assert next_fire(cron, tz, first) == fires[2]
    assert next_fire(cron, tz, second - timedelta(seconds=1)) == fires[2]
    assert next(fires_back(cron, tz, second + timedelta(minutes=10))) == first


def test_a_frequent_schedule_pauses_in_the_repeated_hour_and_never_doubles() -> None:
    tz = "America/New_York"
    fires = fires_between("*/15 * * * *", tz, utc(2026, 11, 1, 4), utc(2026, 11, 1, 8))
    walls = [f.astimezone(zone(tz)).strftime("%H:%M") for f in fires]
    assert len(walls) == len(set(walls))  # no wall-clock time twice
    assert fires[fires.index(utc(2026, 11, 1, 5, 45)) + 1] == utc(2026, 11, 1, 7)  # 02:00 EST
    spring = fires_between("*/15 * * * *", tz, utc(2026, 3, 8, 5, 59), utc(2026, 3, 8, 8))
    # 01:00 .. 01:45 EST, then 02:00 .. 02:45 (skipped) all fire once at 03:00 EDT
    assert spring[4:6] == [utc(2026, 3, 8, 7), utc(2026, 3, 8, 7, 15)]
    assert len(spring) == len(set(spring))


def test_from_within_the_repeated_hours_second_pass() -> None:
    tz, cron = "America/New_York", "45 1 * * *"
    now = utc(2026, 11, 1, 6, 20)  # 01:20 EST; 01:45 EDT (05:45Z) fired already
    assert now.astimezone(zone(tz)).fold == 1
    assert next(fires_back(cron, tz, now)) == utc(2026, 11, 1, 5, 45)
    assert next_fire(cron, tz, now) == utc(2026, 11, 2, 6, 45)  # 01:45 EST the day after
    assert next_fire(cron, tz, utc(2026, 11, 1, 5, 30)) == utc(2026, 11, 1, 5, 45)


def test_instant_of_wall_times() -> None:
    paris = zone("Europe/Paris")
    assert instant(datetime(2026, 3, 29, 2, 30), paris) == utc(2026, 3, 29, 1)
    assert instant(datetime(2026, 10, 25, 2, 30), paris) == utc(2026, 10, 25, 0, 30)
    assert instant(datetime(2026, 6, 1, 12), paris) == utc(2026, 6, 1, 10)


@pytest.mark.parametrize("tz", ["Europe/Paris", "America/New_York", "UTC", "Australia/Lord_Howe"])
@pytest.mark.parametrize(
    "cron", ["*/15 * * * *", "30 2 * * *", "0,30 1-3 * * *", "0 */2 * * 0", "10 2 * * *"]
)
@pytest.mark.parametrize(
    ("start", "end"), [(utc(2026, 3, 1), utc(2026, 4, 10)), (utc(2026, 9, 30), utc(2026, 11, 10))]
)
def test_fires_forward_and_backward_agree_across_the_changes(
    tz: str, cron: str, start: datetime, end: datetime
) -> None:
    forward = fires_between(cron, tz, start, end)
    assert all(a < b for a, b in pairwise(forward))  # never twice
    assert all(f.microsecond == 0 for f in forward)
    backward = [f for f in islice(fires_back(cron, tz, end), len(forward) + 1) if f > start]
    assert backward == forward[::-1]


def test_keys() -> None:
    row = {"project_id": "p", "cron": "0 * * * *", "tz": "UTC", "function": "a.b:c"}
    key = dedupe_key(row, utc(2026, 3, 29, 1))
    assert key == f"schedule:{schedule_key(row)}:2026-03-29T01:00:00.000Z"
    assert len(schedule_key(row)) == 32 and len(key) <= 300
    # the same schedule in a later deploy (a new schedule_id) has the same key; another not
    assert schedule_key({**row, "schedule_id": "x"}) == schedule_key({**row, "schedule_id": "y"})
    assert schedule_key({**row, "tz": "Europe/Paris"}) != schedule_key(row)

"""Scheduled functions: cron expressions read in a time zone."""

from __future__ import annotations

from typing import Any

from agentplex.sdk import capture, schedule


@schedule("0 9 * * 1-5", tz="Europe/Paris")
def morning_report(fire: dict[str, Any]) -> str:
    """Every weekday at 09:00 Paris time (07:00 or 08:00 UTC, by the season)."""
    print(f"good morning: fired for {fire['fire_time']}")
    capture("fired_for", fire["fire_time"])
    return "report sent"

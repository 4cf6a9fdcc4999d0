"""Time and identifiers, in one place so every surface formats them alike."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """``value`` as timezone-aware UTC (SQLite hands naive datetimes back)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def iso(value: datetime | None) -> str | None:
    """RFC 3339 with milliseconds and a Z, as the references print times."""
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands naive datetimes back
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    """A random UUID as a string."""
    return str(uuid.uuid4())

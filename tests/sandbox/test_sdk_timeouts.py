"""The SDK refuses a timeout that is not a number of seconds when it decorates."""

from __future__ import annotations

from typing import Any

import pytest

from agentplex import sdk


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (-1, ValueError),
        (0, ValueError),
        (86_401, ValueError),
        ("30", TypeError),
        (True, TypeError),
    ],
)
def test_bad_timeouts_are_refused_at_decoration(timeout: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="timeout=30"):
        sdk.function(timeout=timeout)
    with pytest.raises(error, match="timeout"):
        sdk.on_event("a.b", timeout=timeout)
    with pytest.raises(error, match="timeout"):
        sdk.schedule("0 0 * * *", timeout=timeout)


def test_good_timeouts() -> None:
    assert sdk.function(timeout=1.5) is not None
    assert sdk.function(timeout=86_400) is not None
    assert sdk.function(timeout=None) is not None

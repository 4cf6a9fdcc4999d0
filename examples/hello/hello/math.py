"""Functions: called by name, ``::hello::math/add`` (Hot) or ``hello.math:add`` (Python)."""

from __future__ import annotations

from agentplex.sdk import function


@function
def add(a: float, b: float) -> float:
    """The sum of a and b: `agentplex call ::hello::math/add '[2, 3]'` prints 5."""
    return a + b

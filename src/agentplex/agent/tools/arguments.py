"""Checking the arguments a model sent to a tool.

Models get argument names and types wrong often enough that a tool must never raise on them:
every check raises `BadArguments`, which `SandboxTools.call` turns into a `ToolResult` whose
``error`` names the argument, what was expected and what came.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class BadArguments(Exception):
    """The tool's arguments are not what its schema asks for."""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


class Arguments:
    """Typed access to one call's arguments, for tool ``tool``."""

    def __init__(self, tool: str, arguments: Any) -> None:
        if not isinstance(arguments, Mapping):
            raise BadArguments(
                f"The {tool} tool takes a JSON object of arguments, not {_kind(arguments)}."
            )
        self.tool = tool
        self.values = arguments

    def _wrong(self, name: str, expected: str, value: Any) -> BadArguments:
        return BadArguments(
            f"Invalid arguments for the {self.tool} tool: '{name}' must be {expected},"
            f" got {_kind(value)}."
        )

    def string(self, name: str, *, allow_empty: bool = False) -> str:
        """A required string argument."""
        if name not in self.values or self.values[name] is None:
            raise BadArguments(
                f"Invalid arguments for the {self.tool} tool: '{name}' is required (a string)."
            )
        value = self.values[name]
        if not isinstance(value, str):
            raise self._wrong(name, "a string", value)
        if not value and not allow_empty:
            raise BadArguments(
                f"Invalid arguments for the {self.tool} tool: '{name}' must not be empty."
            )
        return value

    def optional_string(self, name: str) -> str | None:
        """A string argument that may be absent (null and "" count as absent)."""
        value = self.values.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self._wrong(name, "a string", value)
        return value

    def optional_int(self, name: str, *, minimum: int = 0) -> int | None:
        """A whole number of at least ``minimum``, or None when absent (3.0 counts as 3)."""
        value = self.values.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._wrong(name, "a whole number", value)
        if isinstance(value, float) and not value.is_integer():
            raise self._wrong(name, "a whole number", value)
        number = int(value)
        if number < minimum:
            raise BadArguments(
                f"Invalid arguments for the {self.tool} tool: '{name}' must be at least"
                f" {minimum}, got {number}."
            )
        return number

    def flag(self, name: str) -> bool:
        """A boolean argument; absent is False."""
        value = self.values.get(name)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._wrong(name, "true or false", value)
        return value

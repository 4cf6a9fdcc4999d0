"""Bounding what a tool sends back to the model.

A command can print megabytes; the model needs the beginning (what ran) and the end (how it
ended). `OutputBuffer` keeps the first and the last half of `MAX_OUTPUT_CHARS` characters of a
stream, however long it grows, and says how much it dropped in between.
"""

from __future__ import annotations

MAX_OUTPUT_CHARS = 50 * 1024
"""The most characters of output a tool call returns to the model (about 50 KiB of text)."""


class OutputBuffer:
    """Text appended in pieces, of which at most ``limit`` characters are kept: all of it while
    it fits, then its first ``limit // 2`` characters and its last ones."""

    def __init__(self, limit: int = MAX_OUTPUT_CHARS) -> None:
        self.limit = limit
        self._half = limit // 2
        self._parts: list[str] = []  # everything, while it fits
        self._head = ""  # once it no longer fits
        self._tail = ""
        self.total = 0  # characters appended, kept or not

    def append(self, text: str) -> None:
        if not text:
            return
        fitted = not self.truncated
        self.total += len(text)
        if not self.truncated:
            self._parts.append(text)
            return
        if fitted:  # it just stopped fitting
            text = "".join(self._parts) + text
            self._parts = []
            self._head, text = text[: self._half], text[self._half :]
        self._tail = (self._tail + text)[-(self.limit - self._half) :]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        """What was kept; past the limit, with a line saying how many characters were left
        out."""
        if not self.truncated:
            return "".join(self._parts)
        dropped = self.total - len(self._head) - len(self._tail)
        return (
            f"{self._head}\n\n... [output truncated: {dropped} characters omitted] ...\n\n"
            f"{self._tail}"
        )


def cap(text: str, limit: int = MAX_OUTPUT_CHARS) -> tuple[str, bool]:
    """``text`` bounded as `OutputBuffer` bounds it, and whether anything was left out."""
    buf = OutputBuffer(limit)
    buf.append(text)
    return buf.text(), buf.truncated

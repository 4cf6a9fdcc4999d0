"""OutputBuffer keeps the head and the tail of long output, and says what it dropped."""

from __future__ import annotations

from agentplex.agent.tools.output import OutputBuffer, cap


def test_short_output_is_kept_whole() -> None:
    assert cap("abc", 10) == ("abc", False)
    assert cap("x" * 10, 10) == ("x" * 10, False)


def test_long_output_keeps_head_and_tail_whatever_the_pieces() -> None:
    whole = "".join(chr(ord("a") + i) for i in range(26))
    for size in (1, 3, 7, 26):
        buf = OutputBuffer(10)
        for i in range(0, 26, size):
            buf.append(whole[i : i + size])
        assert buf.truncated
        assert buf.total == 26
        assert buf.text() == "abcde\n\n... [output truncated: 16 characters omitted] ...\n\nvwxyz"

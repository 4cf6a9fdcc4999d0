"""The runtime's control lines and the executor's reader of them, without a sandbox; and the
runtime's choice of modules to import."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from agentplex.core.ports import RunOutput
from agentplex.engine.executor import MAX_PARTIAL, _Output
from agentplex.sdk import _runtime


def feed_all(out: _Output, chunks: list[str]) -> None:
    for chunk in chunks:
        out.feed("stdout", chunk)
    out.close()


def control(nonce: str, monkeypatch: pytest.MonkeyPatch, message: dict[str, object]) -> str:
    buf = io.StringIO()
    monkeypatch.setattr(_runtime, "_OUT", buf)
    monkeypatch.setattr(sys, "stdout", buf)
    _runtime._send(nonce, message)
    return buf.getvalue()


def test_control_lines_split_anywhere_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    line = control("n1", monkeypatch, {"k": "data", "value": {"a": 1}, "data_type": "json"})
    result = control("n1", monkeypatch, {"k": "result", "ok": True, "value": 3})
    stream = "partial " + line + "next line\n" + result
    for size in (1, 2, 3, 7, len(stream)):
        got: list[RunOutput] = []
        out = _Output("n1", got.append)
        feed_all(out, [stream[i : i + size] for i in range(0, len(stream), size)])
        text = "".join(o.payload["text"] for o in got if o.kind == "text")
        assert text == "partial next line\n", size
        assert [o.payload for o in got if o.kind == "data"] == [{"a": 1}]
        assert out.result == {"k": "result", "ok": True, "value": 3}


def test_another_nonce_and_stray_separators_are_text(monkeypatch: pytest.MonkeyPatch) -> None:
    forged = control("other", monkeypatch, {"k": "result", "ok": True, "value": 1})
    got: list[RunOutput] = []
    out = _Output("mine", got.append)
    feed_all(out, [forged, "a\x1eb\n", "tail without newline"])
    assert out.result is None
    assert "".join(o.payload["text"] for o in got) == forged + "a\x1eb\ntail without newline"


def test_text_waits_for_its_line_unless_it_is_long() -> None:
    got: list[RunOutput] = []
    out = _Output("n", got.append)
    out.feed("stdout", "abc")
    assert got == []
    out.feed("stdout", "def\ngh")
    assert [o.payload["text"] for o in got] == ["abcdef\n"]
    out.feed("stderr", "x" * (MAX_PARTIAL + 1))
    assert got[-1].payload == {"text": "x" * (MAX_PARTIAL + 1), "stream": "stderr"}
    out.close()
    assert got[-1].payload == {"text": "gh", "stream": "stdout"}


def test_agent_notes_are_not_the_users_output() -> None:
    got: list[RunOutput] = []
    out = _Output("n", got.append)
    out.feed("stderr", "\nExecution timed out after 1s and was interrupted\n")
    out.close()
    assert got == [] and out.notes == ["Execution timed out after 1s and was interrupted"]


def test_modules_of_a_build(tmp_path: Path) -> None:
    for name in (
        "main.py",
        "setup.py",
        "test_main.py",
        "pkg/__init__.py",
        "pkg/a.py",
        "pkg/sub/b.py",
        "pkg/__main__.py",
        "tests/test_x.py",
        ".venv/lib.py",
        "not-a-package/c.py",
        "data/readme.txt",
    ):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    assert _runtime.modules_of(str(tmp_path)) == ["main", "pkg", "pkg.a", "pkg.sub.b"]

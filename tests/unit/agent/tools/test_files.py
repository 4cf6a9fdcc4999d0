"""read, write, edit, list and glob over the in-memory sandbox."""

from __future__ import annotations

from typing import Any

from agentplex.agent.tools.output import MAX_OUTPUT_CHARS
from agentplex.sandbox.memory import MemorySandbox
from tests.unit.agent.tools.conftest import Session


async def test_write_then_read_numbers_lines_from_one(session: Session) -> None:
    wrote = await session.call("write", {"filePath": "notes/a.txt", "content": "alpha\nbeta\n"})
    assert wrote.error is None
    assert wrote.output == "Wrote file successfully."
    assert wrote.title == "notes/a.txt"
    assert wrote.metadata["filepath"] == "/workspace/notes/a.txt"
    assert wrote.metadata["exists"] is False
    assert session.files() == {"/workspace/notes/a.txt": "alpha\nbeta\n"}

    read = await session.call("read", {"filePath": "/workspace/notes/a.txt"})
    assert read.error is None
    assert read.output == (
        "<path>/workspace/notes/a.txt</path>\n<type>file</type>\n<content>\n"
        "1: alpha\n2: beta\n\n(End of file - total 2 lines)\n</content>"
    )
    again = await session.call("write", {"filePath": "notes/a.txt", "content": ""})
    assert again.metadata["exists"] is True
    assert session.files()["/workspace/notes/a.txt"] == ""


async def test_read_missing_file_names_the_absolute_path(session: Session) -> None:
    result = await session.call("read", {"filePath": "does-not-exist.txt"})
    assert result.error == "File not found: /workspace/does-not-exist.txt"


async def test_read_offset_and_limit(session: Session) -> None:
    lines = "".join(f"line {i}\n" for i in range(1, 11))
    await session.call("write", {"filePath": "ten.txt", "content": lines})
    result = await session.call("read", {"filePath": "ten.txt", "offset": 4, "limit": 3})
    assert "4: line 4\n5: line 5\n6: line 6\n" in result.output
    assert "3: line 3" not in result.output and "7: line 7" not in result.output
    assert "(Showing lines 4-6 of 10. Use offset=7 to continue.)" in result.output
    assert result.metadata["truncated"] is True
    beyond = await session.call("read", {"filePath": "ten.txt", "offset": 11})
    assert beyond.error == "Offset 11 is out of range for this file (10 lines)"


async def test_read_caps_long_lines_and_large_files(session: Session) -> None:
    await session.call("write", {"filePath": "wide.txt", "content": "x" * 5000 + "\nshort\n"})
    wide = await session.call("read", {"filePath": "wide.txt"})
    assert "1: " + "x" * 2000 + "...\n2: short" in wide.output

    big = "".join(f"{i:05d} " + "y" * 94 + "\n" for i in range(1, 1501))  # 150 KB
    await session.call("write", {"filePath": "big.txt", "content": big})
    result = await session.call("read", {"filePath": "big.txt"})
    assert len(result.output) <= MAX_OUTPUT_CHARS + 500
    assert result.metadata["truncated"] is True
    assert "Use offset=" in result.output
    last = int(result.output.split("Use offset=")[1].split(" ")[0].rstrip(".)"))
    follow = await session.call("read", {"filePath": "big.txt", "offset": last})
    assert follow.output.split("<content>\n")[1].startswith(f"{last}: {last:05d} ")


async def test_unicode_round_trip(session: Session) -> None:
    text = "naïve café — 日本語 🎉\n"
    await session.call("write", {"filePath": "u.txt", "content": text})
    read = await session.call("read", {"filePath": "u.txt"})
    assert "1: naïve café — 日本語 🎉" in read.output
    edited = await session.call("edit", {"filePath": "u.txt", "oldString": "🎉", "newString": "✓"})
    assert edited.error is None
    assert session.files()["/workspace/u.txt"] == "naïve café — 日本語 ✓\n"


async def test_edit_replaces_one_match(session: Session) -> None:
    await session.call("write", {"filePath": "m.py", "content": "a = 1\nb = 2\n"})
    result = await session.call(
        "edit", {"filePath": "m.py", "oldString": "b = 2", "newString": "b = 3"}
    )
    assert result.error is None
    assert result.output == "Edit applied successfully."
    assert session.files()["/workspace/m.py"] == "a = 1\nb = 3\n"
    assert "-b = 2\n+b = 3" in result.metadata["diff"]
    assert result.metadata["filediff"] == {
        "file": "/workspace/m.py",
        "additions": 1,
        "deletions": 1,
    }


async def test_edit_refuses_missing_and_ambiguous_matches(session: Session) -> None:
    await session.call("write", {"filePath": "m.txt", "content": "x\nx\n"})
    missing = await session.call("edit", {"filePath": "m.txt", "oldString": "y", "newString": "z"})
    assert missing.error is not None and "Could not find oldString" in missing.error
    twice = await session.call("edit", {"filePath": "m.txt", "oldString": "x", "newString": "z"})
    assert twice.error is not None and "Found 2 matches" in twice.error
    assert "replaceAll" in twice.error
    assert session.files()["/workspace/m.txt"] == "x\nx\n"  # untouched

    every = await session.call(
        "edit", {"filePath": "m.txt", "oldString": "x", "newString": "z", "replaceAll": True}
    )
    assert every.error is None and every.metadata["replacements"] == 2
    assert session.files()["/workspace/m.txt"] == "z\nz\n"

    same = await session.call("edit", {"filePath": "m.txt", "oldString": "z", "newString": "z"})
    assert same.error == "No changes to apply: oldString and newString are identical."
    gone = await session.call("edit", {"filePath": "nope.txt", "oldString": "a", "newString": "b"})
    assert gone.error == "File not found: /workspace/nope.txt"


async def test_edit_with_empty_old_string_writes_the_file(session: Session) -> None:
    result = await session.call(
        "edit", {"filePath": "new.txt", "oldString": "", "newString": "hi\n"}
    )
    assert result.error is None
    assert session.files()["/workspace/new.txt"] == "hi\n"


async def test_list_shows_entries_of_a_directory(session: Session) -> None:
    for name in ("src/a.py", "src/b.py", "src/pkg/c.py", "README.md"):
        await session.call("write", {"filePath": name, "content": "."})
    result = await session.call("list", {"path": "src"})
    assert result.error is None
    assert result.output.splitlines()[0] == "/workspace/src/"
    assert {"  a.py", "  b.py", "  pkg"} <= set(result.output.splitlines())
    root = await session.call("list", {})
    assert root.title == "." and "  README.md" in root.output
    assert root.metadata["count"] == 2


async def test_paths_outside_the_sandbox_are_refused(session: Session) -> None:
    result = await session.call("read", {"filePath": "../../etc/passwd"})
    assert result.error == "Access denied: /etc/passwd is outside the sandbox's /workspace and /tmp"
    wrote = await session.call("write", {"filePath": "/etc/x", "content": "x"})
    assert wrote.error is not None and "Access denied" in wrote.error


async def test_glob_runs_in_the_sandbox_and_lists_paths(session: Session) -> None:
    seen: list[dict[str, Any]] = []

    def runner(_s: MemorySandbox, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        return {"stdout": "/workspace/src/b.py\n/workspace/a.py\n", "exit_code": 0}

    session.backend.runner = runner
    result = await session.call("glob", {"pattern": "*.py"})
    assert result.error is None
    assert result.output == "/workspace/src/b.py\n/workspace/a.py"
    assert seen[0]["command"] == "python3"
    assert seen[0]["args"][2:4] == ["**/*.py", "/workspace"]  # a bare name matches at any depth

    session.backend.runner = lambda *_: {"stdout": "", "exit_code": 0}
    none = await session.call("glob", {"pattern": "src/*.rs", "path": "src"})
    assert none.output == "No files found"
    absolute = await session.call("glob", {"pattern": "/etc/*"})
    assert absolute.error is not None and "relative" in absolute.error

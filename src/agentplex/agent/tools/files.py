"""The file tools: ``read``, ``write``, ``edit``, ``list`` and ``glob``, over agentd's
``/files/*`` routes (``glob`` runs a short Python in the sandbox).

Outputs follow OpenCode's tools: ``read`` numbers lines from 1 inside ``<content>``, a missing
file is ``File not found: <absolute path>``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from agentplex.agent.tools.arguments import Arguments
from agentplex.agent.tools.dataplane import WORKSPACE, DataPlaneError, call, resolve, shown
from agentplex.agent.tools.output import MAX_OUTPUT_CHARS, cap
from agentplex.core.ports import SandboxBackend, ToolContext, ToolResult

DEFAULT_READ_LIMIT = 2000
"""Lines `read` returns when the model names no limit."""
MAX_LINE_LENGTH = 2000
"""Characters of one line `read` shows; longer lines end with ``...``."""
MAX_LIST_ENTRIES = 1000
"""Entries `list` shows."""
MAX_GLOB_RESULTS = 100
"""Paths `glob` returns."""


def _failure(exc: DataPlaneError, path: str, *, directory: bool = False) -> ToolResult:
    """What the model reads when agentd refused a file operation on ``path``."""
    if exc.status == 404:
        what = "Directory" if directory else "File"
        return ToolResult(error=f"{what} not found: {path}")
    if exc.code == "PATH_NOT_ALLOWED":
        return ToolResult(
            error=f"Access denied: {path} is outside the sandbox's /workspace and /tmp"
        )
    if exc.code == "PERMISSION_DENIED":
        return ToolResult(error=f"Permission denied: {path}")
    return ToolResult(error=f"{exc.message} ({path})" if path not in exc.message else exc.message)


async def _is_directory(backend: SandboxBackend, sandbox_id: str, path: str) -> bool:
    try:
        body = await call(backend, sandbox_id, "GET", "/files/exists", params={"path": path})
    except DataPlaneError:
        return False
    return bool(body.get("is_directory"))


async def _read_text(
    backend: SandboxBackend, sandbox_id: str, path: str
) -> tuple[str | None, ToolResult | None]:
    """The file's text, or the result that says why there is none."""
    try:
        body = await call(backend, sandbox_id, "GET", "/files/read", params={"path": path})
    except DataPlaneError as exc:
        if exc.code == "INVALID_PATH" and await _is_directory(backend, sandbox_id, path):
            return None, ToolResult(
                error=f"{path} is a directory, not a file: use the list tool to see its entries"
            )
        return None, _failure(exc, path)
    if body.get("encoding") == "base64":
        return None, ToolResult(error=f"Cannot read binary file: {path}")
    return str(body.get("content", "")), None


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no new one
    return lines


async def read(
    backend: SandboxBackend, ctx: ToolContext, arguments: Mapping[str, Any]
) -> ToolResult:
    """Numbered lines of a text file (from ``offset``, at most ``limit``)."""
    args = Arguments("read", arguments)
    path = resolve(args.string("filePath"))
    offset = args.optional_int("offset", minimum=0) or 1
    limit = args.optional_int("limit", minimum=1) or DEFAULT_READ_LIMIT
    text, failed = await _read_text(backend, await ctx.sandbox(), path)
    if failed is not None:
        return failed
    assert text is not None
    lines = _lines(text)
    total = len(lines)
    if offset > max(total, 1):
        return ToolResult(
            error=f"Offset {offset} is out of range for this file ({total} lines)",
            title=shown(path),
        )
    shown_lines: list[str] = []
    size = 0
    last = offset - 1
    cut_by_size = False
    for number in range(offset, min(total, offset - 1 + limit) + 1):
        line = lines[number - 1]
        if len(line) > MAX_LINE_LENGTH:
            line = line[:MAX_LINE_LENGTH] + "..."
        entry = f"{number}: {line}"
        if size + len(entry) + 1 > MAX_OUTPUT_CHARS and shown_lines:
            cut_by_size = True
            break
        shown_lines.append(entry)
        size += len(entry) + 1
        last = number
    if cut_by_size:
        note = (
            f"(Output cut at {MAX_OUTPUT_CHARS // 1024} KiB. Showing lines {offset}-{last} of"
            f" {total}. Use offset={last + 1} to continue.)"
        )
    elif last < total:
        note = f"(Showing lines {offset}-{last} of {total}. Use offset={last + 1} to continue.)"
    else:
        note = f"(End of file - total {total} lines)"
    body = "\n".join(shown_lines)
    output = f"<path>{path}</path>\n<type>file</type>\n<content>\n{body}\n\n{note}\n</content>"
    preview = "\n".join(lines[offset - 1 : offset - 1 + 20])
    return ToolResult(
        output=output,
        title=shown(path),
        metadata={"preview": preview, "truncated": last < total},
    )


async def write(
    backend: SandboxBackend, ctx: ToolContext, arguments: Mapping[str, Any]
) -> ToolResult:
    """Create or replace a file with ``content``."""
    args = Arguments("write", arguments)
    path = resolve(args.string("filePath"))
    content = args.string("content", allow_empty=True)
    sandbox_id = await ctx.sandbox()
    try:
        found = await call(backend, sandbox_id, "GET", "/files/exists", params={"path": path})
        await call(
            backend,
            sandbox_id,
            "POST",
            "/files/write",
            json_body={"path": path, "content": content},
        )
    except DataPlaneError as exc:
        return _failure(exc, path)
    return ToolResult(
        output="Wrote file successfully.",
        title=shown(path),
        metadata={"filepath": path, "exists": bool(found.get("exists")), "diagnostics": {}},
    )


def _diff(path: str, before: str, after: str) -> tuple[str, int, int]:
    """A unified diff of the change, and how many lines it adds and removes."""
    lines = list(
        difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True), path, path
        )
    )
    added = sum(1 for x in lines if x.startswith("+") and not x.startswith("+++"))
    removed = sum(1 for x in lines if x.startswith("-") and not x.startswith("---"))
    return "".join(lines), added, removed


async def edit(
    backend: SandboxBackend, ctx: ToolContext, arguments: Mapping[str, Any]
) -> ToolResult:
    """Replace ``oldString`` by ``newString`` (once, or everywhere with ``replaceAll``)."""
    args = Arguments("edit", arguments)
    path = resolve(args.string("filePath"))
    old = args.string("oldString", allow_empty=True)
    new = args.string("newString", allow_empty=True)
    replace_all = args.flag("replaceAll")
    if old == new:
        return ToolResult(
            error="No changes to apply: oldString and newString are identical.", title=shown(path)
        )
    sandbox_id = await ctx.sandbox()
    if old == "":  # OpenCode: an empty oldString writes newString as the whole file
        before, replacements = "", 1
        after = new
    else:
        text, failed = await _read_text(backend, sandbox_id, path)
        if failed is not None:
            return failed
        assert text is not None
        count = text.count(old)
        if count == 0:
            return ToolResult(
                error=(
                    f"Could not find oldString in {path}. It must match the file exactly,"
                    " whitespace and indentation included; read the file to see its text."
                ),
                title=shown(path),
            )
        if count > 1 and not replace_all:
            return ToolResult(
                error=(
                    f"Found {count} matches for oldString in {path}. Give more surrounding"
                    " lines in oldString to pick one, or set replaceAll to true to replace"
                    " every match."
                ),
                title=shown(path),
            )
        before, replacements = text, count if replace_all else 1
        after = text.replace(old, new) if replace_all else text.replace(old, new, 1)
    try:
        await call(
            backend, sandbox_id, "POST", "/files/write", json_body={"path": path, "content": after}
        )
    except DataPlaneError as exc:
        return _failure(exc, path)
    diff, added, removed = _diff(path, before, after)
    diff, _ = cap(diff)
    return ToolResult(
        output="Edit applied successfully.",
        title=shown(path),
        metadata={
            "diff": diff,
            "replacements": replacements,
            "filediff": {"file": path, "additions": added, "deletions": removed},
        },
    )


async def list_dir(
    backend: SandboxBackend, ctx: ToolContext, arguments: Mapping[str, Any]
) -> ToolResult:
    """The entries of a directory, directories first."""
    args = Arguments("list", arguments)
    path = resolve(args.optional_string("path") or WORKSPACE)
    try:
        body = await call(backend, await ctx.sandbox(), "GET", "/files/list", params={"path": path})
    except DataPlaneError as exc:
        if exc.status == 400 and "not a directory" in exc.message:
            return ToolResult(error=f"{path} is a file, not a directory: use the read tool")
        return _failure(exc, path, directory=True)
    entries: list[tuple[bool, str]] = []
    for entry in body.get("files") or []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            is_dir = bool(entry.get("is_directory") or entry.get("is_dir"))
            entries.append((not is_dir, entry["name"] + ("/" if is_dir else "")))
    entries.sort()
    names = [name for _, name in entries]
    lines = [f"{path.rstrip('/')}/"] + [f"  {name}" for name in names[:MAX_LIST_ENTRIES]]
    if len(names) > MAX_LIST_ENTRIES:
        lines.append(f"  ... and {len(names) - MAX_LIST_ENTRIES} more entries")
    elif not names:
        lines.append("  (empty directory)")
    return ToolResult(
        output="\n".join(lines),
        title=shown(path),
        metadata={"count": len(names), "truncated": len(names) > MAX_LIST_ENTRIES},
    )


_GLOB_SCRIPT = """
import glob, os, sys
pattern, root, most = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.chdir(root)
found = []
for hit in glob.iglob(pattern, recursive=True):
    if os.path.isfile(hit):
        try:
            found.append((os.path.getmtime(hit), os.path.normpath(os.path.join(root, hit))))
        except OSError:
            pass
found.sort(key=lambda item: -item[0])
for _, path in found[: most + 1]:
    print(path)
"""


async def glob(
    backend: SandboxBackend, ctx: ToolContext, arguments: Mapping[str, Any]
) -> ToolResult:
    """Paths of the files under ``path`` that match ``pattern``, newest first."""
    args = Arguments("glob", arguments)
    pattern = args.string("pattern")
    root = resolve(args.optional_string("path") or WORKSPACE)
    if pattern.startswith("/"):
        return ToolResult(
            error="The glob pattern must be relative to 'path' (e.g. '**/*.py'), not absolute."
        )
    if "/" not in pattern and not pattern.startswith("**"):
        pattern = "**/" + pattern  # as ripgrep's --glob (OpenCode): a bare name matches anywhere
    try:
        body = await call(
            backend,
            await ctx.sandbox(),
            "POST",
            "/commands/run",
            json_body={
                "command": "python3",
                "args": ["-c", _GLOB_SCRIPT, pattern, root, str(MAX_GLOB_RESULTS)],
                "workdir": WORKSPACE,
                "timeout": min(ctx.timeout, 60.0),
            },
            timeout=min(ctx.timeout, 60.0) + 10,
        )
    except DataPlaneError as exc:
        return ToolResult(error=f"glob failed: {exc.message}")
    if body.get("exit_code") != 0:
        problem = str(body.get("stderr") or "").strip().splitlines()
        reason = problem[-1] if problem else f"exit code {body.get('exit_code')}"
        if "FileNotFoundError" in reason or "NotADirectoryError" in reason:
            reason = f"Directory not found: {root}"
        return ToolResult(error=f"glob failed: {reason}", title=shown(root))
    paths = [p for p in str(body.get("stdout") or "").splitlines() if p]
    truncated = len(paths) > MAX_GLOB_RESULTS
    paths = paths[:MAX_GLOB_RESULTS]
    output = "\n".join(paths) if paths else "No files found"
    if truncated:
        output += (
            f"\n\n(Results are truncated: showing the {MAX_GLOB_RESULTS} newest. Use a more"
            " specific path or pattern.)"
        )
    return ToolResult(
        output=output, title=shown(root), metadata={"count": len(paths), "truncated": truncated}
    )

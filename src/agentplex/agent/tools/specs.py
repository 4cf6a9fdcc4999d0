"""The sandbox tools as the model sees them: OpenCode's names, arguments and JSON Schemas
(``bash``, ``read``, ``write``, ``edit``, ``list``, ``glob``), plus ``python`` for the
sandbox's stateful Python kernel."""

from __future__ import annotations

from typing import Any

from agentplex.core.ports import ToolSpec


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


_TIMEOUT = {
    "type": "number",
    "description": "Optional timeout in milliseconds (at most the server's tool time limit).",
}

BASH = ToolSpec(
    name="bash",
    description=(
        "Run a shell command with bash in the sandbox (a Linux machine of its own; the working"
        " directory is /workspace unless `workdir` says otherwise). Returns the combined"
        " stdout and stderr; a command that exits non-zero is reported with its exit code."
        " Each call is a fresh shell: use `workdir` rather than `cd`."
    ),
    parameters=_schema(
        {
            "command": {"type": "string", "description": "The command to execute"},
            "timeout": _TIMEOUT,
            "workdir": {
                "type": "string",
                "description": "The directory to run the command in (default /workspace).",
            },
            "description": {
                "type": "string",
                "description": "Clear, concise description of what this command does in 5-10"
                " words.",
            },
        },
        ["command"],
    ),
)

PYTHON = ToolSpec(
    name="python",
    description=(
        "Run Python code in the sandbox's Jupyter-like kernel. State (variables, imports,"
        " the current directory) is kept between calls of the same session. Returns what the"
        " code printed, the value of its last expression, and a short note for each image or"
        " other rich output; an exception returns its traceback."
    ),
    parameters=_schema(
        {"code": {"type": "string", "description": "The Python code to run"}, "timeout": _TIMEOUT},
        ["code"],
    ),
)

READ = ToolSpec(
    name="read",
    description=(
        "Read a text file of the sandbox. Lines come numbered from 1. Relative paths are"
        " under /workspace. By default up to 2000 lines from the start; use offset and limit"
        " for the rest of a long file."
    ),
    parameters=_schema(
        {
            "filePath": {"type": "string", "description": "The path of the file to read"},
            "offset": {
                "type": "number",
                "description": "The line number to start reading from (1-indexed)",
            },
            "limit": {
                "type": "number",
                "description": "The maximum number of lines to read (defaults to 2000)",
            },
        },
        ["filePath"],
    ),
)

WRITE = ToolSpec(
    name="write",
    description=(
        "Write a file of the sandbox, creating it and its directories or replacing what it"
        " held. Relative paths are under /workspace."
    ),
    parameters=_schema(
        {
            "content": {"type": "string", "description": "The content to write to the file"},
            "filePath": {"type": "string", "description": "The path of the file to write"},
        },
        ["content", "filePath"],
    ),
)

EDIT = ToolSpec(
    name="edit",
    description=(
        "Replace text in a file of the sandbox. `oldString` must occur in the file exactly"
        " (whitespace and indentation included) and only once, unless `replaceAll` is true."
        " An empty `oldString` writes `newString` as the whole file."
    ),
    parameters=_schema(
        {
            "filePath": {"type": "string", "description": "The path of the file to modify"},
            "oldString": {"type": "string", "description": "The text to replace"},
            "newString": {
                "type": "string",
                "description": "The text to replace it with (must be different from oldString)",
            },
            "replaceAll": {
                "type": "boolean",
                "description": "Replace all occurrences of oldString (default false)",
            },
        },
        ["filePath", "oldString", "newString"],
    ),
)

LIST = ToolSpec(
    name="list",
    description=(
        "List the entries of a directory of the sandbox (directories end with /). Default:"
        " /workspace."
    ),
    parameters=_schema(
        {"path": {"type": "string", "description": "The directory to list (default /workspace)"}},
        [],
    ),
)

GLOB = ToolSpec(
    name="glob",
    description=(
        "Find files of the sandbox whose path matches a glob pattern such as `**/*.py` or"
        " `src/*.ts`; a pattern without / matches at any depth. Newest first, at most 100."
    ),
    parameters=_schema(
        {
            "pattern": {"type": "string", "description": "The glob pattern to match files"},
            "path": {
                "type": "string",
                "description": "The directory to search in (default /workspace)",
            },
        },
        ["pattern"],
    ),
)

ALL = (BASH, PYTHON, READ, WRITE, EDIT, LIST, GLOB)
"""Every sandbox tool, in the order offered to the model."""

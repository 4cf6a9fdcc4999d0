"""WebSocket /files/watch: file changes under a path, found by polling (no inotify needed).

The client (hopx-ai `files.watch`) sends {"action": "watch", "path": "/workspace"}; agentd then
sends {"type": "change", "path", "event": created|modified|deleted|renamed, "timestamp"} for
every change it sees, comparing a snapshot of the tree (mtime, size, inode) every `interval`
seconds. A rename is a deletion and a creation of the same inode in one interval ("old_path"
says where it was). agentd is single-threaded, so the walk runs on its loop: trees are capped
at MAX_ENTRIES (the client is told once) and the polling slows down when a walk is slow, so a
huge workspace cannot make agentd spin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import time
from datetime import UTC, datetime
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from agentplex.sandbox.agentd.agent import Agent
from agentplex.sandbox.agentd.errors import AgentError

INTERVAL = 0.25
MAX_ENTRIES = 20_000
Entry = tuple[int, int, int, bool]  # mtime_ns, size, inode, is a directory


def snapshot(root: str, limit: int = MAX_ENTRIES) -> tuple[dict[str, Entry], bool]:
    """{real path: entry} for `root` and everything below it (symlinks not followed);
    and whether `limit` cut the walk short."""
    out: dict[str, Entry] = {}
    try:
        st = os.stat(root, follow_symlinks=False)
    except OSError:
        return out, False
    out[root] = (st.st_mtime_ns, st.st_size, st.st_ino, stat.S_ISDIR(st.st_mode))
    stack = [root] if stat.S_ISDIR(st.st_mode) else []
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            for entry in it:
                if len(out) >= limit:
                    return out, True
                try:
                    est = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                is_dir = stat.S_ISDIR(est.st_mode)
                out[entry.path] = (est.st_mtime_ns, est.st_size, est.st_ino, is_dir)
                if is_dir:
                    stack.append(entry.path)
    return out, False


def diff(old: dict[str, Entry], new: dict[str, Entry]) -> list[tuple[str, str, str | None]]:
    """(event, path, old path for renames) between two snapshots, in a stable order."""
    gone = {p: e for p, e in old.items() if p not in new}
    born = {p: e for p, e in new.items() if p not in old}
    by_inode = {e[2]: p for p, e in gone.items()}
    events: list[tuple[str, str, str | None]] = []
    for path in sorted(born):
        was = by_inode.pop(born[path][2], None)
        if was is not None:
            events.append(("renamed", path, was))
            del gone[was]
        else:
            events.append(("created", path, None))
    events += [("deleted", path, None) for path in sorted(gone)]
    for path in sorted(p for p in new if p in old):
        before, after = old[path], new[path]
        # a directory's own mtime changes with its entries, already reported one by one
        if not after[3] and (before[0], before[1]) != (after[0], after[1]):
            events.append(("modified", path, None))
    return events


async def files_watch(ws: WebSocket) -> None:
    await ws.accept()
    agent: Agent = ws.app.state.agent
    expected = 'expected {"action": "watch", "path": ...}'
    try:
        first = await ws.receive()
        if first["type"] == "websocket.disconnect":
            return
        try:
            msg = json.loads(first.get("text") or first.get("bytes") or b"")
        except (ValueError, RecursionError):
            raise AgentError("INVALID_REQUEST", f"not JSON: {expected}", 400) from None
        if not isinstance(msg, dict) or msg.get("action", "watch") != "watch":
            raise AgentError("INVALID_REQUEST", expected, 400)
        raw = msg.get("path")
        root = agent.paths.resolve(str(raw or agent.cfg.workspace))
    except AgentError as exc:
        # 1008 (policy violation): the close itself says the request was refused
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await ws.send_json({"type": "error", "code": exc.code, "error": exc.message})
            await ws.close(code=1008)
        return
    except (WebSocketDisconnect, RuntimeError):
        return
    closed = asyncio.get_running_loop().create_future()

    async def _until_closed() -> None:
        with contextlib.suppress(Exception):
            while True:
                await ws.receive_text()  # nothing more is expected; this notices the close
        closed.set_result(None)

    reader = asyncio.create_task(_until_closed())
    try:
        started = time.perf_counter()
        old, capped = snapshot(root)
        walk = time.perf_counter() - started
        warned = False
        while not closed.done():
            await asyncio.wait({closed}, timeout=max(INTERVAL, 20 * walk))  # <= 5% of agentd
            if closed.done():
                break
            started = time.perf_counter()
            new, capped = snapshot(root)
            walk = time.perf_counter() - started
            if capped and not warned:
                warned = True
                await ws.send_json(
                    {
                        "type": "error",
                        "code": "TOO_MANY_FILES",
                        "error": f"more than {MAX_ENTRIES} entries under {raw or '/workspace'};"
                        " only part of the tree is watched",
                    }
                )
            now = datetime.now(UTC).isoformat()
            for event, path, was in diff(old, new):
                change: dict[str, Any] = {
                    "type": "change",
                    "path": agent.paths.to_client(path),
                    "event": event,
                    "timestamp": now,
                }
                if was is not None:
                    change["old_path"] = agent.paths.to_client(was)
                await ws.send_json(change)
            old = new
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader


routes = [WebSocketRoute("/files/watch", files_watch)]

"""Routes: /files/* (read, write, list, download, upload, exists, remove, mkdir)."""

from __future__ import annotations

import base64
import errno
import os
import shutil
import stat
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from agentplex.sandbox.agentd.agent import Agent
from agentplex.sandbox.agentd.errors import (
    AgentError,
    invalid,
    not_allowed,
    not_found,
    permission_denied,
)
from agentplex.sandbox.agentd.execute import json_body

T = TypeVar("T")
MAX_READ = 50 * 1024 * 1024


def _agent(request: Request) -> Agent:
    agent: Agent = request.app.state.agent
    return agent


def not_regular(path: str, st: os.stat_result | None = None) -> AgentError:
    kind = "not a regular file"
    if st is not None:
        kind = {
            stat.S_IFIFO: "a FIFO (named pipe)",
            stat.S_IFSOCK: "a socket",
            stat.S_IFCHR: "a character device",
            stat.S_IFBLK: "a block device",
        }.get(stat.S_IFMT(st.st_mode), kind)
    return AgentError(
        "INVALID_PATH",
        f"{path} is {kind}: the files routes read and write regular files only",
        400,
        {"path": path},
    )


def open_regular(path: str, real: str, flags: int, mode: int = 0o666) -> int:
    """os.open() that never blocks agentd (which serves every request on one thread): a FIFO
    or socket is opened non-blocking, then refused; a regular file's fd is made blocking again
    (disk I/O does not wait on anyone)."""
    fd = os.open(real, flags | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, mode)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise not_regular(path, st)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fs(path: str, fn: Callable[[], T]) -> T:
    """Run a filesystem operation, turning OS errors into Hopx errors."""
    try:
        return fn()
    except RecursionError:  # os.makedirs recurses once per missing directory
        raise AgentError(
            "INVALID_PATH", f"path too deep: {path[:200]}...", 400, {"path": path[:200]}
        ) from None
    except FileExistsError:
        raise AgentError(
            "FILE_ALREADY_EXISTS",
            f"{path} (or one of its parent directories) exists and is not a directory",
            409,
            {"path": path},
        ) from None
    except FileNotFoundError:
        raise not_found(path) from None
    except NotADirectoryError:
        raise invalid(f"not a directory: {path}", path=path) from None
    except IsADirectoryError:
        raise invalid(f"is a directory: {path}", path=path) from None
    except PermissionError:
        raise permission_denied(path) from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise AgentError(
                "INVALID_PATH",
                "file name too long: a name is at most 255 bytes and a path 4095",
                400,
                {"path": path[:200]},
            ) from None
        if exc.errno == errno.ENXIO:  # a FIFO without reader, or a socket, opened to write
            raise not_regular(path) from None
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise AgentError(
                "DISK_QUOTA_EXCEEDED",
                f"the sandbox's disk is full ({exc.strerror}); remove files and retry",
                507,
                {"path": path},
            ) from None
        if exc.errno == errno.EROFS:
            raise not_allowed(path) from None
        raise AgentError("FILE_OPERATION_FAILED", f"{path}: {exc.strerror}", 500) from None


def _path(request: Request, body: dict[str, Any] | None = None) -> tuple[str, str]:
    raw = (body or {}).get("path") if body is not None else request.query_params.get("path")
    if raw is not None and not isinstance(raw, str):
        raise invalid("'path' must be a string")
    return raw or "", _agent(request).paths.resolve(raw)


def _shown(name: str) -> str:
    """A file name as JSON can carry it: bytes that are not UTF-8 (which Python keeps as lone
    surrogates) become U+FFFD, as `ls` shows them as '?'."""
    try:
        name.encode()
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _info(agent: Agent, real: str, st: os.stat_result) -> dict[str, Any]:
    mtime = datetime.fromtimestamp(st.st_mtime, tz=UTC).isoformat()
    return {
        "name": _shown(os.path.basename(real)),
        "path": _shown(agent.paths.to_client(real)),
        "size": st.st_size,
        "is_directory": stat.S_ISDIR(st.st_mode),
        "is_dir": stat.S_ISDIR(st.st_mode),
        "permissions": stat.filemode(st.st_mode),
        "mode": oct(stat.S_IMODE(st.st_mode)),
        "modified_time": mtime,
    }


async def read_file(request: Request) -> JSONResponse:
    path, real = _path(request)

    def _read() -> bytes:
        with open(open_regular(path, real, os.O_RDONLY), "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_READ:
                raise invalid("file too large for /files/read; use /files/download", path=path)
            return f.read()

    data = _fs(path, _read)
    try:
        return JSONResponse({"content": data.decode(), "path": path, "size": len(data)})
    except UnicodeDecodeError:
        content = base64.b64encode(data).decode()
        return JSONResponse(
            {"content": content, "encoding": "base64", "path": path, "size": len(data)}
        )


async def write_file(request: Request) -> JSONResponse:
    body = await json_body(request)
    path, real = _path(request, body)
    content = body.get("content", "")
    if not isinstance(content, str):
        raise invalid("'content' must be a string (use encoding=base64 for bytes)")
    try:
        data = base64.b64decode(content) if body.get("encoding") == "base64" else content.encode()
    except ValueError:  # binascii.Error: not base64
        raise invalid("'content' is not valid base64 (encoding=base64)") from None
    _agent(request).check_quota()
    mode = body.get("mode")

    def _write() -> None:
        os.makedirs(os.path.dirname(real), exist_ok=True)
        with open(open_regular(path, real, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:
            f.write(data)
        if mode:
            os.chmod(real, int(str(mode), 8))

    try:
        _fs(path, _write)
    except ValueError:
        raise invalid("'mode' must be an octal string such as '0644'") from None
    return JSONResponse({"success": True, "path": path, "size": len(data)})


async def list_files(request: Request) -> JSONResponse:
    agent = _agent(request)
    raw = request.query_params.get("path") or agent.cfg.workspace
    real = agent.paths.resolve(raw)

    def _list() -> list[dict[str, Any]]:
        out = []
        with os.scandir(real) as it:
            for entry in it:
                try:
                    out.append(_info(agent, entry.path, entry.stat(follow_symlinks=False)))
                except FileNotFoundError:
                    continue
        return sorted(out, key=lambda f: f["name"])

    files = _fs(raw, _list)
    return JSONResponse({"files": files, "path": raw, "count": len(files)})


async def download(request: Request) -> StreamingResponse:
    path, real = _path(request)
    f = _fs(path, lambda: open(open_regular(path, real, os.O_RDONLY), "rb"))  # noqa: SIM115
    size = os.fstat(f.fileno()).st_size

    async def _chunks() -> AsyncIterator[bytes]:
        with f:
            while chunk := f.read(256 * 1024):
                yield chunk

    name = os.path.basename(real)
    return StreamingResponse(
        _chunks(),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{name}"',
        },
    )


async def upload(request: Request) -> JSONResponse:
    agent = _agent(request)
    try:
        form = await request.form()
    except Exception as exc:  # malformed multipart bodies raise parser-specific errors
        raise invalid(f"expected a multipart/form-data body: {exc}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise invalid("multipart field 'file' is required")
    raw = form.get("path")
    raw = raw if isinstance(raw, str) and raw else (upload.filename or "upload.bin")
    real = agent.paths.resolve(raw)
    if raw.endswith("/") or os.path.isdir(real):  # noqa: ASYNC240
        real = os.path.join(real, os.path.basename(upload.filename or "upload.bin"))
        agent.paths.resolve(agent.paths.to_client(real))
    data = await upload.read()
    agent.check_quota()

    def _write() -> None:
        os.makedirs(os.path.dirname(real), exist_ok=True)
        with open(open_regular(raw, real, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:
            f.write(data)

    _fs(raw, _write)
    return JSONResponse({"success": True, "path": agent.paths.to_client(real), "size": len(data)})


async def exists(request: Request) -> JSONResponse:
    path, real = _path(request)
    found = os.path.lexists(real)  # noqa: ASYNC240
    return JSONResponse(
        {"exists": found, "path": path, "is_directory": found and os.path.isdir(real)}  # noqa: ASYNC240
    )


async def remove(request: Request) -> JSONResponse:
    agent = _agent(request)
    path, real = _path(request)
    if os.path.realpath(real) in {os.path.realpath(r) for _, r in agent.paths.roots}:  # noqa: ASYNC240
        raise invalid(f"refusing to remove the root directory {path}", path=path)

    def _remove() -> None:
        if os.path.isdir(real) and not os.path.islink(real):
            shutil.rmtree(real)
        else:
            os.unlink(real)

    _fs(path, _remove)
    return JSONResponse({"success": True, "path": path})


async def mkdir(request: Request) -> JSONResponse:
    body = await json_body(request)
    path, real = _path(request, body)
    _fs(path, lambda: os.makedirs(real, exist_ok=True))
    return JSONResponse({"success": True, "path": path})


routes = [
    Route("/files/read", read_file, methods=["GET"]),
    Route("/files/write", write_file, methods=["POST", "PUT"]),
    Route("/files/list", list_files, methods=["GET"]),
    Route("/files/download", download, methods=["GET"]),
    Route("/files/upload", upload, methods=["POST"]),
    Route("/files/exists", exists, methods=["GET"]),
    Route("/files/remove", remove, methods=["DELETE", "POST"]),
    Route("/files/mkdir", mkdir, methods=["POST"]),
]

"""The yardstick for bench/http.py: a bare Starlette app with the two routes it measures,
served by uvicorn with the same options `agentplex serve` uses.

Run on its own: ``python bench/_bare_starlette.py --port 8099``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder heads sys.path, and bench/http.py would shadow the
# standard library's `http` package for everything imported below.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import json
import os
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ENTRIES_ENV = "BENCH_BARE_ENTRIES"


def _load_entries() -> list[dict[str, Any]]:
    # bench/http.py hands over the entries agentplex serves, so both bodies are alike in size.
    if path := os.environ.get(ENTRIES_ENV):
        entries: list[dict[str, Any]] = json.loads(Path(path).read_text())
        return entries
    return [
        {
            "id": i,
            "timestamp": "2026-01-01T00:00:00.000Z",
            "level": "warn",
            "module": "uvicorn.error",
            "message": "Invalid HTTP request received.",
        }
        for i in range(1, 21)
    ]


_ENTRIES = _load_entries()


async def live(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "alive", "success": True})


async def logs(request: Request) -> JSONResponse:
    limit = int(request.query_params.get("limit", "100"))
    entries = [dict(entry) for entry in _ENTRIES[-limit:]] if limit else []
    return JSONResponse({"entries": entries, "total": len(_ENTRIES)})


app = Starlette(routes=[Route("/health/live", live), Route("/api/v1/logs", logs)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    # Mirrors agentplex.cli.serve: one process, loop/http "auto", no access log.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        lifespan="on",
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()

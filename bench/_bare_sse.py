"""The yardstick for bench/sessions.py's SSE fan-out: a bare Starlette SSE endpoint.

    python bench/_bare_sse.py --port 8099 --frames frames.json

``GET /event`` subscribes (a `StreamingResponse` over an `asyncio.Queue`, one yield per event,
as a hand-written Starlette SSE endpoint does); ``POST /publish`` puts every frame of
``--frames`` (a JSON list of strings, each a whole SSE frame as agentplex sent it, so number and
size are the same) into every subscriber's queue and answers how many subscribers there were.
Served by uvicorn with the options `agentplex serve` uses.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder heads sys.path, and bench/http.py would shadow the
# standard library's `http` package for everything imported below.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import asyncio
import json
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

_frames: list[bytes] = []
_subscribers: set[asyncio.Queue[bytes]] = set()


async def event(_request: Request) -> StreamingResponse:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    _subscribers.add(queue)

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield b'data: {"type":"server.connected","properties":{}}\n\n'
            while True:
                yield await queue.get()
        finally:
            _subscribers.discard(queue)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)


async def publish(_request: Request) -> JSONResponse:
    for frame in _frames:
        for queue in _subscribers:
            queue.put_nowait(frame)
    return JSONResponse({"subscribers": len(_subscribers), "frames": len(_frames)})


app = Starlette(routes=[Route("/event", event), Route("/publish", publish, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--frames", type=Path, required=True)
    args = parser.parse_args()
    _frames.extend(frame.encode() for frame in json.loads(args.frames.read_text()))
    # Mirrors agentplex.cli.serve: one process, loop/http "auto", no access log.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        lifespan="on",
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()

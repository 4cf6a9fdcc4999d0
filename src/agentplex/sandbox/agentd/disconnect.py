"""Stop an execution when the client that asked for it goes away.

Nobody would read the answer, and a Python cell left running would hold the kernel (one cell
at a time) for its whole run. Cancelling the execution's task stops it the way a timeout does:
the kernel gets an interrupt (its variables survive), a process group is killed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from starlette.requests import Request

from agentplex.sandbox.agentd.errors import AgentError

T = TypeVar("T")


def client_gone() -> AgentError:
    """What a request whose client left gets (no one reads it: it only ends the handler)."""
    return AgentError(
        "CLIENT_CLOSED_REQUEST", "the client went away; its execution was stopped", 499
    )


async def run_while(work: Coroutine[Any, Any, T], gone: Awaitable[object]) -> T:
    """Await `work`; if `gone` finishes first, cancel it, wait until it has stopped, and raise
    `client_gone()`."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(gone)
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task.done():
        return task.result()
    task.cancel()
    # the next execution must find the kernel free: wait for the interrupt to land
    await asyncio.gather(task, return_exceptions=True)
    raise client_gone()


async def http_disconnect(request: Request) -> None:
    """Return once the HTTP client has closed its connection. Only once the body was read:
    from then on the server's receive() yields nothing but the disconnect."""
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a failing receive() says nothing about the client: stop watching
        await asyncio.Event().wait()


async def while_connected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await `work`, stopping it if the HTTP client disconnects first."""
    return await run_while(work, http_disconnect(request))

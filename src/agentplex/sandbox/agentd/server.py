"""Run agentd on its unix socket (inside the sandbox) and tell the zygote when it listens."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from agentplex.sandbox.agentd.config import AgentConfig


def _load_env(cfg: AgentConfig) -> None:
    """Environment changed through /env before a stop comes back on start."""
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(cfg.state_dir, "env.json")) as f:
            saved = json.load(f)
        if isinstance(saved, dict):
            cfg.env_vars = {str(k): str(v) for k, v in saved.items()}


def serve(cfg: AgentConfig, notify_fd: int | None = None) -> None:
    """Serve until killed; write b"ready\\n" to `notify_fd` once the socket accepts."""
    import asyncio

    import uvicorn

    from agentplex.sandbox.agentd import identity
    from agentplex.sandbox.agentd.app import build_app

    _load_env(cfg)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(cfg.socket_path)
    app = build_app(cfg)
    # The plain asyncio loop, not uvloop: its subprocesses start with vfork (~1.5 ms here)
    # where libuv forks the whole pre-imported process (~18 ms).
    config = uvicorn.Config(
        app,
        uds=cfg.socket_path,
        loop="none",
        http="httptools",
        ws="websockets-sansio",
        lifespan="off",
        log_config=None,  # configured once in the zygote (see zygote.preload)
        log_level="warning",
        access_log=False,
        timeout_keep_alive=300,
        ws_ping_interval=None,
        server_header=False,
        date_header=False,
    )

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            identity.as_user()  # the socket is bound: from now on, files are the code's
            if notify_fd is not None:
                os.write(notify_fd, b"ready\n")
                os.close(notify_fd)
            if cfg.eager_kernel:
                agent = app.state.agent
                asyncio.get_running_loop().call_soon(agent.kernel.prestart)

        async def main_loop(self) -> None:
            # uvicorn's loop wakes every 100 ms; an idle sandbox should not wake at all.
            await asyncio.Event().wait()

    server = _Server(config)
    asyncio.run(_main(server))


async def _main(server: Any) -> None:
    import asyncio
    import warnings

    with warnings.catch_warnings():  # a pidfd watcher reaps children without a thread each
        warnings.simplefilter("ignore", DeprecationWarning)
        if hasattr(asyncio, "PidfdChildWatcher") and hasattr(os, "pidfd_open"):
            watcher = asyncio.PidfdChildWatcher()
            watcher.attach_loop(asyncio.get_running_loop())
            asyncio.set_child_watcher(watcher)
    await server.serve()

"""The OpenCode / HotPlex surface: OpenCode 1.x's session protocol (``/session``, ``/event``,
``/global/event``, ``/config``, ``/provider``, ``/agent``, ``/file``) and HotPlex's WebSocket
``/ws/v1/agent``, over the core `SessionService`. Reference: ``docs/opencode-protocol.md``."""

from __future__ import annotations

from agentplex.api.common.routing import RouteTable
from agentplex.api.opencode import events, messages, server_info, sessions, websocket

routes = RouteTable(tags=["opencode"])
routes.include(sessions.routes)
routes.include(messages.routes)
routes.include(events.routes)
routes.include(server_info.routes)
routes.include(websocket.routes)

"""OpenCode's server information: ``/config``, ``/config/providers``, ``/provider``,
``/agent``, and the session workspace's files (``/file``, ``/file/content``).

Providers are listed without their ``options``' secrets: model keys stay in the server (the
real OpenCode server returns them verbatim).
"""

from __future__ import annotations

from typing import Any

from agentplex.api.common.routing import Call, RouteTable
from agentplex.api.opencode.bodies import FileQuery, Located
from agentplex.api.opencode.caller import env_of
from agentplex.core.ports import ModelInfo, ModelProvider
from agentplex.core.sessions import ProviderListing
from agentplex.errors import NotFound, SessionNotFound

routes = RouteTable(tags=["opencode"])

_MEDIA = ("text", "audio", "image", "video", "pdf")


def model_view(provider_id: str, model: ModelInfo) -> dict[str, Any]:
    """An OpenCode Model entry."""
    text_only = {kind: kind == "text" for kind in _MEDIA}
    return {
        "id": model.id,
        "providerID": provider_id,
        "api": {"id": model.id, "url": "", "npm": ""},
        "name": model.name,
        "family": "",
        "capabilities": {
            "temperature": True,
            "reasoning": model.reasoning,
            "attachment": False,
            "toolcall": model.tool_call,
            "input": dict(text_only),
            "output": dict(text_only),
            "interleaved": False,
        },
        "cost": {
            "input": model.cost_input,
            "output": model.cost_output,
            "cache": {"read": 0, "write": 0},
        },
        "limit": {"context": model.context, "output": model.output},
        "status": "active",
        "options": {},
        "headers": {},
        "release_date": "",
        "variants": {},
    }


def provider_view(provider: ModelProvider) -> dict[str, Any]:
    """An OpenCode Provider entry; ``options`` is always empty (no keys, no URLs)."""
    env = list(getattr(provider, "env", ()) or ())
    return {
        "id": provider.id,
        "name": provider.name,
        "source": "env" if env else "config",
        "env": env,
        "options": {},
        "models": {m.id: model_view(provider.id, m) for m in provider.models()},
    }


def _listing(call: Call) -> ProviderListing:
    listing: ProviderListing = call.services.sessions.providers()
    return listing


@routes.get(
    "/config", summary="The server's configuration, as OpenCode's opencode.json", query=Located
)
async def config(call: Call) -> dict[str, Any]:
    listing = _listing(call)
    default = listing.default_model
    model = f"{default.provider_id}/{default.model_id}" if default else None
    body: dict[str, Any] = {
        "$schema": "https://opencode.ai/config.json",
        "command": {},
        "plugin": [],
        "share": "disabled",
        "autoupdate": False,
        "username": "agentplex",
        "mode": {},
        "agent": {},
        "provider": {
            p.id: {
                "name": p.name,
                "models": {m.id: {"name": m.name, "tool_call": m.tool_call} for m in p.models()},
            }
            for p in listing.providers
        },
        "permission": dict(call.services.settings.agent.permissions),
    }
    if model:
        body["model"] = model
        body["small_model"] = model
    return body


@routes.get(
    "/config/providers",
    summary="Configured model providers and each one's default model (never their keys)",
    query=Located,
)
async def config_providers(call: Call) -> dict[str, Any]:
    listing = _listing(call)
    return {
        "providers": [provider_view(p) for p in listing.providers],
        "default": dict(listing.default),
    }


@routes.get("/provider", summary="Model providers: all, connected, and the defaults", query=Located)
async def providers(call: Call) -> dict[str, Any]:
    listing = _listing(call)
    return {
        "all": [provider_view(p) for p in listing.providers],
        "default": dict(listing.default),
        "connected": [p.id for p in listing.providers],
    }


@routes.get("/agent", summary="The agents sessions can use", query=Located)
async def agents(call: Call) -> list[dict[str, Any]]:
    settings = call.services.settings.agent
    rules = dict(settings.permissions)
    default = rules.pop("*", "allow")
    permission = [{"permission": "*", "pattern": "*", "action": default}] + [
        {"permission": tool, "pattern": "*", "action": action} for tool, action in rules.items()
    ]
    return [
        {
            "name": "build",
            "description": "The default agent. Runs tools in the session's sandbox as the "
            "configured permissions allow.",
            "mode": "primary",
            "native": True,
            "permission": permission,
            "options": {},
            "prompt": settings.system_prompt,
        }
    ]


@routes.get(
    "/file",
    summary="List a directory of the session's workspace (query path, sessionID)",
    query=FileQuery,
)
async def list_files(call: Call) -> list[dict[str, Any]]:
    q: FileQuery = call.query
    entries = await call.services.sessions.list_files(
        env_of(call.principal, call.services), q.sessionID, q.path
    )
    return [
        {
            "name": e.name,
            "path": e.path,
            "absolute": e.absolute,
            "type": e.type,
            "ignored": False,
        }
        for e in entries
    ]


@routes.get(
    "/file/content",
    summary="Read a file of the session's workspace: {type: text, content}",
    query=FileQuery,
)
async def file_content(call: Call) -> dict[str, Any]:
    q: FileQuery = call.query
    try:
        content = await call.services.sessions.read_file(
            env_of(call.principal, call.services), q.sessionID, q.path
        )
    except SessionNotFound:
        raise
    except NotFound:
        content = ""  # OpenCode answers a missing file with empty content
    return {"type": "text", "content": content}

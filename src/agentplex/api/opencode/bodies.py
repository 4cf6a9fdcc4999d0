"""Request bodies and queries of the OpenCode/HotPlex surface, and the prompt they carry.

Every model accepts (and ignores) keys it does not know, as OpenCode does; the ``directory``
and ``workspace`` query parameters OpenCode's SDKs send are accepted everywhere and ignored
(a session's directory is its sandbox's workspace).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from agentplex.core.session_model import ModelRef
from agentplex.core.sessions import Prompt, PromptPart
from agentplex.errors import BadRequest


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Located(_Lenient):
    directory: str | None = Field(None, description="Ignored (OpenCode SDKs send it)")
    workspace: str | None = Field(None, description="Ignored (OpenCode SDKs send it)")


class SessionModel(_Lenient):
    id: StrictStr | None = None
    modelID: StrictStr | None = None
    providerID: StrictStr


class CreateSession(_Lenient):
    parentID: StrictStr | None = Field(None, description="Make it a child of this session")
    title: StrictStr | None = Field(None, description="Title (default: New session - <time>)")
    agent: StrictStr | None = None
    model: SessionModel | None = Field(None, description="{providerID, id}: the session's model")
    metadata: dict[str, Any] | None = None
    permission: list[dict[str, Any]] | dict[str, Any] | None = Field(
        None, description="[{permission, pattern, action}] (allow, ask, deny)"
    )


class UpdateSession(_Lenient):
    title: StrictStr | None = Field(None, description="New title")
    metadata: dict[str, Any] | None = Field(None, description="Replaces the metadata")


class ListSessions(Located):
    limit: int | None = Field(None, ge=1, le=10000, description="At most this many")
    start: int | None = Field(None, ge=0, le=2**31, description="Skip this many")
    search: str | None = Field(None, description="Only titles containing this")
    roots: bool = Field(False, description="Only sessions without a parent")


class ListMessages(Located):
    limit: int | None = Field(None, ge=1, le=2**31, description="Only the last N messages")


class PromptModel(_Lenient):
    providerID: StrictStr
    modelID: StrictStr


class PromptBody(_Lenient):
    """OpenCode's ``{parts, model, system, agent, tools, messageID, noReply}``, HotPlex's
    ``{prompt, system_prompt}``, or the pre-1.x Python SDK's top-level ``modelID`` and
    ``providerID``."""

    parts: list[dict[str, Any]] | None = Field(
        None, description="[{type: text, text} | {type: file, mime, url, filename?}]"
    )
    model: PromptModel | None = Field(None, description="{providerID, modelID} for this turn")
    modelID: StrictStr | None = Field(None, description="Old Python SDK")
    providerID: StrictStr | None = Field(None, description="Old Python SDK")
    system: StrictStr | None = Field(None, description="Added to the agent's system prompt")
    agent: StrictStr | None = None
    tools: dict[str, StrictBool] | None = Field(None, description="{tool: false} switches off")
    messageID: StrictStr | None = None
    noReply: StrictBool = False
    prompt: StrictStr | None = Field(None, description="HotPlex: the prompt text")
    system_prompt: StrictStr | None = Field(None, description="HotPlex: the system prompt")


class ShellBody(_Lenient):
    command: StrictStr = Field(..., description="Shell command run in the session's sandbox")
    agent: StrictStr = "build"


class ForkBody(_Lenient):
    messageID: StrictStr | None = Field(None, description="Copy the messages up to this one")


class PermissionReply(_Lenient):
    response: Literal["once", "always", "reject"]


class FileQuery(Located):
    path: str = Field(".", description="Path in the session's workspace")
    sessionID: str | None = Field(None, description="Whose workspace (default: the newest)")


def to_prompt(body: PromptBody) -> Prompt:
    """The core Prompt of a body; BadRequest for an empty prompt or an unknown part type."""
    parts: list[PromptPart] = []
    if body.parts is not None:
        for index, raw in enumerate(body.parts):
            parts.append(_part(raw, index))
    elif body.prompt is not None:
        parts.append(PromptPart("text", text=body.prompt))
    else:
        raise BadRequest(
            "Missing key at [\"parts\"]: send {parts: [{type: 'text', text}]} "
            "(or HotPlex's {prompt})"
        )
    if not any((p.type == "text" and p.text.strip()) or p.type == "file" for p in parts):
        raise BadRequest("The prompt is empty: send at least one non-empty text or file part")
    model = None
    if body.model is not None:
        model = ModelRef(body.model.providerID, body.model.modelID)
    elif body.modelID and body.providerID:
        model = ModelRef(body.providerID, body.modelID)
    system = body.system if body.system is not None else body.system_prompt
    return Prompt(
        parts=parts,
        model=model,
        system=system or None,
        agent=body.agent or "build",
        tools=dict(body.tools or {}),
        no_reply=body.noReply,
        message_id=body.messageID,
    )


def _part(raw: dict[str, Any], index: int) -> PromptPart:
    kind = raw.get("type")
    where = f'at ["parts", {index}]'
    if kind == "text":
        text = raw.get("text")
        if not isinstance(text, str):
            raise BadRequest(f"Expected a string text {where}")
        return PromptPart("text", text=text, synthetic=raw.get("synthetic") is True)
    if kind == "file":
        url, mime = raw.get("url"), raw.get("mime")
        if not isinstance(url, str) or not isinstance(mime, str):
            raise BadRequest(f"A file part needs string url and mime {where}")
        filename = raw.get("filename")
        return PromptPart(
            "file", mime=mime, url=url, filename=filename if isinstance(filename, str) else None
        )
    raise BadRequest(
        f"Unknown part type {kind!r} {where}: this server takes 'text' and 'file' parts"
    )

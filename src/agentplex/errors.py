"""Domain exceptions. Each surface maps them to its own envelope in one place
(``agentplex.api.common.errors``); an exception's docstring is its default message."""

from __future__ import annotations

from typing import Any


class AgentplexError(Exception):
    """Something went wrong."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.details = details
        super().__init__(self.message)


class BadRequest(AgentplexError):
    """The request is malformed or has invalid parameters."""

    status = 400
    code = "bad_request"


class Unauthorized(AgentplexError):
    """Missing or invalid API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`."""

    status = 401
    code = "unauthorized"


class Forbidden(AgentplexError):
    """This key may not do that."""

    status = 403
    code = "forbidden"


class NotFound(AgentplexError):
    """Resource not found."""

    status = 404
    code = "not_found"


class MethodNotAllowed(AgentplexError):
    """This route does not accept that HTTP method."""

    status = 405
    code = "method_not_allowed"


class Conflict(AgentplexError):
    """The resource is in a state that does not allow this."""

    status = 409
    code = "conflict"


class ResourceLimit(Forbidden):
    """An environment limit is reached (its details give ``limit`` and ``current``)."""

    code = "resource_limit"

    def __init__(self, message: str, *, limit: int, current: int) -> None:
        # the Hopx SDKs read a 403 whose message says "limit" as ResourceLimitError, with these
        # details
        super().__init__(message, details={"limit": limit, "current": current})


class PayloadTooLarge(AgentplexError):
    """The request body is larger than the server accepts."""

    status = 413
    code = "payload_too_large"


class RateLimited(AgentplexError):
    """Too many requests; retry after the indicated delay."""

    status = 429
    code = "rate_limited"

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(
            message or f"Rate limit exceeded; retry in {retry_after} s.",
            details={"retry_after_seconds": retry_after},
        )


class ServiceUnavailable(AgentplexError):
    """The server is not ready to serve this request."""

    status = 503
    code = "service_unavailable"


# -- sandboxes and templates -------------------------------------------------------------------


class SandboxNotFound(NotFound):
    """Sandbox not found."""

    code = "sandbox_not_found"


class SandboxStateConflict(Conflict):
    """The sandbox is not in a state that allows this."""

    code = "invalid_state"


class SandboxUnavailable(ServiceUnavailable):
    """Sandboxes are unavailable on this server."""

    code = "sandbox_unavailable"


class SandboxAnswerTooLarge(AgentplexError):
    """A sandbox's answer is over what the server relays in one piece (it holds it whole)."""

    status = 502
    code = "sandbox_answer_too_large"


class TemplateNotFound(NotFound):
    """Template not found."""

    code = "template_not_found"


class TemplateNotReady(Conflict):
    """The template is not built yet (or its build failed)."""

    code = "template_not_ready"


class SessionNotFound(NotFound):
    """Session not found."""

    code = "session_not_found"


class MessageNotFound(NotFound):
    """Message not found."""

    code = "message_not_found"


class PermissionNotFound(NotFound):
    """Permission request not found (it was answered already, or its turn ended)."""

    code = "permission_not_found"


class SessionTerminated(Conflict):
    """The session is terminated: create a new one."""

    code = "session_terminated"


class ModelNotConfigured(AgentplexError):
    """No model is configured. Set OPENAI_API_KEY (and OPENAI_BASE_URL for a compatible
    server), or ANTHROPIC_API_KEY, or install agentplex[local] for the embedded model; choose
    one with AGENTPLEX_MODEL=provider:model."""

    status = 400
    code = "model_not_configured"


class ModelProviderError(AgentplexError):
    """The model provider failed."""

    status = 502
    code = "provider_error"

    def __init__(
        self,
        message: str | None = None,
        *,
        retryable: bool = False,
        status_code: int | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code
        self.body = body


# -- Hot projects and their context variables (secrets) -----------------------------------------


class ProjectNotFound(NotFound):
    """Project not found"""  # Hot's page spells it without a stop


class ProjectExists(Conflict):
    """A project with this name exists already in this environment."""


class ContextVariableNotFound(NotFound):
    """Context variable not found"""  # Hot's page spells it without a stop


class ContextVariableExists(Conflict):
    """A context variable with this key exists already in this project."""


class MasterKeyError(AgentplexError):
    """The master key that encrypts context variables is unusable (the server refuses to
    start): the message says which key and how to fix it."""

    code = "master_key_invalid"


class SecretUnreadable(AgentplexError):
    """A stored context variable cannot be decrypted: the master key is not the one it was
    written with (or the stored row was altered)."""

    code = "secret_unreadable"


# -- builds and the blob store --------------------------------------------------------------------


class BuildNotFound(NotFound):
    """Build not found."""


class BlobNotFound(ServiceUnavailable):
    """A stored file is missing from the blob store. With several API replicas, set
    server.blob_store = "database" so that every replica reads the same store."""


# -- events and runs -------------------------------------------------------------------------------


class EventNotFound(NotFound):
    """Event not found"""  # Hot's page spells its not-found messages without a stop


class RunNotFound(NotFound):
    """Run not found"""


class StreamNotFound(NotFound):
    """Stream not found"""

"""Exceptions of the sandbox layer; each docstring is its default message."""

from __future__ import annotations


class SandboxError(Exception):
    """The sandbox layer failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class IsolationUnavailable(SandboxError):
    """Sandbox isolation (bubblewrap + namespaces) is unavailable and unisolated mode is off.

    Install bubblewrap and allow user namespaces, or explicitly allow unisolated sandboxes.
    """


class TemplateNotFound(SandboxError):
    """No such template."""


class SandboxNotFound(SandboxError):
    """No such sandbox."""


class InvalidTransition(SandboxError):
    """The sandbox is not in a state that allows this action."""


class SandboxNotRunning(SandboxError):
    """The sandbox is not running: start or resume it first."""


class SandboxStartFailed(SandboxError):
    """The sandbox could not be started."""

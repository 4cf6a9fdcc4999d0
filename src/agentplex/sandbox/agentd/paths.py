"""Path confinement: client paths are resolved against /workspace and must stay in it or /tmp."""

from __future__ import annotations

import os
import posixpath

from agentplex.sandbox.agentd.errors import invalid, not_allowed


class PathMapper:
    """Maps client paths (what the sandbox calls /workspace, /tmp) to real paths and back."""

    def __init__(self, workspace: str, workspace_real: str, tmp_real: str) -> None:
        self.roots = [(workspace, workspace_real), ("/tmp", tmp_real)]  # noqa: S108
        self.workspace = workspace

    def resolve(self, path: str | None) -> str:
        """The real path for a client path; PATH_NOT_ALLOWED if it leaves the sandbox's areas.

        Symlinks are followed before the check, so a link pointing outside is refused too.
        """
        if not path:
            raise invalid("a 'path' is required")
        if "\x00" in path:
            raise invalid("path contains a NUL byte", path=path)
        virtual = posixpath.normpath(posixpath.join(self.workspace, path))
        for vroot, rroot in self.roots:
            if virtual == vroot or virtual.startswith(vroot + "/"):
                real = rroot + virtual[len(vroot) :]
                resolved = os.path.realpath(real)
                real_root = os.path.realpath(rroot)
                if resolved == real_root or resolved.startswith(real_root + "/"):
                    return real
                raise not_allowed(path)
        raise not_allowed(path)

    def to_client(self, real: str) -> str:
        """The client-visible path of a real path under one of the roots."""
        for vroot, rroot in self.roots:
            if real == rroot or real.startswith(rroot + "/"):
                return vroot + real[len(rroot) :]
        return real

"""The bubblewrap command line of a sandbox.

Root is a fresh tmpfs, remounted read-only at the end, holding read-only binds of the host's
top-level directories (so tools and the Python environment are there), a private /tmp (size
limited tmpfs), /dev and /proc of the sandbox, the sandbox's workspace at /workspace and its
runtime directory (the agentd socket) at /run/agentd. The server's data directory and runtime
directory are covered by empty tmpfs mounts, so no sandbox sees another one or the server's keys.
"""

from __future__ import annotations

import os
from pathlib import Path

from agentplex.sandbox.templates import LAYER_MOUNT

SANDBOX_UID = 1000  # the uid processes see inside the sandbox
# Placeholders the zygote fills in per sandbox. The workspace is reached through a bind onto
# `<runtime>/ws` that the zygote makes as root in a private mount namespace, because the
# sandbox's uid may not be able to walk the server's data directory (and must not need to).
READY_FD = "@READY_FD@"
RUNTIME_DIR = "@RUNTIME@"
_SKIP_TOP = {"proc", "dev", "tmp", "sys", "run", "workspace", "lost+found"}


def bwrap_command(
    bwrap: str,
    *,
    hidden: list[Path],
    internet: bool,
    tmp_size_mb: int = 256,
    layer: str | None = None,
    layer_writable: bool = False,
) -> list[str]:
    """Arguments that start the sandbox; the payload writes a byte to READY_FD once set up."""
    args = [bwrap, "--unshare-all"]
    if internet:
        args.append("--share-net")
    args += [
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--hostname",
        "sandbox",
    ]
    for entry in sorted(os.listdir("/")):
        path = f"/{entry}"
        if entry in _SKIP_TOP:
            continue
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path) and _reachable(Path(path)):
            args += ["--ro-bind", path, path]
    # The Python that runs agentd may live under a private top-level directory such as
    # /root/.pyenv. The zygote shows bwrap a view of that directory holding only those trees
    # (see `exposed_trees`), which bwrap then binds like any other.
    for top in exposed_trees():
        args += ["--ro-bind", top, top]
    for secret in hidden:
        # /tmp and /run are fresh inside anyway; a path the sandbox uid can't reach needs no mask
        if secret.exists() and secret.parts[1] not in _SKIP_TOP and _reachable(secret):
            args += ["--tmpfs", str(secret)]
    args += [
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--size",
        str(tmp_size_mb * 1024 * 1024),
        "--tmpfs",
        "/tmp",  # noqa: S108
        # a Python (or this code) installed under /tmp, e.g. a checkout's .venv, is shown
        # read-only inside the otherwise fresh /tmp
        *_tmp_binds(),
        "--tmpfs",
        "/run",
        # the zygote binds the template's layer at <runtime>/layer (like the workspace)
        *(
            [("--bind" if layer_writable else "--ro-bind"), f"{RUNTIME_DIR}/layer", LAYER_MOUNT]
            if layer
            else []
        ),
        "--bind",
        RUNTIME_DIR,
        "/run/agentd",
        "--bind",
        f"{RUNTIME_DIR}/ws",
        "/workspace",
        "--remount-ro",
        "/",
        "--chdir",
        "/workspace",
        "--",
        "/bin/sh",
        "-c",
        f"printf r >&{READY_FD}; exec sleep infinity",
    ]
    return args


def _tmp_binds() -> list[str]:
    """Read-only binds of the Python trees under /tmp. bwrap would create their parents mode
    0700, closing them to the code's uid: create each parent 0755 first."""
    args: list[str] = []
    made: set[str] = set()
    for tree in tmp_trees():
        for parent in reversed(Path(tree).parents[:-2]):  # below /tmp, above the tree
            if str(parent) not in made:
                made.add(str(parent))
                args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", tree, tree]
    return args


def _reachable(path: Path) -> bool:
    """Whether an unprivileged user could walk down to `path` (every ancestor o+x)."""
    for parent in [*reversed(path.parents), path]:
        try:
            if not os.stat(parent).st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def _python_trees() -> set[Path]:
    import sys

    import agentplex

    trees = {Path(sys.base_prefix), Path(sys.prefix), Path(agentplex.__file__).parents[1]}
    trees.add(Path(os.path.realpath(sys.executable)).parents[1])
    return {p.resolve() for p in trees}


def tmp_trees() -> list[str]:
    """Python trees under /tmp (fresh inside the sandbox) that must be bound back in."""
    found = sorted(t for t in _python_trees() if len(t.parts) > 2 and t.parts[1] == "tmp")
    # keep the outermost of nested trees; a bind of the outer one carries the inner
    outer = [t for t in found if not any(o != t and o in t.parents for o in found)]
    return [str(t) for t in outer if _reachable(t)]


def exposed_trees() -> dict[str, list[str]]:
    """Python trees the sandbox needs that sit in a top-level directory it can't enter,
    grouped by that directory: {"/root": ["/root/.pyenv/versions/3.11.7"]}."""
    out: dict[str, list[str]] = {}
    for tree in sorted(_python_trees()):
        top = "/" + tree.parts[1]
        if top[1:] not in _SKIP_TOP and not _reachable(tree):
            out.setdefault(top, []).append(str(tree))
    return out

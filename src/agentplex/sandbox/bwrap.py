"""The bubblewrap command line of a sandbox, and the root file system it sees.

Root is a fresh tmpfs, remounted read-only at the end, holding only what a template needs
(`root_trees`): /usr and the /bin, /lib, /lib64, /sbin links, the Python that runs agentd
(its prefixes and the agentplex package, not the rest of a checkout), node and go wherever
they are installed, and a generated minimal /etc (`write_etc`). Then a private /tmp (size
limited tmpfs), /dev and /proc of the sandbox, the sandbox's workspace at /workspace, its
runtime directory (the agentd socket) at /run/agentd and a custom template's layer. The
host's /home, /root, /opt, /var, /srv, other checkouts and the server's data never appear;
a server directory that lies inside one of those trees is covered by an empty tmpfs.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from agentplex.sandbox.network import DNS as SLIRP_DNS
from agentplex.sandbox.templates import LAYER_MOUNT

SANDBOX_UID = 1000  # the uid processes see inside the sandbox
SANDBOX_USER = "user"
# Placeholders the zygote fills in per sandbox. The workspace is reached through a bind onto
# `<runtime>/ws` that the zygote makes as root in a private mount namespace, because the
# sandbox's uid may not be able to walk the server's data directory (and must not need to).
READY_FD = "@READY_FD@"
RUNTIME_DIR = "@RUNTIME@"
# top-level entries of the system tree: links (merged /usr) or directories, bound as they are
_SYSTEM_TOP = ("bin", "lib", "lib32", "lib64", "libx32", "sbin")
# directories the sandbox has of its own (fresh), never bound from the host
_FRESH_TOP = {"proc", "dev", "tmp", "run", "workspace"}


def bwrap_command(
    bwrap: str,
    *,
    hidden: list[Path],
    internet: bool,
    etc_dir: str | None = None,
    tmp_size_mb: int = 256,
    layer: str | None = None,
    layer_writable: bool = False,
) -> list[str]:
    """Arguments that start the sandbox; the payload writes a byte to READY_FD once set up.
    `etc_dir`: the generated /etc (see `write_etc`), bound read-only at /etc. Every sandbox
    has its own network namespace (never the host's: its loopback serves the database, the
    server, ...); with `internet` the zygote attaches slirp4netns to it (see network.py)."""
    args = [
        bwrap,
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--hostname",
        "sandbox",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for entry in _SYSTEM_TOP:
        path = f"/{entry}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    if etc_dir is not None:
        args += ["--ro-bind", etc_dir, "/etc"]
        if internet and os.path.isdir(_CERTS):  # a mount point write_etc made for them
            args += ["--ro-bind", _CERTS, _CERTS]
    trees = root_trees()
    made: set[str] = {"/"}
    for tree in trees:
        if Path(tree).parts[1] == "tmp":
            continue  # bound inside the fresh /tmp below
        args += _parents(tree, made)
        args += ["--ro-bind", tree, tree]
    # tools that want a /var/tmp get the private /tmp; the rest of the host's /var stays out
    args += ["--perms", "0755", "--dir", "/var", "--symlink", "../tmp", "/var/tmp"]  # noqa: S108
    for secret in hidden:
        # a server directory inside a bound tree (a data dir in the venv, say) is masked
        if any(Path(t) == secret or Path(t) in secret.parents for t in trees) and (
            secret.exists() and secret.parts[1] != "tmp"
        ):
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


def _parents(tree: str, made: set[str]) -> list[str]:
    """Create the parents of a bind 0755: bwrap would make them 0700, closing them to the
    code's uid (which then could not import from the tree)."""
    args: list[str] = []
    for parent in reversed(Path(tree).parents):
        if str(parent) not in made:
            made.add(str(parent))
            args += ["--perms", "0755", "--dir", str(parent)]
    return args


def _tmp_binds() -> list[str]:
    """Read-only binds of the Python trees under /tmp (made after the fresh /tmp)."""
    args: list[str] = []
    made: set[str] = {"/", "/tmp"}  # noqa: S108
    for tree in tmp_trees():
        args += _parents(tree, made)
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
    """The interpreter agentd runs with, its packages and the agentplex package itself (only
    the package: the checkout around it, `.git` and all, stays out)."""
    import agentplex

    trees = {Path(sys.base_prefix), Path(sys.prefix), Path(agentplex.__file__).parent}
    trees.add(Path(os.path.realpath(sys.executable)).parents[1])
    return {p.resolve() for p in trees}


def _tool_trees() -> set[Path]:
    """node and go, wherever they are installed: the prefix their binary sits in."""
    out: set[Path] = set()
    for tool in ("node", "go"):
        found = shutil.which(tool)
        if found:
            out.add(Path(os.path.realpath(found)).parents[1])
    return out


def _outermost(paths: set[Path]) -> list[Path]:
    """Drop paths inside others (a bind of the outer one carries the inner) and those /usr
    already holds or that the sandbox has of its own."""
    keep = [
        p for p in paths if len(p.parts) > 1 and p.parts[1] not in ("usr", *(_FRESH_TOP - {"tmp"}))
    ]
    return sorted(p for p in keep if not any(o != p and o in p.parents for o in keep))


def root_trees() -> list[str]:
    """Host trees bound read-only into every sandbox besides /usr and /etc (sorted)."""
    return [str(t) for t in _outermost(_python_trees() | _tool_trees())]


def tmp_trees() -> list[str]:
    """Python trees under /tmp (fresh inside the sandbox) that must be bound back in."""
    found = [Path(t) for t in root_trees() if Path(t).parts[1] == "tmp"]
    return [str(t) for t in found if _reachable(t)]


def exposed_trees() -> dict[str, list[str]]:
    """Trees the sandbox needs that sit in a top-level directory it can't enter, grouped by
    that directory: {"/root": ["/root/.pyenv/versions/3.11.7"]}. The zygote shows bwrap a view
    of each such directory holding only those trees (`nsutil.prepare_view`)."""
    out: dict[str, list[str]] = {}
    for tree in root_trees():
        top = "/" + Path(tree).parts[1]
        if top[1:] != "tmp" and not _reachable(Path(tree)):
            out.setdefault(top, []).append(tree)
    return out


# -- the generated /etc --------------------------------------------------------------------------
_CERTS = "/etc/ssl/certs"
# copied from the host when present: what the dynamic loader, time, name lookups of services
# and protocols, Debian's alternatives (awk, ...) and an interactive bash start with
_COPIED = (
    "ld.so.cache",
    "localtime",
    "os-release",
    "protocols",
    "services",
    "bash.bashrc",
    "inputrc",
    "alternatives",
)
_COPIED_NET = ("gai.conf", "host.conf", "ssl/openssl.cnf")


def write_etc(dest: Path, *, internet: bool, source: Path = Path("/etc")) -> Path:
    """Write the minimal /etc of a sandbox into `dest` (made 0755, replaced if present): users,
    groups, hosts, hostname, nsswitch.conf and the copies in `_COPIED`; with `internet` also
    the resolver's configuration (its nameserver is slirp4netns' DNS forwarder: the host's
    may be on a loopback or private address the sandbox cannot reach) and a mount point for
    the CA certificates. Returns `dest`."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(mode=0o755, parents=True)
    files = {
        "passwd": (
            "root:x:0:0:sandbox system:/:/usr/sbin/nologin\n"
            f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox user:/workspace:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": f"root:x:0:\n{SANDBOX_USER}:x:{SANDBOX_UID}:\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1\tlocalhost\n127.0.1.1\tsandbox\n::1\tlocalhost ip6-localhost\n",
        "hostname": "sandbox\n",
        "nsswitch.conf": (
            "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
            "networks: files\nprotocols: files\nservices: files\n"
        ),
    }
    if internet:
        files["resolv.conf"] = f"nameserver {SLIRP_DNS}\n"
    for name, text in files.items():
        (dest / name).write_text(text)
    for name in (*_COPIED, *(_COPIED_NET if internet else ())):
        src, out = source / name, dest / name
        out.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(os.readlink(src))  # e.g. localtime -> /usr/share/zoneinfo/...
        elif src.is_dir():
            shutil.copytree(src, out, symlinks=True)
        elif src.is_file():
            shutil.copyfile(src, out)
    if internet and (source / "ssl" / "certs").is_dir():
        (dest / "ssl" / "certs").mkdir(mode=0o755, parents=True, exist_ok=True)
    for path in [dest, *dest.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    return dest

"""The built-in templates this host can run, and how a custom template's layer is seen."""

from __future__ import annotations

import shutil

from agentplex.core.ports import Resources, Template

LAYER_MOUNT = "/run/template"


def layer_env() -> tuple[tuple[str, str], ...]:
    """The environment under which a template's layer is built and used."""
    import os
    import sys

    # the layer's programs first, then the interpreter agentd runs (its pip), then the host's
    host_path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    path = os.pathsep.join(
        [
            f"{LAYER_MOUNT}/bin",
            f"{LAYER_MOUNT}/python/bin",
            os.path.dirname(sys.executable),
            host_path,
        ]
    )
    env = [
        ("PATH", path),
        ("PYTHONPATH", f"{LAYER_MOUNT}/python"),
        ("PIP_TARGET", f"{LAYER_MOUNT}/python"),
        ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
        ("NODE_PATH", f"{LAYER_MOUNT}/node_modules"),
        ("npm_config_prefix", LAYER_MOUNT),
        ("TEMPLATE_LAYER", LAYER_MOUNT),
    ]
    return tuple(env)


def _python_display() -> str:
    import sys

    return f"Python {sys.version_info.major}.{sys.version_info.minor}"


def builtin_templates() -> list[Template]:
    """The built-in templates available on this host (node and go only when installed)."""
    found = [
        Template(
            id="python",
            name="python",
            display_name=_python_display(),
            language="python",
            resources=Resources(vcpu=1.0, memory_mb=1024, disk_mb=2048),
            description="Stateful Python with numpy, pandas and matplotlib rich output.",
        ),
        Template(
            id="bash",
            name="bash",
            display_name="Bash",
            language="bash",
            resources=Resources(vcpu=1.0, memory_mb=512, disk_mb=1024),
            description="A shell with the host's command-line tools, read-only.",
        ),
    ]
    if shutil.which("node"):
        found.append(
            Template(
                id="node",
                name="node",
                display_name="Node.js",
                language="javascript",
                resources=Resources(vcpu=1.0, memory_mb=1024, disk_mb=2048),
                description="Node.js for JavaScript execution.",
            )
        )
    if shutil.which("go"):
        found.append(
            Template(
                id="go",
                name="go",
                display_name="Go",
                language="go",
                resources=Resources(vcpu=2.0, memory_mb=2048, disk_mb=4096),
                description="The Go toolchain; code runs with `go run`.",
            )
        )
    return found

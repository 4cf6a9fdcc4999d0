"""Built-in sandbox templates: a language, a display name and default resources."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from typing import Any

from agentplex.sandbox.errors import TemplateNotFound


@dataclass(frozen=True)
class Resources:
    """Default resources of a sandbox: CPUs, memory and workspace disk."""

    vcpu: float = 1.0
    memory_mb: int = 512
    disk_mb: int = 1024
    max_pids: int = 256


@dataclass(frozen=True)
class Template:
    """A sandbox template. Built-ins share the host's read-only root; they differ in language."""

    id: str
    name: str
    display_name: str
    language: str
    resources: Resources = field(default_factory=Resources)
    description: str = ""
    builtin: bool = True
    # A custom template's own layer: a host directory mounted at LAYER_MOUNT (read-only, or
    # writable while the template is being built), and the environment that makes it visible.
    layer: str | None = None
    layer_writable: bool = False
    env: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (the Hopx template fields)."""
        data = asdict(self)
        for private in ("layer", "layer_writable", "env"):
            data.pop(private, None)
        data["resources"] = {
            "vcpu": self.resources.vcpu,
            "memory_mb": self.resources.memory_mb,
            "disk_mb": self.resources.disk_mb,
        }
        return data


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


def builtin_templates() -> dict[str, Template]:
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
    return {t.id: t for t in found}


DEFAULT_TEMPLATE = "python"


def resolve_template(templates: dict[str, Template], ref: str | Template | None) -> Template:
    """Find a template by id or name (None means the default); raise TemplateNotFound."""
    if isinstance(ref, Template):
        return ref
    key = ref or DEFAULT_TEMPLATE
    if key in templates:
        return templates[key]
    for template in templates.values():
        if template.name == key:
            return template
    raise TemplateNotFound(f"template {key!r} not found; available: {', '.join(sorted(templates))}")

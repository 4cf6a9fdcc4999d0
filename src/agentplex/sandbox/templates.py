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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (the Hopx template fields)."""
        data = asdict(self)
        data["resources"] = {
            "vcpu": self.resources.vcpu,
            "memory_mb": self.resources.memory_mb,
            "disk_mb": self.resources.disk_mb,
        }
        return data


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

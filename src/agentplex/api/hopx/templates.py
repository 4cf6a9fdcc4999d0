"""Hopx ``/v1/templates``: the built-ins and custom templates built from setup commands."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agentplex.api.common.routing import Call, RouteTable
from agentplex.api.hopx.views import (
    build_logs_view,
    build_status_view,
    builtin_view,
    custom_view,
    template_view,
)
from agentplex.core.ports import DEFAULT_TEMPLATE
from agentplex.core.templates import BuildRequest, BuildStep
from agentplex.errors import BadRequest

routes = RouteTable(tags=["hopx"])


class StepBody(BaseModel):
    """One step as the hopx-ai template builder sends it (its other keys are ignored)."""

    model_config = ConfigDict(extra="ignore")
    type: str = Field(..., description="RUN, ENV or WORKDIR")
    args: list[str] = Field(default_factory=list, description="The step's arguments")


class BuildTemplate(BaseModel):
    """A template build: the hopx-ai SDK's body, plus `from_template` and `setup_commands`."""

    model_config = ConfigDict(extra="ignore")  # startCmd, readyCmd, skipCache, ...: unused
    name: str | None = Field(None, description="The template's name (required, or `alias`)")
    alias: str | None = Field(None, description="Older name of `name`")
    display_name: str | None = Field(None, max_length=200, description="Shown in listings")
    from_template: str | None = Field(None, description="Built-in base template (python, ...)")
    base_template: str | None = Field(None, description="Same as from_template")
    template: str | None = Field(None, description="Same as from_template")
    from_image: str | None = Field(None, description="An image name picking the base by language")
    steps: list[StepBody] = Field(default_factory=list, description="RUN/ENV/WORKDIR steps")
    setup_commands: list[str] = Field(default_factory=list, description="Shell commands to run")
    env: dict[str, str] = Field(default_factory=dict, description="Environment of the template")
    env_vars: dict[str, str] = Field(default_factory=dict, description="Same as env")
    cpu: float | None = Field(None, gt=0, le=64, description="vCPUs of its sandboxes")
    memory: int | None = Field(None, ge=64, le=1_048_576, description="Memory (MiB)")
    diskGB: int | None = Field(None, ge=1, le=1024, description="Workspace quota (GiB)")
    update: bool = Field(False, description="Replace a template of the same name")


class LogsQuery(BaseModel):
    offset: int = Field(0, ge=0, description="Characters of the log already read")


# An image's repository name (its last path part, without tag or digest) -> the built-in it
# runs on: prefixes, first match wins. The SDKs' helpers send python:3.12, node:20-slim,
# ubuntu/node:20-22.04_edge and ubuntu:22.04.
_IMAGE_BASES = (
    ("python", "python"),
    ("node", "node"),
    ("golang", "go"),
    ("debian", "bash"),
    ("ubuntu", "bash"),
    ("bash", "bash"),
    ("alpine", "bash"),
)


def image_base(image: str) -> str:
    """The built-in template an image name stands for (``python:3.11-slim`` -> python,
    ``ubuntu/node:20`` -> node, ``go:1.22`` -> go); BadRequest for any other image: images
    are not pulled, and building some other image's template on bash would hide that."""
    name = image.strip().lower().rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    if name == "go":
        return "go"
    for prefix, base in _IMAGE_BASES:
        if name.startswith(prefix):
            return base
    raise BadRequest(
        f"Unsupported from_image {image[:200]!r}: images are not pulled; use a python*, node*, "
        "golang* (or go:*), debian, ubuntu, alpine or bash image (mapped to the python, node, go "
        "and bash built-in templates), or from_template"
    )


def build_request(body: BuildTemplate) -> BuildRequest:
    """The build a Hopx body asks for: ``{name, from_template | from_image, steps |
    setup_commands}``; RUN runs, ENV sets, WORKDIR moves the later steps."""
    name = (body.name or body.alias or "").strip()
    if not name:
        raise BadRequest("A template build needs a 'name'")
    base = body.from_template or body.base_template or body.template
    if not base and body.from_image:
        base = image_base(body.from_image)
    steps: list[BuildStep] = []
    env: dict[str, str] = {}
    workdir = "/workspace"
    for index, step in enumerate(body.steps):
        kind = step.type.upper()
        args = step.args
        if kind == "RUN" and args:
            steps.append(BuildStep(" ".join(args), workdir))
        elif kind == "ENV" and args:
            if len(args) == 1 and "=" in args[0]:
                key, _, value = args[0].partition("=")
            elif len(args) == 2:
                key, value = args
            else:
                raise BadRequest(f"step {index}: ENV takes KEY VALUE or KEY=VALUE")
            env[key] = value
        elif kind == "WORKDIR" and args:
            workdir = args[0]
        else:
            raise BadRequest(
                f"step {index}: {kind or 'a step without a type'} is not supported; "
                "use RUN, ENV or WORKDIR (files can be written by RUN commands)"
            )
    steps += [BuildStep(command, workdir) for command in body.setup_commands]
    env.update(body.env or body.env_vars)
    return BuildRequest(
        name=name,
        base=base or DEFAULT_TEMPLATE,
        steps=steps,
        env=env,
        display_name=body.display_name,
        vcpu=body.cpu,
        memory_mb=body.memory,
        disk_mb=body.diskGB * 1024 if body.diskGB else None,
        replace=body.update,
    )


@routes.get("/v1/templates", summary="List templates (built-in and this environment's)")
async def list_templates(call: Call) -> dict[str, Any]:
    templates = call.services.templates
    builtins = [builtin_view(t) for t in templates.builtins()]
    custom = [custom_view(t) for t in await templates.custom(call.principal.env_id)]
    return {"data": builtins + custom}


@routes.post(
    "/v1/templates/build",
    summary="Build a custom template: a base template plus setup commands (RUN/ENV/WORKDIR "
    "steps or setup_commands), installed into the template's own layer",
    body=BuildTemplate,
)
async def build(call: Call) -> dict[str, Any]:
    record = await call.services.templates.build(call.principal.env_id, build_request(call.body))
    return {
        "build_id": record.id,
        "template_id": record.id,
        "status": record.status,
        "logs_url": f"/v1/templates/build/{record.id}/logs",
    }


@routes.get("/v1/templates/build/{build_id}/status", summary="Build status")
async def build_status(call: Call) -> dict[str, Any]:
    record = await call.services.templates.build_record(
        call.principal.env_id, call.path_params["build_id"]
    )
    return build_status_view(record)


@routes.get(
    "/v1/templates/build/{build_id}/logs", summary="Build logs from an offset", query=LogsQuery
)
async def build_logs(call: Call) -> dict[str, Any]:
    record = await call.services.templates.build_record(
        call.principal.env_id, call.path_params["build_id"]
    )
    return build_logs_view(record, call.query.offset)


@routes.get("/v1/templates/{template}", summary="Get a template by id or name")
async def get_template(call: Call) -> dict[str, Any]:
    found = await call.services.templates.get(call.principal.env_id, call.path_params["template"])
    return template_view(found)


@routes.delete("/v1/templates/{template}", summary="Delete a custom template and its layer")
async def delete_template(call: Call) -> dict[str, Any]:
    ref = call.path_params["template"]
    await call.services.templates.delete(call.principal.env_id, ref)
    return {"id": ref, "status": "deleted", "message": "Template deleted"}

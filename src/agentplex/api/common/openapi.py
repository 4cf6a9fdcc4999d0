"""The OpenAPI document and the Swagger UI page, built from the route tables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import swagger_ui_bundle  # type: ignore[import-untyped]
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from agentplex.api.common.routing import Endpoint

_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")


def build(
    title: str, version: str, description: str, endpoints: list[tuple[str, Endpoint]]
) -> dict[str, Any]:
    """An OpenAPI 3.1 document for ``(prefix, endpoint)`` pairs."""
    models: set[type[BaseModel]] = set()
    for _prefix, e in endpoints:
        models.update(m for m in (e.body, e.response) if m is not None)
    mode: Literal["validation"] = "validation"
    keyed = [(m, mode) for m in sorted(models, key=lambda m: m.__name__)]
    refs, schema = models_json_schema(keyed, ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for prefix, e in endpoints:
        path = _PARAM.sub(r"{\1}", prefix + e.path)
        op: dict[str, Any] = {
            "summary": e.summary,
            "tags": e.tags,
            "operationId": f"{e.method.lower()}_{path.strip('/').replace('/', '_')}".replace(
                "{", ""
            ).replace("}", "")
            or "root",
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _PARAM.findall(prefix + e.path)
            ],
            "responses": {str(e.status): {"description": "Success"}},
        }
        if e.query is not None:
            props = e.query.model_json_schema().get("properties", {})
            required = set(e.query.model_json_schema().get("required", []))
            for name, prop in props.items():
                op["parameters"].append(
                    {
                        "name": name,
                        "in": "query",
                        "required": name in required,
                        "description": prop.get("description", ""),
                        "schema": {k: v for k, v in prop.items() if k != "description"},
                    }
                )
        if e.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(e.body, "validation")]}},
            }
        if e.response is not None:
            op["responses"][str(e.status)]["content"] = {
                e.media_type: {"schema": refs[(e.response, "validation")]}
            }
        elif e.media_type != "application/json":
            op["responses"][str(e.status)]["content"] = {e.media_type: {}}
        if not e.public:
            op["security"] = [{"bearer": []}, {"apiKey": []}]
        paths.setdefault(path, {})[e.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


# Swagger UI's own files, from the swagger-ui-bundle-v2 package: /docs must work offline
SWAGGER_DIR = Path(swagger_ui_bundle.swagger_ui_path)
SWAGGER_ASSETS = {
    "/docs/swagger-ui.css": "swagger-ui.css",
    "/docs/swagger-ui-bundle.js": "swagger-ui-bundle.js",
    "/docs/favicon-32x32.png": "favicon-32x32.png",
}

SWAGGER_HTML = """<!doctype html>
<html><head><title>agentplex API</title><meta charset="utf-8">
<link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head><body><div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""

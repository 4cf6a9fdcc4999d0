"""The real OpenCode server's home, shared by the compat tests and bench/sessions.py: where its
binary is, and a scratch directory that runs it offline with a fake OpenAI-compatible model.

Standard library only, so the benchmark can import it without the test tools.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

OPENCODE_BINARY = (
    Path(__file__).parent / "js" / "node_modules" / "opencode-linux-x64" / "bin" / "opencode"
)
"""Shipped by the npm package ``opencode-linux-x64``, installed by ``npm ci`` in js/."""


def opencode_config(model_url: str) -> dict[str, Any]:
    """An ``opencode.json`` giving OpenCode the model at ``model_url`` (an OpenAI-compatible
    ``/v1`` URL) as ``fake/fake-model`` (docs/opencode-protocol.md)."""
    return {
        "model": "fake/fake-model",
        "small_model": "fake/fake-model",
        "share": "disabled",
        "autoupdate": False,
        "provider": {
            "fake": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Fake",
                "options": {"baseURL": model_url, "apiKey": "x"},
                "models": {"fake-model": {"name": "Fake Model", "tool_call": True}},
            }
        },
    }


def prepare(scratch: Path, model_url: str) -> tuple[Path, dict[str, str]]:
    """Make ``scratch`` OpenCode's world: a working directory holding the ``opencode.json``,
    and XDG directories of its own, with model fetches and updates off. The working directory
    and the environment to run ``serve_command`` with."""
    work = scratch / "work"
    work.mkdir(parents=True, exist_ok=True)
    (work / "opencode.json").write_text(json.dumps(opencode_config(model_url)))
    xdg = scratch / "xdg"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(xdg / "home"),
        "XDG_DATA_HOME": str(xdg / "data"),
        "XDG_CONFIG_HOME": str(xdg / "config"),
        "XDG_CACHE_HOME": str(xdg / "cache"),
        "XDG_STATE_HOME": str(xdg / "state"),
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
    }
    return work, env


def serve_command(port: int) -> list[str]:
    """``opencode serve`` on ``127.0.0.1:port``."""
    return [str(OPENCODE_BINARY), "serve", "--port", str(port), "--hostname", "127.0.0.1"]

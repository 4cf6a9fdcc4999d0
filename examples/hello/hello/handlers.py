"""Event handlers: each runs once per matching event published to the environment."""

from __future__ import annotations

import os
from typing import Any

from agentplex.sdk import capture, emit, on_event


@on_event("user.signup")
def on_signup(event: dict[str, Any]) -> dict[str, Any]:
    """Welcome a new user: stream a greeting, keep it as a run var, and say what was done."""
    user = event["event_data"]
    name = user.get("name", "friend")
    welcome = f"Welcome, {name}!"
    print(f"new signup: {user.get('email')}")  # printed lines become stream:data too
    emit(welcome)  # a text stream:data item
    emit({"step": "welcomed", "email": user.get("email")})  # a JSON stream:data item
    capture("welcome", welcome, meta={"email": user.get("email")})
    # the project's context variables (secrets) are this process's environment variables;
    # say whether the mailer is configured, never what its token is
    capture("mailer_configured", "MAILER_TOKEN" in os.environ)
    return {"welcomed": user.get("email")}

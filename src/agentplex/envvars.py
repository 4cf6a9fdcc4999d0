"""What a sandbox's environment variables may hold: checked where they enter (the control
plane's create, agentd's ``/env`` and every ``env`` of a run), so nothing stored can break the
commands that inherit it later.

The kernel refuses to start a process whose argument and environment strings pass its limits
(one string of ``NAME=value`` at most 128 KiB, everything at most a quarter of the stack
limit, 2 MiB by default): a sandbox's own set and one request's set are each bounded so that
together they stay well under that. Imported by agentd too: the standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping

MAX_NAME_BYTES = 256
MAX_VALUE_BYTES = 128 * 1000  # name=value stays under the kernel's 131,072 per string
MAX_TOTAL_BYTES = 512 * 1024  # all name=value strings of one set together


class EnvVarsInvalid(ValueError):
    """The environment variables are not usable; the message says which and why."""


def check_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` as a dict when every name and value is usable; else EnvVarsInvalid."""
    total = 0
    for name, value in env.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise EnvVarsInvalid("environment variable names and values must be strings")
        if not name:
            raise EnvVarsInvalid("an environment variable name must not be empty")
        if "=" in name or "\x00" in name:
            raise EnvVarsInvalid(
                f"environment variable name {name[:64]!r} must not contain '=' or a NUL byte"
            )
        if "\x00" in value:
            raise EnvVarsInvalid(f"the value of {name[:64]!r} must not contain a NUL byte")
        name_bytes, value_bytes = _utf8_len(name, "name"), _utf8_len(value, name)
        if name_bytes > MAX_NAME_BYTES:
            raise EnvVarsInvalid(
                f"environment variable name {name[:64]!r}... is longer than {MAX_NAME_BYTES} bytes"
            )
        if value_bytes > MAX_VALUE_BYTES:
            raise EnvVarsInvalid(
                f"the value of {name[:64]!r} is {value_bytes} bytes; at most"
                f" {MAX_VALUE_BYTES} are allowed (put larger data in a file)"
            )
        total += name_bytes + value_bytes + 2
        if total > MAX_TOTAL_BYTES:
            raise EnvVarsInvalid(
                f"the environment variables total more than {MAX_TOTAL_BYTES} bytes"
                " (put larger data in a file)"
            )
    return dict(env)


def _utf8_len(text: str, what: str) -> int:
    try:
        return len(text.encode())
    except UnicodeEncodeError:  # a lone surrogate ("\ud800"): no process could receive it
        raise EnvVarsInvalid(
            f"environment variable {what[:64]!r} is not valid Unicode (a lone surrogate)"
        ) from None

"""The SDK a deployed project's code uses: declare entry points, and talk to the run it is in.

Pure standard library, so it imports in the sandbox (which sees the server's agentplex package)
and in the project's own virtualenv alike::

    from agentplex import sdk

    @sdk.on_event("user.signup")
    def welcome(event):              # {"event_id", "event_type", "event_data"}
        sdk.capture("email", event["event_data"]["email"])
        sdk.emit({"step": "welcomed"})
        return {"ok": True}

    @sdk.schedule("0 8 * * *", tz="Europe/Paris")
    def morning(fire):               # {"schedule_id", "cron", "tz", "fire_time"}, or none
        ...

    @sdk.function
    def add(a, b):                   # hot:call ::module::path/add with [1, 2] or {"a": 1, "b": 2}
        return a + b

The decorators only record the function in a registry (`registry()`) and return it unchanged;
the server reads that registry in a sandbox when a build is uploaded. `emit`, `capture`,
`publish` and `current_run` speak to the run that is executing; outside a run (the project's
own tests) `emit` prints its value and `capture` / `publish` do nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

__all__ = [
    "Entry",
    "capture",
    "current_run",
    "emit",
    "function",
    "on_event",
    "publish",
    "registry",
    "schedule",
    "var",
]

F = TypeVar("F", bound=Callable[..., Any])
MAX_TIMEOUT = 86_400.0  # seconds: the longest a run of one entry point may take


@dataclass(frozen=True, slots=True)
class Entry:
    """One declared entry point: ``kind`` ``event`` (with ``event``), ``schedule`` (with
    ``cron`` and ``tz``) or ``function``, of the function ``name`` in module ``module``."""

    kind: str
    module: str
    name: str
    event: str | None = None
    cron: str | None = None
    tz: str | None = None
    timeout: float | None = None

    @property
    def target(self) -> str:
        """``module.path:fn``, as the manifest names functions."""
        return f"{self.module}:{self.name}"

    def to_json(self) -> dict[str, Any]:
        """``{"kind", "module", "name"}`` plus ``event`` or ``cron`` and ``tz``."""
        out: dict[str, Any] = {"kind": self.kind, "module": self.module, "name": self.name}
        if self.kind == "event":
            out["event"] = self.event
        elif self.kind == "schedule":
            out["cron"] = self.cron
            out["tz"] = self.tz
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out


_REGISTRY: list[Entry] = []

# Set by the in-sandbox runtime while a run executes: where outputs go, and the run itself.
# ``_channel(kind, payload)`` with kind ``data`` ({"value", "data_type"}), ``var`` or ``publish``.
_channel: Callable[[str, dict[str, Any]], None] | None = None
_current: dict[str, Any] | None = None


def registry() -> list[Entry]:
    """Every entry point declared so far in this process, in declaration order."""
    return list(_REGISTRY)


def _register(entry: Entry) -> None:
    if entry not in _REGISTRY:  # a module imported twice (reload) declares nothing new
        _REGISTRY.append(entry)


def _check_function(fn: Any, decorator: str) -> None:
    if not callable(fn) or not hasattr(fn, "__name__") or not hasattr(fn, "__module__"):
        raise TypeError(f"@{decorator} decorates a function, not {fn!r}")
    if "<locals>" in getattr(fn, "__qualname__", ""):
        raise TypeError(
            f"@{decorator} on {fn.__qualname__}: declare entry points at the top level of a "
            "module (the server calls them as module.path:function)"
        )


def _timeout(timeout: Any, decorator: str) -> float | None:
    """``timeout`` if it is None or a number of seconds in (0, 86400]; otherwise a TypeError
    or ValueError saying what to write."""
    if timeout is None:
        return None
    hint = f"write @{decorator}(..., timeout=30) for 30 seconds, or leave timeout out"
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"@{decorator}'s timeout is a number of seconds, not {timeout!r}: {hint}")
    if not math.isfinite(timeout) or timeout <= 0 or timeout > MAX_TIMEOUT:
        raise ValueError(
            f"@{decorator}'s timeout must be a number of seconds above 0 and at most "
            f"{MAX_TIMEOUT:g}, not {timeout!r}: {hint}"
        )
    return float(timeout)


def on_event(event_type: str, *, timeout: float | None = None) -> Callable[[F], F]:
    """Run the decorated function for each event of type ``event_type`` (e.g. "user.signup").

    The function is called with the event ``{"event_id", "event_type", "event_data"}``, or
    with nothing if it takes no parameter; it may be a coroutine function. ``timeout``
    (seconds, at most 86400) bounds each run of it; the server's
    ``runs.default_timeout_seconds`` otherwise."""
    if not isinstance(event_type, str) or not event_type:
        hint = ' (write @on_event("user.signup"))' if callable(event_type) else ""
        raise TypeError(f"on_event needs an event type string, not {event_type!r}{hint}")
    timeout = _timeout(timeout, "on_event")

    def decorate(fn: F) -> F:
        _check_function(fn, "on_event")
        _register(Entry("event", fn.__module__, fn.__name__, event=event_type, timeout=timeout))
        return fn

    return decorate


def schedule(cron: str, tz: str = "UTC", *, timeout: float | None = None) -> Callable[[F], F]:
    """Run the decorated function at each time the cron expression ``cron`` (5 fields, or 6
    with seconds first) matches in time zone ``tz`` (an IANA name such as "Europe/Paris").

    The function is called with ``{"schedule_id", "cron", "tz", "fire_time"}``, or with
    nothing if it takes no parameter. The expression is checked when the build is uploaded.
    ``timeout``: as `on_event`'s."""
    if not isinstance(cron, str) or not cron.strip():
        hint = ' (write @schedule("0 0 * * *"))' if callable(cron) else ""
        raise TypeError(f"schedule needs a cron expression string, not {cron!r}{hint}")
    if not isinstance(tz, str) or not tz:
        raise TypeError(f"schedule's tz must be a time zone name such as 'UTC', not {tz!r}")
    cron = " ".join(cron.split())
    timeout = _timeout(timeout, "schedule")

    def decorate(fn: F) -> F:
        _check_function(fn, "schedule")
        _register(Entry("schedule", fn.__module__, fn.__name__, cron=cron, tz=tz, timeout=timeout))
        return fn

    return decorate


@overload
def function(fn: F, /) -> F: ...


@overload
def function(*, timeout: float | None = None) -> Callable[[F], F]: ...


def function(fn: Any = None, /, *, timeout: float | None = None) -> Any:
    """Make the decorated function callable by name (Hot's ``hot:call`` of ``::module/fn`` or
    ``module:fn``): with a list of arguments it is called ``fn(*args)``, with an object
    ``fn(**kwargs)``. Use it bare (``@function``) or with parentheses (``@function()``,
    ``@function(timeout=30)``; ``timeout`` as `on_event`'s)."""
    timeout = _timeout(timeout, "function")

    def decorate(f: F) -> F:
        _check_function(f, "function")
        _register(Entry("function", f.__module__, f.__name__, timeout=timeout))
        return f

    return decorate if fn is None else decorate(fn)


def _json(value: Any, what: str) -> Any:
    """``value`` if it is JSON (no NaN or infinity); TypeError saying what to send instead."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(
            f"{what} must be JSON-serialisable (dicts, lists, strings, numbers, booleans, "
            f"None): {exc}"
        ) from None
    return value


def emit(value: Any, data_type: str | None = None) -> None:
    """Send ``value`` to the run's stream now (a ``stream:data`` item).

    A string is sent as data_type "text" (payload ``{"text": value}``), anything else as
    "json" (payload the value itself, which must be JSON-serialisable); ``data_type`` forces
    one of the two."""
    if data_type is None:
        data_type = "text" if isinstance(value, str) else "json"
    if data_type not in ("text", "json"):
        raise ValueError(f"emit's data_type is 'text' or 'json', not {data_type!r}")
    if data_type == "text" and not isinstance(value, str):
        raise TypeError(f"emit(..., data_type='text') needs a string, not {type(value).__name__}")
    _json(value, "emit's value")
    if _channel is None:
        print(value if data_type == "text" else json.dumps(value))
        return
    _channel("data", {"value": value, "data_type": data_type})


def capture(name: str, value: Any, meta: dict[str, Any] | None = None) -> None:
    """Record a named value of this run (listed by ``GET /v1/runs/{id}/vars``, as Hot's run
    vars: ``var`` = ``name``). ``value`` and ``meta`` must be JSON-serialisable."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"capture needs a name string, not {name!r}")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"capture's meta is a dict or None, not {type(meta).__name__}")
    _json(value, f"capture({name!r})'s value")
    _json(meta, f"capture({name!r})'s meta")
    if _channel is not None:
        _channel("var", {"name": name, "value": value, "meta": meta})


var = capture
"""Another name for `capture` (Hot calls captured values vars)."""


def publish(event_type: str, event_data: Any = None) -> None:
    """Publish an event from the running handler: its runs start as for ``POST /v1/events``,
    with this run as their ``origin_run_id``. ``event_data`` must be JSON-serialisable."""
    if not isinstance(event_type, str) or not event_type:
        raise TypeError(f"publish needs an event type string, not {event_type!r}")
    _json(event_data, "publish's event_data")
    if _channel is not None:
        _channel("publish", {"event_type": event_type, "event_data": event_data})


def current_run() -> dict[str, Any] | None:
    """``{"run_id", "run_type", "function"}`` of the run executing now (run_type ``event``,
    ``call`` or ``schedule``; function ``module.path:fn``), or None outside a run."""
    return dict(_current) if _current is not None else None

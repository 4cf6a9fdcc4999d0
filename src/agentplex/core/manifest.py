"""A build's manifest: the entry points a deployed project declares in ``agentplex.json``.

The file sits at the root of the build archive::

    {
      "handlers":  [{"event": "user.signup", "function": "hello.handlers:on_signup"}],
      "schedules": [{"cron": "0 0 * * *", "tz": "Europe/Paris", "function": "hello.tasks:daily"}],
      "functions": ["hello.math:add"]
    }

A function is named ``module.path:fn`` (Python) or ``::module::path/fn`` (Hot); its module's
file (``module/path.py`` or ``module/path/__init__.py``) must be in the archive. Hot's ``ns``
is the module in ``::a::b`` notation and ``var`` the function. Parsing never imports the
project's code: it reads the manifest and the archive's file list only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from agentplex.errors import BadRequest

MANIFEST_NAME = "agentplex.json"
MANIFEST_VERSION = 1
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_PYTHON_REF = re.compile(rf"^({_IDENT}(?:\.{_IDENT})*):({_IDENT})$")
_HOT_REF = re.compile(rf"^((?:::{_IDENT})+)/({_IDENT})$")
_EVENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}$")
_RESERVED_EVENTS = ("hot:",)  # hot:call and friends are the server's own
MAX_TIMEOUT_SECONDS = 24 * 3600.0
"""The longest per-function timeout a build may declare (``timeout``, seconds)."""


@dataclass(frozen=True, slots=True)
class FunctionRef:
    """A function of the project: ``module`` (dotted) and ``name``."""

    module: str
    name: str

    @property
    def target(self) -> str:
        """``module.path:fn``."""
        return f"{self.module}:{self.name}"

    @property
    def ns(self) -> str:
        """Hot's namespace: ``::module::path``."""
        return "::" + self.module.replace(".", "::")

    @property
    def var(self) -> str:
        """Hot's var: the function's name."""
        return self.name

    def files(self) -> tuple[str, str]:
        """The archive paths that can hold the module."""
        base = self.module.replace(".", "/")
        return f"{base}.py", f"{base}/__init__.py"


def parse_function(text: str) -> FunctionRef:
    """``module.path:fn`` or ``::module::path/fn`` as a `FunctionRef`; ValueError otherwise."""
    if match := _PYTHON_REF.match(text):
        return FunctionRef(match.group(1), match.group(2))
    if match := _HOT_REF.match(text):
        return FunctionRef(match.group(1)[2:].replace("::", "."), match.group(2))
    raise ValueError(f"{text!r} is not a function name: write module.path:function")


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """Run ``function`` for each event of type ``event``."""

    event: str
    function: FunctionRef


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """Run ``function`` at each time ``cron`` matches, read in time zone ``tz``."""

    cron: str
    tz: str
    function: FunctionRef


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a build declares; empty when the archive has no manifest."""

    handlers: tuple[HandlerSpec, ...] = ()
    schedules: tuple[ScheduleSpec, ...] = ()
    functions: tuple[FunctionRef, ...] = ()
    timeouts: Mapping[str, float] = field(default_factory=dict)
    """Seconds a run of a function (``module.path:fn``) may take, where the build says so;
    other runs get the server's ``runs.default_timeout_seconds``."""

    def to_json(self) -> dict[str, Any]:
        """The manifest as stored with its build (``timeouts`` gathered in one object)."""
        out: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "handlers": [{"event": h.event, "function": h.function.target} for h in self.handlers],
            "schedules": [
                {"cron": s.cron, "tz": s.tz, "function": s.function.target} for s in self.schedules
            ],
            "functions": [f.target for f in self.functions],
        }
        if self.timeouts:
            out["timeouts"] = dict(sorted(self.timeouts.items()))
        return out

    def timeout_of(self, function: str) -> float | None:
        """The timeout the build declares for ``function`` (``module.path:fn``), if any."""
        return self.timeouts.get(function)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """The inverse of `to_json` (for stored manifests, which were validated already)."""
        return cls(
            handlers=tuple(
                HandlerSpec(h["event"], parse_function(h["function"]))
                for h in data.get("handlers", ())
            ),
            schedules=tuple(
                ScheduleSpec(s["cron"], s["tz"], parse_function(s["function"]))
                for s in data.get("schedules", ())
            ),
            functions=tuple(parse_function(f) for f in data.get("functions", ())),
            timeouts={str(k): float(v) for k, v in (data.get("timeouts") or {}).items()},
        )


class _Problems:
    """Collects every mistake in a manifest, so one upload reports them all."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.lines.append(f"{where}: {what}")

    def raise_any(self, what: str = f"Invalid {MANIFEST_NAME}") -> None:
        if self.lines:
            shown = "; ".join(self.lines[:10])
            more = f" (and {len(self.lines) - 10} more)" if len(self.lines) > 10 else ""
            raise BadRequest(
                f"{what}: {shown}{more}. See docs/builds.md for the format.",
                details=self.lines,
            )


def parse_manifest(raw: bytes, files: Collection[str]) -> Manifest:
    """Validate ``agentplex.json`` against the archive's ``files``; BadRequest naming every
    entry at fault (an invalid cron, an unknown time zone, a function whose module is not in
    the archive, ...)."""
    problems = _Problems()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"{MANIFEST_NAME} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"{MANIFEST_NAME} must hold a JSON object")
    known = {"version", "name", "handlers", "schedules", "functions"}
    timeouts: dict[str, float] = {}
    for key in sorted(set(data) - known):
        problems.add(key, f"unknown key (known: {', '.join(sorted(known))})")
    version = data.get("version", MANIFEST_VERSION)
    if version != MANIFEST_VERSION:
        problems.add("version", f"{version!r} is not supported: use {MANIFEST_VERSION}")
    available = frozenset(files)

    def function(where: str, value: Any) -> FunctionRef | None:
        if not isinstance(value, str):
            problems.add(where, "must be a string like module.path:function")
            return None
        try:
            ref = parse_function(value)
        except ValueError as exc:
            problems.add(where, str(exc))
            return None
        if not available.intersection(ref.files()):
            py, package = ref.files()
            problems.add(where, f"module {ref.module} is not in the archive (no {py} or {package})")
            return None
        return ref

    def entries(key: str) -> list[tuple[str, Any]]:
        value = data.get(key, [])
        if not isinstance(value, list):
            problems.add(key, "must be a list")
            return []
        return [(f"{key}[{i}]", item) for i, item in enumerate(value)]

    def fields(where: str, item: Any, allowed: set[str]) -> dict[str, Any] | None:
        if not isinstance(item, dict):
            problems.add(where, "must be an object")
            return None
        for key in sorted(set(item) - allowed):
            problems.add(f"{where}.{key}", f"unknown key (known: {', '.join(sorted(allowed))})")
        return item

    handlers: list[HandlerSpec] = []
    for where, item in entries("handlers"):
        if (entry := fields(where, item, {"event", "function", "timeout"})) is None:
            continue
        event = entry.get("event")
        ref = function(f"{where}.function", entry.get("function"))
        _add_timeout(problems, where, ref, entry.get("timeout"), timeouts)
        if _check_event(problems, f"{where}.event", event) and ref is not None:
            spec = HandlerSpec(str(event), ref)
            if spec in handlers:
                problems.add(where, f"repeats the handler of {event} by {ref.target}")
            else:
                handlers.append(spec)

    schedules: list[ScheduleSpec] = []
    for where, item in entries("schedules"):
        if (entry := fields(where, item, {"cron", "tz", "function", "timeout"})) is None:
            continue
        cron, tz = entry.get("cron"), entry.get("tz", "UTC")
        ref = function(f"{where}.function", entry.get("function"))
        _add_timeout(problems, where, ref, entry.get("timeout"), timeouts)
        cron_ok = _check_cron(problems, f"{where}.cron", cron)
        tz_ok = _check_tz(problems, f"{where}.tz", tz)
        if cron_ok and tz_ok and ref is not None:
            schedule = ScheduleSpec(" ".join(str(cron).split()), str(tz), ref)
            if schedule in schedules:
                problems.add(where, f"repeats the schedule {schedule.cron} of {ref.target}")
            else:
                schedules.append(schedule)

    functions: list[FunctionRef] = []
    for where, item in entries("functions"):
        if isinstance(item, dict):
            fields(where, item, {"function", "timeout"})
            ref = function(f"{where}.function", item.get("function"))
            _add_timeout(problems, where, ref, item.get("timeout"), timeouts)
        else:
            ref = function(where, item)
        if ref is not None and ref not in functions:
            functions.append(ref)

    problems.raise_any()
    return Manifest(tuple(handlers), tuple(schedules), tuple(functions), timeouts)


def from_declarations(entries: Collection[Mapping[str, Any]]) -> Manifest:
    """The entry points a build's code declared with the SDK's decorators (each entry
    ``{"kind": "event"|"schedule"|"function", "module", "name", "event", "cron", "tz",
    "problem"}``, as `agentplex.sdk.Entry.to_json` gives them), checked as the manifest's are;
    BadRequest naming every entry at fault. Repeats are merged."""
    problems = _Problems()
    handlers: list[HandlerSpec] = []
    schedules: list[ScheduleSpec] = []
    functions: list[FunctionRef] = []
    timeouts: dict[str, float] = {}
    for entry in entries:
        kind = entry.get("kind")
        ref = FunctionRef(str(entry.get("module")), str(entry.get("name")))
        where = f"@{'on_event' if kind == 'event' else kind} on {ref.target}"
        if entry.get("problem"):
            problems.add(where, str(entry["problem"]))
            continue
        _add_timeout(problems, where, ref, entry.get("timeout"), timeouts)
        if kind == "event":
            if _check_event(problems, where, entry.get("event")):
                spec = HandlerSpec(str(entry["event"]), ref)
                if spec not in handlers:
                    handlers.append(spec)
        elif kind == "schedule":
            cron, tz = entry.get("cron"), entry.get("tz", "UTC")
            cron_ok = _check_cron(problems, where, cron)
            if _check_tz(problems, where, tz) and cron_ok:
                schedule = ScheduleSpec(" ".join(str(cron).split()), str(tz), ref)
                if schedule not in schedules:
                    schedules.append(schedule)
        elif kind == "function" and ref not in functions:
            functions.append(ref)
    problems.raise_any("Invalid entry points in the build's code")
    return Manifest(tuple(handlers), tuple(schedules), tuple(functions), timeouts)


def _add_timeout(
    problems: _Problems,
    where: str,
    ref: FunctionRef | None,
    value: Any,
    timeouts: dict[str, float],
) -> None:
    """Record a declared ``timeout`` (seconds, 0 < t <= 24 h) of ``ref``; one function has one
    timeout, however many entries name it."""
    if value is None or ref is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        problems.add(f"{where}.timeout", f"{value!r} is not a number of seconds above 0")
        return
    if value > MAX_TIMEOUT_SECONDS:
        problems.add(f"{where}.timeout", f"{value} s is over the limit of 86400 s (24 h)")
        return
    known = timeouts.setdefault(ref.target, float(value))
    if known != float(value):
        problems.add(
            f"{where}.timeout",
            f"{ref.target} is given two timeouts ({known:g} s and {value:g} s): give it one",
        )


def event_type_problem(event: Any) -> str | None:
    """What is wrong with ``event`` as an event type (1-200 letters, digits and ``_ . : -``,
    not starting with the reserved ``hot:``), or None."""
    if not isinstance(event, str) or not _EVENT.match(event):
        shown = repr(event)[:80]
        return f"{shown} is not an event type: letters, digits and _ . : - (e.g. user.signup)"
    if event.startswith(_RESERVED_EVENTS):
        return f"{event!r}: events starting with hot: are reserved"
    return None


def _check_event(problems: _Problems, where: str, event: Any) -> bool:
    if (problem := event_type_problem(event)) is not None:
        problems.add(where, problem)
        return False
    return True


def _check_cron(problems: _Problems, where: str, cron: Any) -> bool:
    if not isinstance(cron, str) or not cron.strip():
        problems.add(where, 'must be a cron expression such as "0 0 * * *"')
        return False
    if len(cron.split()) not in (5, 6):
        problems.add(
            where,
            f"{cron!r} has {len(cron.split())} fields: write 5 (minute hour day month weekday) "
            "or 6 (with seconds first)",
        )
        return False
    try:
        CronSim(cron, datetime(2000, 1, 1))
    except CronSimError as exc:
        problems.add(where, f"{cron!r} is not a valid cron expression ({exc})")
        return False
    return True


def _check_tz(problems: _Problems, where: str, tz: Any) -> bool:
    if not isinstance(tz, str) or not tz:
        problems.add(where, 'must be an IANA time zone name such as "Europe/Paris" or "UTC"')
        return False
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        problems.add(where, f"{tz!r} is not a known time zone: use an IANA name like Europe/Paris")
        return False
    return True

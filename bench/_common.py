"""What the benchmarks share: percentiles, a free loopback port, the versions measured, the
PASS/MISS verdicts and the results file. Standard library only; imported as ``bench._common``
(the scripts put the repository root on ``sys.path``)."""

from __future__ import annotations

import json
import platform
import socket
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Figure = tuple[str, str, str, bool]
"""(name, value, target, met): a target of "-" is information, not a goal."""


def pct(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; NaN when there are none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def versions(dists: Sequence[str]) -> dict[str, str]:
    """Python's version and each installed distribution's (or "not installed")."""
    from importlib.metadata import version

    found = {"python": platform.python_version()}
    for dist in dists:
        try:
            found[dist] = version(dist)
        except Exception:
            found[dist] = "not installed"
    return found


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(
    figures: Sequence[Figure],
    path: Path,
    *,
    script: str,
    argv: Sequence[str],
    details: Any,
    strict: bool,
    **context: Any,
) -> int:
    """Print every figure with its verdict, write them (with ``context`` and ``details``) to
    ``path`` as JSON, and return the exit code: 1 with ``strict`` when a target was missed."""
    print()
    for name, value, target, ok in figures:
        print(f"{verdict(ok) if target != '-' else 'info':<5} {name}: {value}  [target {target}]")
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", script, *argv]),
        **context,
        "figures": [{"figure": n, "value": v, "target": t, "pass": ok} for n, v, t, ok in figures],
        "details": details,
    }
    path.write_text(json.dumps(body, indent=2) + "\n")
    print(f"\nwritten to {path.relative_to(Path(__file__).resolve().parent.parent)}")
    missed = [f for f in figures if f[2] != "-" and not f[3]]
    return 1 if strict and missed else 0

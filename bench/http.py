"""Requests per second of agentplex against a bare Starlette app served the same way.

    python bench/http.py [--rounds 5] [--duration 5] [--connections 32]

Measures ``GET /health/live`` (public) and ``GET /api/v1/logs?limit=20`` (authenticated,
rate-limited, 20 entries) with wrk, alternating bare Starlette and `agentplex serve` round by
round, and reports each median as a ratio to bare Starlette (target >= 0.6). The result is
written to bench/results/http.json. See bench/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder heads sys.path, and bench/http.py would shadow the
# standard library's `http` package for everything imported below.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "http.json"
TARGET = 0.6
LIST_PATH = "/api/v1/logs?limit=20"
SCENARIOS = {"health_live": "/health/live", "list_logs": LIST_PATH}
ENTRIES = 20


@dataclass
class Server:
    """A server process under test, pinned to the server core when pinning works."""

    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    headers: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, pin: list[str]) -> None:
        self.proc = subprocess.Popen(
            [*pin, *self.command],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                sys.exit(f"{self.name} exited with {self.proc.returncode}:\n{err}")
            try:
                with urllib.request.urlopen(self.url + "/health/live", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        sys.exit(f"{self.name} did not answer on {self.url} within 30 s")

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.url + path, headers=self.headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pinning() -> tuple[list[str], list[str], str]:
    """taskset prefixes for the server and for wrk: one core each when there are two."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        probe = subprocess.run(["taskset", "-c", "0", "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["taskset", "-c", "1"], ["taskset", "-c", "0"], "server cpu 1, wrk cpu 0"
    return [], [], "not pinned (taskset unavailable or a single cpu)"


def _wrk(url: str, headers: dict[str, str], args: argparse.Namespace, pin: list[str]) -> float:
    """Requests per second wrk measured; exits if any answer was not 2xx/3xx."""
    command = [*pin, "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx or 3xx responses" in out or "Socket errors" in out:
        sys.exit(f"wrk saw failed requests against {url}; not a valid measurement:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        sys.exit(f"could not read wrk's output:\n{out}")
    return float(match.group(1))


def _seed_log_entries(port: int, count: int) -> None:
    """Make uvicorn log ``count`` warnings (one per malformed request) into the log store."""
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"NOT HTTP\r\n\r\n")
            s.recv(4096)


def _prepare_agentplex(workdir: Path, env: dict[str, str]) -> tuple[Server, str]:
    data_dir = workdir / "agentplex"
    agentplex = Path(sys.executable).parent / "agentplex"
    base = [str(agentplex)] if agentplex.exists() else [sys.executable, "-m", "agentplex.cli"]
    created = subprocess.run(
        [*base, "auth", "token", "--name", "bench", "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip()
    port = _free_port()
    command = [*base, "serve", "--port", str(port), "--data-dir", str(data_dir)]
    server = Server("agentplex", command, env, port, {"Authorization": f"Bearer {key}"})
    return server, key


def _check_agentplex(server: Server) -> list[dict[str, Any]]:
    """The list route answers 200 with 20 entries and rate-limit headers; returns the entries."""
    status, headers, body = server.get(LIST_PATH)
    lowered = {k.lower(): v for k, v in headers.items()}
    entries: list[dict[str, Any]] = json.loads(body)["entries"]
    if status != 200 or "x-ratelimit-limit" not in lowered or len(entries) != ENTRIES:
        sys.exit(f"agentplex list route is not what the bench expects: {status} {headers} {body!r}")
    return entries


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    found = {"python": platform.python_version()}
    for dist in ("agentplex", "uvicorn", "starlette", "fastapi", "uvloop", "httptools"):
        try:
            found[dist] = version(dist)
        except Exception:
            found[dist] = "not installed"
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    found["wrk"] = (wrk.stdout or wrk.stderr).split("\n")[0].strip()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds per app and route (>= 3)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a ratio misses 0.6")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be at least 3")
    if shutil.which("wrk") is None:
        print("wrk is not installed; install it with: apt-get install wrk", file=sys.stderr)
        return 2

    server_pin, client_pin, pinning = _pinning()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPLEX_")}
    env.pop("HOTPLEX_API_KEY", None)
    env.update(
        AGENTPLEX_RATE_LIMIT_DEFAULT="1000000/second",
        AGENTPLEX_LOG_LEVEL="warning",
        AGENTPLEX_LOG_ACCESS_LOG="false",
        AGENTPLEX_GIT_SHA="bench",
    )
    results: dict[str, dict[str, list[float]]] = {
        s: {"bare": [], "agentplex": []} for s in SCENARIOS
    }
    with tempfile.TemporaryDirectory(prefix="agentplex-bench-") as tmp:
        workdir = Path(tmp)
        agentplex, _key = _prepare_agentplex(workdir, env)
        agentplex.start(server_pin)
        try:
            _seed_log_entries(agentplex.port, ENTRIES)
            entries_file = workdir / "entries.json"
            entries_file.write_text(json.dumps(_check_agentplex(agentplex)))
            bare = Server(
                "bare starlette",
                [sys.executable, str(BENCH / "_bare_starlette.py"), "--port", str(_free_port())],
                {**env, "BENCH_BARE_ENTRIES": str(entries_file)},
                0,
            )
            bare.port = int(bare.command[-1])
            bare.start(server_pin)
            try:
                print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s; {pinning}")
                for server in (bare, agentplex):  # warm both up, unrecorded
                    for path in SCENARIOS.values():
                        warm = argparse.Namespace(**{**vars(args), "duration": 1})
                        _wrk(server.url + path, server.headers, warm, client_pin)
                for round_no in range(1, args.rounds + 1):
                    for scenario, path in SCENARIOS.items():
                        for server, label in ((bare, "bare"), (agentplex, "agentplex")):
                            rps = _wrk(server.url + path, server.headers, args, client_pin)
                            results[scenario][label].append(rps)
                            print(
                                f"round {round_no}  {scenario:<12} {label:<10} {rps:>10.0f} req/s"
                            )
            finally:
                bare.stop()
        finally:
            agentplex.stop()

    summary: dict[str, Any] = {}
    print()
    print(f"{'route':<40} {'bare':>10} {'agentplex':>10} {'ratio':>7}")
    for scenario, path in SCENARIOS.items():
        bare_median = statistics.median(results[scenario]["bare"])
        ours_median = statistics.median(results[scenario]["agentplex"])
        ratio = ours_median / bare_median
        summary[scenario] = {
            "path": path,
            "bare_rps": results[scenario]["bare"],
            "agentplex_rps": results[scenario]["agentplex"],
            "bare_median": round(bare_median, 1),
            "agentplex_median": round(ours_median, 1),
            "ratio": round(ratio, 3),
            "meets_target": ratio >= TARGET,
        }
        verdict = "ok" if ratio >= TARGET else f"BELOW {TARGET}"
        print(f"GET {path:<36} {bare_median:>10.0f} {ours_median:>10.0f} {ratio:>7.2f}  {verdict}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": " ".join(["python", "bench/http.py", *sys.argv[1:]]),
                "wrk": {
                    "threads": args.threads,
                    "connections": args.connections,
                    "duration_s": args.duration,
                },
                "rounds": args.rounds,
                "pinning": pinning,
                "cpus": os.cpu_count(),
                "versions": _versions(),
                "target_ratio": TARGET,
                "scenarios": summary,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwritten to {RESULTS.relative_to(BENCH.parent)}")
    missed = [s for s, v in summary.items() if not v["meets_target"]]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())

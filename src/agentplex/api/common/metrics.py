"""Prometheus metrics: HTTP traffic by route template, process figures, and the gauges each
capability registers. PAR clients asking for JSON get its ``{runtime, agents}`` shape."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The server's metric registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Counter(
            "agentplex_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "agentplex_http_request_duration_seconds",
            "Time from request to the end of the response, by route template.",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "agentplex_http_requests_in_flight",
            "Requests being served now.",
            registry=self.registry,
        )
        self.errors = 0
        self.total = 0
        self._observers: dict[tuple[str, str], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one finished request."""
        key = (method, route)
        pair = self._observers.get(key)
        if pair is None:
            pair = self._observers[key] = (
                self.latency.labels(method, route),
                {},
            )
        pair[0].observe(seconds)
        counters: dict[int, Any] = pair[1]
        counter = counters.get(status)
        if counter is None:
            counter = counters[status] = self.requests.labels(method, route, str(status))
        counter.inc()
        self.total += 1
        if status >= 500:
            self.errors += 1

    def gauge(self, name: str, documentation: str, function: Callable[[], float]) -> None:
        """Register a gauge whose value is read from ``function`` at scrape time."""
        Gauge(name, documentation, registry=self.registry).set_function(function)

    def render(self) -> bytes:
        """Prometheus text exposition."""
        return generate_latest(self.registry)

    def par_json(self, started_monotonic: float) -> dict[str, Any]:
        """PAR's ``/metrics`` JSON body (``data`` part)."""
        return {
            "runtime": {
                "uptime": format_uptime(time.monotonic() - started_monotonic),
                "memory_usage": f"{rss_bytes() // (1024 * 1024)}MB",
                "cpu_usage": f"{cpu_percent():.0f}%",
                "request_count": self.total,
                "error_count": self.errors,
            },
            "agents": [],
        }


def format_uptime(seconds: float) -> str:
    """``HH:MM:SS`` as PAR prints uptimes."""
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def rss_bytes() -> int:
    """Resident memory of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


_cpu_sample: list[float] = [time.monotonic(), time.process_time()]


def cpu_percent() -> float:
    """CPU used by this process since the previous call, in percent of one core."""
    now, used = time.monotonic(), time.process_time()
    elapsed = now - _cpu_sample[0]
    percent = 100.0 * (used - _cpu_sample[1]) / elapsed if elapsed > 0 else 0.0
    _cpu_sample[:] = [now, used]
    return percent

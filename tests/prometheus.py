"""A real Prometheus server for tests, and an exporter whose values the test sets.

`prometheus(tmp, targets)` starts the Debian-packaged `/usr/bin/prometheus` on
127.0.0.1 and a free port, with its storage in `tmp`, scraping every second.
Each target is a `host:port` plus the labels a Kubernetes scrape would add
(`namespace`, `pod`), so z2m's default queries select it unchanged. The
yielded object can `stop()` and `start()` the server on the same port with the
same data, to take metrics away mid-test.

`Exporter` is a prometheus_client HTTP server in the test process exposing the
metric names the sample app exports (`app_http_requests_total`,
`app_http_request_duration_seconds`, `process_cpu_seconds_total`,
`app_db_queries_total`, `app_db_pool_connections`, `app_queue_depth`). The
test sets rates and levels (`exporter.set(rps=50, cpu_percent=90)`); counters
grow at the set rate between scrapes, so `rate()` in Prometheus reads them back.
Nothing here is a mock: Prometheus really scrapes and really evaluates PromQL.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from tests.services import free_port, wait_for

PROMETHEUS = "/usr/bin/prometheus"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
READ_ROUTE = "/api/posts/{post_id:int}"


@dataclass
class _Counter:
    """A counter that grows at `rate` per second, integrated exactly between changes."""

    rate: float = 0.0
    base: float = 0.0
    since: float = field(default_factory=time.monotonic)

    def value(self, now: float) -> float:
        return self.base + self.rate * (now - self.since)

    def set_rate(self, rate: float, now: float) -> None:
        self.base, self.since, self.rate = self.value(now), now, rate


class Exporter(Collector):
    """Sample-app metrics with values the test controls, served over HTTP."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = _Counter()
        self.scrapes = _Counter(rate=1.0)
        self.cpu = _Counter()
        self.queries = _Counter()
        self.latency = 0.02
        self.connections = 0.0
        self.queue_depth: float | None = None
        registry = CollectorRegistry()
        registry.register(self)
        self.port = free_port()
        self._server, self._thread = start_http_server(
            self.port, addr="127.0.0.1", registry=registry
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(
        self,
        rps: float | None = None,
        cpu_percent: float | None = None,
        latency_seconds: float | None = None,
        db_qps: float | None = None,
        db_connections: float | None = None,
        queue_depth: float | None = None,
    ) -> None:
        """Change some values; counters keep their totals and change their rates."""
        now = time.monotonic()
        with self._lock:
            if rps is not None:
                self.requests.set_rate(rps, now)
            if cpu_percent is not None:
                self.cpu.set_rate(cpu_percent / 100, now)
            if db_qps is not None:
                self.queries.set_rate(db_qps, now)
            if latency_seconds is not None:
                self.latency = latency_seconds
            if db_connections is not None:
                self.connections = db_connections
            if queue_depth is not None:
                self.queue_depth = queue_depth

    def collect(self) -> Iterable[Any]:
        now = time.monotonic()
        with self._lock:
            served = self.requests.value(now)
            requests = CounterMetricFamily(
                "app_http_requests", "HTTP requests served.", labels=["route", "method", "status"]
            )
            requests.add_metric([READ_ROUTE, "GET", "200"], served)
            # Scrapes count as requests in the real app; the default RPS query leaves them out.
            requests.add_metric(["/metrics", "GET", "200"], self.scrapes.value(now))
            yield requests
            duration = HistogramMetricFamily(
                "app_http_request_duration_seconds",
                "HTTP request latency.",
                labels=["route", "method"],
            )
            buckets = [(str(le), served if le >= self.latency else 0.0) for le in BUCKETS]
            duration.add_metric(
                [READ_ROUTE, "GET"], [*buckets, ("+Inf", served)], sum_value=served * self.latency
            )
            yield duration
            yield CounterMetricFamily(
                "process_cpu_seconds", "CPU seconds.", value=self.cpu.value(now)
            )
            queries = CounterMetricFamily("app_db_queries", "SQL statements.", labels=["target"])
            queries.add_metric(["primary"], self.queries.value(now))
            yield queries
            pool = GaugeMetricFamily(
                "app_db_pool_connections", "Pooled connections.", labels=["target", "state"]
            )
            pool.add_metric(["primary", "in_use"], self.connections)
            yield pool
            if self.queue_depth is not None:
                yield GaugeMetricFamily("app_queue_depth", "Queue depth.", value=self.queue_depth)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass(frozen=True)
class Target:
    """A scrape target and the labels a Kubernetes scrape would give it."""

    address: str
    namespace: str
    pod: str


@dataclass
class Prometheus:
    """A running (or stopped) Prometheus server."""

    port: int
    config: Path
    data: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start on the same port with the same storage; returns once it is ready."""
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )
        wait_for(self._ready, timeout=30, what=f"Prometheus on port {self.port}")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"Prometheus exited: {self.log.read_text()[-2000:]}")
        return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200

    def stop(self) -> None:
        """Stop it; its port refuses connections until `start()`."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def query(self, promql: str) -> Any:
        """An instant query's JSON answer (for test assertions)."""
        return httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5).json()

    def wait_for_value(self, promql: str, timeout: float = 30) -> float:
        """Wait until a query returns a number; return it."""
        found: list[float] = []

        def check() -> bool:
            result = self.query(promql)["data"]["result"]
            if result:
                found.append(float(result[0]["value"][1]))
            return bool(result)

        wait_for(check, timeout=timeout, what=f"a value for {promql}")
        return found[-1]


def write_config(path: Path, targets: Iterable[Target], scrape_interval: str = "1s") -> None:
    """A scrape config with one static target per entry (1 s interval by default)."""
    targets = list(targets)
    lines = [
        "global:",
        f"  scrape_interval: {scrape_interval}",
        "  scrape_timeout: 1s",
        "  evaluation_interval: 1s",
        "scrape_configs:",
        "  - job_name: app",
        "    static_configs:",
    ]
    for t in targets:
        lines += [
            f"      - targets: ['{t.address}']",
            f"        labels: {{namespace: '{t.namespace}', pod: '{t.pod}'}}",
        ]
    if not targets:
        lines += ["      - targets: []"]
    path.write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def prometheus(
    tmp: Path, targets: list[Target], scrape_interval: str = "1s"
) -> Iterator[Prometheus]:
    """A real Prometheus scraping `targets` (every second by default); stopped on exit."""
    tmp.mkdir(parents=True, exist_ok=True)
    server = Prometheus(
        port=free_port(),
        config=tmp / "prometheus.yml",
        data=tmp / "data",
        log=tmp / "prometheus.log",
    )
    write_config(server.config, targets, scrape_interval)
    server.start()
    try:
        yield server
    finally:
        server.stop()

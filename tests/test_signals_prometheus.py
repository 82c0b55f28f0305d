"""The default PromQL against a real Prometheus scraping the sample app's metric names."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests import prometheus as prom
from tests.services import free_port
from z2m import api, signals

pytestmark = pytest.mark.services
NAMESPACE, NAME = "shop-ns", "shop"


@pytest.fixture(scope="module")
def exporter() -> Iterator[prom.Exporter]:
    e = prom.Exporter()
    e.set(rps=40.0, cpu_percent=65.0, latency_seconds=0.3, db_qps=120.0, db_connections=7.0)
    e.set(queue_depth=12.0)
    yield e
    e.close()


@pytest.fixture(scope="module")
def server(
    exporter: prom.Exporter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[prom.Prometheus]:
    tmp = tmp_path_factory.mktemp("prometheus")
    with prom.prometheus(
        Path(tmp), [prom.Target(exporter.target, NAMESPACE, f"{NAME}-app-0")]
    ) as p:
        # rate() under-reads a series younger than its window: wait for a full window of scrapes.
        p.wait_for_value(f'count_over_time(up{{namespace="{NAMESPACE}"}}[6s]) >= 6')
        yield p


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def promotion(url: str, **signal_overrides: str) -> api.Promotion:
    return api.Promotion(
        mode="auto",
        prometheus=api.Prometheus(url=url, timeout_seconds=2, rate_window="4s"),
        signals=api.Signals(**signal_overrides),
    )


async def test_default_queries_read_back_what_the_app_exports(
    server: prom.Prometheus, client: httpx.AsyncClient
) -> None:
    reading = await signals.read(client, promotion(server.url), NAMESPACE, NAME)
    assert reading.problem is None
    v = reading.values
    # Scrapes of /metrics (1/s) are left out of RPS.
    assert v["rps"] == pytest.approx(40.0, rel=0.1)
    assert v["app_cpu_percent"] == pytest.approx(65.0, rel=0.1)
    assert v["latency_p95_seconds"] is not None and 0.25 < v["latency_p95_seconds"] <= 0.5
    assert v["database_queries_per_second"] == pytest.approx(120.0, rel=0.1)
    assert v["database_connections"] == 7.0 and v["queue_depth"] == 12.0
    # The exporter has no cache and no writes: no value rather than a made-up zero.
    assert v["cache_hit_ratio"] is None and v["write_ratio"] is None


async def test_another_apps_namespace_reads_as_no_data(
    server: prom.Prometheus, client: httpx.AsyncClient
) -> None:
    reading = await signals.read(client, promotion(server.url), "elsewhere", NAME)
    assert reading.problem is None and reading.values["rps"] is None


async def test_an_override_replaces_one_query_with_namespace_and_name_substituted(
    server: prom.Prometheus, client: httpx.AsyncClient
) -> None:
    override = 'sum(rate(app_http_requests_total{namespace="$namespace",pod=~"$name-.*"}[$window]))'
    reading = await signals.read(client, promotion(server.url, rps=override), NAMESPACE, NAME)
    assert reading.values["rps"] == pytest.approx(41.0, rel=0.1)  # scrapes included this time


async def test_nan_reads_as_no_value(server: prom.Prometheus, client: httpx.AsyncClient) -> None:
    p = promotion(server.url, queue_depth="vector(0) / vector(0)")
    assert (await signals.read(client, p, NAMESPACE, NAME)).values["queue_depth"] is None


async def test_bad_promql_quotes_prometheus_and_names_the_signal(
    server: prom.Prometheus, client: httpx.AsyncClient
) -> None:
    p = promotion(server.url, latency_p95_seconds="histogram_quantile(0.95,")
    reading = await signals.read(client, p, NAMESPACE, NAME)
    assert reading.problem is not None and reading.problem.reason == "BadQuery"
    assert "latency_p95_seconds" in reading.problem.message
    assert "parse error" in reading.problem.message


async def test_a_closed_port_is_unreachable_and_not_a_bad_query(
    client: httpx.AsyncClient,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    reading = await signals.read(client, promotion(url), NAMESPACE, NAME)
    assert reading.problem is not None and reading.problem.reason == "PrometheusUnreachable"
    assert url in reading.problem.message


async def test_something_that_is_not_prometheus_is_a_prometheus_error(
    exporter: prom.Exporter, client: httpx.AsyncClient
) -> None:
    # The exporter's port answers HTTP, but not the query API.
    reading = await signals.read(client, promotion(f"http://{exporter.target}"), NAMESPACE, NAME)
    assert reading.problem is not None and reading.problem.reason == "PrometheusError"

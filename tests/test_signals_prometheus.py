"""The default PromQL against a real Prometheus scraping the sample app's metric names."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

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


# --- a fleet: one grouped query per signal for every ScalingStage ----------------------------

FLEET = {("shop-ns", "shop"): "busy", ("shop-ns", "blog"): "quiet", ("other-ns", "shop"): "quiet"}


@pytest.fixture(scope="module")
def fleet_server(
    exporter: prom.Exporter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[prom.Prometheus]:
    quiet = prom.Exporter()
    quiet.set(rps=3.0, cpu_percent=10.0, latency_seconds=0.02, db_qps=5.0, db_connections=1.0)
    address = {"busy": exporter.target, "quiet": quiet.target}
    targets = [prom.Target(address[a], ns, f"{n}-app-0") for (ns, n), a in FLEET.items()]
    # A stage whose name holds "-app-": its pods are told apart by the last one.
    targets.append(prom.Target(quiet.target, "shop-ns", "my-app-shop-app-7d9f8b6c4-x2x9z"))
    tmp = tmp_path_factory.mktemp("prometheus-fleet")
    with prom.prometheus(Path(tmp), targets) as p:
        p.wait_for_value('min(count_over_time(up{job="app"}[6s])) >= 6')
        yield p
    quiet.close()


def fleet_queries_sent() -> float:
    return REGISTRY.get_sample_value("z2m_prometheus_queries_total", {"scope": "fleet"}) or 0.0


def object_queries_sent() -> float:
    return REGISTRY.get_sample_value("z2m_prometheus_queries_total", {"scope": "object"}) or 0.0


async def test_a_fleet_is_read_with_one_query_per_signal_and_agrees_with_each_objects_own(
    fleet_server: prom.Prometheus, client: httpx.AsyncClient
) -> None:
    p = promotion(fleet_server.url)
    assert p.prometheus is not None
    sent = fleet_queries_sent()
    fleet = await signals.read_fleet(client, p.prometheus)
    assert fleet_queries_sent() - sent == len(signals.DEFAULT_QUERIES) == fleet.queries
    assert not fleet.problems
    for namespace, name in [*FLEET, ("shop-ns", "my-app-shop")]:
        asked = object_queries_sent()
        grouped = await signals.read(client, p, namespace, name, fleet=fleet)
        assert object_queries_sent() == asked  # nothing asked for this object alone
        alone = await signals.read(client, p, namespace, name)
        assert grouped.problem is None and alone.problem is None
        assert grouped.values.keys() == alone.values.keys()
        for signal, value in alone.values.items():
            assert (grouped.values[signal] is None) == (value is None), (name, signal)
            if value is not None:
                assert grouped.values[signal] == pytest.approx(value, rel=0.1, abs=0.01)
    busy = await signals.read(client, p, "shop-ns", "shop", fleet=fleet)
    assert busy.values["rps"] == pytest.approx(40.0, rel=0.1)
    quiet = await signals.read(client, p, "shop-ns", "blog", fleet=fleet)
    assert quiet.values["rps"] == pytest.approx(3.0, rel=0.1)


async def test_a_fleet_reading_stays_in_the_namespaces_given(
    fleet_server: prom.Prometheus, client: httpx.AsyncClient
) -> None:
    p = promotion(fleet_server.url)
    assert p.prometheus is not None
    fleet = await signals.read_fleet(client, p.prometheus, ("other-ns",))
    assert set(fleet.values["rps"]) == {("other-ns", "shop")}


async def test_an_overridden_signal_is_asked_alone_and_the_rest_come_from_the_fleet(
    fleet_server: prom.Prometheus, client: httpx.AsyncClient
) -> None:
    override = 'sum(rate(app_http_requests_total{namespace="$namespace",pod=~"$name-.*"}[$window]))'
    p = promotion(fleet_server.url, rps=override)
    assert p.prometheus is not None
    fleet = await signals.read_fleet(client, p.prometheus)
    asked = object_queries_sent()
    reading = await signals.read(client, p, "shop-ns", "shop", fleet=fleet)
    assert object_queries_sent() - asked == 1
    assert reading.values["rps"] == pytest.approx(41.0, rel=0.1)  # scrapes included
    assert reading.values["app_cpu_percent"] == pytest.approx(65.0, rel=0.1)


async def test_a_fleet_reading_from_a_closed_port_is_unreachable_for_every_object(
    client: httpx.AsyncClient,
) -> None:
    p = promotion(f"http://127.0.0.1:{free_port()}")
    assert p.prometheus is not None
    fleet = await signals.read_fleet(client, p.prometheus)
    reading = await signals.read(client, p, "shop-ns", "shop", fleet=fleet)
    assert reading.problem is not None and reading.problem.reason == "PrometheusUnreachable"

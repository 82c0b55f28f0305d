"""Prometheus I/O for auto-promotion: the default PromQL and the instant queries.

Every signal has a default query written against the metrics the sample app
exports (see `sample_app/metrics.py`, whose names are a contract) and the
labels a Kubernetes scrape adds (`namespace`, `pod`); a ScalingStage may
replace any of them in `spec.promotion.signals`. In a query, `$namespace`,
`$name` and `$window` (the rate range, `spec.promotion.prometheus.rateWindow`)
are substituted.

`read` asks Prometheus' `/api/v1/query` for every signal at once and tells
apart what can go wrong, because each asks for a different reaction:

- unreachable (connection refused, DNS, timeout): `PrometheusUnreachable`;
- a query Prometheus refuses (HTTP 400/422, `errorType` bad_data): `BadQuery`,
  with Prometheus' own error text and the signal's name;
- any other error answer (5xx, not JSON): `PrometheusError`;
- an empty result, NaN or an infinity: that signal has no value (None).
  Staleness is Prometheus' own: a series whose target stopped being scraped
  ends with a staleness marker, and `rate()` needs samples inside `$window`.

Nothing here decides anything; `z2m.decide` does.
"""

from __future__ import annotations

import asyncio
import math
import string
from dataclasses import dataclass, field
from typing import Any

import httpx

from z2m import api

_APP = 'namespace="$namespace",pod=~"$name-app-.*"'
_PROBES = 'route=~"/metrics|/healthz|/readyz"'
_SERVED = (
    f'sum(rate(app_http_requests_total{{{_APP},route!~"/metrics|/healthz|/readyz"}}[$window]))'
)

DEFAULT_QUERIES: dict[str, str] = {
    # Every request the app served, less probes and scrapes (which exist whenever the app is
    # scraped, so an idle app reads 0 rather than nothing).
    "rps": f"sum(rate(app_http_requests_total{{{_APP}}}[$window])) - "
    f"(sum(rate(app_http_requests_total{{{_APP},{_PROBES}}}[$window])) or vector(0))",
    # Percent of one core, averaged over app processes (prometheus_client's process collector).
    "app_cpu_percent": f"avg(rate(process_cpu_seconds_total{{{_APP}}}[$window])) * 100",
    "latency_p95_seconds": "histogram_quantile(0.95, sum by (le) (rate("
    f'app_http_request_duration_seconds_bucket{{{_APP},route!~"/metrics|/healthz|/readyz"}}'
    "[$window])))",
    "database_connections": f'sum(app_db_pool_connections{{{_APP},state="in_use"}})',
    "database_queries_per_second": f"sum(rate(app_db_queries_total{{{_APP}}}[$window]))",
    "cache_hit_ratio": f'sum(rate(app_cache_requests_total{{{_APP},result="hit"}}[$window])) / '
    f"sum(rate(app_cache_requests_total{{{_APP}}}[$window]))",
    "queue_depth": 'max(app_queue_depth{namespace="$namespace",pod=~"$name-(app|worker)-.*"})',
    "write_ratio": f"sum(rate(app_http_requests_total{{{_APP},"
    'method!~"GET|HEAD",route!~"/metrics|/healthz|/readyz"}[$window])) / ' + _SERVED,
    "static_ratio": f'sum(rate(app_http_requests_total{{{_APP},route="/static"}}[$window])) / '
    + _SERVED,
}
"""Default PromQL per signal, before substitution."""


@dataclass(frozen=True)
class Problem:
    """Why the signals could not be read: a condition reason and a message for people."""

    reason: str
    message: str


@dataclass(frozen=True)
class Reading:
    """The outcome of reading every signal once."""

    values: dict[str, float | None] = field(default_factory=dict)
    problem: Problem | None = None

    @property
    def missing(self) -> list[str]:
        """Signals that had no value."""
        return [s for s, v in self.values.items() if v is None]


class QueryError(Exception):
    """One query failed; carries the Problem for the whole reading."""

    def __init__(self, problem: Problem) -> None:
        """Wrap `problem`."""
        super().__init__(problem.message)
        self.problem = problem


def queries(promotion: api.Promotion, namespace: str, name: str) -> dict[str, str]:
    """Every signal's PromQL, overrides applied and `$namespace`/`$name`/`$window` substituted."""
    window = promotion.prometheus.rate_window if promotion.prometheus else "2m"
    out: dict[str, str] = {}
    for signal, default in DEFAULT_QUERIES.items():
        text = getattr(promotion.signals, signal) or default
        out[signal] = string.Template(text).safe_substitute(
            namespace=namespace, name=name, window=window
        )
    return out


def query_url(base: str) -> str:
    """The instant-query endpoint under a Prometheus base URL (which may carry a path)."""
    return base.rstrip("/") + "/api/v1/query"


def value_of(body: Any) -> float | None:
    """The number in a successful /api/v1/query answer; None for no value, NaN or infinity.

    A vector with several series (an override without an aggregation) gives the
    largest value, so a per-pod query reads as its busiest pod.
    """
    data = body.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    samples: list[Any]
    if kind == "scalar":
        samples = [result]
    elif kind == "vector":
        samples = [series.get("value") for series in result or []]
    else:
        raise QueryError(
            Problem("BadQuery", f"the query returns a {kind}, not an instant vector or scalar")
        )
    numbers = []
    for sample in samples:
        try:
            number = float(sample[1])
        except (TypeError, ValueError, IndexError):
            continue
        if math.isfinite(number):
            numbers.append(number)
    return max(numbers) if numbers else None


async def query(client: httpx.AsyncClient, base: str, promql: str, seconds: float) -> float | None:
    """One instant query; raises QueryError with the kind of failure."""
    url = query_url(base)
    try:
        response = await client.get(url, params={"query": promql}, timeout=seconds)
    except httpx.TimeoutException as exc:
        raise QueryError(
            Problem("PrometheusUnreachable", f"no answer from {url} within {seconds:g} s")
        ) from exc
    except httpx.HTTPError as exc:
        raise QueryError(
            Problem("PrometheusUnreachable", f"cannot reach {url}: {type(exc).__name__}: {exc}")
        ) from exc
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise QueryError(
            Problem(
                "PrometheusError",
                f"{url} answered HTTP {response.status_code} with no Prometheus JSON "
                f"(is this a Prometheus?): {response.text[:200]!r}",
            )
        )
    if response.status_code in (400, 422) or body.get("errorType") == "bad_data":
        raise QueryError(Problem("BadQuery", str(body.get("error") or response.text[:500])))
    if response.status_code != 200 or body.get("status") != "success":
        kind = body.get("errorType") or f"HTTP {response.status_code}"
        raise QueryError(Problem("PrometheusError", f"{kind}: {body.get('error') or ''}"))
    return value_of(body)


NO_PROMETHEUS = (
    "spec.promotion.prometheus.url is not set, and z2m runs no Prometheus of its own here: "
    "it runs one at stage 5, unless the cluster serves the Prometheus Operator's PodMonitor "
    "(then give the URL of the Prometheus that selects it)"
)


async def read(
    client: httpx.AsyncClient,
    promotion: api.Promotion,
    namespace: str,
    name: str,
    limit: asyncio.Semaphore | None = None,
    *,
    url: str | None = None,
) -> Reading:
    """Read every signal concurrently; one failed query makes the whole reading a Problem.

    `url` is the Prometheus to ask; by default `spec.promotion.prometheus.url`
    (`promote.prometheus_url` chooses z2m's own where that is unset). `limit`
    bounds queries in flight across readings: sized to the client's connection
    pool, it keeps requests from queueing inside httpcore's pool, whose
    bookkeeping grows with the queue.
    """
    limit = limit or asyncio.Semaphore(len(DEFAULT_QUERIES))
    settings = promotion.prometheus or api.Prometheus()
    found, timeout = url or settings.url, settings.timeout_seconds
    if found is None:
        return Reading(problem=Problem("NoPrometheus", NO_PROMETHEUS))
    base: str = found

    async def limited(promql: str) -> float | None:
        async with limit:
            return await query(client, base, promql, timeout)

    wanted = queries(promotion, namespace, name)
    results = await asyncio.gather(
        *(limited(promql) for promql in wanted.values()),
        return_exceptions=True,
    )
    values: dict[str, float | None] = {}
    problems: list[tuple[str, Problem]] = []
    for signal, result in zip(wanted, results, strict=True):
        if isinstance(result, QueryError):
            problems.append((signal, result.problem))
        elif isinstance(result, BaseException):
            problems.append(
                (signal, Problem("PrometheusError", f"{type(result).__name__}: {result}"))
            )
        else:
            values[signal] = result
    if problems:
        # Unreachable outranks a bad query: the query may be fine once Prometheus answers.
        order = ("PrometheusUnreachable", "PrometheusError", "BadQuery")
        problems.sort(key=lambda p: order.index(p[1].reason) if p[1].reason in order else 9)
        signal, first = problems[0]
        if first.reason == "BadQuery":
            bad = [s for s, p in problems if p.reason == "BadQuery"]
            message = f"Prometheus refused the query for {', '.join(bad)}: {first.message}"
            return Reading(values, Problem("BadQuery", message))
        return Reading(values, first)
    return Reading(values)

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

A fleet is read with one query per signal, not one per object: `fleet_queries`
are the same defaults grouped `by (namespace, name)`, the ScalingStage's name
taken from the pod's (`<name>-app-...`, `<name>-worker-...`; at stage 6 also
`<name>-service-<role>-...`, whose requests count as the app's). `read_fleet` asks
them once and `read(..., fleet=)` picks one object's values out of the answer;
a signal an object overrides is still asked for that object alone.

Nothing here decides anything; `z2m.decide` does.
"""

from __future__ import annotations

import asyncio
import math
import re
import string
from dataclasses import dataclass, field
from typing import Any

import httpx

from z2m import api, metrics

_SERVING = "app|service-[a-z]+"
"""The pods that serve the app's requests: the app's, and at stage 6 its services'."""
_APP = f'namespace="$namespace",pod=~"$name-({_SERVING})-.*"'
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

_GROUP = "namespace, name"
_FLEET_PROBES = '"/metrics|/healthz|/readyz"'


def _named(selector: str, components: str = _SERVING) -> str:
    """A selector of the pods of `components` with the ScalingStage's name as label `name`.

    Pod names are `<name>-<component>-<hash>...`; the greedy group takes the
    name up to the last `-app-`, and generated hashes never hold a vowel.
    """
    return f'label_replace({selector}, "name", "$$1", "pod", "(.+)-({components})-.*")'


def _fleet_defaults() -> dict[str, str]:
    app = f'namespace=~"$namespaces",pod=~".+-({_SERVING})-.*"'
    probes = 'route=~"/metrics|/healthz|/readyz"'
    not_probes = 'route!~"/metrics|/healthz|/readyz"'

    def total(metric: str, *matchers: str, rate: bool = True) -> str:
        series = metric + "{" + ",".join((app, *matchers)) + "}"
        inner = f"rate({series}[$window])" if rate else series
        return f"sum by ({_GROUP}) ({_named(inner)})"

    every = total("app_http_requests_total")
    served = total("app_http_requests_total", not_probes)
    writes = total("app_http_requests_total", 'method!~"GET|HEAD"', not_probes)
    static = total("app_http_requests_total", 'route="/static"')
    hits = total("app_cache_requests_total", 'result="hit"')
    cpu = _named("rate(process_cpu_seconds_total{" + app + "}[$window])")
    buckets = _named(
        "rate(app_http_request_duration_seconds_bucket{" + app + "," + not_probes + "}[$window])"
    )
    queue = _named(
        'app_queue_depth{namespace=~"$namespaces",pod=~".+-(app|worker)-.*"}', "app|worker"
    )
    return {
        "rps": f"{every} - ({total('app_http_requests_total', probes)} or 0 * {every})",
        "app_cpu_percent": f"avg by ({_GROUP}) ({cpu}) * 100",
        "latency_p95_seconds": f"histogram_quantile(0.95, sum by (le, {_GROUP}) ({buckets}))",
        "database_connections": total("app_db_pool_connections", 'state="in_use"', rate=False),
        "database_queries_per_second": total("app_db_queries_total"),
        "cache_hit_ratio": f"{hits} / {total('app_cache_requests_total')}",
        "queue_depth": f"max by ({_GROUP}) ({queue})",
        "write_ratio": f"{writes} / {served}",
        "static_ratio": f"{static} / {served}",
    }


FLEET_QUERIES: dict[str, str] = _fleet_defaults()
"""The defaults for every ScalingStage at once, grouped by (namespace, name), before
`$namespaces` (a regex of the served namespaces) and `$window` are substituted."""


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


def fleet_queries(window: str, namespaces: tuple[str, ...] = ()) -> dict[str, str]:
    """Every signal's grouped default, for the namespaces given (none: every namespace)."""
    # Escaped for the regex, then its backslashes for the PromQL string around it.
    pattern = "|".join(re.escape(n).replace("\\", "\\\\") for n in namespaces) or ".+"
    return {
        signal: string.Template(text).substitute(namespaces=pattern, window=window)
        for signal, text in FLEET_QUERIES.items()
    }


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


def grouped_values(body: Any) -> dict[tuple[str, str], float]:
    """A grouped answer's numbers by (namespace, name); NaN and infinities are left out."""
    data = body.get("data") or {}
    if data.get("resultType") != "vector":
        raise QueryError(Problem("BadQuery", f"the fleet query returns a {data.get('resultType')}"))
    out: dict[tuple[str, str], float] = {}
    for series in data.get("result") or []:
        labels = series.get("metric") or {}
        key = (str(labels.get("namespace", "")), str(labels.get("name", "")))
        try:
            number = float(series["value"][1])
        except (KeyError, TypeError, ValueError, IndexError):
            continue
        if math.isfinite(number):
            out[key] = max(number, out.get(key, number))
    return out


async def query(client: httpx.AsyncClient, base: str, promql: str, seconds: float) -> float | None:
    """One instant query; raises QueryError with the kind of failure."""
    metrics.PROMETHEUS_QUERIES.labels("object").inc()
    return value_of(await _ask(client, base, promql, seconds))


async def _ask(client: httpx.AsyncClient, base: str, promql: str, seconds: float) -> Any:
    """One instant query's successful JSON answer; raises QueryError with the kind of failure."""
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
    return body


@dataclass(frozen=True)
class Fleet:
    """One grouped reading of every signal: values by (namespace, name), or why not."""

    values: dict[str, dict[tuple[str, str], float]] = field(default_factory=dict)
    problems: dict[str, Problem] = field(default_factory=dict)
    queries: int = 0


async def read_fleet(
    client: httpx.AsyncClient,
    prometheus: api.Prometheus,
    namespaces: tuple[str, ...] = (),
    limit: asyncio.Semaphore | None = None,
) -> Fleet:
    """Ask every grouped default once: one query per signal, whatever the fleet's size."""
    if prometheus.url is None:
        raise ValueError("a fleet reading needs spec.promotion.prometheus.url")
    base = prometheus.url
    limit = limit or asyncio.Semaphore(len(FLEET_QUERIES))
    wanted = fleet_queries(prometheus.rate_window, namespaces)

    async def limited(promql: str) -> dict[tuple[str, str], float] | Problem:
        metrics.PROMETHEUS_QUERIES.labels("fleet").inc()
        # A failed query is an answer, not an exception: a task that ended in one is
        # raised again by Kopf if the operator stops meanwhile, though gather took it.
        try:
            async with limit:
                body = await _ask(client, base, promql, prometheus.timeout_seconds)
            return grouped_values(body)
        except QueryError as exc:
            return exc.problem

    results = await asyncio.gather(*(limited(q) for q in wanted.values()), return_exceptions=True)
    values: dict[str, dict[tuple[str, str], float]] = {}
    problems: dict[str, Problem] = {}
    for signal, result in zip(wanted, results, strict=True):
        if isinstance(result, Problem):
            problems[signal] = result
        elif isinstance(result, BaseException):
            problems[signal] = Problem("PrometheusError", f"{type(result).__name__}: {result}")
        else:
            values[signal] = result
    return Fleet(values, problems, len(wanted))


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
    fleet: Fleet | None = None,
    *,
    url: str | None = None,
) -> Reading:
    """Read every signal concurrently; one failed query makes the whole reading a Problem.

    `url` is the Prometheus to ask; by default `spec.promotion.prometheus.url`
    (`promote.prometheus_url` chooses z2m's own where that is unset). `limit`
    bounds queries in flight across readings: sized to the client's connection
    pool, it keeps requests from queueing inside httpcore's pool, whose
    bookkeeping grows with the queue. With `fleet` (a grouped reading of the
    same Prometheus and window), every signal left at its default is taken from it
    and only overridden ones are asked.
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
    grouped: dict[str, float | BaseException | None] = {}
    if fleet is not None:
        for signal in list(wanted):
            if getattr(promotion.signals, signal):
                continue  # overridden: asked for this object alone
            del wanted[signal]
            problem = fleet.problems.get(signal)
            grouped[signal] = (
                QueryError(problem)
                if problem is not None
                else fleet.values.get(signal, {}).get((namespace, name))
            )
    results = await asyncio.gather(
        *(limited(promql) for promql in wanted.values()),
        return_exceptions=True,
    )
    values: dict[str, float | None] = {}
    problems: list[tuple[str, Problem]] = []
    answers = [*zip(wanted, results, strict=True), *grouped.items()]
    for signal, result in sorted(answers, key=lambda a: list(DEFAULT_QUERIES).index(a[0])):
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

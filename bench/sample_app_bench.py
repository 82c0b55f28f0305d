"""Benchmark the sample app at stages of the ladder, in one run.

Not a test: it starts real PostgreSQL (primary + streaming replica), Redis and
RabbitMQ from the Debian packages, runs ``python -m sample_app`` processes in
each configuration, drives them with :func:`sample_app.load.run_load`, and
prints a table per configuration: throughput, p50/p95 latency, database
queries per request split primary/replica, cache hit ratio.  It also measures
a raw Redis GET against a raw indexed PostgreSQL query to test the seed's
"0.1 ms vs 5-50 ms" claim.

    .venv/bin/python bench/sample_app_bench.py [--rps 60,150] [--duration 12]

``--compare 4,5`` (or ``4,5,6``, ``5,6``) runs those stages side by side instead:
every stage's processes and services stay up for the whole run, and the stages
take turns, round after round (the order reversed every other round), so they
share the machine's noise.  Stage 4 is Redis, RabbitMQ and its workers; stage 5
is Kafka (a real KRaft node from the Maven jars) with a consumer group of stream
workers, Redis behind Sentinel and more app processes; stage 6 is stage 5 split
into the users, feed and notifications services behind the nginx gateway z2m
generates, with a Redis Cluster.  Besides latency it counts the queue path:
writes accepted, their fan-out jobs queued or run inline, jobs processed by the
workers and how long the workers took to finish after the load stopped.  It
prints each stage's medians over the rounds and the ratios between stages.

    .venv/bin/python bench/sample_app_bench.py --compare 4,5 --rps 100,200 \
        --duration 10 --rounds 3

Everything runs on one machine over loopback, so absolute numbers say little
about production; the ratios between configurations are the point.  On a
machine of few cores every process shares them: more app processes or a
broker with partitions add no CPU here, only contention.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import redis.asyncio as aioredis

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from sample_app.load import LoadResult, run_load  # noqa: E402
from tests import services as svc  # noqa: E402
from tests.services import (  # noqa: E402
    Kafka,
    Postgres,
    RabbitMQ,
    Redis,
    SampleApp,
    ScratchDatabase,
    kafka,
    postgres_primary,
    postgres_replica,
    rabbitmq,
    redis_cluster,
    redis_server,
    sample_app,
    sentinel_group,
)
from z2m import api, builders, plan  # noqa: E402
from z2m.builders import gateway  # noqa: E402


@dataclass(frozen=True)
class Row:
    """One configuration's results."""

    name: str
    load: LoadResult
    primary_per_request: float
    replica_per_request: float
    cache_hit_ratio: float | None


def _totals(apps: list[SampleApp]) -> dict[str, float]:
    def total(name: str, **labels: str) -> float:
        return sum(app.metric(name, **labels) for app in apps)

    return {
        "requests": total("app_http_requests_total")
        - total("app_http_requests_total", route="/metrics"),
        "primary": total("app_db_queries_total", target="primary"),
        "replica": total("app_db_queries_total", target="replica"),
        "hit": total("app_cache_requests_total", result="hit"),
        "miss": total("app_cache_requests_total", result="miss"),
        "error": total("app_cache_requests_total", result="error"),
    }


def measure(
    name: str,
    apps: list[SampleApp],
    rps: float,
    duration: float,
    workers: tuple[SampleApp, ...] = (),
) -> Row:
    """Run the load against ``apps`` and turn metric deltas into a row.

    ``workers`` get no HTTP load, but their database queries (the fan-out
    jobs moved out of the request) count towards queries per request.
    """
    counted = [*apps, *workers]
    before = _totals(counted)
    result = asyncio.run(run_load([a.url for a in apps], rps=rps, duration=duration, seed=42))
    # Let the worker drain what the last requests queued before counting.
    time.sleep(1.0 if workers else 0.0)
    after = _totals(counted)
    delta = {k: after[k] - before[k] for k in after}
    requests = max(delta["requests"], 1.0)
    lookups = delta["hit"] + delta["miss"] + delta["error"]
    return Row(
        name=name,
        load=result,
        primary_per_request=delta["primary"] / requests,
        replica_per_request=delta["replica"] / requests,
        cache_hit_ratio=delta["hit"] / lookups if lookups else None,
    )


def table(rows: list[Row]) -> str:
    """A Markdown table of the rows."""
    lines = [
        "| config | req | throughput (req/s) | p50 (ms) | p95 (ms) | errors | "
        "DB q/req primary | DB q/req replica | cache hit ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        hit = "-" if row.cache_hit_ratio is None else f"{row.cache_hit_ratio:.0%}"
        lines.append(
            f"| {row.name} | {row.load.requests} | {row.load.throughput:.0f} | "
            f"{row.load.p50 * 1000:.1f} | {row.load.p95 * 1000:.1f} | "
            f"{row.load.errors + row.load.dropped} | {row.primary_per_request:.2f} | "
            f"{row.replica_per_request:.2f} | {hit} |"
        )
    for row in rows:
        if row.load.errors or row.load.dropped:
            lines.append(f"\n{row.name}: statuses {row.load.statuses}, dropped {row.load.dropped}")
    return "\n".join(lines)


async def raw_latencies(db_url: str, redis_url: str, samples: int = 2000) -> dict[str, float]:
    """Median latency (s) of a Redis GET and of the app's two read queries."""

    async def median(call: Callable[[int], Awaitable[object]]) -> float:
        times = []
        for index in range(samples):
            started = time.perf_counter()
            await call(index)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    client = aioredis.Redis.from_url(redis_url)
    await client.set("bench:key", b"x" * 300)
    results = {"Redis GET (300 B value)": await median(lambda _: client.get("bench:key"))}
    await client.aclose()
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:

        async def query(sql: str, index: int) -> object:
            cur = await conn.execute(sql.encode(), (index % 20 + 1,))
            return await cur.fetchall()

        post_sql = "SELECT id, author_id, body, created_at FROM posts WHERE id = %s"
        feed_sql = (
            "SELECT id, author_id, body, created_at FROM posts WHERE author_id = %s"
            " ORDER BY id DESC LIMIT 20"
        )
        results["PostgreSQL post by primary key"] = await median(lambda i: query(post_sql, i))
        results["PostgreSQL a user's latest 20 posts"] = await median(lambda i: query(feed_sql, i))
    return results


@contextlib.contextmanager
def apps(tmp: Path, count: int, **env: str) -> Iterator[list[SampleApp]]:
    """Start ``count`` web processes with ``env``."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(sample_app(tmp, **env)) for _ in range(count)]


def main() -> int:
    """Run every configuration at every rate and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rps", default="60,150", help="comma-separated offered rates")
    parser.add_argument("--duration", type=float, default=12, help="seconds per rate")
    parser.add_argument(
        "--compare", default="", help="stages to run side by side, e.g. 4,5 or 4,5,6"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds with --compare")
    parser.add_argument(
        "--stage5-apps", type=int, default=STAGE5_APPS, help="app processes at stage 5"
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.rps.split(",")]
    if args.compare:
        stages = sorted({int(s) for s in args.compare.split(",")})
        if not set(stages) <= {4, 5, 6} or len(stages) < 2:
            parser.error("--compare takes two or more of 4, 5, 6")
        return compare(args, stages, rates)
    started = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="z2m-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with (
            postgres_primary(tmp) as primary,
            postgres_replica(primary, tmp) as replica,
            redis_server(tmp) as cache,
            rabbitmq(tmp) as broker,
        ):
            print(f"services up in {time.monotonic() - started:.0f}s", flush=True)

            def run(name: str, web: list[SampleApp], workers: tuple[SampleApp, ...] = ()) -> None:
                for rate in rates:
                    row = measure(f"{name} @{rate:.0f}/s", web, rate, args.duration, workers)
                    rows.append(row)
                    print(table([row]), flush=True)

            db = ScratchDatabase.create(primary)
            with apps(tmp, 1, DATABASE_URL=db.url) as stage2:
                run("stage 2: 1 app + DB", stage2)

            with apps(tmp, 2, **_database_env(primary, replica)) as stage3:
                run("stage 3: 2 apps + primary + replica", stage3)

            env = {
                **_database_env(primary, replica),
                "REDIS_URL": cache.url,
                "BROKER_URL": broker.url,
            }
            with (
                apps(tmp, 2, **env) as stage4,
                sample_app(tmp, ROLE="worker", **env) as worker,
            ):
                run("stage 4: stage 3 + Redis + RabbitMQ + worker", stage4, (worker,))
                processed = worker.metric("app_jobs_processed_total")
                published = sum(a.metric("app_jobs_published_total") for a in stage4)
            print(f"stage 4 jobs: published={published:.0f} processed={processed:.0f}")
            raw = asyncio.run(raw_latencies(env["DATABASE_URL"], cache.url))
    print()
    print(f"offered load per row: {args.duration:.0f}s at the given rate, 90% reads")
    print(table(rows))
    print()
    print("raw latency, median of 2000 sequential calls over loopback:")
    for label, seconds in raw.items():
        print(f"  {label}: {seconds * 1000:.3f} ms")
    print(f"total run time {time.monotonic() - started:.0f}s")
    return 0


# --------------------------------------------------------------------------- side by side

STAGE4_APPS = 4
"""Stage 4's app replicas (the catalog's), with its two RabbitMQ workers."""
STAGE5_APPS = 6
"""Stage 5's app processes: the HPA's minimum of 4 plus two it added under load."""
WORKERS = 2
"""Workers at stages 4 and 5 (the catalog's count, the stream workers' HPA minimum)."""
PARTITIONS = 6
DRAIN_TIMEOUT = 60.0


@dataclass
class Stack:
    """One stage's running processes: where the load goes, what is counted."""

    stage: int
    label: str
    urls: list[str]
    web: list[SampleApp]
    workers: list[SampleApp]


@dataclass(frozen=True)
class JobFigures:
    """The queue path during one measurement: writes and the jobs they fanned out."""

    accepted: int
    """Writes answered 201, each one fan-out job."""
    queued: int
    """Jobs the broker confirmed (RabbitMQ or Kafka)."""
    processed: int
    """Jobs done by the workers (first time; repeats are not counted)."""
    drain: float | None
    """Seconds after the load ended until the workers had done every queued job."""

    @property
    def inline(self) -> int:
        """Jobs run in the request because publishing failed."""
        return self.accepted - self.queued


@dataclass(frozen=True)
class Sample:
    """One stage at one rate in one round."""

    stage: int
    rate: float
    load: LoadResult
    jobs: JobFigures


def served_ok(load: LoadResult) -> float:
    """Requests answered below 400 per second: what an overloaded stack still serves."""
    ok = sum(n for status, n in load.statuses.items() if status.isdigit() and int(status) < 400)
    return ok / load.duration if load.duration > 0 else 0.0


def _web_counts(stack: Stack) -> tuple[float, float]:
    accepted = sum(
        a.metric("app_http_requests_total", route="/api/posts", method="POST", status="201")
        for a in stack.web
    )
    return accepted, sum(a.metric("app_jobs_published_total") for a in stack.web)


def _processed(stack: Stack) -> float:
    return sum(w.metric("app_jobs_processed_total", outcome="done") for w in stack.workers)


def measure_stack(stack: Stack, rate: float, duration: float, seed: int) -> Sample:
    """Offer ``rate`` to the stack for ``duration`` and wait for its workers to catch up.

    The web processes' counts are read in a thread while the workers' are polled: a
    web process's scrape may read Kafka's group lag first (``app_queue_depth``), and
    that must not delay the moment the drain is seen.
    """
    accepted0, queued0 = _web_counts(stack)
    processed0 = _processed(stack)
    result = asyncio.run(run_load(stack.urls, rps=rate, duration=duration, seed=seed))
    ended = time.monotonic()
    drain: float | None = None
    polls: list[tuple[float, float]] = []  # (when, jobs processed so far)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        web = pool.submit(_web_counts, stack)
        while True:
            processed = _processed(stack) - processed0
            polls.append((time.monotonic(), processed))
            if web.done():
                target = web.result()[1] - queued0
                done = [when for when, count in polls if count >= target]
                if done:
                    drain = done[0] - ended
                    break
            if polls[-1][0] - ended > DRAIN_TIMEOUT:
                break
            time.sleep(0.1)
        accepted, queued = web.result()
    jobs = JobFigures(
        accepted=round(accepted - accepted0),
        queued=round(queued - queued0),
        processed=round(processed),
        drain=drain,
    )
    return Sample(stack.stage, rate, result, jobs)


@contextlib.contextmanager
def stage4_stack(
    tmp: Path, primary: Postgres, replica: Postgres, cache: Redis, broker: RabbitMQ
) -> Iterator[Stack]:
    """Stage 4: four apps, a read replica, Redis, RabbitMQ and two workers."""
    env = {
        **_database_env(primary, replica),
        "REDIS_URL": cache.url,
        "BROKER_URL": broker.url,
    }
    with (
        apps(tmp, STAGE4_APPS, **env) as web,
        apps(tmp, WORKERS, ROLE="worker", **env) as workers,
    ):
        label = f"stage 4: {len(web)} apps, Redis, RabbitMQ, {len(workers)} workers"
        yield Stack(4, label, [a.url for a in web], web, workers)


def _stream_env(servers: str, name: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": servers,
        "KAFKA_TOPIC": f"{name}.jobs",
        "KAFKA_GROUP": f"{name}.workers",
        "KAFKA_PARTITIONS": str(PARTITIONS),
    }


@contextlib.contextmanager
def stage5_stack(
    tmp: Path, primary: Postgres, replica: Postgres, broker: Kafka, app_count: int
) -> Iterator[Stack]:
    """Stage 5: more apps, Redis master + replica behind three Sentinels, Kafka, stream workers."""
    database = _database_env(primary, replica)
    with sentinel_group(tmp) as sentinels:
        env = {
            **database,
            "REDIS_SENTINELS": sentinels.sentinels,
            "REDIS_MASTER_NAME": "z2m",
            "REDIS_PASSWORD": sentinels.password,
            **_stream_env(broker.servers, "stage5"),
        }
        with (
            apps(tmp, app_count, **env) as web,
            apps(tmp, WORKERS, ROLE="worker", **env) as workers,
        ):
            label = (
                f"stage 5: {len(web)} apps, Redis + Sentinel, Kafka "
                f"({PARTITIONS} partitions), {len(workers)} stream workers"
            )
            yield Stack(5, label, [a.url for a in web], web, workers)


STAGE6_APPS = 4
"""Stage 6's app processes (the catalog's minimum): they keep the routes no service took."""
GATEWAY_RATE = 100_000
"""The gateway's per-client limit in the bench: one load generator is one client."""


def gateway_config(upstreams: dict[str, list[int]], port: int, root: Path) -> str:
    """The nginx.conf z2m generates for stage 6, pointed at processes on loopback.

    Only the addresses, the listen port, the temp paths and the per-client rate change:
    each upstream lists every process of its role.
    """
    p = plan.resolve(api.ScalingStageSpec(stage=6), name="shop", namespace="bench")
    limit, gateway.RATE_PER_SECOND = gateway.RATE_PER_SECOND, GATEWAY_RATE
    try:
        conf = next(
            o
            for o in builders.build(p, builders.Owner("shop", "bench"))
            if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "shop-gateway"
        )["data"]["nginx.conf"]
    finally:
        gateway.RATE_PER_SECOND = limit
    for role, ports in upstreams.items():
        host = "shop-app" if role == "app" else f"shop-service-{role}"
        servers = " ".join(f"server 127.0.0.1:{port};" for port in ports)
        conf = conf.replace(f"server {host}:80;", servers)
    conf = conf.replace(f"listen {gateway.GATEWAY_PORT};", f"listen 127.0.0.1:{port};")
    # The pod writes its temp files under /tmp; here they go under root.
    return str(conf.replace("/tmp/", f"{root}/"))  # noqa: S108


@contextlib.contextmanager
def stage6_stack(tmp: Path, primary: Postgres, replica: Postgres, broker: Kafka) -> Iterator[Stack]:
    """Stage 6: the app split into services behind the nginx gateway, Redis Cluster, Kafka."""
    database = _database_env(primary, replica)
    p = plan.resolve(api.ScalingStageSpec(stage=6), name="shop", namespace="bench")
    with redis_cluster(tmp) as cluster:
        env = {
            **database,
            "REDIS_CLUSTER_NODES": cluster.nodes,
            "REDIS_PASSWORD": cluster.password,
            **_stream_env(broker.servers, "stage6"),
        }
        with contextlib.ExitStack() as stack:
            roles = {"app": stack.enter_context(apps(tmp, STAGE6_APPS, **env))}
            for service in p.microservices:
                count = service.autoscaling.min_replicas
                routes = ",".join(service.routes)
                roles[service.role] = stack.enter_context(
                    apps(tmp, count, SERVICE=service.role, SERVICE_ROUTES=routes, **env)
                )
            workers = stack.enter_context(apps(tmp, WORKERS, ROLE="worker", **env))
            port = svc.free_port()
            user = svc._unprivileged_user()
            root = svc._private_dir(tmp, "gateway", user)
            conf = gateway_config({r: [a.port for a in ps] for r, ps in roles.items()}, port, root)
            (root / "nginx.conf").write_text(conf)
            argv = ["nginx", "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;"]
            env_nginx = {"PATH": "/usr/bin:/bin:/usr/sbin"}
            stack.enter_context(svc.running(svc._as_user(user, argv), env_nginx, tmp / "nginx.log"))
            url = f"http://127.0.0.1:{port}"
            svc.wait_for(
                lambda: httpx.get(f"{url}/gateway-healthz").status_code == 200, 20, "gateway"
            )
            web = [a for ps in roles.values() for a in ps]
            counts = ", ".join(f"{len(ps)} {r}" for r, ps in roles.items())
            label = (
                f"stage 6: nginx gateway -> {counts}; Redis Cluster (3+3), Kafka "
                f"({PARTITIONS} partitions), {len(workers)} stream workers"
            )
            yield Stack(6, label, [url], web, workers)


def compare(args: argparse.Namespace, stages: list[int], rates: list[float]) -> int:
    """Run ``stages`` side by side, alternating, and print medians and ratios."""
    started = time.monotonic()
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="z2m-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with contextlib.ExitStack() as services:
            primary = services.enter_context(postgres_primary(tmp))
            replica = services.enter_context(postgres_replica(primary, tmp))
            stacks: list[Stack] = []
            if 4 in stages:
                cache = services.enter_context(redis_server(tmp))
                broker = services.enter_context(rabbitmq(tmp))
                stacks.append(
                    services.enter_context(stage4_stack(tmp, primary, replica, cache, broker))
                )
            if 5 in stages or 6 in stages:
                stream = services.enter_context(kafka(tmp))
            if 5 in stages:
                stacks.append(
                    services.enter_context(
                        stage5_stack(tmp, primary, replica, stream, args.stage5_apps)
                    )
                )
            if 6 in stages:
                stacks.append(services.enter_context(stage6_stack(tmp, primary, replica, stream)))
            print(f"services and apps up in {time.monotonic() - started:.0f}s", flush=True)
            for stack in stacks:
                print(f"  {stack.label}", flush=True)
            # One short warm-up each: connections, pools, the topic's partitions assigned.
            for stack in stacks:
                measure_stack(stack, rates[0], min(args.duration, 4.0), seed=0)
            load_before = os.getloadavg()
            for round_index in range(args.rounds):
                order = stacks if round_index % 2 == 0 else stacks[::-1]
                for stack in order:
                    for rate in rates:
                        sample = measure_stack(stack, rate, args.duration, seed=round_index + 1)
                        samples.append(sample)
                        print(
                            f"round {round_index + 1} stage {sample.stage} @{rate:.0f}/s: "
                            f"{sample.load.summary()} jobs {sample.jobs}",
                            flush=True,
                        )
            load_after = os.getloadavg()
    print()
    print(
        f"{args.rounds} rounds of {args.duration:.0f}s per stage and rate, 90% reads; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"(1-min), {os.cpu_count()} CPUs"
    )
    for stack in stacks:
        print(f"  {stack.label}")
    print()
    print(compare_table(samples, stages, rates))
    print()
    print(ratio_table(samples, stages, rates))
    print(f"total run time {time.monotonic() - started:.0f}s")
    return 0


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def compare_table(samples: list[Sample], stages: list[int], rates: list[float]) -> str:
    """Medians per stage and rate over the rounds, with the summed job counts."""
    lines = [
        "| stage | offered (req/s) | rounds | served ok (req/s) | p50 (ms) | p95 (ms) | "
        "failed or dropped | jobs accepted | queued / inline | processed | "
        "drain after load (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for stage in stages:
        for rate in rates:
            mine = [s for s in samples if s.stage == stage and s.rate == rate]
            if not mine:
                continue
            drains = [s.jobs.drain for s in mine if s.jobs.drain is not None]
            drain = f"{_median(drains):.1f}" if drains else "-"
            if len(drains) < len(mine):
                drain += f" ({len(mine) - len(drains)} not drained in {DRAIN_TIMEOUT:.0f}s)"
            lines.append(
                f"| {stage} | {rate:.0f} | {len(mine)} | "
                f"{_median([served_ok(s.load) for s in mine]):.0f} | "
                f"{_median([s.load.p50 for s in mine]) * 1000:.1f} | "
                f"{_median([s.load.p95 for s in mine]) * 1000:.1f} | "
                f"{sum(s.load.errors + s.load.dropped for s in mine)} | "
                f"{sum(s.jobs.accepted for s in mine)} | "
                f"{sum(s.jobs.queued for s in mine)} / {sum(s.jobs.inline for s in mine)} | "
                f"{sum(s.jobs.processed for s in mine)} | {drain} |"
            )
    return "\n".join(lines)


def ratio_table(samples: list[Sample], stages: list[int], rates: list[float]) -> str:
    """Each later stage against the one before it: ratios of the medians."""
    lines = [
        "| stages | offered (req/s) | served ok ratio | p50 ratio | p95 ratio |",
        "|---|---|---|---|---|",
    ]
    for before, after in itertools.pairwise(stages):
        for rate in rates:

            def med(stage: int, pick: Callable[[Sample], float], rate: float = rate) -> float:
                return _median([pick(s) for s in samples if s.stage == stage and s.rate == rate])

            ratios = [
                med(after, pick) / med(before, pick)
                for pick in (
                    lambda s: served_ok(s.load),
                    lambda s: s.load.p50,
                    lambda s: s.load.p95,
                )
            ]
            lines.append(
                f"| {after} / {before} | {rate:.0f} | "
                + " | ".join(f"{r:.2f}x" for r in ratios)
                + " |"
            )
    return "\n".join(lines)


def _database_env(primary: Postgres, replica: Postgres) -> dict[str, str]:
    """A fresh database on the primary, and its URLs on the primary and the replica."""
    db = ScratchDatabase.create(primary)
    return {"DATABASE_URL": db.url, "DATABASE_REPLICA_URLS": replica.dsn_for(db.name)}


if __name__ == "__main__":
    sys.exit(main())

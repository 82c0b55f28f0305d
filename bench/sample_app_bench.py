"""Benchmark the sample app at stages 2, 3 and 4 of the ladder, in one run.

Not a test: it starts real PostgreSQL (primary + streaming replica), Redis and
RabbitMQ from the Debian packages, runs ``python -m sample_app`` processes in
each configuration, drives them with :func:`sample_app.load.run_load`, and
prints a table per configuration: throughput, p50/p95 latency, database
queries per request split primary/replica, cache hit ratio.  It also measures
a raw Redis GET against a raw indexed PostgreSQL query to test the seed's
"0.1 ms vs 5-50 ms" claim.

    .venv/bin/python bench/sample_app_bench.py [--rps 60,150] [--duration 12]

Everything runs on one machine over loopback, so absolute numbers say little
about production; the ratios between configurations are the point.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis.asyncio as aioredis

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from sample_app.load import LoadResult, run_load  # noqa: E402
from tests.services import (  # noqa: E402
    Postgres,
    SampleApp,
    ScratchDatabase,
    postgres_primary,
    postgres_replica,
    rabbitmq,
    redis_server,
    sample_app,
)


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
    args = parser.parse_args()
    rates = [float(r) for r in args.rps.split(",")]
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

            db = ScratchDatabase.create(primary)
            replica_url = _replica_url(replica, db)
            with apps(tmp, 2, DATABASE_URL=db.url, DATABASE_REPLICA_URLS=replica_url) as stage3:
                run("stage 3: 2 apps + primary + replica", stage3)

            db = ScratchDatabase.create(primary)
            env = {
                "DATABASE_URL": db.url,
                "DATABASE_REPLICA_URLS": _replica_url(replica, db),
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
            raw = asyncio.run(raw_latencies(db.url, cache.url))
    print()
    print(f"offered load per row: {args.duration:.0f}s at the given rate, 90% reads")
    print(table(rows))
    print()
    print("raw latency, median of 2000 sequential calls over loopback:")
    for label, seconds in raw.items():
        print(f"  {label}: {seconds * 1000:.3f} ms")
    print(f"total run time {time.monotonic() - started:.0f}s")
    return 0


def _replica_url(replica: Postgres, db: ScratchDatabase) -> str:
    return replica.dsn_for(db.name)


if __name__ == "__main__":
    sys.exit(main())

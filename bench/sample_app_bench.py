"""Benchmark the sample app at stages 2, 3 and 4 of the ladder, in one run.

Not a test: it starts real PostgreSQL (primary + streaming replica), Redis and
RabbitMQ from the Debian packages, runs ``python -m sample_app`` processes in
each configuration, drives them with :func:`sample_app.load.run_load`, and
prints a table per configuration: throughput, p50/p95 latency, database
queries per request split primary/replica, cache hit ratio.  It also measures
a raw Redis GET against a raw indexed PostgreSQL query to test the seed's
"0.1 ms vs 5-50 ms" claim.

    .venv/bin/python bench/sample_app_bench.py [--rps 60] [--duration 15]

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
from collections.abc import Iterator
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
    notes: str


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


def measure(name: str, apps: list[SampleApp], rps: float, duration: float, notes: str = "") -> Row:
    """Run the load against ``apps`` and turn metric deltas into a row."""
    before = _totals(apps)
    result = asyncio.run(run_load([a.url for a in apps], rps=rps, duration=duration, seed=42))
    after = _totals(apps)
    delta = {k: after[k] - before[k] for k in after}
    requests = max(delta["requests"], 1.0)
    lookups = delta["hit"] + delta["miss"] + delta["error"]
    return Row(
        name=name,
        load=result,
        primary_per_request=delta["primary"] / requests,
        replica_per_request=delta["replica"] / requests,
        cache_hit_ratio=delta["hit"] / lookups if lookups else None,
        notes=notes,
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


async def raw_latencies(db_url: str, redis_url: str, samples: int = 2000) -> tuple[float, float]:
    """Median latency (s) of a Redis GET and of an indexed primary-key SELECT."""
    client = aioredis.Redis.from_url(redis_url)
    await client.set("bench:key", b"x" * 200)
    redis_times = []
    for _ in range(samples):
        started = time.perf_counter()
        await client.get("bench:key")
        redis_times.append(time.perf_counter() - started)
    await client.aclose()
    db_times = []
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        for index in range(samples):
            started = time.perf_counter()
            cur = await conn.execute(
                "SELECT id, author_id, body, created_at FROM posts WHERE id = %s",
                (index % 20 + 1,),
            )
            await cur.fetchall()
            db_times.append(time.perf_counter() - started)
    return statistics.median(redis_times), statistics.median(db_times)


@contextlib.contextmanager
def apps(tmp: Path, count: int, **env: str) -> Iterator[list[SampleApp]]:
    """Start ``count`` web processes with ``env``."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(sample_app(tmp, **env)) for _ in range(count)]


def main() -> int:
    """Run all configurations and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rps", type=float, default=60)
    parser.add_argument("--duration", type=float, default=15)
    args = parser.parse_args()
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

            def fresh() -> tuple[ScratchDatabase, str]:
                db = ScratchDatabase.create(primary)
                return db, _replica_url(replica, db)

            db, _ = fresh()
            with apps(tmp, 1, DATABASE_URL=db.url) as stage2:
                rows.append(measure("stage 2: app + DB", stage2, args.rps, args.duration))
            print(table(rows[-1:]), flush=True)

            db, replica_url = fresh()
            with apps(tmp, 2, DATABASE_URL=db.url, DATABASE_REPLICA_URLS=replica_url) as stage3:
                rows.append(
                    measure("stage 3: 2 apps + primary + replica", stage3, args.rps, args.duration)
                )
            print(table(rows[-1:]), flush=True)

            db, replica_url = fresh()
            env = {
                "DATABASE_URL": db.url,
                "DATABASE_REPLICA_URLS": replica_url,
                "REDIS_URL": cache.url,
                "BROKER_URL": broker.url,
            }
            with (
                apps(tmp, 2, **env) as stage4,
                sample_app(tmp, ROLE="worker", **env) as worker,
            ):
                rows.append(
                    measure("stage 4: + Redis + RabbitMQ worker", stage4, args.rps, args.duration)
                )
                processed = worker.metric("app_jobs_processed_total")
                published = sum(a.metric("app_jobs_published_total") for a in stage4)
            print(table(rows[-1:]), flush=True)
            print(f"stage 4 jobs: published={published:.0f} processed={processed:.0f}")
            redis_median, db_median = asyncio.run(raw_latencies(db.url, cache.url))
    print()
    print(f"offered load: {args.rps:.0f} req/s for {args.duration:.0f}s, 90% reads")
    print(table(rows))
    print()
    print(
        f"raw latency (median of 2000, loopback): Redis GET {redis_median * 1000:.3f} ms, "
        f"PostgreSQL SELECT by primary key {db_median * 1000:.3f} ms "
        f"(ratio {db_median / redis_median:.1f}x)"
    )
    print(f"total run time {time.monotonic() - started:.0f}s")
    return 0


def _replica_url(replica: Postgres, db: ScratchDatabase) -> str:
    return replica.dsn_for(db.name)


if __name__ == "__main__":
    sys.exit(main())

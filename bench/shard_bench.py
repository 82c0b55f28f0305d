"""Benchmark write throughput with one PostgreSQL against N shards, in one run.

Not a test: it starts N + 1 PostgreSQL servers from the Debian packages on
loopback, gives each the sample app's schema and the same users, and drives
``sample_app.shards.ShardedDatabase.create_post`` from concurrent writers, first
against one server, then against N, alternating for a few rounds.  It prints
each round, the medians and the ratio.

    .venv/bin/python bench/shard_bench.py [--shards 2] [--writers 16] [--seconds 4] [--rounds 3]

Every server shares the same cores, so the ratio shows what splitting buys
when the servers compete for one machine's CPU, not what N machines give.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from sample_app import db, shards  # noqa: E402
from tests.services import ScratchDatabase, postgres_primary  # noqa: E402

USERS = 1000


async def prepare(url: str) -> None:
    """The schema and the same users on every server."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await db.migrate(conn)
        await conn.execute(
            "INSERT INTO users (id, name) SELECT g, 'u' || g FROM generate_series(1, %s) g",
            (USERS,),
        )


async def writes_per_second(urls: list[str], writers: int, seconds: float) -> float:
    """Acknowledged posts per second from ``writers`` concurrent writers."""
    sharded = shards.ShardedDatabase(urls)
    await sharded.open()
    done = 0
    deadline = time.monotonic() + seconds

    async def writer(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)  # noqa: S311 - a load pattern, not a secret
        while time.monotonic() < deadline:
            await sharded.create_post(rng.randint(1, USERS), "bench")
            done += 1

    try:
        start = time.monotonic()
        await asyncio.gather(*(writer(i) for i in range(writers)))
        return done / (time.monotonic() - start)
    finally:
        await sharded.close()


def main() -> None:
    """Parse the arguments, start the servers, run the rounds, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(postgres_primary(Path(tmp) / f"pg{i}"))
            for i in range(args.shards + 1)
        ]
        urls = [ScratchDatabase.create(server).url for server in servers]
        for url in urls:
            asyncio.run(prepare(url))
        single, sharded = [urls[0]], urls[1:]
        one: list[float] = []
        many: list[float] = []
        for round_ in range(args.rounds):
            one.append(asyncio.run(writes_per_second(single, args.writers, args.seconds)))
            many.append(asyncio.run(writes_per_second(sharded, args.writers, args.seconds)))
            print(
                f"round {round_ + 1}: 1 server {one[-1]:.0f} writes/s,"
                f" {args.shards} shards {many[-1]:.0f} writes/s",
                flush=True,
            )
        a, b = statistics.median(one), statistics.median(many)
        print(f"\n{'layout':<12} {'median writes/s':>16}")
        print(f"{'1 server':<12} {a:>16.0f}")
        print(f"{f'{args.shards} shards':<12} {b:>16.0f}")
        print(f"ratio {args.shards} shards / 1 server: {b / a:.2f}")


if __name__ == "__main__":
    main()

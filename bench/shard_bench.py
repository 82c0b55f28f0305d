"""Benchmark write throughput with one PostgreSQL against N shards, in one run.

Not a test: it starts N + 1 PostgreSQL servers from the Debian packages on
loopback, gives each the sample app's schema and the same users, and drives
``sample_app.shards.ShardedDatabase.create_post`` from concurrent writers, first
against one server, then against N, alternating for a few rounds.  It prints
each round, the medians and the ratio.  Then it moves the single server's
database (``--posts`` seeded posts plus everything the rounds wrote) into N new
shard databases with ``z2m.shard_move`` while the writers keep writing, and
prints the phases' times, the fence and what the writers saw.

    .venv/bin/python bench/shard_bench.py [--shards 2] [--writers 16] [--seconds 4] [--rounds 3]
                                          [--posts 100000]

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
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from sample_app import db, shards  # noqa: E402
from tests.services import ScratchDatabase, postgres_primary  # noqa: E402
from z2m import shard_move, sharding  # noqa: E402

USERS = 1000
LOGICAL = """
wal_level = logical
max_replication_slots = 20
max_logical_replication_workers = 8
max_worker_processes = 16
wal_retrieve_retry_interval = '200ms'
"""


async def prepare(url: str) -> None:
    """The schema and the same users on every server."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await db.migrate(conn)
        await conn.execute(
            "INSERT INTO users (id, name) SELECT g, 'u' || g FROM generate_series(1, %s) g",
            (USERS,),
        )


@dataclass
class Switch:
    """The routing the move flips; the writers read ``current`` on every write."""

    current: shards.ShardedDatabase
    new: shards.ShardedDatabase

    async def switched(self) -> bool:
        """True once the writers use the shards."""
        return self.current is self.new

    async def switch(self) -> None:
        """Send the writers to the shards."""
        self.current = self.new


async def move_under_load(source: str, targets: list[str], writers: int, posts: int) -> None:
    """Split ``source`` into ``targets`` while ``writers`` write; print what happened."""
    async with await psycopg.AsyncConnection.connect(source, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO posts (author_id, body)"
            " SELECT 1 + g %% %s, 'seed' FROM generate_series(1, %s) g",
            (USERS, posts),
        )
        cur = await conn.execute("SELECT count(*) FROM posts")
        before = (await cur.fetchone() or (0,))[0]
    for url in targets:  # the shards' users arrive with the move
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("TRUNCATE users, posts, follows, notifications")
    old, new = shards.ShardedDatabase([source]), shards.ShardedDatabase(targets)
    await old.open()
    await new.open()
    switch = Switch(old, new)
    acked: list[str] = []
    refused = 0
    stop = asyncio.Event()

    async def writer(seed: int) -> None:
        nonlocal refused
        rng = random.Random(seed)  # noqa: S311 - a load pattern, not a secret
        while not stop.is_set():
            token = uuid.uuid4().hex
            try:
                await switch.current.create_post(rng.randint(1, USERS), token)
            except Exception:  # refused by the fence, or a session it ended
                refused += 1
                await asyncio.sleep(0.01)
                continue
            acked.append(token)

    tasks = [asyncio.create_task(writer(i)) for i in range(writers)]
    move = sharding.Move("bench", sources=1, targets=len(targets))
    try:
        report = await shard_move.Runner(move, [source], targets, switch).run()
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await old.close()
        await new.close()
    found: set[str] = set()
    total = 0
    for url in targets:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            cur = await conn.execute("SELECT body FROM posts")
            bodies = [row[0] for row in await cur.fetchall()]
            total += len(bodies)
            found |= set(bodies)
    lost = sum(1 for token in acked if token not in found)
    r = report
    copy = (r.copied_at or 0) - r.started_at
    print(
        f"\nsplit 1→{len(targets)} of {before} posts under {writers} writers:"
        f" {total} posts on the shards, {len(acked)} acknowledged writes, {lost} lost,"
        f" {refused} refused; initial copy {copy:.2f} s,"
        f" to the fence {(r.fenced_at or 0) - (r.copied_at or 0):.2f} s,"
        f" final catch-up {(r.caught_up_at or 0) - (r.fenced_at or 0):.3f} s,"
        f" fence (writes refused) {r.fence_seconds or 0:.3f} s"
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
    parser.add_argument("--posts", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(postgres_primary(Path(tmp) / f"pg{i}", settings=LOGICAL))
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
        asyncio.run(move_under_load(single[0], sharded, args.writers, args.posts))


if __name__ == "__main__":
    main()

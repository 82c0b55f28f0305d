"""The online move between one PostgreSQL and N shards, on real PostgreSQL.

Three clusters with ``wal_level = logical`` on loopback: the source and two
shards.  Writers insert posts through ``sample_app.shards`` while
``z2m.shard_move`` splits 1→2 and merges 2→1; every acknowledged write must
then be on its author's shard exactly once.  The fence's downtime is printed,
never asserted against a clock.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from sample_app import db, shards
from tests import services
from tests.services import Postgres, ScratchDatabase, postgres_primary
from z2m import shard_move, sharding

pytestmark = pytest.mark.services

LOGICAL = services.LOGICAL
USERS = 200
SEED_POSTS = 3000
WRITES_AROUND_THE_MOVE = 500


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Postgres]]:
    """The source cluster and two shard clusters."""
    import contextlib

    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                postgres_primary(tmp_path_factory.mktemp(f"pg-logical-{i}"), settings=LOGICAL)
            )
            for i in range(3)
        ]


def fresh(server: Postgres) -> str:
    """A new database with the sample app's schema; returns its URL."""
    scratch = ScratchDatabase.create(server)

    async def schema() -> None:
        async with await psycopg.AsyncConnection.connect(scratch.url) as conn:
            await db.migrate(conn)

    asyncio.run(schema())
    return scratch.url


def seed(url: str) -> None:
    """Users, some of their posts and follows, on the one source."""
    services.seed_users(url, USERS, SEED_POSTS)


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql.encode()).fetchall())


def count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql.encode()).fetchone()
        assert row is not None
        return int(row[0])


def users_posts_follows(url: str) -> int:
    return count(
        url,
        "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM posts)"
        " + (SELECT count(*) FROM follows)",
    )


@dataclass
class Switch:
    """The routing the runner flips: the writers read ``current`` on every write."""

    current: shards.ShardedDatabase
    new: shards.ShardedDatabase

    async def switched(self) -> bool:
        return self.current is self.new

    async def switch(self) -> None:
        self.current = self.new


@dataclass
class Writers:
    """Concurrent writers recording every acknowledged post and when."""

    switch: Switch
    acked: list[tuple[int, str, float]] = field(default_factory=list)
    failed: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    wanted: int | None = None  # set ``reached`` once this many writes are acknowledged
    reached: asyncio.Event = field(default_factory=asyncio.Event)

    async def one(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            author, token = rng.randint(1, USERS), uuid.uuid4().hex
            try:
                await self.switch.current.create_post(author, token)
            except Exception:  # refused by the fence, or a session it ended
                self.failed += 1
                # Back off a little so a fenced database is not hammered.
                await asyncio.sleep(0.01)
                continue
            self.acked.append((author, token, time.monotonic()))
            if self.wanted is not None and len(self.acked) >= self.wanted:
                self.reached.set()

    async def until(self, acknowledged: int) -> None:
        """Return once this many writes in all were acknowledged."""
        self.reached.clear()
        self.wanted = acknowledged
        if len(self.acked) < acknowledged:
            await self.reached.wait()

    def longest_gap(self) -> float:
        times = [t for _, _, t in self.acked]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


async def move_with_writers(
    move: sharding.Move, sources: list[str], targets: list[str]
) -> tuple[shard_move.Report, Writers]:
    old = shards.ShardedDatabase(sources)
    new = shards.ShardedDatabase(targets)
    await old.open()
    await new.open()
    switch = Switch(current=old, new=new)
    writers = Writers(switch)
    tasks = [asyncio.create_task(writers.one(i)) for i in range(4)]
    try:
        # The writers are in full swing before the move, and prove the new
        # layout takes writes after it.
        await writers.until(WRITES_AROUND_THE_MOVE)
        report = await shard_move.Runner(move, sources, targets, switch).run()
        await writers.until(len(writers.acked) + WRITES_AROUND_THE_MOVE)
    finally:
        writers.stop.set()
        await asyncio.gather(*tasks)
        await old.close()
        await new.close()
    return report, writers


def assert_every_ack_on_its_shard(writers: Writers, targets: list[str]) -> None:
    bodies = [
        {str(b): int(a) for a, b in rows(url, "SELECT author_id, body FROM posts")}
        for url in targets
    ]
    counts: dict[str, int] = {}
    for url in targets:
        for (body,) in rows(url, "SELECT body FROM posts"):
            counts[str(body)] = counts.get(str(body), 0) + 1
    lost = [tok for _, tok, _ in writers.acked if tok not in counts]
    wrong = [
        tok
        for author, tok, _ in writers.acked
        if tok not in bodies[shards.shard_index(author, len(targets))]
    ]
    doubled = [tok for tok, n in counts.items() if n > 1]
    assert (lost, wrong, doubled) == ([], [], [])


def print_figures(label: str, report: shard_move.Report, writers: Writers, moved: int) -> None:
    assert None not in (report.copied_at, report.fenced_at, report.caught_up_at)
    copy = (report.copied_at or 0) - report.started_at
    catch_up = (report.fenced_at or 0) - (report.copied_at or 0)
    final = (report.caught_up_at or 0) - (report.fenced_at or 0)
    print(
        f"\n{label}: {moved} rows on the targets, {len(writers.acked)} acknowledged writes,"
        f" {writers.failed} refused, fence {report.fence_seconds or 0:.3f} s"
        f" (longest gap between acknowledged writes {writers.longest_gap():.3f} s);"
        f" start to initial copy done {copy:.2f} s, then to the fence {catch_up:.2f} s,"
        f" final catch-up {final:.3f} s; waits {report.waits}"
    )


def test_a_split_and_a_merge_under_live_writes_lose_and_double_no_acknowledged_write(
    clusters: list[Postgres],
) -> None:
    source = fresh(clusters[0])
    seed(source)
    targets = [fresh(clusters[1]), fresh(clusters[2])]

    split = sharding.Move("split", sources=1, targets=2)
    report, writers = asyncio.run(move_with_writers(split, [source], targets))
    assert_every_ack_on_its_shard(writers, targets)
    for k, url in enumerate(targets):
        assert rows(url, f"SELECT count(*) FROM users WHERE id % 2 <> {k}") == [(0,)]
        assert rows(url, f"SELECT count(*) FROM posts WHERE author_id % 2 <> {k}") == [(0,)]
    moved = sum(users_posts_follows(u) for u in targets)
    print_figures("split 1→2", report, writers, moved)
    assert rows(source, "SELECT count(*) FROM pg_publication") == [(0,)]

    merged = fresh(clusters[0])
    merge = sharding.Move("merge", sources=2, targets=1)
    back, writers_back = asyncio.run(move_with_writers(merge, targets, [merged]))
    assert_every_ack_on_its_shard(writers_back, [merged])
    assert_every_ack_on_its_shard(writers, [merged])  # the split's writes came back too
    print_figures("merge 2→1", back, writers_back, users_posts_follows(merged))
    assert rows(merged, "SELECT count(*) FROM posts") == [
        (SEED_POSTS + len(writers.acked) + len(writers_back.acked),)
    ]


def test_a_runner_stopped_mid_move_converges_keeping_updates_deletes_and_no_stray_slot(
    clusters: list[Postgres],
) -> None:
    source = fresh(clusters[0])
    seed(source)
    targets = [fresh(clusters[1]), fresh(clusters[2])]
    move = sharding.Move("again", sources=1, targets=2)

    # As if a CREATE SUBSCRIPTION had made its slot and died before committing.
    count(source, f"SELECT count(*) FROM pg_create_logical_replication_slot("
                  f"'{move.subscription(0, 1)}', 'pgoutput')")  # fmt: skip

    async def go() -> list[str]:
        new = shards.ShardedDatabase(targets)
        switch = Switch(current=shards.ShardedDatabase([source]), new=new)
        kinds: list[str] = []
        # Stop once after the first subscription, once right after the fence.
        for stop_after in ("subscribe", "fence"):
            runner = shard_move.Runner(move, [source], targets, switch)
            while (step := await runner.step_once()).kind != stop_after:
                kinds.append(step.kind)
                if step.kind == "wait":
                    await asyncio.sleep(runner.poll)
            kinds.append(f"stopped after {stop_after}")
            if stop_after == "subscribe":
                # Updates and deletes under a row filter need the replica identity.
                with psycopg.connect(source, autocommit=True) as conn:
                    conn.execute("UPDATE posts SET body = 'edited' WHERE id <= 10")
                    conn.execute("DELETE FROM posts WHERE id BETWEEN 11 AND 20")
        await shard_move.Runner(move, [source], targets, switch).run()
        assert await switch.switched()
        return kinds

    kinds = asyncio.run(go())
    assert "stopped after fence" in kinds
    assert sum(count(u, "SELECT count(*) FROM posts") for u in targets) == SEED_POSTS - 10
    assert sum(count(u, "SELECT count(*) FROM posts WHERE body = 'edited'") for u in targets) == 10
    assert rows(source, "SELECT count(*) FROM pg_publication") == [(0,)]
    assert rows(source, "SELECT count(*) FROM pg_replication_slots") == [(0,)]
    for url in targets:
        assert rows(url, "SELECT count(*) FROM pg_subscription") == [(0,)]


def test_users_created_on_a_shard_after_the_split_belong_to_that_shard(
    clusters: list[Postgres],
) -> None:
    source = fresh(clusters[0])
    seed(source)
    targets = [fresh(clusters[1]), fresh(clusters[2])]
    move = sharding.Move("seq", sources=1, targets=2)

    async def go() -> list[db.Row]:
        new = shards.ShardedDatabase(targets)
        switch = Switch(current=shards.ShardedDatabase([source]), new=new)
        await shard_move.Runner(move, [source], targets, switch).run()
        await new.open()
        try:
            for k, shard in enumerate(new.shards):
                for _ in range(3):
                    row = await shard.write(
                        "INSERT INTO users (name) VALUES (%s) RETURNING id", (uuid.uuid4().hex,)
                    )
                    assert shards.shard_index(int(row[0]["id"]), 2) == k
            await new.follow(1, 2)
            await new.create_post(2, "hello from shard 0")
            return await new.feed(1)
        finally:
            await new.close()

    feed = asyncio.run(go())
    assert feed[0]["body"] == "hello from shard 0"

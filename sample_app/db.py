"""PostgreSQL access: pools, read/write routing, replica health, migrations.

Every statement goes through :class:`Database` so it is counted in
``app_db_queries_total{target}``.  Writes always use the primary.  Reads use a
healthy replica unless the caller is inside its read-your-writes window; a
replica that fails a query is marked down at once and the read falls through
to the next replica, then the primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import psycopg
from psycopg.rows import DictRow, dict_row, tuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from sample_app import metrics, policy

log = logging.getLogger(__name__)

Target = Literal["primary", "replica"]
Row = dict[str, Any]
Params = Sequence[Any]

# One key for "the schema is being migrated", shared by every replica of the app.
MIGRATION_LOCK_KEY = 0x7A326D_5343
# Each entry is applied once, in order, inside one transaction with the lock.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE IF NOT EXISTS users (
            id bigserial PRIMARY KEY,
            name text NOT NULL UNIQUE,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE IF NOT EXISTS posts (
            id bigserial PRIMARY KEY,
            author_id bigint NOT NULL REFERENCES users(id),
            body text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX IF NOT EXISTS posts_author_idx ON posts (author_id, id DESC);
        CREATE TABLE IF NOT EXISTS follows (
            follower_id bigint NOT NULL REFERENCES users(id),
            followee_id bigint NOT NULL REFERENCES users(id),
            PRIMARY KEY (followee_id, follower_id)
        );
        CREATE TABLE IF NOT EXISTS notifications (
            user_id bigint NOT NULL REFERENCES users(id),
            post_id bigint NOT NULL REFERENCES posts(id),
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (user_id, post_id)
        );
        CREATE TABLE IF NOT EXISTS processed_jobs (
            job_id uuid PRIMARY KEY,
            processed_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE IF NOT EXISTS app_secret (
            id int PRIMARY KEY CHECK (id = 1),
            key text NOT NULL
        );
        """,
    ),
    (
        2,
        # Full-text search over posts (sample_app/search.py). An expression index, not
        # a generated column: creating it reads the table but does not rewrite it.
        """
        CREATE INDEX IF NOT EXISTS posts_body_fts_idx
            ON posts USING gin (to_tsvector('english', body));
        """,
    ),
)

# How far behind a replica is, in seconds, or NULL when that cannot be known.
# - Not streaming (no WAL receiver connected): unknown. Such a replica has "replayed
#   all it received" but receives nothing, so comparing its own LSNs would read 0.
# - Replayed at least up to the primary's position read just before: 0.
# - Without that position (primary unreachable): replayed all it received: 0.
# - Otherwise the age of the last replayed transaction; the primary has moved on
#   since, so that is how stale its data may be. An idle primary reads 0 above.
LAG_SQL = """
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN 0
    WHEN NOT EXISTS (
        SELECT 1 FROM pg_stat_wal_receiver
        WHERE pid IS NOT NULL AND COALESCE(status, 'streaming') = 'streaming'
    ) THEN NULL
    WHEN %(primary)s::pg_lsn IS NOT NULL
        THEN CASE WHEN pg_last_wal_replay_lsn() >= %(primary)s::pg_lsn THEN 0
                  ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END
    WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
    ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())
END::float8
"""


async def migrate(conn: psycopg.AsyncConnection[Any]) -> list[int]:
    """Apply pending migrations; safe when many app processes start together.

    The transaction-scoped advisory lock serialises concurrent callers, so the
    second one waits and then finds every version already recorded.  Returns
    the versions this call applied.
    """
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = conn.cursor(row_factory=tuple_row)  # whatever the connection's default is
        await cur.execute("SELECT version FROM schema_version")
        done = {row[0] for row in await cur.fetchall()}
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            await conn.execute(sql.encode())
            await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


class Tx:
    """A transaction on the primary whose statements are counted."""

    def __init__(self, conn: psycopg.AsyncConnection[DictRow]) -> None:
        """Wrap an open connection that is inside a transaction."""
        self.conn = conn

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        """Run one statement and return its rows (empty if it returns none)."""
        return await _run(self.conn, "primary", sql, params)


async def _run(
    conn: psycopg.AsyncConnection[DictRow], target: Target, sql: str, params: Params
) -> list[Row]:
    started = time.perf_counter()
    try:
        cur = await conn.execute(sql.encode(), params)
        return await cur.fetchall() if cur.description else []
    finally:
        metrics.DB_QUERIES.labels(target).inc()
        metrics.DB_DURATION.labels(target).observe(time.perf_counter() - started)


def _pool(url: str, name: str, max_size: int, timeout: float) -> AsyncConnectionPool[Any]:
    # autocommit: a plain read is one round trip, with no BEGIN/COMMIT around
    # it; writes open an explicit transaction.
    return AsyncConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        timeout=timeout,
        name=name,
        open=False,
        kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": 2},
    )


class Database:
    """The primary pool, the replica pools and what we know about each replica."""

    def __init__(self, primary_url: str, replica_urls: Sequence[str] = ()) -> None:
        """Create (but don't open) the pools."""
        self.primary_url = primary_url
        self.replica_urls = tuple(replica_urls)
        self.primary = _pool(primary_url, "primary", max_size=10, timeout=5.0)
        # A short timeout: waiting on a sick replica is worse than using the primary.
        self.replicas = [
            _pool(url, f"replica{i}", max_size=10, timeout=1.0)
            for i, url in enumerate(self.replica_urls)
        ]
        self.health = [policy.ReplicaHealth() for _ in self.replica_urls]
        self._last_reading = [policy.ReplicaHealth() for _ in self.replica_urls]
        self._next_replica = 0

    async def open(self) -> None:
        """Open the pools without waiting: the servers may not be up yet."""
        for pool in (self.primary, *self.replicas):
            await pool.open(wait=False)

    async def close(self) -> None:
        """Close every pool."""
        for pool in (self.primary, *self.replicas):
            await pool.close()

    async def migrate(self) -> list[int]:
        """Apply pending migrations on the primary."""
        async with self.primary.connection() as conn:
            return await migrate(conn)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """A transaction on the primary; commits when the block exits cleanly."""
        async with self.primary.connection() as conn, conn.transaction():
            yield Tx(conn)

    async def write(self, sql: str, params: Params = ()) -> list[Row]:
        """Run one statement on the primary in its own transaction."""
        async with self.transaction() as tx:
            return await tx.fetch(sql, params)

    async def read(self, sql: str, params: Params = (), *, primary: bool = False) -> list[Row]:
        """Run a read on a usable replica, falling back to the primary.

        ``primary=True`` forces the primary (read-your-writes window).
        """
        order = [] if primary else policy.replica_order(self.health, self._next_replica)
        if order:
            self._next_replica = (order[0] + 1) % len(self.replicas)
        for index in order:
            try:
                async with self.replicas[index].connection() as conn:
                    return await _run(conn, "replica", sql, params)
            except (psycopg.OperationalError, PoolTimeout) as exc:
                # Don't wait for the next health check to stop using it.
                log.warning("replica %d failed a read, skipping it: %s", index, exc)
                self.health[index] = policy.ReplicaHealth(reachable=False)
        async with self.primary.connection() as conn:
            return await _run(conn, "primary", sql, params)

    async def primary_lsn(self) -> str | None:
        """The primary's current WAL position, or None if it cannot be read now."""
        try:
            async with self.primary.connection(timeout=1.0) as conn:
                cur = conn.cursor(row_factory=tuple_row)
                await cur.execute("SELECT pg_current_wal_lsn()::text")
                row = await cur.fetchone()
                return str(row[0]) if row else None
        except (psycopg.Error, PoolTimeout, OSError):
            return None

    async def check_replica(self, index: int, primary: str | None = None) -> policy.ReplicaHealth:
        """Measure one replica's lag on a fresh connection (not the pool's).

        ``primary`` is the primary's WAL position read just before: a replica that has
        replayed up to it is current. A replica that streams nothing has no known lag.
        """
        try:
            async with await psycopg.AsyncConnection.connect(
                self.replica_urls[index], connect_timeout=1, autocommit=True
            ) as conn:
                cur = await conn.execute(LAG_SQL, {"primary": primary})
                row = await cur.fetchone()
                lag = float(row[0]) if row and row[0] is not None else None
            return policy.ReplicaHealth(reachable=True, lag_seconds=lag)
        except (psycopg.Error, OSError):
            return policy.ReplicaHealth(reachable=False)

    async def watch_replicas(self) -> None:
        """Refresh replica health forever (run as a background task)."""
        while True:
            primary = await self.primary_lsn()
            results = await asyncio.gather(
                *(
                    asyncio.wait_for(self.check_replica(i, primary), timeout=2.0)
                    for i in range(len(self.replicas))
                ),
                return_exceptions=True,
            )
            for index, result in enumerate(results):
                # A check that timed out counts as unreachable.
                reading = (
                    result if isinstance(result, policy.ReplicaHealth) else policy.ReplicaHealth()
                )
                new = policy.confirm_lag(self._last_reading[index], reading)
                self._last_reading[index] = reading
                if new.usable() != self.health[index].usable():
                    log.info("replica %d usable=%s (lag=%s)", index, new.usable(), new.lag_seconds)
                self.health[index] = new
            await asyncio.sleep(policy.REPLICA_CHECK_INTERVAL_SECONDS)

    async def ping_primary(self) -> bool:
        """True if the primary answers ``SELECT 1`` within a couple of seconds."""
        try:
            async with self.primary.connection(timeout=2.0) as conn:
                await conn.execute("SELECT 1")
            return True
        except (psycopg.Error, PoolTimeout, OSError):
            return False

    def export_pool_stats(self) -> None:
        """Copy pool occupancy into ``app_db_pool_connections``."""
        groups: dict[Target, list[AsyncConnectionPool[Any]]] = {
            "primary": [self.primary],
            "replica": self.replicas,
        }
        for target, pools in groups.items():
            in_use = idle = 0
            for pool in pools:
                stats = pool.get_stats()
                size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
                in_use += size - available
                idle += available
            metrics.DB_POOL.labels(target, "in_use").set(in_use)
            metrics.DB_POOL.labels(target, "idle").set(idle)

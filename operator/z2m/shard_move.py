"""Carry out a shard move (``z2m.sharding``) against real PostgreSQL databases.

Each pass reads the world (publications, subscriptions, slots, the fence),
asks :func:`z2m.sharding.next_step` what to do, and does that one thing.  Every
action is safe to repeat, so a runner stopped anywhere is simply started again.
Routing is the caller's: ``routing.switched()`` and ``routing.switch()``
(a ConfigMap in the operator, a variable in the tests).

``prepare_targets`` runs before a move: a target without the moved tables gets
them as they are on the source, and a target an earlier move left fenced (a
stale copy, read-only) is emptied and unfenced in one transaction, so that the
move can fill it.

Not here: deciding to shard, creating the shard servers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from psycopg import sql

from z2m import sharding

log = logging.getLogger(__name__)


# When this database was fenced (``z2m.fenced_at``), read from the catalog: a
# session's own settings are those of when it began.
FENCED_AT_SQL = """
SELECT max(split_part(c, '=', 2)) FROM pg_db_role_setting d
JOIN pg_database b ON b.oid = d.setdatabase, unnest(d.setconfig) c
WHERE b.datname = current_database() AND d.setrole = 0 AND c LIKE 'z2m.fenced_at=%%'
"""

# Client sessions of this database that began before the fence: they may have
# read the old (writable) default and must be ended.
STALE_SQL = """
SELECT count(*)::int FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND pid <> pg_backend_pid() AND backend_start < %s::timestamptz
"""


class Routing(Protocol):
    """Where the app sends each user's queries; both calls must be idempotent."""

    async def switched(self) -> bool:
        """True once the app routes to the move's targets."""
        ...

    async def switch(self) -> None:
        """Make the app route to the move's targets."""
        ...


@dataclass
class Report:
    """What a run did and where it waited (times from ``clock``, in seconds)."""

    steps: list[str] = field(default_factory=list)
    waits: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    copied_at: float | None = None  # first pass that found every initial copy done
    fenced_at: float | None = None
    caught_up_at: float | None = None  # behind the fence, every slot at its source
    routed_at: float | None = None

    @property
    def fence_seconds(self) -> float | None:
        """From the fence to the routing switch: the writes' downtime, this run."""
        if self.fenced_at is None or self.routed_at is None:
            return None
        return self.routed_at - self.fenced_at


class Runner:
    """Runs one move between ``sources`` and ``targets`` (libpq URLs, superuser)."""

    def __init__(
        self,
        move: sharding.Move,
        sources: Sequence[str],
        targets: Sequence[str],
        routing: Routing,
        *,
        poll: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        on_step: Callable[[sharding.Step], Awaitable[None]] | None = None,
    ) -> None:
        """Check the DSN lists match the move's shape."""
        if len(sources) != move.sources or len(targets) != move.targets:
            raise ValueError("the DSN lists do not match the move")
        self.move, self.sources, self.targets = move, list(sources), list(targets)
        self.routing, self.poll, self.clock, self.on_step = routing, poll, clock, on_step
        self.report = Report(started_at=clock())
        # One session per server, kept across passes: connecting dominates a pass.
        self._sessions: dict[str, psycopg.AsyncConnection[Any]] = {}

    async def _conn(self, dsn: str) -> psycopg.AsyncConnection[Any]:
        conn = self._sessions.get(dsn)
        if conn is None or conn.closed or conn.broken:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            # The runner's own statements pass a fenced database's read-only default.
            await conn.execute("SET default_transaction_read_only = off")
            self._sessions[dsn] = conn
        return conn

    async def _rows(self, dsn: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            cur = await (await self._conn(dsn)).execute(sql.encode(), params)
        except psycopg.OperationalError:
            # A session lost (a server restart, say): one fresh try.
            self._sessions.pop(dsn, None)
            cur = await (await self._conn(dsn)).execute(sql.encode(), params)
        return list(await cur.fetchall()) if cur.description else []

    async def _one(self, dsn: str, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._rows(dsn, sql, params)
        return rows[0][0] if rows else None

    async def close(self) -> None:
        """Close the runner's sessions."""
        for conn in self._sessions.values():
            await conn.close()
        self._sessions.clear()

    # ------------------------------------------------------------------ observe

    async def observe(self) -> sharding.Observed:
        """Read everything :func:`sharding.next_step` needs."""
        move = self.move
        pubs: set[tuple[int, int]] = set()
        fenced: list[bool] = []
        stale: list[int] = []
        for s, dsn in enumerate(self.sources):
            names = {r[0] for r in await self._rows(dsn, "SELECT pubname FROM pg_publication")}
            pubs |= {(s, t) for t in range(move.targets) if move.publication(t) in names}
            fenced_at = await self._one(dsn, FENCED_AT_SQL)
            read_only = await self._one(
                dsn,
                "SELECT EXISTS (SELECT 1 FROM pg_db_role_setting d"
                " JOIN pg_database b ON b.oid = d.setdatabase"
                " WHERE b.datname = current_database() AND d.setrole = 0"
                " AND 'default_transaction_read_only=on' = ANY(d.setconfig))",
            )
            fenced.append(bool(read_only) and fenced_at is not None)
            stale.append(0 if fenced_at is None else await self._one(dsn, STALE_SQL, (fenced_at,)))
        subs: dict[tuple[int, int], sharding.SubscriptionState] = {}
        has_rows: list[bool] = []
        for t, dsn in enumerate(self.targets):
            found = {
                r[0]: bool(r[1])
                for r in await self._rows(
                    dsn,
                    "SELECT s.subname, COALESCE(bool_and(r.srsubstate = 'r'), false)"
                    " FROM pg_subscription s LEFT JOIN pg_subscription_rel r ON r.srsubid = s.oid"
                    " WHERE s.subdbid = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database()) GROUP BY s.subname",
                )
            }
            counts = " UNION ALL ".join(
                f"SELECT 1 FROM (SELECT 1 FROM {tb.name} LIMIT 1) x" for tb in move.tables
            )
            has_rows.append(bool(await self._rows(dsn, counts)))
            for s in range(move.sources):
                name = move.subscription(s, t)
                if name not in found:
                    continue
                lag = await self._one(
                    self.sources[s],
                    "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint"
                    " FROM pg_replication_slots WHERE slot_name = %s",
                    (name,),
                )
                subs[(s, t)] = sharding.SubscriptionState(
                    exists=True, copied=found[name], lag_bytes=None if lag is None else max(lag, 0)
                )
        return sharding.Observed(
            publications=frozenset(pubs),
            subscriptions=subs,
            target_has_rows=tuple(has_rows),
            fenced=tuple(fenced),
            stale_sessions=tuple(stale),
            routed=await self.routing.switched(),
        )

    # ------------------------------------------------------------------ act

    async def act(self, step: sharding.Step) -> None:
        """Carry out one step (waits return at once: the loop polls again)."""
        move, s, t = self.move, step.source, step.target
        if step.kind == "publish":
            assert s is not None and t is not None
            conn = await self._conn(self.sources[s])
            async with conn.transaction():
                # A fenced source still takes the runner's own DDL.
                await conn.execute("SET LOCAL transaction_read_only = off")
                for statement in move.publication_sql(t):
                    await conn.execute(statement.encode())
        elif step.kind == "subscribe":
            assert s is not None and t is not None
            # A slot left by a CREATE SUBSCRIPTION that died before committing
            # on the target would make this one fail: no subscription owns it.
            await self._rows(
                self.sources[s],
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s AND NOT active",
                (move.subscription(s, t),),
            )
            conn = await self._conn(self.targets[t])
            for table, constraint in sharding.CROSS_SHARD_FOREIGN_KEYS if move.split else ():
                drop = f"ALTER TABLE IF EXISTS {table} DROP CONSTRAINT IF EXISTS {constraint}"
                await conn.execute(drop.encode())
            await conn.execute(
                sql.SQL(
                    "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {}"
                    # synchronous_commit: the slot's confirmed flush then follows
                    # each applied commit at once, not the target's WAL writer,
                    # which is what the final catch-up behind the fence waits on.
                    " WITH (copy_data = true, synchronous_commit = on)"
                ).format(
                    sql.Identifier(move.subscription(s, t)),
                    sql.Literal(self.sources[s]),
                    sql.Identifier(move.publication(t)),
                )
            )
        elif step.kind == "fence":
            for dsn in self.sources:
                await self._fence(dsn)
            if self.report.fenced_at is None:
                self.report.fenced_at = self.clock()
        elif step.kind == "cutover":
            await self._move_sequences()
            await self.routing.switch()
            self.report.routed_at = self.clock()
        elif step.kind == "drop-subscription":
            assert s is not None and t is not None
            await self._rows(
                self.targets[t], f"DROP SUBSCRIPTION IF EXISTS {move.subscription(s, t)}"
            )
        elif step.kind == "drop-publication":
            assert s is not None and t is not None
            await self._rows(self.sources[s], f"DROP PUBLICATION IF EXISTS {move.publication(t)}")
        elif step.kind == "blocked":
            raise RuntimeError(f"shard move {move.name} is blocked: {step.reason}")

    async def _fence(self, dsn: str) -> None:
        # First no new session may write; then record when that held; then end
        # the sessions older than that, the only ones that could still write.
        conn = await self._conn(dsn)
        fenced_at = await self._one(dsn, FENCED_AT_SQL)
        if not fenced_at:
            name = sql.Identifier(await self._one(dsn, "SELECT current_database()"))
            await conn.execute(
                sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(name)
            )
            cur = await conn.execute("SELECT clock_timestamp()::text")
            stamp = await cur.fetchone()
            assert stamp is not None
            fenced_at = stamp[0]
            await conn.execute(
                sql.SQL("ALTER DATABASE {} SET z2m.fenced_at = {}").format(
                    name, sql.Literal(fenced_at)
                )
            )
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND backend_type = 'client backend'"
            " AND pid <> pg_backend_pid() AND backend_start < %s::timestamptz",
            (fenced_at,),
        )

    async def _move_sequences(self) -> None:
        for table in self.move.tables:
            if table.sequence is None:
                continue
            last = sharding.max_sequence(
                [
                    await self._one(
                        dsn,
                        "SELECT last_value FROM pg_sequences WHERE sequencename = %s",
                        (table.sequence,),
                    )
                    for dsn in self.sources
                ]
            )
            # Rows may carry ids the sequence never handed out (explicit ids).
            for dsn in self.sources:
                top = await self._one(dsn, f"SELECT max(id) FROM {table.name}")
                last = max(last, int(top or 0))
            for t, dsn in enumerate(self.targets):
                first, step = sharding.sequence_settings(self.move, last, t)
                await self._rows(
                    dsn,
                    f"ALTER SEQUENCE {table.sequence} INCREMENT BY {step} RESTART WITH {first}",
                )

    # ------------------------------------------------------------------ loop

    async def step_once(self) -> sharding.Step:
        """Observe, decide, act once; returns the step taken."""
        step = sharding.next_step(self.move, await self.observe())
        if step.kind == "wait":
            # Counted by phase ("catching up", "final catch-up", ...); logged when it changes.
            phase = step.reason.split(":")[0]
            if phase not in self.report.waits:
                log.info("shard move %s waits: %s", self.move.name, step.reason)
            self.report.waits[phase] = self.report.waits.get(phase, 0) + 1
        else:
            self.report.steps.append(f"{step.kind}: {step.reason}")
            log.info("shard move %s: %s (%s)", self.move.name, step.kind, step.reason)
        if self.on_step is not None:
            await self.on_step(step)
        now = self.clock()
        copying = step.kind == "wait" and step.reason.startswith("initial copy")
        if self.report.copied_at is None and step.kind in ("wait", "fence") and not copying:
            self.report.copied_at = now
        if step.kind == "cutover" and self.report.caught_up_at is None:
            self.report.caught_up_at = now
        await self.act(step)
        return step

    async def run(self) -> Report:
        """Step until the move is done; waits poll every ``poll`` seconds."""
        try:
            while True:
                step = await self.step_once()
                if step.kind == "done":
                    return self.report
                if step.kind == "wait":
                    await asyncio.sleep(self.poll)
        finally:
            await self.close()


COLUMNS_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid)
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""
# Primary keys and unique constraints first, so that foreign keys find their index.
CONSTRAINTS_SQL = """
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid = %s::regclass AND contype IN ('p', 'u', 'c', 'f')
ORDER BY contype = 'f', conname
"""
INDEXES_SQL = """
SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i
WHERE i.indrelid = %s::regclass
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
ORDER BY i.indexrelid
"""
NEXTVAL = re.compile(r"^nextval\('([a-z_][a-z0-9_]*)'::regclass\)$")


async def schema_sql(move: sharding.Move, source: str) -> list[str]:
    """Statements that make the move's tables on a target as they are on ``source``.

    Columns with their types, defaults and NOT NULL, the sequences behind serial
    columns, constraints, then the other indexes: what the app's migrations would
    have made. Those migrations (CREATE ... IF NOT EXISTS) still run when the app
    reaches the shard, and add the tables the move does not carry.
    """
    tables: list[str] = []
    after: list[str] = []
    async with await psycopg.AsyncConnection.connect(source, autocommit=True) as conn:
        for table in move.tables:
            exists = await (
                await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table.name,))
            ).fetchone()
            if not exists or not exists[0]:
                raise RuntimeError(
                    f"the source has no table {table.name} yet, so neither does a target: "
                    "the app's migrations make it once the app runs"
                )
            columns = []
            for name, kind, not_null, default in await (
                await conn.execute(COLUMNS_SQL.encode(), (table.name,))
            ).fetchall():
                column = f"{sql_ident(name)} {kind}"
                if default is not None:
                    if found := NEXTVAL.match(default):
                        tables.append(f"CREATE SEQUENCE IF NOT EXISTS {found[1]}")
                        after.append(f"ALTER SEQUENCE {found[1]} OWNED BY {table.name}.{name}")
                    column += f" DEFAULT {default}"
                columns.append(column + (" NOT NULL" if not_null else ""))
            tables.append(f"CREATE TABLE {table.name} ({', '.join(columns)})")
            for name, definition in await (
                await conn.execute(CONSTRAINTS_SQL.encode(), (table.name,))
            ).fetchall():
                statement = (
                    f"ALTER TABLE {table.name} ADD CONSTRAINT {sql_ident(name)} {definition}"
                )
                after.append(statement)
            for (definition,) in await (
                await conn.execute(INDEXES_SQL.encode(), (table.name,))
            ).fetchall():
                after.append(definition)
    # Foreign keys after every table's primary key, whatever the tables' order.
    keys = [a for a in after if " FOREIGN KEY " in a]
    return tables + [a for a in after if a not in keys] + keys


def sql_ident(name: str) -> str:
    """A column or constraint name as an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


async def prepare_targets(
    move: sharding.Move, sources: Sequence[str], targets: Sequence[str]
) -> list[int]:
    """Give empty targets the move's tables; empty and unfence stale copies.

    A target with none of the move's tables gets them from the first source
    (`schema_sql`); one with some but not all is refused (RuntimeError). A target
    carries ``z2m.fenced_at`` only if an earlier move fenced it as its source:
    its rows are a copy nobody reads (the app moved on at that cutover), so they
    are removed before this move copies the live ones in. Returns the indexes of
    targets emptied.
    """
    emptied: list[int] = []
    for t, dsn in enumerate(targets):
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            missing = []
            for table in move.tables:
                cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table.name,))
                found = await cur.fetchone()
                if not found or not found[0]:
                    missing.append(table.name)
            if missing and len(missing) < len(move.tables):
                raise RuntimeError(
                    f"target {t} has some of the moved tables but not {', '.join(missing)}: "
                    "z2m copies the schema only to a target that has none of them"
                )
            if missing:
                statements = await schema_sql(move, sources[0])
                async with conn.transaction():
                    await conn.execute("SET LOCAL transaction_read_only = off")
                    for statement in statements:
                        await conn.execute(statement.encode())
                log.info("shard move %s: target %d got the moved tables' schema", move.name, t)
            cur = await conn.execute(FENCED_AT_SQL.encode())
            fenced = await cur.fetchone()
            if fenced is None or fenced[0] is None:
                continue
            name = sql.Identifier(
                str((await (await conn.execute("SELECT current_database()")).fetchone() or [""])[0])
            )
            tables = sql.SQL(", ").join(sql.Identifier(tb.name) for tb in move.tables)
            async with conn.transaction():
                await conn.execute("SET LOCAL transaction_read_only = off")
                await conn.execute(sql.SQL("TRUNCATE {}").format(tables))
                await conn.execute(
                    sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(name)
                )
                await conn.execute(sql.SQL('ALTER DATABASE {} RESET "z2m.fenced_at"').format(name))
            log.info("shard move %s: target %d was a fenced stale copy; emptied", move.name, t)
            emptied.append(t)
    return emptied

"""Sharding by user ID: where a user's rows live, and the online move as data.

This module decides; it never connects to anything.  ``z2m.shard_move`` observes
the databases, hands what it saw to :func:`next_step` and carries out the step.

Placement is ``user_id % N``.  That is deliberately plain: PostgreSQL's
publication row filters (``CREATE PUBLICATION ... FOR TABLE t WHERE (expr)``,
PostgreSQL 15) accept only immutable built-in operators on the table's own
columns, and ``%`` on a ``bigint`` is one; a hash function call is not
guaranteed to be.  The cost is that ids must spread evenly, which bigserial
ids do.  New users created on a shard keep the rule: each shard's user id
sequence hands out only ids ``≡ k (mod N)`` (see :func:`sequence_settings`).

A move is between *sources* and *targets*: 1→N (split) or N→1 (merge).  Its
phases, each with the precondition :func:`next_step` checks:

1. ``publish``: on each source, one publication per target, with a row filter
   for a split (no filter for a merge: a shard holds only its own rows).
   Tables whose shard key is not in the primary key get ``REPLICA IDENTITY
   FULL`` first, or PostgreSQL refuses UPDATE/DELETE under a row filter.
2. ``subscribe``: on each target, one subscription per source, ``copy_data``
   on.  Precondition: the target's tables are empty, or one of this move's
   subscriptions is already there (a re-run).
3. ``wait initial copy``: every table of every subscription is ``ready``.
4. ``fence``: once every slot is within ``fence_lag_bytes`` of its source,
   the sources turn read-only (``default_transaction_read_only`` on the
   database, its time recorded beside it as ``z2m.fenced_at``, then the client
   sessions older than that are ended, so every write after this fails rather
   than being silently left behind; the step repeats while any such session
   is seen, which also covers a runner stopped between the two).  Why this fence: it is in the
   database, so it holds whatever app version or replica count is running;
   it needs no app cooperation; and a write that fails is not acknowledged,
   so it can be retried on the new layout.  It is not a security boundary
   (a session may ``SET`` it off); the runner itself does so to record nothing.
5. ``final catch-up``: every slot's ``confirmed_flush_lsn`` has reached its
   source's WAL position read after the fence.
6. ``cutover``: sequences set on the targets above every source's (logical
   replication copies rows, not sequence positions), then routing switched.
7. ``clean up``: subscriptions, then publications, dropped.  The sources stay
   fenced: a copy nobody reads must not take writes.

Every step is a pure function of :class:`Observed`, so a runner killed at any
point converges when started again.  Not here: choosing N, provisioning the
shard servers, or the schema on the targets (they get it before the move).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

# The schema of sample_app, sharded by its owner: each row lives on the shard of
# the user it belongs to.  Tables not listed (jobs ledger, the app secret,
# schema_version) are not moved by this module.
SequenceName = str


@dataclass(frozen=True)
class ShardedTable:
    """A table split by the user id held in ``key`` (``key_in_pk``: part of its PK)."""

    name: str
    key: str
    key_in_pk: bool
    sequence: SequenceName | None = None


SAMPLE_APP_TABLES: tuple[ShardedTable, ...] = (
    ShardedTable("users", "id", key_in_pk=True, sequence="users_id_seq"),
    ShardedTable("posts", "author_id", key_in_pk=False, sequence="posts_id_seq"),
    ShardedTable("follows", "follower_id", key_in_pk=True),
    ShardedTable("notifications", "user_id", key_in_pk=True),
)

# Foreign keys that point at a row on another shard once split: a follow's
# followee, a notification's post.  The targets are created without them.
CROSS_SHARD_FOREIGN_KEYS: tuple[tuple[str, str], ...] = (
    ("follows", "follows_followee_id_fkey"),
    ("notifications", "notifications_post_id_fkey"),
)


def shard_of(user_id: int, shards: int) -> int:
    """The shard index (0-based) of ``user_id`` among ``shards`` shards."""
    if shards < 1:
        raise ValueError("shards must be at least 1")
    return user_id % shards


def row_filter(table: ShardedTable, shard: int, shards: int) -> str:
    """The publication row filter for ``table``'s rows that belong on ``shard``."""
    return f"(({table.key} % {shards}) = {shard})"


@dataclass(frozen=True)
class Move:
    """One move: ``sources`` and ``targets`` are indexes into the DSN lists.

    Exactly one side has one member.  ``name`` makes every publication,
    subscription and slot name of this move distinct from another move's.
    """

    name: str
    sources: int
    targets: int
    tables: tuple[ShardedTable, ...] = SAMPLE_APP_TABLES
    fence_lag_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if min(self.sources, self.targets) != 1 or max(self.sources, self.targets) < 2:
            raise ValueError("a move is 1→N or N→1 with N ≥ 2")
        if not self.name.isidentifier() or not self.name.islower():
            raise ValueError("a move's name is a lowercase identifier")

    @property
    def split(self) -> bool:
        """True for 1→N."""
        return self.sources == 1

    @property
    def shards(self) -> int:
        """N."""
        return max(self.sources, self.targets)

    def publication(self, target: int) -> str:
        """The publication (on every source) that feeds ``target``."""
        return f"z2m_{self.name}_to{target}"

    def subscription(self, source: int, target: int) -> str:
        """The subscription on ``target`` reading ``source`` (also its slot's name)."""
        return f"z2m_{self.name}_s{source}_t{target}"

    def pairs(self) -> list[tuple[int, int]]:
        """Every (source, target) pair that gets a subscription."""
        return [(s, t) for s in range(self.sources) for t in range(self.targets)]

    def publication_sql(self, target: int) -> list[str]:
        """Statements (one transaction) creating ``target``'s publication on a source."""
        statements = [
            f"ALTER TABLE {t.name} REPLICA IDENTITY FULL" for t in self.tables if not t.key_in_pk
        ]
        if self.split:
            parts = [f"{t.name} WHERE {row_filter(t, target, self.targets)}" for t in self.tables]
        else:
            parts = [t.name for t in self.tables]
        statements.append(
            f"CREATE PUBLICATION {self.publication(target)} FOR TABLE {', '.join(parts)}"
        )
        return statements


@dataclass(frozen=True)
class SubscriptionState:
    """What a target says about one of this move's subscriptions, and its slot."""

    exists: bool
    copied: bool = False  # every table's srsubstate is 'r' (ready)
    lag_bytes: int | None = None  # source WAL position minus the slot's confirmed flush


@dataclass(frozen=True)
class Observed:
    """The world as the runner read it, at one moment."""

    publications: frozenset[tuple[int, int]]  # (source, target) where it exists
    subscriptions: dict[tuple[int, int], SubscriptionState]
    target_has_rows: tuple[bool, ...]
    fenced: tuple[bool, ...]  # per source
    # Per source: client sessions that began before the fence (they may still write).
    stale_sessions: tuple[int, ...]
    routed: bool  # the app already routes to the targets


StepKind = Literal[
    "publish", "subscribe", "wait", "fence", "cutover", "drop-subscription",
    "drop-publication", "blocked", "done",
]  # fmt: skip


@dataclass(frozen=True)
class Step:
    """The next thing to do, with why.  ``source``/``target`` say where."""

    kind: StepKind
    reason: str
    source: int | None = None
    target: int | None = None
    pairs: tuple[tuple[int, int], ...] = field(default=())


def next_step(move: Move, seen: Observed) -> Step:
    """The one step the move needs next, given what was observed."""
    subs = {p: seen.subscriptions.get(p, SubscriptionState(exists=False)) for p in move.pairs()}
    if seen.routed:
        for (s, t), sub in subs.items():
            if sub.exists:
                return Step("drop-subscription", "routing switched", source=s, target=t)
        for s, t in sorted(seen.publications):
            return Step("drop-publication", "its subscriptions are gone", source=s, target=t)
        return Step("done", "the app routes to the targets; replication removed")
    for s, t in move.pairs():
        if (s, t) not in seen.publications:
            return Step("publish", f"source {s} has no publication for target {t}", s, t)
    for (s, t), sub in subs.items():
        if sub.exists:
            continue
        others = [p for p, o in subs.items() if p[1] == t and o.exists]
        if seen.target_has_rows[t] and not others:
            return Step("blocked", f"target {t} already holds rows and has no subscription", s, t)
        return Step("subscribe", f"target {t} does not read source {s} yet", s, t)
    copying = [p for p, sub in subs.items() if not sub.copied]
    if copying:
        return Step("wait", f"initial copy still running: {len(copying)} subscription(s)")
    lags = {p: sub.lag_bytes for p, sub in subs.items()}
    if all(seen.fenced) and any(seen.stale_sessions):
        return Step("fence", "sessions older than the fence are still connected")
    if not all(seen.fenced):
        behind = {p: lag for p, lag in lags.items() if lag is None or lag > move.fence_lag_bytes}
        if behind:
            return Step("wait", f"catching up before the fence: {_lag_text(behind)}")
        return Step("fence", "every subscription is close behind its source")
    behind = {p: lag for p, lag in lags.items() if lag is None or lag > 0}
    if behind:
        return Step("wait", f"final catch-up behind the fence: {_lag_text(behind)}")
    return Step("cutover", "fenced and caught up", pairs=tuple(move.pairs()))


def _lag_text(lags: dict[tuple[int, int], int | None]) -> str:
    return ", ".join(
        f"s{s}→t{t} {'unknown' if lag is None else f'{lag} B'}"
        for (s, t), lag in sorted(lags.items())
    )


def sequence_settings(move: Move, source_last: int, target: int) -> tuple[int, int]:
    """(first value, increment) for a sequence on ``target`` at cutover.

    ``source_last`` is the highest value any source's sequence handed out.
    Splitting, shard k gets the first id above it that is ``≡ k (mod N)`` and
    steps by N, so new users land on their own shard and ids stay unique
    across shards.  Merging, the one target continues at ``source_last + 1``.
    """
    first = source_last + 1
    if not move.split:
        return first, 1
    n = move.targets
    return first + (target - first) % n, n


def max_sequence(values: Sequence[int | None]) -> int:
    """The highest value handed out across sources (0 if none ever was)."""
    return max((v for v in values if v is not None), default=0)

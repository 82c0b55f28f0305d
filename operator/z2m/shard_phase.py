"""The shard move as a phase of a stage change: which move, between which URLs, how it reads.

Pure: no client, no database. The reconciler asks `needed` whether the stage change
moves the rows (the app's recorded layout differs from the one the stage wants),
runs the move through `z2m.movers` while the rewire phase waits on the
`database-moved` gate, and reports it with `condition`.

The app's layout is recorded in status (`databaseLayout`) by the move's cutover, the
`Routing` of `z2m.shard_move`: the builders give the app `DATABASE_SHARDS` only once it
says `shards`, so the app switches after the write fence, never before.

- 5 -> 6, a split: stage 5's database is the source, the shards are the targets.
- 6 -> 5, a merge: the shards are the sources, stage 5's database the target. The
  shards stay (the retire phase waits for the rewire phase, which waits for the move).

Not here: running the move (`z2m.movers`, `z2m.shard_move`) or its steps (`z2m.sharding`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from z2m import api, plan, sharding
from z2m.builders import postgres, shards

Layout = Literal["single", "shards"]
Direction = Literal["split", "merge"]
SUPERUSER = "postgres"
"""Patroni's superuser (PATRONI_SUPERUSER_USERNAME is not set): CREATE SUBSCRIPTION needs it."""
DATABASE = "app"
"""The database the app uses on every server (POSTGRES_DB)."""


def wanted(p: plan.Plan) -> Layout:
    """The layout the stage wants: the shards at stage 6, else one database."""
    return "shards" if p.shards else "single"


def recorded(status: dict[str, object] | None) -> Layout:
    """The layout the app was last configured with (one database until a cutover says)."""
    return "shards" if (status or {}).get("databaseLayout") == "shards" else "single"


def needed(p: plan.Plan, layout: Layout) -> Direction | None:
    """The move this stage change needs, or None when the app already has the wanted layout."""
    want = wanted(p)
    if want == layout:
        return None
    return "split" if want == "shards" else "merge"


def gates_rewire(direction: Direction | None, app_runs: bool) -> bool:
    """Whether the rewire phase waits for the move.

    Only when the app already runs: a ScalingStage created at stage 6 has no rows
    and no schema yet, so its app starts on stage 5's database, makes the schema
    there with its migrations, and the split follows (the shards then get their
    sequences from it, which a sign-up on a shard needs).
    """
    return direction is not None and app_runs


def shard_count(p: plan.Plan) -> int:
    """How many shards hold (or will hold) the rows: the plan's, else the spec's."""
    return p.shards or p.spec.database.shards


def move(direction: Direction, count: int) -> sharding.Move:
    """The `sharding.Move` of a direction; its name keeps its slots apart from the other's."""
    if direction == "split":
        return sharding.Move(name="split", sources=1, targets=count)
    return sharding.Move(name="merge", sources=count, targets=1)


@dataclass(frozen=True)
class Urls:
    """Superuser URLs of stage 5's database and of every shard, in shard order."""

    single: str
    shards: tuple[str, ...]

    def endpoints(self, direction: Direction) -> tuple[list[str], list[str]]:
        """(sources, targets) of a move in `direction`."""
        if direction == "split":
            return [self.single], list(self.shards)
        return list(self.shards), [self.single]


def urls(p: plan.Plan, password: str | None) -> Urls:
    """`spec.database.moveUrls` when given, else the in-cluster Services as the superuser.

    Raises ValueError when moveUrls lists another number of shards than the move has.
    """
    count = shard_count(p)
    given = p.spec.database.move_urls
    if given is not None:
        if len(given.shards) != count:
            raise ValueError(
                f"spec.database.moveUrls lists {len(given.shards)} shard(s); the move has {count}"
            )
        return Urls(given.source, tuple(given.shards))

    def url(host: str) -> str:
        return (
            f"postgresql://{SUPERUSER}:{password or ''}@{host}.{p.namespace}.svc:"
            f"{postgres.PG_PORT}/{DATABASE}"
        )

    hosts = [shards.shard_host(p, k) for k in range(count)]
    return Urls(url(postgres.database_host(p)), tuple(url(h) for h in hosts))


def not_ready(direction: Direction, ready: dict[str, int], count: int, owner: str) -> list[str]:
    """The shard StatefulSets (by name) a split still waits for: a target must be up first.

    `ready` maps a StatefulSet's name to its ready replicas. A merge reads from shards
    that already serve the app, so it waits for none.
    """
    if direction == "merge":
        return []
    names = [f"{owner}-db-shard-{k}" for k in range(count)]
    return [n for n in names if ready.get(n, 0) < 1]


def condition(
    p: plan.Plan, layout: Layout, progress: api.DatabaseMoveStatus | None
) -> tuple[bool, str, str] | None:
    """The DatabaseSharded condition: (status, reason, message), or None where it says nothing.

    At stage 6: NotMoved until the move starts, Moving while it runs, MoveFailed on
    trouble (the move is retried), True once the app routes to the shards and the
    move's replication is removed. At stage 5 only while (and once) a merge runs.
    """
    count = shard_count(p)
    failed = progress is not None and progress.phase == "failed"
    if p.shards:
        if layout == "shards" and (progress is None or progress.phase == "done"):
            return (
                True,
                "Moved",
                f"the app routes each user to shard user_id % {count} (DATABASE_SHARDS); "
                "stage 5's database stays fenced (read-only) with the rows as of the move",
            )
        if failed:
            assert progress is not None
            return False, "MoveFailed", f"the split is retried: {progress.message}"
        if progress is None:
            return (
                False,
                "NotMoved",
                f"{count} PostgreSQL shards are provided; the rows move into them once "
                "every shard is ready, and the app keeps stage 5's database until then",
            )
        return False, "Moving", f"splitting into {count} shards: {progress.message}"
    if progress is None or progress.direction != "merge":
        return None
    if failed:
        return False, "MoveFailed", f"the merge is retried: {progress.message}"
    if layout == "single":
        return False, "Merged", "the rows are back in one database; the shards are retired"
    return True, "Merging", f"merging {count} shards back into one database: {progress.message}"

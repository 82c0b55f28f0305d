"""Stage 6's PostgreSQL shards: one Patroni cluster per shard, beside stage 5's database.

Shard *k* is the StatefulSet `db-shard-k` (one member, on a retained claim), its
own Patroni scope (`pg-shard-k`, with its own ConfigMaps) and the Service
`db-shard-k` in front of whichever member leads it. Its dynamic configuration
runs `wal_level = logical`: the rows move in and out of a shard by logical
replication (`z2m.sharding`). The pods run as the database's ServiceAccount.

Not here: the move itself (`z2m.shard_move`), which shard a user is on
(`z2m.sharding.shard_of`), or per-shard replicas (a shard has no standby and no
read replica yet: each would cost another pod per shard on a small node).
"""

from __future__ import annotations

from typing import Any

from z2m import plan
from z2m.builders import meta, postgres, workloads

Obj = dict[str, Any]

LOGICAL = {
    "wal_level": "logical",
    "max_replication_slots": 20,
    "max_logical_replication_workers": 8,
    "max_worker_processes": 16,
}
"""What a shard's PostgreSQL needs beyond the database's settings to publish and subscribe."""


def component(index: int) -> str:
    """The component of shard `index`: distinct per shard, so their selectors never overlap."""
    return f"{postgres.SHARD_PREFIX}{index}"


def shard_host(p: plan.Plan, index: int) -> str:
    """The Service of shard `index`'s leader: where the app and the move reach it."""
    return meta.child(p.name, f"db-shard-{index}")


def shard_hosts(p: plan.Plan) -> list[str]:
    """Every shard's host, in shard order (empty when the plan is not sharded)."""
    return [shard_host(p, k) for k in range(p.shards)]


def shard_scope(owner_name: str, index: int) -> str:
    """The Patroni cluster of shard `index`."""
    return meta.child(owner_name, f"pg-shard-{index}")


def shard_config(p: plan.Plan) -> Obj:
    """A shard's Patroni dynamic configuration: the database's, logical, with no members."""
    config = postgres.patroni_config(p, members=[])
    config["synchronous_mode"] = False
    config["postgresql"]["parameters"].update(LOGICAL)
    return config


def objects(p: plan.Plan, owner: meta.Owner) -> list[Obj]:
    """Each shard's Patroni ConfigMaps, StatefulSet and leader Service."""
    objs: list[Obj] = []
    ports = [
        ("postgres", postgres.PG_PORT, postgres.PG_PORT),
        ("patroni", postgres.PATRONI_PORT, postgres.PATRONI_PORT),
    ]
    for k in range(p.shards):
        scope, host = shard_scope(p.name, k), shard_host(p, k)
        leader = {postgres.POSTGRES_CLUSTER: scope, postgres.PATRONI_ROLE: postgres.PATRONI_LEADER}
        objs += postgres.patroni_dcs(p, owner, scope, shard_config(p))
        objs.append(
            postgres.postgres_statefulset(
                p, owner, f"db-shard-{k}", component(k), 1, scope=scope, service=host
            )
        )
        objs.append(workloads.service(p, owner, host, component(k), ports, selector=leader))
    return objs

"""PostgreSQL under Patroni: the primary, stage 5's failover standby, the read replicas.

Their StatefulSets; the `db` Service, which selects whichever member Patroni made
leader, and the read replicas' Services and PDB; the ServiceAccount and Role Patroni
runs with, and the ConfigMaps it keeps its state in (`patroni_config` is the
dynamic configuration). Also where the app finds them: `database_host`, `replica_hosts`.
"""

from __future__ import annotations

import json
from typing import Any

from z2m import catalog, plan
from z2m.builders import meta, workloads

Obj = dict[str, Any]

PG_PORT = 5432
PGDATA = "/var/lib/postgresql/data/pgdata"
PATRONI_PORT = 8008
POSTGRES_CLUSTER = "z2m.dev/postgres-cluster"
"""Label of every PostgreSQL member pod (and Patroni's ConfigMaps): the Patroni scope."""
PATRONI_ROLE = "role"
PATRONI_LEADER = "master"
"""The value Patroni (3.0) gives its `role` label on the leader's pod."""
PATRONI_DCS = ("config", "leader")
"""Patroni's lasting ConfigMaps, `<scope>-<suffix>`: made by z2m, so they go with it.

Its `-failover` and `-sync` keys are not made ahead: their mere presence means a request.
"""
PATRONI_API_USER = "z2m"


def database_host(p: plan.Plan) -> str:
    """Where the app writes: the Service of the PostgreSQL leader, whichever pod it is."""
    return meta.child(p.name, "db")


def patroni_scope(owner_name: str) -> str:
    """The Patroni cluster of one ScalingStage: its ConfigMaps are `<scope>-config` and so on."""
    return meta.child(owner_name, "pg")


def replica_hosts(p: plan.Plan) -> list[str]:
    """One address per read replica, so the app can skip a single lagging one."""
    headless = meta.child(p.name, "db-replica")
    return [f"{headless}-{i}.{headless}" for i in range(p.read_replicas)]


def patroni_config(p: plan.Plan, members: list[str] | None = None) -> Obj:
    """Patroni's dynamic configuration, which z2m keeps in `<scope>-config` (as patronictl does).

    Patroni's own defaults: a leader lock of 30 s renewed every 10 s, so a dead
    primary's standby is promoted in about 30 s, inside the seed's 60. A shorter lock
    fails over sooner, but a busy node that misses one renewal then loses its primary
    for nothing (measured on a loaded two-core kind node with a 15 s lock).

    Each member streams through a slot (permanent, so a pod being
    replaced keeps its WAL), and the primary keeps at most 256 MB of WAL for a member
    that is away. Synchronous mode, an option, promotes only a standby that has every
    acknowledged commit.
    """
    if members is None:
        members = [f"{meta.child(p.name, 'db-standby')}-{i}" for i in range(p.failover_standbys)]
        members += [f"{meta.child(p.name, 'db-replica')}-{i}" for i in range(p.read_replicas)]
    return {
        "ttl": 30,
        "loop_wait": 10,
        "retry_timeout": 10,
        "maximum_lag_on_failover": 1048576,
        "failsafe_mode": True,
        "synchronous_mode": p.synchronous,
        "postgresql": {
            "use_pg_rewind": True,
            "use_slots": True,
            "parameters": {
                # Logical at every stage: stage 6's move publishes from this database, and
                # a wal_level change needs a restart that no stage change should cause.
                "wal_level": "logical",
                "hot_standby": "on",
                "wal_log_hints": "on",
                "max_wal_senders": 10,
                "max_replication_slots": 10,
                "wal_keep_size": "256MB",
                "max_slot_wal_keep_size": "256MB",
            },
        },
        "slots": {slot_name(m): {"type": "physical"} for m in members},
    }


def slot_name(member: str) -> str:
    """The replication slot Patroni gives a member (its pod's name, as postgres.sh says too)."""
    return member.lower().replace("-", "_").replace(".", "_")


SHARD_PREFIX = "database-shard-"
"""The component of a stage-6 shard is this and its index: each founds its own cluster."""


def founds_cluster(component: str) -> bool:
    """Whether the first pod of `component` may found its Patroni cluster (run initdb)."""
    return component == "database" or component.startswith(SHARD_PREFIX)


def _postgres_member(
    p: plan.Plan, component: str, scope: str | None = None, leader: str | None = None
) -> Obj:
    """A Patroni member: the primary (may found the cluster), the standby, or a read replica.

    `scope` and `leader` name another Patroni cluster than the database's (a shard's).
    """
    scope = scope or patroni_scope(p.name)

    def field(path: str) -> Obj:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    env: list[Obj] = [
        {"name": "PGDATA", "value": PGDATA},
        {"name": "POSTGRES_USER", "value": "app"},
        {"name": "POSTGRES_DB", "value": "app"},
        {"name": "PATRONI_SCOPE", "value": scope},
        {"name": "PATRONI_NAME", **field("metadata.name")},
        {"name": "POD_IP", **field("status.podIP")},
        {"name": "PATRONI_KUBERNETES_NAMESPACE", **field("metadata.namespace")},
        {"name": "PATRONI_KUBERNETES_LABELS", "value": json.dumps({POSTGRES_CLUSTER: scope})},
        {"name": "PATRONI_KUBERNETES_SCOPE_LABEL", "value": POSTGRES_CLUSTER},
        {"name": "Z2M_LEADER", "value": leader or database_host(p)},
        meta.secret_env(p, "PATRONI_SUPERUSER_PASSWORD", "database-password"),
        meta.secret_env(p, "PATRONI_REPLICATION_PASSWORD", "replication-password"),
        {"name": "PATRONI_RESTAPI_USERNAME", "value": PATRONI_API_USER},
        meta.secret_env(p, "PATRONI_RESTAPI_PASSWORD", "replication-password"),
    ]
    if founds_cluster(component):
        env.append({"name": "Z2M_BOOTSTRAP", "value": "1"})
    if component == "read-replica":
        # Read replicas follow the leader but never become it, nor its synchronous standby.
        env += [{"name": f"Z2M_{tag}", "value": "true"} for tag in ("NOFAILOVER", "NOSYNC")]
    return {
        "name": "postgres",
        "image": p.spec.database.image,
        "command": ["/bin/sh", f"{workloads.SCRIPTS_DIR}/postgres.sh"],
        "ports": [
            {"name": "postgres", "containerPort": PG_PORT},
            {"name": "patroni", "containerPort": PATRONI_PORT},
        ],
        "env": env,
        "readinessProbe": {
            "exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-p", str(PG_PORT)]},
            "periodSeconds": 5,
        },
        "resources": workloads.footprint(
            "read-replica" if component == "read-replica" else "database",
            p.spec.database.resources,
        ),
        "volumeMounts": [
            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
            workloads.scripts_mount(),
        ],
    }


def postgres_statefulset(
    p: plan.Plan,
    owner: meta.Owner,
    suffix: str,
    component: str,
    replicas: int,
    scope: str | None = None,
    service: str | None = None,
) -> Obj:
    """The StatefulSet of Patroni members `suffix` in `scope` (the database's by default).

    `service` is the Service in front of the scope's leader, which the pods join.
    """
    scope = scope or patroni_scope(p.name)
    leader = service or database_host(p)
    sts = workloads.statefulset(
        p,
        owner,
        suffix,
        component,
        replicas,
        [_postgres_member(p, component, scope, leader)],
        p.spec.database.storage,
        run_as=catalog.SERVER_UIDS["postgres"],
    )
    if service is not None:
        sts["spec"]["serviceName"] = service
    else:
        sts["spec"]["serviceName"] = meta.child(p.name, "db" if suffix == "db-standby" else suffix)
    template = sts["spec"]["template"]
    template["metadata"]["labels"][POSTGRES_CLUSTER] = scope
    # Patroni keeps its members' state on their pods and its lock in ConfigMaps.
    template["spec"]["serviceAccountName"] = meta.child(p.name, "db")
    return sts


def _patroni_access(p: plan.Plan, owner: meta.Owner) -> list[Obj]:
    """The ServiceAccount, Role and RoleBinding the PostgreSQL pods' Patroni runs with."""
    name = meta.child(p.name, "db")
    verbs = ["get", "list", "watch", "create", "update", "patch", "delete"]
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta.metadata(p, owner, name, "database"),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta.metadata(p, owner, name, "database"),
            "rules": [
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": verbs},
                {
                    "apiGroups": [""],
                    "resources": ["pods"],
                    "verbs": ["get", "list", "watch", "update", "patch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta.metadata(p, owner, name, "database"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": p.namespace}],
        },
    ]


def shared_with_patroni(obj: Obj) -> bool:
    """Whether Patroni writes to this child too: one of its ConfigMaps.

    z2m only makes it, then changes no more than the annotations it sets itself, and
    only when they differ. Patroni renews its leader lock with an update conditional
    on the resourceVersion; any other write in between fails the renewal, and Patroni
    demotes the primary.
    """
    return obj["kind"] == "ConfigMap" and POSTGRES_CLUSTER in (obj["metadata"].get("labels") or {})


def patroni_dcs(
    p: plan.Plan, owner: meta.Owner, scope: str | None = None, config: Obj | None = None
) -> list[Obj]:
    """Patroni's ConfigMaps, made first so that they are owned (and go with the ScalingStage).

    Patroni writes its leader lock, members' history and so on as annotations on them;
    z2m sets only the `config` annotation, the cluster's dynamic configuration.
    """
    scope = scope or patroni_scope(p.name)
    objs = []
    for suffix in PATRONI_DCS:
        metadata = meta.metadata(p, owner, f"{scope}-{suffix}", "database")
        metadata["labels"][POSTGRES_CLUSTER] = scope
        if suffix == "config":
            dynamic = patroni_config(p) if config is None else config
            metadata["annotations"] = {"config": json.dumps(dynamic, sort_keys=True)}
        objs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata})
    return objs


def database(p: plan.Plan, owner: meta.Owner) -> list[Obj]:
    """PostgreSQL under Patroni at every stage: the primary, and at stage 5 a failover standby.

    The `db` Service selects whichever member holds the leader lock (Patroni labels its
    pod), so the app and the read replicas follow a failover without a change of wiring.
    """
    leader = {POSTGRES_CLUSTER: patroni_scope(p.name), PATRONI_ROLE: PATRONI_LEADER}
    ports = [("postgres", PG_PORT, PG_PORT), ("patroni", PATRONI_PORT, PATRONI_PORT)]
    objs = [
        *_patroni_access(p, owner),
        *patroni_dcs(p, owner),
        postgres_statefulset(p, owner, "db", "database", 1),
        workloads.service(p, owner, meta.child(p.name, "db"), "database", ports, selector=leader),
    ]
    if p.failover_standbys:
        standby = postgres_statefulset(
            p, owner, "db-standby", "database-standby", p.failover_standbys
        )
        standby["spec"]["template"]["spec"]["affinity"] = _apart_from_primary(p)
        objs.append(standby)
    return objs


def _apart_from_primary(p: plan.Plan) -> Obj:
    """Keep the failover standby out of the primary's zone: required where there are zones.

    One-sided on purpose: the scheduler honours an existing pod's required anti-affinity
    for pods that come later, so the primary, if rescheduled, keeps away too, and the
    primary's own template never changes between stages 4 and 5 (no restart). With one
    zone (single-node kind) a requirement would leave the standby Pending forever: it
    then only prefers another node, and the ZoneRedundant condition says so.
    """
    term: Obj = {
        "labelSelector": {"matchLabels": meta.labels(p.name, "database")},
        "topologyKey": meta.ZONE,
    }
    if (p.zones or 0) >= 2:
        return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    preferred = [
        {"weight": 100, "podAffinityTerm": {**term, "topologyKey": "kubernetes.io/hostname"}}
    ]
    return {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": preferred}}


def read_replicas(p: plan.Plan, owner: meta.Owner) -> list[Obj]:
    """The streaming read replicas, from stage 3: a headless Service per pod, one for all."""
    if p.read_replicas == 0:
        return []
    component = "read-replica"
    port = [("postgres", PG_PORT, PG_PORT)]
    objs = [
        postgres_statefulset(p, owner, "db-replica", component, p.read_replicas),
        workloads.service(
            p, owner, meta.child(p.name, "db-replica"), component, port, headless=True
        ),
        workloads.service(p, owner, meta.child(p.name, "db-ro"), component, port),
    ]
    if p.read_replicas > 1:
        objs.append(workloads.pdb(p, owner, "db-replica", component))
    return objs

"""Redis, from stage 4: its StatefulSet and headless Service.

From stage 5 also a replica, three Sentinels that fail the master over (their
Deployment and Service), and PDBs for both. `redis_host` is a pod's stable name,
as Sentinel knows it.

At stage 6 Redis Cluster takes their place (`cluster_objects`): a StatefulSet of
primaries and replicas in cluster mode (`files/redis-cluster.sh`, whose ordinal 0
forms the cluster once), its headless Service and PDB. The pair's volume is kept,
not copied into the cluster: a cache is rebuilt by warming up, so moving between
the two loses nothing that the database does not hold.
"""

from __future__ import annotations

from typing import Any

from z2m import catalog, plan
from z2m.builders import meta, workloads

Obj = dict[str, Any]

REDIS_PORT = 6379
SENTINEL_PORT = 26379
REDIS_MASTER_NAME = "z2m"
"""The name Sentinel monitors the Redis master under (sentinel.sh says the same)."""
SENTINEL_DIR = "/var/lib/sentinel"


def redis_host(p: plan.Plan, ordinal: int) -> str:
    """The stable DNS name of one Redis pod, as Sentinel knows it (from any namespace)."""
    service = meta.child(p.name, "redis")
    return f"{service}-{ordinal}.{service}.{p.namespace}.svc"


CLUSTER = "redis-cl"
"""The suffix of Redis Cluster's StatefulSet and Service (short: a StatefulSet's name
is kept to 52 characters, and the ScalingStage's may be 41)."""


def cluster_host(p: plan.Plan, ordinal: int) -> str:
    """The stable DNS name of one Redis Cluster node."""
    service = meta.child(p.name, CLUSTER)
    return f"{service}-{ordinal}.{service}.{p.namespace}.svc"


def cluster_nodes(p: plan.Plan) -> list[str]:
    """`host:port` of every Redis Cluster node, in ordinal order."""
    assert p.redis_cluster is not None
    return [f"{cluster_host(p, i)}:{REDIS_PORT}" for i in range(p.redis_cluster.nodes)]


def cluster_objects(p: plan.Plan, owner: meta.Owner) -> list[Obj]:
    """Redis Cluster's StatefulSet, headless Service and PDB, where the plan has it."""
    if p.redis_cluster is None:
        return []
    container: Obj = {
        "name": "redis",
        "image": p.spec.cache.image,
        "command": ["/bin/sh", f"{workloads.SCRIPTS_DIR}/redis-cluster.sh"],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            meta.secret_env(p, "REDIS_PASSWORD", "redis-password"),
            {"name": "CLUSTER_NODES", "value": " ".join(cluster_nodes(p))},
            {"name": "CLUSTER_REPLICAS", "value": str(p.redis_cluster.replicas_per_primary)},
            {
                "name": "ANNOUNCE_DOMAIN",
                "value": f"{meta.child(p.name, CLUSTER)}.{p.namespace}.svc",
            },
        ],
        "ports": [
            {"name": "redis", "containerPort": REDIS_PORT},
            {"name": "cluster-bus", "containerPort": REDIS_PORT + 10000},
        ],
        "readinessProbe": {"tcpSocket": {"port": REDIS_PORT}, "periodSeconds": 5},
        "resources": workloads.footprint("cache-cluster", p.spec.cache.resources),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, workloads.scripts_mount()],
    }
    statefulset = workloads.statefulset(
        p,
        owner,
        CLUSTER,
        "cache-cluster",
        p.redis_cluster.nodes,
        [container],
        p.spec.cache.storage,
        run_as=catalog.SERVER_UIDS["redis"],
    )
    # Every node starts at once: ordinal 0 forms the cluster only when all of them answer.
    statefulset["spec"]["podManagementPolicy"] = "Parallel"
    return [
        statefulset,
        workloads.service(
            p,
            owner,
            meta.child(p.name, CLUSTER),
            "cache-cluster",
            [
                ("redis", REDIS_PORT, REDIS_PORT),
                ("cluster-bus", REDIS_PORT + 10000, REDIS_PORT + 10000),
            ],
            headless=True,
        ),
        workloads.pdb(p, owner, CLUSTER, "cache-cluster"),
    ]


def objects(p: plan.Plan, owner: meta.Owner) -> list[Obj]:
    """Redis, and from stage 5 its replica and Sentinels, where the plan has it."""
    if not p.redis:
        return []
    if p.redis_cluster is not None:
        return cluster_objects(p, owner)
    primary = redis_host(p, 0)
    sentinels = f"{meta.child(p.name, 'redis-sentinel')}.{p.namespace}.svc"
    env: list[Obj] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "PRIMARY_HOST", "value": primary},
        meta.secret_env(p, "REDIS_PASSWORD", "redis-password"),
    ]
    if p.sentinel:
        env.append({"name": "SENTINEL_HOST", "value": sentinels})
        # Sentinel then knows each pod by its stable name, which survives a new pod IP.
        env.append(
            {"name": "ANNOUNCE_DOMAIN", "value": f"{meta.child(p.name, 'redis')}.{p.namespace}.svc"}
        )
    container: Obj = {
        "name": "redis",
        "image": p.spec.cache.image,
        "command": ["/bin/sh", f"{workloads.SCRIPTS_DIR}/redis.sh"],
        "env": env,
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "readinessProbe": {"tcpSocket": {"port": REDIS_PORT}, "periodSeconds": 5},
        "resources": workloads.footprint("cache", p.spec.cache.resources),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, workloads.scripts_mount()],
    }
    replicas = 1 + p.redis_replicas
    objs = [
        workloads.statefulset(
            p,
            owner,
            "redis",
            "cache",
            replicas,
            [container],
            p.spec.cache.storage,
            run_as=catalog.SERVER_UIDS["redis"],
        ),
        workloads.service(
            p,
            owner,
            meta.child(p.name, "redis"),
            "cache",
            [("redis", REDIS_PORT, REDIS_PORT)],
            headless=True,
        ),
    ]
    if p.sentinel:
        sentinel: Obj = {
            "name": "sentinel",
            "image": p.spec.cache.image,
            "command": ["/bin/sh", f"{workloads.SCRIPTS_DIR}/sentinel.sh"],
            "env": [
                {"name": "PRIMARY_HOST", "value": primary},
                meta.secret_env(p, "REDIS_PASSWORD", "redis-password"),
                {"name": "SENTINEL_DIR", "value": SENTINEL_DIR},
                # Who a new Sentinel asks for the current primary before trusting ordinal 0.
                {"name": "SENTINEL_PEERS", "value": f"{sentinels}:{SENTINEL_PORT}"},
                {
                    "name": "REDIS_PODS",
                    "value": " ".join(f"{redis_host(p, i)}:{REDIS_PORT}" for i in range(replicas)),
                },
            ],
            "ports": [{"name": "sentinel", "containerPort": SENTINEL_PORT}],
            "readinessProbe": {"tcpSocket": {"port": SENTINEL_PORT}},
            "resources": workloads.footprint("cache-sentinel"),
            # An emptyDir outlives container restarts: a restarted Sentinel keeps its state.
            "volumeMounts": [
                workloads.scripts_mount(),
                {"name": "state", "mountPath": SENTINEL_DIR},
            ],
        }
        pod: Obj = {
            "containers": [sentinel],
            "volumes": [workloads.scripts_volume(p), {"name": "state", "emptyDir": {}}],
            "topologySpreadConstraints": workloads.spread(p, "cache-sentinel"),
        }
        objs += [
            workloads.deployment(
                p,
                owner,
                "redis-sentinel",
                "cache-sentinel",
                3,
                pod,
                run_as=catalog.SERVER_UIDS["redis"],
            ),
            workloads.service(
                p,
                owner,
                meta.child(p.name, "redis-sentinel"),
                "cache-sentinel",
                [("sentinel", SENTINEL_PORT, SENTINEL_PORT)],
            ),
            workloads.pdb(p, owner, "redis", "cache"),
            workloads.pdb(p, owner, "redis-sentinel", "cache-sentinel"),
        ]
    return objs

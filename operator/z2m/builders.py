"""Pure builders: a plan in, the Kubernetes objects of its stage out.

No client, no Kopf, no clock: `build(plan, owner)` is a function of its
arguments (one of them a fact the caller looked up: whether the cluster serves
the Prometheus Operator's kinds), so every stage can be rendered and unit-tested
without a cluster (`z2m render` prints exactly this). Names and labels come from the helpers at
the top, so every other module agrees with them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from z2m import api, catalog, plan

Obj = dict[str, Any]

FIELD_MANAGER = "z2m"
MANAGED_BY = "app.kubernetes.io/managed-by"
PART_OF = "app.kubernetes.io/part-of"
COMPONENT = "app.kubernetes.io/component"
RETAINED = "z2m.dev/retained"
ZONE = "topology.kubernetes.io/zone"

PG_PORT = 5432
REDIS_PORT = 6379
SENTINEL_PORT = 26379
REDIS_MASTER_NAME = "z2m"
"""The name Sentinel monitors the Redis master under (sentinel.sh says the same)."""
SENTINEL_DIR = "/var/lib/sentinel"
AMQP_PORT = 5672
AMQP_MANAGEMENT_PORT = 15672
EDGE_PORT = 8080
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
SCRIPTS_DIR = "/etc/z2m"
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
MONITORING_DIR = "/etc/z2m-monitoring"
MONITORING_DATA = "/var/lib/prometheus"
SD_DIR = "/var/run/z2m-sd"
SD_FILE = f"{SD_DIR}/targets.json"
"""The target list the discovery sidecar writes and Prometheus reads (file_sd)."""
SCRAPE_INTERVAL = "15s"
SCRAPED = ("app", "worker")
"""Components whose pods serve /metrics on their `http` port and are scraped."""
CONFIG_HASH = "z2m.dev/config-hash"
MONITORING_API = "monitoring.coreos.com/v1"
PROMETHEUS_OPERATOR_KINDS = ((MONITORING_API, "PodMonitor"), (MONITORING_API, "PrometheusRule"))
"""Where the cluster serves both, stage 5 writes them instead of running a Prometheus."""
SECRET_KEYS = (
    "database-password",
    "replication-password",
    "redis-password",
    "queue-password",
    "session-secret",
)
SCRIPT_FILES = (
    "postgres.sh",
    "redis.sh",
    "sentinel.sh",
    "nginx-edge.conf",
    "rabbitmq.conf",
)

# Applied in this order: what others mount or call comes before who mounts or calls it.
KIND_ORDER = (
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "PersistentVolumeClaim",
    "Service",
    "StatefulSet",
    "Deployment",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "PodMonitor",
    "PrometheusRule",
)
# Kinds the operator prunes. PVCs and the credentials Secret are never in it: they outlive
# demotions and the ScalingStage itself, so that a later promotion finds its data again.
PRUNABLE = {
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    *PROMETHEUS_OPERATOR_KINDS,
}


@dataclass(frozen=True)
class Owner:
    """The ScalingStage that owns the children, for owner references."""

    name: str
    uid: str


def child(owner_name: str, component: str) -> str:
    """The name of a child object: `<scalingstage>-<component>`."""
    return f"{owner_name}-{component}"


def secret_name(owner_name: str) -> str:
    """The Secret with the credentials the operator generates once."""
    return child(owner_name, "credentials")


def labels(owner_name: str, component: str) -> dict[str, str]:
    """The labels every child carries; the first two find children, all three select pods."""
    return {MANAGED_BY: "z2m", PART_OF: owner_name, COMPONENT: component}


def child_selector(owner_name: str) -> str:
    """Label selector for every child of one ScalingStage."""
    return f"{MANAGED_BY}=z2m,{PART_OF}={owner_name}"


def script(name: str) -> str:
    """The text of a file mounted into pods; tests run the same file against real programs."""
    return resources.files("z2m").joinpath("files", name).read_text()


def _meta(p: plan.Plan, owner: Owner, name: str, component: str) -> Obj:
    return {
        "name": name,
        "namespace": p.namespace,
        "labels": labels(p.name, component),
        "ownerReferences": [
            {
                "apiVersion": f"{api.GROUP}/{api.VERSION}",
                "kind": api.KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def _secret_env(p: plan.Plan, var: str, key: str) -> Obj:
    return {
        "name": var,
        "valueFrom": {"secretKeyRef": {"name": secret_name(p.name), "key": key}},
    }


def _spread(p: plan.Plan, component: str) -> list[Obj]:
    # ScheduleAnyway: a kind cluster's nodes carry no zone label, and DoNotSchedule would
    # leave every pod Pending there. Spread is a preference, availability is the PDB's job.
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": labels(p.name, component)},
        }
        for key in (ZONE, "kubernetes.io/hostname")
    ]


def _scripts_volume(p: plan.Plan) -> Obj:
    return {
        "name": "z2m-scripts",
        "configMap": {"name": child(p.name, "scripts"), "defaultMode": 0o555},
    }


def _scripts_mount() -> Obj:
    return {"name": "z2m-scripts", "mountPath": SCRIPTS_DIR, "readOnly": True}


def _resources(r: api.Resources) -> Obj:
    return r.model_dump(by_alias=True, exclude_none=True)


def _footprint(component: str, override: api.Resources | None = None) -> Obj:
    """The user's requests and limits for a server of ours, else the catalog's."""
    if override is not None:
        return _resources(override)
    f = catalog.FOOTPRINTS[component]
    return {"requests": {"cpu": f.cpu, "memory": f.memory}, "limits": {"memory": f.memory_limit}}


def _restricted(pod_spec: Obj, uid: int | None) -> Obj:
    """Make a pod pass the `restricted` Pod Security level, as every child pod does.

    Non-root (as `uid`, the image's own user, or the user's image's USER when None), no
    privilege escalation, no capabilities, the runtime's default seccomp profile. The
    volumes need no root init container: `fsGroup` hands them over where the volume
    plugin supports it, and local-path volumes (kind's) are world-writable directories.
    """
    pod: Obj = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if uid is not None:
        pod.update(runAsUser=uid, runAsGroup=uid, fsGroup=uid)
    for container in pod_spec["containers"]:
        container["securityContext"] = {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }
    return {**pod_spec, "securityContext": pod}


# A pod being replaced stays in the Service's endpoints until every kube-proxy has seen it
# go: it keeps serving that long before its process is told to stop.
DRAIN = {"preStop": {"sleep": {"seconds": 5}}}


# --- wiring ----------------------------------------------------------------------------


def database_host(p: plan.Plan) -> str:
    """Where the app writes: the Service of the PostgreSQL leader, whichever pod it is."""
    return child(p.name, "db")


def patroni_scope(owner_name: str) -> str:
    """The Patroni cluster of one ScalingStage: its ConfigMaps are `<scope>-config` and so on."""
    return child(owner_name, "pg")


def replica_hosts(p: plan.Plan) -> list[str]:
    """One address per read replica, so the app can skip a single lagging one."""
    headless = child(p.name, "db-replica")
    return [f"{headless}-{i}.{headless}" for i in range(p.read_replicas)]


def redis_host(p: plan.Plan, ordinal: int) -> str:
    """The stable DNS name of one Redis pod, as Sentinel knows it (from any namespace)."""
    service = child(p.name, "redis")
    return f"{service}-{ordinal}.{service}.{p.namespace}.svc"


def app_env(p: plan.Plan, role: str) -> list[Obj]:
    """Environment of web and worker pods: the stage's wiring, then the user's env."""
    env: list[Obj] = [
        {"name": "ROLE", "value": role},
        {"name": "PORT", "value": str(p.spec.app.port)},
        _secret_env(p, "SECRET_KEY", "session-secret"),
        _secret_env(p, "Z2M_DATABASE_PASSWORD", "database-password"),
    ]

    def pg(host: str) -> str:
        return f"postgresql://app:$(Z2M_DATABASE_PASSWORD)@{host}:{PG_PORT}/app"

    env.append({"name": "DATABASE_URL", "value": pg(database_host(p))})
    if hosts := replica_hosts(p):
        env.append({"name": "DATABASE_REPLICA_URLS", "value": ",".join(pg(h) for h in hosts)})
    if p.sentinel:
        # Sentinel names the master, which moves on failover: never a fixed pod here.
        sentinels = f"{child(p.name, 'redis-sentinel')}:{SENTINEL_PORT}"
        env.append({"name": "REDIS_SENTINELS", "value": sentinels})
        env.append({"name": "REDIS_MASTER_NAME", "value": REDIS_MASTER_NAME})
        env.append(_secret_env(p, "REDIS_PASSWORD", "redis-password"))
    elif p.redis:
        env.append(_secret_env(p, "Z2M_REDIS_PASSWORD", "redis-password"))
        primary = f"{child(p.name, 'redis')}-0.{child(p.name, 'redis')}"
        env.append(
            {
                "name": "REDIS_URL",
                "value": f"redis://:$(Z2M_REDIS_PASSWORD)@{primary}:{REDIS_PORT}/0",
            }
        )
    if p.queue:
        env.append(_secret_env(p, "Z2M_QUEUE_PASSWORD", "queue-password"))
        broker = f"amqp://z2m:$(Z2M_QUEUE_PASSWORD)@{child(p.name, 'queue')}:{AMQP_PORT}/%2F"
        env.append({"name": "BROKER_URL", "value": broker})
        env.append({"name": "QUEUE_NAME", "value": p.spec.queue.queue_name})
    ours = {e["name"] for e in env}
    user = [e.model_dump(by_alias=True) for e in p.spec.app.env]
    # The user's value wins over ours: drop ours rather than send a duplicate key.
    overridden = {e["name"] for e in user} & ours
    return [e for e in env if e["name"] not in overridden] + user


# --- components ------------------------------------------------------------------------


def patroni_config(p: plan.Plan) -> Obj:
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
    members = [f"{child(p.name, 'db-standby')}-{i}" for i in range(p.failover_standbys)]
    members += [f"{child(p.name, 'db-replica')}-{i}" for i in range(p.read_replicas)]
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
                "wal_level": "replica",
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


def _postgres_member(p: plan.Plan, component: str) -> Obj:
    """A Patroni member: the primary (may found the cluster), the standby, or a read replica."""
    scope = patroni_scope(p.name)

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
        {"name": "Z2M_LEADER", "value": database_host(p)},
        _secret_env(p, "PATRONI_SUPERUSER_PASSWORD", "database-password"),
        _secret_env(p, "PATRONI_REPLICATION_PASSWORD", "replication-password"),
        {"name": "PATRONI_RESTAPI_USERNAME", "value": PATRONI_API_USER},
        _secret_env(p, "PATRONI_RESTAPI_PASSWORD", "replication-password"),
    ]
    if component == "database":
        env.append({"name": "Z2M_BOOTSTRAP", "value": "1"})
    if component == "read-replica":
        # Read replicas follow the leader but never become it, nor its synchronous standby.
        env += [{"name": f"Z2M_{tag}", "value": "true"} for tag in ("NOFAILOVER", "NOSYNC")]
    return {
        "name": "postgres",
        "image": p.spec.database.image,
        "command": ["/bin/sh", f"{SCRIPTS_DIR}/postgres.sh"],
        "ports": [
            {"name": "postgres", "containerPort": PG_PORT},
            {"name": "patroni", "containerPort": PATRONI_PORT},
        ],
        "env": env,
        "readinessProbe": {
            "exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-p", str(PG_PORT)]},
            "periodSeconds": 5,
        },
        "resources": _footprint(
            "read-replica" if component == "read-replica" else "database",
            p.spec.database.resources,
        ),
        "volumeMounts": [
            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
            _scripts_mount(),
        ],
    }


def _app_container(p: plan.Plan, role: str) -> Obj:
    app = p.spec.app
    container: Obj = {
        "name": role if role == "worker" else "app",
        "image": app.image,
        "env": app_env(p, role),
        "resources": _resources(app.resources),
        "ports": [{"name": "http", "containerPort": app.port}],
    }
    if role == "worker" and app.worker_command:
        # The user's own worker program may serve no HTTP: probing it would kill it.
        container["command"] = list(app.worker_command)
        return container
    container["livenessProbe"] = {
        "httpGet": {"path": "/healthz", "port": app.port},
        "periodSeconds": 10,
    }
    container["readinessProbe"] = {
        "httpGet": {"path": "/readyz", "port": app.port},
        "periodSeconds": 5,
    }
    if role == "web":
        container["lifecycle"] = DRAIN
    return container


def _pvc_template(p: plan.Plan, component: str, storage: api.Storage) -> Obj:
    spec: Obj = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    return {
        "metadata": {"name": "data", "labels": {**labels(p.name, component), RETAINED: "true"}},
        "spec": spec,
    }


def _statefulset(
    p: plan.Plan,
    owner: Owner,
    suffix: str,
    component: str,
    replicas: int,
    containers: list[Obj],
    storage: api.Storage,
    *,
    run_as: int,
) -> Obj:
    pod_spec = _restricted(
        {
            "containers": containers,
            "volumes": [_scripts_volume(p)],
            "topologySpreadConstraints": _spread(p, component),
        },
        run_as,
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(p, owner, child(p.name, suffix), component),
        "spec": {
            "replicas": replicas,
            "serviceName": child(p.name, suffix),
            "selector": {"matchLabels": labels(p.name, component)},
            "podManagementPolicy": "OrderedReady",
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Retain",
                "whenScaled": "Retain",
            },
            "template": {"metadata": {"labels": labels(p.name, component)}, "spec": pod_spec},
            "volumeClaimTemplates": [_pvc_template(p, component, storage)],
        },
    }


def _deployment(
    p: plan.Plan,
    owner: Owner,
    suffix: str,
    component: str,
    replicas: int | None,
    pod_spec: Obj,
    *,
    run_as: int | None = None,
) -> Obj:
    spec: Obj = {
        "selector": {"matchLabels": labels(p.name, component)},
        "template": {
            "metadata": {"labels": labels(p.name, component)},
            "spec": _restricted(pod_spec, run_as),
        },
    }
    if replicas is not None:
        # Left out entirely when an autoscaler owns the count: see kube.hand_over_replicas.
        spec["replicas"] = replicas
    spec["strategy"] = {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(p, owner, child(p.name, suffix), component),
        "spec": spec,
    }


def _service(
    p: plan.Plan,
    owner: Owner,
    name: str,
    component: str,
    ports: list[tuple[str, int, int]],
    *,
    headless: bool = False,
    selector: dict[str, str] | None = None,
) -> Obj:
    spec: Obj = {
        "selector": selector or labels(p.name, component),
        "ports": [
            {"name": n, "port": port, "targetPort": target, "protocol": "TCP"}
            for n, port, target in ports
        ],
    }
    if headless:
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = True
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(p, owner, name, component),
        "spec": spec,
    }


def _pdb(p: plan.Plan, owner: Owner, suffix: str, component: str) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(p, owner, child(p.name, suffix), component),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(p.name, component)}},
    }


def _hpa(p: plan.Plan, owner: Owner, suffix: str, scaling: catalog.Autoscaling) -> Obj:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(p, owner, child(p.name, suffix), suffix),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": child(p.name, suffix),
            },
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": scaling.cpu_percent,
                        },
                    },
                }
            ],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0},
                "scaleDown": {"stabilizationWindowSeconds": 300},
            },
        },
    }


def _scripts(p: plan.Plan, owner: Owner) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(p, owner, child(p.name, "scripts"), "config"),
        "data": {name: script(name) for name in SCRIPT_FILES},
    }


def _app(p: plan.Plan, owner: Owner) -> list[Obj]:
    pod_spec: Obj = {
        "containers": [_app_container(p, "web")],
        "topologySpreadConstraints": _spread(p, "app"),
        "affinity": _beside_database(p),
    }
    objs = [
        _deployment(p, owner, "app", "app", p.app_replicas, pod_spec),
        _service(p, owner, child(p.name, "app"), "app", [("http", 80, p.spec.app.port)]),
    ]
    if p.app_autoscaling is not None:
        objs.append(_hpa(p, owner, "app", p.app_autoscaling))
    if p.app_autoscaling is not None or (p.app_replicas or 0) > 1:
        objs.append(_pdb(p, owner, "app", "app"))
    return objs


def _beside_database(p: plan.Plan) -> Obj:
    """Where the app may run: on the database's node at stage 1, off it later.

    Stage 1 is one machine, so the app must share the database's node. From stage 2
    the database has a machine of its own, and the app keeps off it where it can.
    """
    term: Obj = {
        "labelSelector": {"matchLabels": labels(p.name, "database")},
        "topologyKey": "kubernetes.io/hostname",
    }
    if p.colocated_database:
        return {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term}
            ]
        }
    }


def _postgres_statefulset(
    p: plan.Plan, owner: Owner, suffix: str, component: str, replicas: int
) -> Obj:
    sts = _statefulset(
        p,
        owner,
        suffix,
        component,
        replicas,
        [_postgres_member(p, component)],
        p.spec.database.storage,
        run_as=catalog.SERVER_UIDS["postgres"],
    )
    sts["spec"]["serviceName"] = child(p.name, "db" if suffix == "db-standby" else suffix)
    template = sts["spec"]["template"]
    template["metadata"]["labels"][POSTGRES_CLUSTER] = patroni_scope(p.name)
    # Patroni keeps its members' state on their pods and its lock in ConfigMaps.
    template["spec"]["serviceAccountName"] = child(p.name, "db")
    return sts


def _patroni_access(p: plan.Plan, owner: Owner) -> list[Obj]:
    """The ServiceAccount, Role and RoleBinding the PostgreSQL pods' Patroni runs with."""
    name = child(p.name, "db")
    verbs = ["get", "list", "watch", "create", "update", "patch", "delete"]
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(p, owner, name, "database"),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(p, owner, name, "database"),
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
            "metadata": _meta(p, owner, name, "database"),
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


def _patroni_dcs(p: plan.Plan, owner: Owner) -> list[Obj]:
    """Patroni's ConfigMaps, made first so that they are owned (and go with the ScalingStage).

    Patroni writes its leader lock, members' history and so on as annotations on them;
    z2m sets only the `config` annotation, the cluster's dynamic configuration.
    """
    scope = patroni_scope(p.name)
    objs = []
    for suffix in PATRONI_DCS:
        meta = _meta(p, owner, f"{scope}-{suffix}", "database")
        meta["labels"][POSTGRES_CLUSTER] = scope
        if suffix == "config":
            meta["annotations"] = {"config": json.dumps(patroni_config(p), sort_keys=True)}
        objs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})
    return objs


def _database(p: plan.Plan, owner: Owner) -> list[Obj]:
    """PostgreSQL under Patroni at every stage: the primary, and at stage 5 a failover standby.

    The `db` Service selects whichever member holds the leader lock (Patroni labels its
    pod), so the app and the read replicas follow a failover without a change of wiring.
    """
    leader = {POSTGRES_CLUSTER: patroni_scope(p.name), PATRONI_ROLE: PATRONI_LEADER}
    ports = [("postgres", PG_PORT, PG_PORT), ("patroni", PATRONI_PORT, PATRONI_PORT)]
    objs = [
        *_patroni_access(p, owner),
        *_patroni_dcs(p, owner),
        _postgres_statefulset(p, owner, "db", "database", 1),
        _service(p, owner, child(p.name, "db"), "database", ports, selector=leader),
    ]
    if p.failover_standbys:
        standby = _postgres_statefulset(
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
        "labelSelector": {"matchLabels": labels(p.name, "database")},
        "topologyKey": ZONE,
    }
    if (p.zones or 0) >= 2:
        return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    preferred = [
        {"weight": 100, "podAffinityTerm": {**term, "topologyKey": "kubernetes.io/hostname"}}
    ]
    return {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": preferred}}


def _read_replicas(p: plan.Plan, owner: Owner) -> list[Obj]:
    if p.read_replicas == 0:
        return []
    component = "read-replica"
    port = [("postgres", PG_PORT, PG_PORT)]
    objs = [
        _postgres_statefulset(p, owner, "db-replica", component, p.read_replicas),
        _service(p, owner, child(p.name, "db-replica"), component, port, headless=True),
        _service(p, owner, child(p.name, "db-ro"), component, port),
    ]
    if p.read_replicas > 1:
        objs.append(_pdb(p, owner, "db-replica", component))
    return objs


def _edge(p: plan.Plan, owner: Owner) -> list[Obj]:
    if not p.edge_cache:
        return []
    command = (
        f"envsubst '$UPSTREAM $STATIC_PATH $LISTEN_PORT' < {SCRIPTS_DIR}/nginx-edge.conf "
        "> /tmp/nginx.conf && exec nginx -c /tmp/nginx.conf -g 'daemon off;'"
    )
    container: Obj = {
        "name": "nginx",
        "image": api.DEFAULT_NGINX_IMAGE,
        "command": ["/bin/sh", "-c", command],
        "env": [
            {"name": "UPSTREAM", "value": f"{child(p.name, 'app')}:80"},
            {"name": "STATIC_PATH", "value": p.spec.app.static_path},
            {"name": "LISTEN_PORT", "value": str(EDGE_PORT)},
        ],
        "ports": [{"name": "http", "containerPort": EDGE_PORT}],
        "readinessProbe": {"httpGet": {"path": "/edge-healthz", "port": EDGE_PORT}},
        "lifecycle": DRAIN,
        "resources": _footprint("edge"),
        "volumeMounts": [_scripts_mount()],
    }
    pod: Obj = {
        "containers": [container],
        "volumes": [_scripts_volume(p)],
        "topologySpreadConstraints": _spread(p, "edge"),
    }
    return [
        _deployment(p, owner, "edge", "edge", 2, pod, run_as=catalog.SERVER_UIDS["nginx"]),
        _service(p, owner, child(p.name, "edge"), "edge", [("http", 80, EDGE_PORT)]),
        _pdb(p, owner, "edge", "edge"),
    ]


def _redis(p: plan.Plan, owner: Owner) -> list[Obj]:
    if not p.redis:
        return []
    primary = redis_host(p, 0)
    sentinels = f"{child(p.name, 'redis-sentinel')}.{p.namespace}.svc"
    env: list[Obj] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "PRIMARY_HOST", "value": primary},
        _secret_env(p, "REDIS_PASSWORD", "redis-password"),
    ]
    if p.sentinel:
        env.append({"name": "SENTINEL_HOST", "value": sentinels})
        # Sentinel then knows each pod by its stable name, which survives a new pod IP.
        env.append(
            {"name": "ANNOUNCE_DOMAIN", "value": f"{child(p.name, 'redis')}.{p.namespace}.svc"}
        )
    container: Obj = {
        "name": "redis",
        "image": p.spec.cache.image,
        "command": ["/bin/sh", f"{SCRIPTS_DIR}/redis.sh"],
        "env": env,
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "readinessProbe": {"tcpSocket": {"port": REDIS_PORT}, "periodSeconds": 5},
        "resources": _footprint("cache", p.spec.cache.resources),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, _scripts_mount()],
    }
    replicas = 1 + p.redis_replicas
    objs = [
        _statefulset(
            p,
            owner,
            "redis",
            "cache",
            replicas,
            [container],
            p.spec.cache.storage,
            run_as=catalog.SERVER_UIDS["redis"],
        ),
        _service(
            p,
            owner,
            child(p.name, "redis"),
            "cache",
            [("redis", REDIS_PORT, REDIS_PORT)],
            headless=True,
        ),
    ]
    if p.sentinel:
        sentinel: Obj = {
            "name": "sentinel",
            "image": p.spec.cache.image,
            "command": ["/bin/sh", f"{SCRIPTS_DIR}/sentinel.sh"],
            "env": [
                {"name": "PRIMARY_HOST", "value": primary},
                _secret_env(p, "REDIS_PASSWORD", "redis-password"),
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
            "resources": _footprint("cache-sentinel"),
            # An emptyDir outlives container restarts: a restarted Sentinel keeps its state.
            "volumeMounts": [_scripts_mount(), {"name": "state", "mountPath": SENTINEL_DIR}],
        }
        pod: Obj = {
            "containers": [sentinel],
            "volumes": [_scripts_volume(p), {"name": "state", "emptyDir": {}}],
            "topologySpreadConstraints": _spread(p, "cache-sentinel"),
        }
        objs += [
            _deployment(
                p,
                owner,
                "redis-sentinel",
                "cache-sentinel",
                3,
                pod,
                run_as=catalog.SERVER_UIDS["redis"],
            ),
            _service(
                p,
                owner,
                child(p.name, "redis-sentinel"),
                "cache-sentinel",
                [("sentinel", SENTINEL_PORT, SENTINEL_PORT)],
            ),
            _pdb(p, owner, "redis", "cache"),
            _pdb(p, owner, "redis-sentinel", "cache-sentinel"),
        ]
    return objs


def _queue(p: plan.Plan, owner: Owner) -> list[Obj]:
    if not p.queue:
        return []
    container: Obj = {
        "name": "rabbitmq",
        "image": p.spec.queue.image,
        "env": [
            {"name": "RABBITMQ_DEFAULT_USER", "value": "z2m"},
            _secret_env(p, "RABBITMQ_DEFAULT_PASS", "queue-password"),
        ],
        "ports": [
            {"name": "amqp", "containerPort": AMQP_PORT},
            {"name": "management", "containerPort": AMQP_MANAGEMENT_PORT},
        ],
        "readinessProbe": {"tcpSocket": {"port": AMQP_PORT}, "periodSeconds": 10},
        "resources": _footprint("queue", p.spec.queue.resources),
        "volumeMounts": [
            {"name": "data", "mountPath": "/var/lib/rabbitmq"},
            {
                "name": "z2m-scripts",
                "mountPath": "/etc/rabbitmq/conf.d/20-z2m.conf",
                "subPath": "rabbitmq.conf",
                "readOnly": True,
            },
        ],
    }
    objs = [
        _statefulset(
            p,
            owner,
            "queue",
            "queue",
            1,
            [container],
            p.spec.queue.storage,
            run_as=catalog.SERVER_UIDS["rabbitmq"],
        ),
        _service(
            p,
            owner,
            child(p.name, "queue"),
            "queue",
            [("amqp", AMQP_PORT, AMQP_PORT), ("management", AMQP_MANAGEMENT_PORT, 15672)],
        ),
    ]
    if p.workers:
        pod: Obj = {
            "containers": [_app_container(p, "worker")],
            "topologySpreadConstraints": _spread(p, "worker"),
            # A worker gets time to finish and ack its job before it is killed.
            "terminationGracePeriodSeconds": 120,
        }
        workers = None if p.worker_autoscaling else p.workers
        objs.append(_deployment(p, owner, "worker", "worker", workers, pod))
        if p.worker_autoscaling is not None:
            objs.append(_hpa(p, owner, "worker", p.worker_autoscaling))
    return objs


# --- monitoring ------------------------------------------------------------------------
# Stage 5 scrapes the app and worker pods and loads z2m's alert rules. Where the cluster
# serves the Prometheus Operator's kinds, a PodMonitor and a PrometheusRule say so to the
# cluster's Prometheus; elsewhere z2m runs its own: a StatefulSet of Prometheus, its pod
# discovery (a sidecar listing this namespace's pods by our labels, under a Role of its
# own) and Alertmanager. The dashboard is a ConfigMap either way.


def alert_rules(p: plan.Plan) -> list[Obj]:
    """The alerting rule groups, for a rules file or a PrometheusRule alike."""
    sel = f'namespace="{p.namespace}",pod=~"{child(p.name, "app")}-.*"'
    return [
        {
            "name": f"z2m-{p.name}",
            "rules": [
                {
                    "alert": "Z2MHighLatency",
                    "expr": "histogram_quantile(0.95, sum by (le) (rate("
                    f"app_http_request_duration_seconds_bucket{{{sel}}}[5m]))) > 0.5",
                    "for": "10m",
                    "labels": {"severity": "warning"},
                    "annotations": {"summary": f"{p.name}: p95 latency above 500 ms"},
                },
                {
                    "alert": "Z2MHighErrorRate",
                    "expr": f'sum(rate(app_http_requests_total{{{sel},status=~"5.."}}[5m])) / '
                    f"sum(rate(app_http_requests_total{{{sel}}}[5m])) > 0.05",
                    "for": "5m",
                    "labels": {"severity": "page"},
                    "annotations": {"summary": f"{p.name}: more than 5% of requests fail"},
                },
                {
                    "alert": "Z2MQueueBacklog",
                    "expr": f'max(app_queue_depth{{namespace="{p.namespace}"}}) > 1000',
                    "for": "15m",
                    "labels": {"severity": "warning"},
                    "annotations": {"summary": f"{p.name}: job queue is backing up"},
                },
            ],
        }
    ]


def dashboard(p: plan.Plan) -> Obj:
    """A Grafana dashboard of the app's signals."""
    sel = f'namespace="{p.namespace}",pod=~"{child(p.name, "app")}-.*"'
    return {
        "title": f"z2m {p.namespace}/{p.name}",
        "panels": [
            {"title": title, "type": "timeseries", "targets": [{"expr": expr}]}
            for title, expr in (
                ("Requests/s", f"sum(rate(app_http_requests_total{{{sel}}}[1m]))"),
                (
                    "p95 latency",
                    "histogram_quantile(0.95, sum by (le) (rate("
                    f"app_http_request_duration_seconds_bucket{{{sel}}}[5m])))",
                ),
                ("DB queries/s", "sum by (target) (rate(app_db_queries_total[1m]))"),
                ("Cache hits", "sum by (result) (rate(app_cache_requests_total[1m]))"),
                ("Queue depth", "max(app_queue_depth)"),
            )
        ],
    }


def scraped_selector(owner_name: str) -> str:
    """The label selector of the pods Prometheus scrapes: the app's and the workers'."""
    return f"{child_selector(owner_name)},{COMPONENT} in ({','.join(SCRAPED)})"


def prometheus_config(p: plan.Plan) -> Obj:
    """prometheus.yml of z2m's own Prometheus.

    Its targets come from the discovery sidecar (`prometheus-sd.sh`): the app's and
    workers' pods in this namespace, found through the Kubernetes API by our labels,
    their `http` port, each labelled with `namespace` and `pod` (what the alert rules
    and the promotion queries select on) and `component`.
    """
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [f"{MONITORING_DIR}/alerts.yml"],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"localhost:{ALERTMANAGER_PORT}"]}]}]
        },
        "scrape_configs": [
            {
                "job_name": f"z2m-{p.name}",
                "metrics_path": "/metrics",
                "file_sd_configs": [{"files": [SD_FILE], "refresh_interval": "1m"}],
            }
        ],
    }


def alertmanager_config() -> Obj:
    """alertmanager.yml: alerts grouped per app and held, with no receiver to send them to.

    Alertmanager's API and UI show them; a receiver (mail, a pager) is the user's to add.
    """
    return {
        "route": {
            "receiver": "z2m",
            "group_by": ["alertname", "namespace"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
        },
        "receivers": [{"name": "z2m"}],
    }


def prometheus_url(owner_name: str, namespace: str) -> str:
    """Where z2m's own Prometheus answers inside the cluster."""
    return f"http://{child(owner_name, 'prometheus')}.{namespace}.svc:{PROMETHEUS_PORT}"


def runs_prometheus(p: plan.Plan, prometheus_operator: bool) -> bool:
    """Whether z2m runs a Prometheus of its own: at a monitoring stage, without the operator's."""
    return p.monitoring and not prometheus_operator


def _dashboard(p: plan.Plan, owner: Owner) -> Obj:
    meta = _meta(p, owner, child(p.name, "monitoring"), "monitoring")
    meta["labels"]["grafana_dashboard"] = "1"  # Grafana's dashboard sidecar loads it
    data = {"dashboard.json": json.dumps(dashboard(p), indent=2)}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def _prometheus_operator_objects(p: plan.Plan, owner: Owner) -> list[Obj]:
    """A PodMonitor and a PrometheusRule, for the cluster's Prometheus to pick up."""
    objs = []
    for kind, spec in (
        (
            "PodMonitor",
            {
                "selector": {
                    "matchLabels": {MANAGED_BY: "z2m", PART_OF: p.name},
                    "matchExpressions": [
                        {"key": COMPONENT, "operator": "In", "values": list(SCRAPED)}
                    ],
                },
                "podMetricsEndpoints": [
                    {"port": "http", "path": "/metrics", "interval": SCRAPE_INTERVAL}
                ],
            },
        ),
        ("PrometheusRule", {"groups": alert_rules(p)}),
    ):
        meta = _meta(p, owner, child(p.name, "monitoring"), "monitoring")
        meta["labels"] = {**p.spec.monitoring.labels, **meta["labels"]}
        objs.append({"apiVersion": MONITORING_API, "kind": kind, "metadata": meta, "spec": spec})
    return objs


def _prometheus_access(p: plan.Plan, owner: Owner) -> list[Obj]:
    """Prometheus' ServiceAccount, and a Role that lets it find pods in this namespace only.

    The operator grants nothing it does not hold: its own rules include these.
    """
    name = child(p.name, "prometheus")
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(p, owner, name, "prometheus"),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(p, owner, name, "prometheus"),
            # What Prometheus' own pod discovery would need too, in an image that has it.
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(p, owner, name, "prometheus"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": p.namespace}],
        },
    ]


def _prometheus(p: plan.Plan, owner: Owner) -> list[Obj]:
    """z2m's own Prometheus, with Alertmanager and pod discovery in the same pod.

    Debian's Prometheus has no Kubernetes service discovery, so a sidecar lists the
    pods to scrape under the pod's ServiceAccount and hands Prometheus a file_sd list
    on a shared emptyDir. The TSDB and Alertmanager's silences live on a kept volume.
    """
    spec = p.spec.monitoring
    name = child(p.name, "prometheus")
    files = {
        "prometheus.yml": json.dumps(prometheus_config(p), indent=2),
        "alerts.yml": json.dumps({"groups": alert_rules(p)}, indent=2),
        "alertmanager.yml": json.dumps(alertmanager_config(), indent=2),
        "prometheus-sd.sh": script("prometheus-sd.sh"),
    }
    config: Obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(p, owner, name, "prometheus"),
        "data": files,
    }

    def mounts(*extra: Obj) -> list[Obj]:
        return [{"name": "config", "mountPath": MONITORING_DIR, "readOnly": True}, *extra]

    data = {"name": "data", "mountPath": MONITORING_DATA}
    targets = {"name": "targets", "mountPath": SD_DIR}

    def ready(port: int) -> Obj:
        return {"httpGet": {"path": "/-/ready", "port": port}, "periodSeconds": 5}

    containers: list[Obj] = [
        {
            "name": "prometheus",
            "image": spec.image,
            "command": [
                "prometheus",
                f"--config.file={MONITORING_DIR}/prometheus.yml",
                f"--storage.tsdb.path={MONITORING_DATA}/prometheus",
                f"--storage.tsdb.retention.time={spec.retention}",
                f"--web.listen-address=:{PROMETHEUS_PORT}",
            ],
            "ports": [{"name": "http", "containerPort": PROMETHEUS_PORT}],
            "readinessProbe": ready(PROMETHEUS_PORT),
            "livenessProbe": {
                "httpGet": {"path": "/-/healthy", "port": PROMETHEUS_PORT},
                "periodSeconds": 10,
                "failureThreshold": 6,
            },
            "resources": _footprint("prometheus", spec.resources),
            "volumeMounts": mounts(data, targets),
        },
        {
            "name": "discovery",
            "image": spec.image,
            "command": ["/bin/sh", f"{MONITORING_DIR}/prometheus-sd.sh"],
            "env": [
                {"name": "SD_SELECTOR", "value": scraped_selector(p.name)},
                {"name": "SD_FILE", "value": SD_FILE},
                {"name": "SD_PORT_NAME", "value": "http"},
            ],
            "resources": _footprint("prometheus-discovery"),
            "volumeMounts": mounts(targets),
        },
        {
            "name": "alertmanager",
            "image": spec.image,
            "command": [
                "prometheus-alertmanager",
                f"--config.file={MONITORING_DIR}/alertmanager.yml",
                f"--storage.path={MONITORING_DATA}/alertmanager",
                f"--web.listen-address=:{ALERTMANAGER_PORT}",
                "--cluster.listen-address=",  # one Alertmanager: no gossip with peers
            ],
            "ports": [{"name": "alertmanager", "containerPort": ALERTMANAGER_PORT}],
            "readinessProbe": ready(ALERTMANAGER_PORT),
            "resources": _footprint("alertmanager"),
            "volumeMounts": mounts(data),
        },
    ]
    sts = _statefulset(
        p,
        owner,
        "prometheus",
        "prometheus",
        1,
        containers,
        spec.storage,
        run_as=catalog.SERVER_UIDS["prometheus"],
    )
    template = sts["spec"]["template"]
    template["spec"]["serviceAccountName"] = name
    template["spec"]["volumes"] = [
        {"name": "config", "configMap": {"name": name, "defaultMode": 0o555}},
        {"name": "targets", "emptyDir": {}},
    ]
    # A new configuration rolls the pod: Prometheus reads its files only when it starts.
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    template["metadata"]["annotations"] = {CONFIG_HASH: digest}
    ports = [("http", PROMETHEUS_PORT, PROMETHEUS_PORT)]
    ports.append(("alertmanager", ALERTMANAGER_PORT, ALERTMANAGER_PORT))
    return [
        *_prometheus_access(p, owner),
        config,
        sts,
        _service(p, owner, name, "prometheus", ports),
    ]


def _monitoring(p: plan.Plan, owner: Owner, prometheus_operator: bool) -> list[Obj]:
    if not p.monitoring:
        return []
    if prometheus_operator:
        return [_dashboard(p, owner), *_prometheus_operator_objects(p, owner)]
    return [_dashboard(p, owner), *_prometheus(p, owner)]


def build(p: plan.Plan, owner: Owner, *, prometheus_operator: bool = False) -> list[Obj]:
    """Every object of the plan's stage, in the order they should be applied.

    `prometheus_operator`: the cluster serves the Prometheus Operator's PodMonitor and
    PrometheusRule (`PROMETHEUS_OPERATOR_KINDS`), so stage 5 writes those instead of
    running a Prometheus of its own.
    """
    objs: list[Obj] = [_scripts(p, owner)]
    objs += _database(p, owner)
    objs += _read_replicas(p, owner)
    objs += _app(p, owner)
    objs += _edge(p, owner)
    objs += _redis(p, owner)
    objs += _queue(p, owner)
    objs += _monitoring(p, owner, prometheus_operator)
    return sorted(objs, key=lambda o: KIND_ORDER.index(o["kind"]))


def key(obj: Obj) -> tuple[str, str, str]:
    """Identity of an object within its namespace: (apiVersion, kind, name)."""
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]

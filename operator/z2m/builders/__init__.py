"""Pure builders: a plan in, the Kubernetes objects of its stage out.

No client, no Kopf, no clock: `build(plan, owner)` is a function of its
arguments (two of them facts the caller looked up: whether the cluster serves
the Prometheus Operator's kinds, and the Gateway API's), so every stage can be
rendered and unit-tested without a cluster (`z2m render` prints exactly this).

One module per component, as CloudNativePG's `pkg/specs`: `postgres`, `shards`
(stage 6's PostgreSQL shards), `app` (web
and workers), `services` (stage 6's microservices), `gateway`, `edge`, `redis`
(and Redis Cluster), `queue`, `streaming` (Kafka), `monitoring` and `search`, each
made from the shapes in `workloads` and named and labelled by `meta`, so every other
module agrees with them. This module is the package's public face: `build` and
`key`, how children are applied and pruned, and, listed in `__all__`, the names the
rest of z2m and its tests use. Everything else belongs to its component's module.
"""

from __future__ import annotations

from typing import Any

from z2m import plan
from z2m.builders import (
    app,
    edge,
    gateway,
    monitoring,
    postgres,
    queue,
    redis,
    search,
    services,
    shards,
    streaming,
    workloads,
)
from z2m.builders.gateway import GATEWAY_API_KINDS
from z2m.builders.meta import (
    COMPONENT,
    MANAGED_BY,
    PART_OF,
    REGION,
    RETAINED,
    SECRET_KEYS,
    ZONE,
    Owner,
    child,
    child_selector,
    labels,
    secret_name,
)
from z2m.builders.monitoring import (
    ALERTMANAGER_PORT,
    CONFIG_HASH,
    MONITORING_API,
    MONITORING_DATA,
    MONITORING_DIR,
    PROMETHEUS_OPERATOR_KINDS,
    PROMETHEUS_PORT,
    SCRAPED,
    SD_DIR,
    alert_rules,
    prometheus_url,
    runs_prometheus,
)
from z2m.builders.postgres import (
    PATRONI_API_USER,
    PATRONI_DCS,
    POSTGRES_CLUSTER,
    patroni_scope,
    shared_with_patroni,
)
from z2m.builders.queue import AMQP_MANAGEMENT_PORT
from z2m.builders.redis import REDIS_MASTER_NAME, SENTINEL_PORT
from z2m.builders.search import SEARCH_PORT, search_url
from z2m.builders.streaming import KAFKA_PORT
from z2m.builders.workloads import script

__all__ = [
    "ALERTMANAGER_PORT",
    "AMQP_MANAGEMENT_PORT",
    "COMPONENT",
    "CONFIG_HASH",
    "FIELD_MANAGER",
    "GATEWAY_API_KINDS",
    "KAFKA_PORT",
    "KIND_ORDER",
    "MANAGED_BY",
    "MONITORING_API",
    "MONITORING_DATA",
    "MONITORING_DIR",
    "PART_OF",
    "PATRONI_API_USER",
    "PATRONI_DCS",
    "POSTGRES_CLUSTER",
    "PROMETHEUS_OPERATOR_KINDS",
    "PROMETHEUS_PORT",
    "PRUNABLE",
    "REDIS_MASTER_NAME",
    "REGION",
    "RETAINED",
    "SCRAPED",
    "SD_DIR",
    "SEARCH_PORT",
    "SECRET_KEYS",
    "SENTINEL_PORT",
    "ZONE",
    "Owner",
    "alert_rules",
    "build",
    "child",
    "child_selector",
    "key",
    "labels",
    "patroni_scope",
    "prometheus_url",
    "runs_prometheus",
    "script",
    "search_url",
    "secret_name",
    "shared_with_patroni",
]

Obj = dict[str, Any]

FIELD_MANAGER = "z2m"
"""The field manager the operator applies its children with (server-side apply)."""

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
    "Gateway",
    "HTTPRoute",
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
    *monitoring.PROMETHEUS_OPERATOR_KINDS,
    *gateway.GATEWAY_API_KINDS,
}


def build(
    p: plan.Plan, owner: Owner, *, prometheus_operator: bool = False, gateway_api: bool = False
) -> list[Obj]:
    """Every object of the plan's stage, in the order they should be applied.

    `prometheus_operator`: the cluster serves the Prometheus Operator's PodMonitor and
    PrometheusRule (`PROMETHEUS_OPERATOR_KINDS`), so stage 5 writes those instead of
    running a Prometheus of its own. `gateway_api`: the cluster serves the Gateway
    API's Gateway and HTTPRoute (`GATEWAY_API_KINDS`), so stage 6 writes those
    instead of running a gateway of its own.
    """
    objs: list[Obj] = [workloads.scripts_config_map(p, owner)]
    objs += postgres.database(p, owner)
    objs += postgres.read_replicas(p, owner)
    objs += shards.objects(p, owner)
    objs += app.web(p, owner)
    objs += services.objects(p, owner)
    objs += gateway.objects(p, owner, gateway_api)
    objs += edge.objects(p, owner, gateway_api)
    objs += redis.objects(p, owner)
    objs += queue.objects(p, owner)
    objs += streaming.objects(p, owner)
    objs += search.objects(p, owner)
    objs += app.workers(p, owner)
    objs += app.stream_workers(p, owner)
    objs += monitoring.objects(p, owner, prometheus_operator)
    return sorted(objs, key=lambda o: KIND_ORDER.index(o["kind"]))


def key(obj: Obj) -> tuple[str, str, str]:
    """Identity of an object within its namespace: (apiVersion, kind, name)."""
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]

"""The shapes components are made of: StatefulSet, Deployment, Service, PDB and HPA.

And what their pods share: the scripts ConfigMap they mount (`operator/z2m/files`),
the `restricted` Pod Security settings, spreading over zones and nodes, the catalog's
requests and limits, and the pause that lets a Service drain a pod. No component is
known here: `postgres`, `redis` and the others fill these shapes in.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from z2m import api, catalog, plan
from z2m.builders import meta

Obj = dict[str, Any]

SCRIPTS_DIR = "/etc/z2m"
SCRIPT_FILES = (
    "postgres.sh",
    "redis.sh",
    "redis-cluster.sh",
    "sentinel.sh",
    "nginx-edge.conf",
    "rabbitmq.conf",
)


def script(name: str) -> str:
    """The text of a file mounted into pods; tests run the same file against real programs."""
    return resources.files("z2m").joinpath("files", name).read_text()


def scripts_config_map(p: plan.Plan, owner: meta.Owner) -> Obj:
    """The ConfigMap of `SCRIPT_FILES`, which the servers' pods mount at `SCRIPTS_DIR`."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta.metadata(p, owner, meta.child(p.name, "scripts"), "config"),
        "data": {name: script(name) for name in SCRIPT_FILES},
    }


def scripts_volume(p: plan.Plan) -> Obj:
    """The pod volume of the scripts ConfigMap, its files executable."""
    return {
        "name": "z2m-scripts",
        "configMap": {"name": meta.child(p.name, "scripts"), "defaultMode": 0o555},
    }


def scripts_mount() -> Obj:
    """Where a container sees the scripts: `SCRIPTS_DIR`, read-only."""
    return {"name": "z2m-scripts", "mountPath": SCRIPTS_DIR, "readOnly": True}


REGIONAL = frozenset({"app", "read-replica", "cache-cluster"})
"""Components placed per region at stage 6 (with the services, `SERVICE_PREFIX`).

The database primary and its failover standby are not among them: the primary stays in
one region, and a standby across regions would make every synchronous commit cross them.
"""
SERVICE_PREFIX = "service-"
"""Stage 6's services carry the component `service-<role>`."""


def regional(component: str) -> bool:
    """Whether stage 6 places this component's pods per region."""
    return component in REGIONAL or component.startswith(SERVICE_PREFIX)


def spread(p: plan.Plan, component: str) -> list[Obj]:
    """Spread a component's pods over zones and nodes, and regions at stage 6.

    Zones and nodes: ScheduleAnyway, since a kind cluster's nodes carry no zone label
    and DoNotSchedule would leave every pod Pending there. Spread is a preference,
    availability is the PDB's job. Regions: DoNotSchedule, but only where the nodes
    were seen in two or more regions (`plan.region_spread`), so the pods really are
    split between them rather than merely preferring to be.
    """
    selector = {"matchLabels": meta.labels(p.name, component)}
    constraints: list[Obj] = []
    if p.region_spread and regional(component):
        constraints.append(
            {
                "maxSkew": 1,
                "topologyKey": meta.REGION,
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": selector,
                # Count only pods of the same template: during a rollout the old pods
                # (placed before the region spread) would otherwise skew the new ones.
                # A StatefulSet's pods have no such label, and the key is then ignored.
                "matchLabelKeys": ["pod-template-hash"],
            }
        )
    return constraints + [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": selector,
        }
        for key in (meta.ZONE, "kubernetes.io/hostname")
    ]


def requests_and_limits(r: api.Resources) -> Obj:
    """A container's `resources`, as the user wrote them."""
    return r.model_dump(by_alias=True, exclude_none=True)


def footprint(component: str, override: api.Resources | None = None) -> Obj:
    """The user's requests and limits for a server of ours, else the catalog's."""
    if override is not None:
        return requests_and_limits(override)
    f = catalog.FOOTPRINTS[component]
    return {"requests": {"cpu": f.cpu, "memory": f.memory}, "limits": {"memory": f.memory_limit}}


def restricted(pod_spec: Obj, uid: int | None) -> Obj:
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


def _pvc_template(p: plan.Plan, component: str, storage: api.Storage) -> Obj:
    spec: Obj = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    return {
        "metadata": {
            "name": "data",
            "labels": {**meta.labels(p.name, component), meta.RETAINED: "true"},
        },
        "spec": spec,
    }


def statefulset(
    p: plan.Plan,
    owner: meta.Owner,
    suffix: str,
    component: str,
    replicas: int,
    containers: list[Obj],
    storage: api.Storage,
    *,
    run_as: int,
) -> Obj:
    """A StatefulSet of `replicas` pods, each with a kept `data` volume of `storage`."""
    pod_spec = restricted(
        {
            "containers": containers,
            "volumes": [scripts_volume(p)],
            "topologySpreadConstraints": spread(p, component),
        },
        run_as,
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta.metadata(p, owner, meta.child(p.name, suffix), component),
        "spec": {
            "replicas": replicas,
            "serviceName": meta.child(p.name, suffix),
            "selector": {"matchLabels": meta.labels(p.name, component)},
            "podManagementPolicy": "OrderedReady",
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Retain",
                "whenScaled": "Retain",
            },
            "template": {"metadata": {"labels": meta.labels(p.name, component)}, "spec": pod_spec},
            "volumeClaimTemplates": [_pvc_template(p, component, storage)],
        },
    }


def deployment(
    p: plan.Plan,
    owner: meta.Owner,
    suffix: str,
    component: str,
    replicas: int | None,
    pod_spec: Obj,
    *,
    run_as: int | None = None,
) -> Obj:
    """A Deployment rolled one new pod at a time; `replicas` None leaves the count alone."""
    spec: Obj = {
        "selector": {"matchLabels": meta.labels(p.name, component)},
        "template": {
            "metadata": {"labels": meta.labels(p.name, component)},
            "spec": restricted(pod_spec, run_as),
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
        "metadata": meta.metadata(p, owner, meta.child(p.name, suffix), component),
        "spec": spec,
    }


def service(
    p: plan.Plan,
    owner: meta.Owner,
    name: str,
    component: str,
    ports: list[tuple[str, int, int]],
    *,
    headless: bool = False,
    selector: dict[str, str] | None = None,
) -> Obj:
    """A Service of a component's pods, or of `selector`'s.

    `headless`: no cluster IP, and a DNS name for every pod, ready or not.
    """
    spec: Obj = {
        "selector": selector or meta.labels(p.name, component),
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
        "metadata": meta.metadata(p, owner, name, component),
        "spec": spec,
    }


def pdb(p: plan.Plan, owner: meta.Owner, suffix: str, component: str) -> Obj:
    """At most one of a component's pods down at a time, by eviction."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta.metadata(p, owner, meta.child(p.name, suffix), component),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": meta.labels(p.name, component)}},
    }


def hpa(p: plan.Plan, owner: meta.Owner, suffix: str, scaling: catalog.Autoscaling) -> Obj:
    """An HPA on CPU for the Deployment `<owner>-<suffix>`."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta.metadata(p, owner, meta.child(p.name, suffix), suffix),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": meta.child(p.name, suffix),
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

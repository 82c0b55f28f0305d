"""A user's object that looks like a child is never adopted, changed or pruned.

`tests/cluster/test_scope.py` shows that pruning spares look-alikes with our
labels but another name. Here the look-alikes take the exact names of children
the stage wants, with and without our labels: the operator must leave them as
the user made them (no owner reference, no field of our field manager, same
resourceVersion), say that the names are taken, build everything else, and not
prune them when a stage change drops those children.
"""

from __future__ import annotations

from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from tests.conftest import eventually, report
from z2m import builders, kube

pytestmark = [pytest.mark.cluster, pytest.mark.reliability]
NAME = "shop"


VERSIONS = {"Service": "v1", "PodDisruptionBudget": "policy/v1", "ConfigMap": "v1"}


def look_alikes(api_client: ApiClient, namespace: str) -> list[tuple[str, str]]:
    """Three hand-made objects; returns their (kind, name)."""
    core = kubernetes.client.CoreV1Api(api_client)
    policy = kubernetes.client.PolicyV1Api(api_client)
    ours = builders.labels(NAME, "edge")
    made = [
        # The exact name of a stage-3 child, with our labels.
        core.create_namespaced_service(
            namespace,
            {
                "metadata": {"name": f"{NAME}-edge", "labels": ours},
                "spec": {"ports": [{"port": 1234}], "selector": {"mine": "yes"}},
            },
        ),
        # The exact name of another stage-3 child, without our labels.
        policy.create_namespaced_pod_disruption_budget(
            namespace,
            {
                "metadata": {"name": f"{NAME}-edge", "labels": {"team": "web"}},
                "spec": {"maxUnavailable": 3, "selector": {"matchLabels": {"mine": "yes"}}},
            },
        ),
        # Our labels, a name of its own.
        core.create_namespaced_config_map(
            namespace, {"metadata": {"name": "hand-made", "labels": ours}, "data": {"k": "v"}}
        ),
    ]
    return [(type(o).__name__[2:], o.metadata.name) for o in made]


def snapshot(k: kube.Kube, namespace: str, made: list[tuple[str, str]]) -> dict[str, Any]:
    """What a user wrote in each object (its status is its controllers' to change)."""
    out = {}
    for kind, name in made:
        obj = k.get(VERSIONS[kind], kind, namespace, name)
        assert obj is not None, f"{kind} {name} was deleted"
        meta = obj["metadata"]
        managers = {m["manager"] for m in meta.get("managedFields") or []}
        assert not meta.get("ownerReferences"), f"{kind} {name} was adopted"
        assert builders.FIELD_MANAGER not in managers, f"z2m wrote to {kind} {name}"
        out[f"{kind} {name}"] = (meta.get("labels"), obj.get("spec"), obj.get("data"))
    return out


def reasons(api_client: ApiClient, namespace: str) -> list[str]:
    items = (
        kubernetes.client.CoreV1Api(api_client)
        .list_namespaced_event(namespace, field_selector=f"involvedObject.name={NAME}")
        .items
    )
    return [str(e.reason) for e in items]


def test_objects_with_a_childs_name_or_labels_are_never_adopted_or_pruned(
    api_client: ApiClient, k: kube.Kube, namespace: str, operator: Any
) -> None:
    made = look_alikes(api_client, namespace)
    before = snapshot(k, namespace, made)
    h.create(api_client, namespace, h.scaling_stage(NAME, 3))

    def says_taken() -> dict[str, Any] | None:
        c = h.condition(h.get(api_client, namespace, NAME), "NamesAvailable")
        return c if c and c["status"] == "False" and c["reason"] == "NameTaken" else None

    taken = eventually(says_taken, timeout=60)
    assert "Service shop-edge" in taken["message"]
    assert "PodDisruptionBudget shop-edge" in taken["message"]
    eventually(lambda: "NameTaken" in reasons(api_client, namespace))
    ready = h.condition(h.get(api_client, namespace, NAME), "Ready")
    assert ready and ready["status"] == "False" and "shop-edge" in ready["message"]
    # Everything else of stage 3 is built.
    wanted = h.expected(3, NAME, namespace) - {
        ("Service", "shop-edge"),
        ("PodDisruptionBudget", "shop-edge"),
    }
    eventually(lambda: wanted <= h.children(k, namespace, NAME))
    assert snapshot(k, namespace, made) == before

    # 3 -> 2 drops the edge cache: its look-alikes stay as they are.
    h.set_stage(api_client, namespace, NAME, 2)
    h.wait_ready(api_client, namespace, NAME, 2)
    assert h.condition(h.get(api_client, namespace, NAME), "NamesAvailable") is None
    assert snapshot(k, namespace, made) == before
    left = h.children(k, namespace, NAME)
    assert left == h.expected(2, NAME, namespace) | {
        ("Service", "shop-edge"),
        ("ConfigMap", "hand-made"),
    }
    report(f"look-alikes across a 3 -> 2 stage change: {len(made)} made, 0 adopted, 0 pruned")

    # Once the user's Service and PDB go, stage 3 makes its own under those names.
    core = kubernetes.client.CoreV1Api(api_client)
    core.delete_namespaced_service(f"{NAME}-edge", namespace)
    kubernetes.client.PolicyV1Api(api_client).delete_namespaced_pod_disruption_budget(
        f"{NAME}-edge", namespace
    )
    h.set_stage(api_client, namespace, NAME, 3)
    h.wait_ready(api_client, namespace, NAME, 3)
    assert h.condition(h.get(api_client, namespace, NAME), "NamesAvailable") is None

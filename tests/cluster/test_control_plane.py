"""The local control plane behaves like a real cluster where z2m depends on it."""

from __future__ import annotations

import kubernetes
import pytest
from kubernetes.client import ApiClient

from tests.conftest import eventually, kubectl

pytestmark = pytest.mark.cluster


def test_at_least_three_ready_nodes_in_three_zones(api_client: ApiClient) -> None:
    nodes = kubernetes.client.CoreV1Api(api_client).list_node().items
    ready = [
        n
        for n in nodes
        if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
    ]
    zones = {n.metadata.labels.get("topology.kubernetes.io/zone") for n in ready}
    assert len(ready) >= 3
    assert len(zones - {None}) >= 3


def test_a_three_replica_deployment_becomes_available(
    api_client: ApiClient, namespace: str
) -> None:
    apps = kubernetes.client.AppsV1Api(api_client)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "web", "image": "nginx"}]},
                },
            },
        },
    )
    eventually(
        lambda: apps.read_namespaced_deployment("web", namespace).status.available_replicas == 3
    )


def test_a_statefulset_gets_its_claims_bound_and_becomes_ready(
    api_client: ApiClient, namespace: str
) -> None:
    apps = kubernetes.client.AppsV1Api(api_client)
    core = kubernetes.client.CoreV1Api(api_client)
    labels = {"app": "db"}
    apps.create_namespaced_stateful_set(
        namespace,
        {
            "metadata": {"name": "db"},
            "spec": {
                "replicas": 1,
                "serviceName": "db",
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "db", "image": "postgres"}]},
                },
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}},
                        },
                    }
                ],
            },
        },
    )
    eventually(
        lambda: apps.read_namespaced_stateful_set("db", namespace).status.ready_replicas == 1
    )
    claim = core.read_namespaced_persistent_volume_claim("data-db-0", namespace)
    assert claim.status.phase == "Bound"


def test_an_hpa_reads_cpu_utilisation(api_client: ApiClient, namespace: str) -> None:
    apps = kubernetes.client.AppsV1Api(api_client)
    scaling = kubernetes.client.AutoscalingV2Api(api_client)
    labels = {"app": "busy"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "busy"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    # KWOK reports this as the pod's CPU usage, through metrics-server.
                    "metadata": {
                        "labels": labels,
                        "annotations": {"kwok.x-k8s.io/usage-cpu": "80m"},
                    },
                    "spec": {
                        "containers": [
                            {
                                "name": "busy",
                                "image": "app",
                                "resources": {"requests": {"cpu": "100m"}},
                            }
                        ]
                    },
                },
            },
        },
    )
    scaling.create_namespaced_horizontal_pod_autoscaler(
        namespace,
        {
            "metadata": {"name": "busy"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "busy"},
                "minReplicas": 1,
                "maxReplicas": 5,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 50},
                        },
                    }
                ],
            },
        },
    )

    def utilisation() -> int | None:
        hpa = scaling.read_namespaced_horizontal_pod_autoscaler("busy", namespace)
        for metric in hpa.status.current_metrics or []:
            if metric.resource and metric.resource.current.average_utilization is not None:
                return int(metric.resource.current.average_utilization)
        return None

    assert 60 <= eventually(utilisation, timeout=120) <= 100


def test_deleting_an_owner_removes_its_children(api_client: ApiClient, namespace: str) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": "child",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner.metadata.uid,
                    }
                ],
            }
        },
    )
    core.delete_namespaced_config_map("owner", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_config_map("child", namespace)
        except kubernetes.client.ApiException as exc:
            return exc.status == 404
        return False

    eventually(gone)


def test_the_server_reports_the_pinned_version(kubeconfig: str) -> None:
    out = kubectl("version", "-o", "json", kubeconfig=kubeconfig).stdout
    assert '"gitVersion": "v1.37.' in out

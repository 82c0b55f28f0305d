"""Children deleted while the operator's watches were away are made again, by the same process.

The gap: kube-apiserver is killed; while it is down three children (a ConfigMap,
a Service, a Deployment) are deleted from etcd itself, so no apiserver ever
sends an event for them; then it is started again. Its new watch cache begins
after those deletions, so the operator's watches cannot resume from the
resourceVersion they had: 410 Gone, and Kopf relists. Kopf's relisting holds
only what exists and says nothing of the rest, so without `z2m.relist` the
operator's indices keep the three children forever and no pass makes them again
(a pass skips an apply whose body and resourceVersion it has already applied).
"""

from __future__ import annotations

import time
from typing import Any

import kubernetes
from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from tests.conftest import eventually, report
from tests.reliability import checks
from tests.reliability.conftest import ControlPlane, OperatorProcess
from z2m import kube

NAME = "shop"
STAGE = 2
# (kind, name, resource, etcd key under /registry/<...>/<namespace>/<name>)
VICTIMS = (
    ("ConfigMap", f"{NAME}-scripts", "configmaps", "configmaps"),
    ("Service", f"{NAME}-app", "services", "services/specs"),
    ("Deployment", f"{NAME}-app", "deployments", "deployments"),
)


def uid(api_client: ApiClient, namespace: str, kind: str, name: str) -> str | None:
    """The object's uid, or None if it does not exist."""
    core = kubernetes.client.CoreV1Api(api_client)
    apps = kubernetes.client.AppsV1Api(api_client)
    read: dict[str, Any] = {
        "ConfigMap": core.read_namespaced_config_map,
        "Service": core.read_namespaced_service,
        "Deployment": apps.read_namespaced_deployment,
    }
    try:
        return str(read[kind](name, namespace).metadata.uid)
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_children_deleted_during_a_watch_gap_are_made_again(
    api_client: ApiClient,
    k: kube.Kube,
    namespace: str,
    operator_process: OperatorProcess,
    control_plane: ControlPlane,
) -> None:
    op = operator_process.start()
    h.create(api_client, namespace, h.scaling_stage(NAME, STAGE))
    h.wait_ready(api_client, namespace, NAME, STAGE)
    eventually(op.serving)
    pid = op.pid
    before = {(kind, name): uid(api_client, namespace, kind, name) for kind, name, *_ in VICTIMS}
    assert None not in before.values()

    with control_plane.down("kube-apiserver"):
        deleted = [
            control_plane.etcd_delete(f"/registry/{prefix}/{namespace}/{name}")
            for _, name, _, prefix in VICTIMS
        ]
    assert deleted == [1, 1, 1]
    back = time.monotonic()
    # The apiserver is back and never saw these deletions; only a relisting can show them.

    def made_again() -> dict[tuple[str, str], str | None]:
        now = {(kind, name): uid(api_client, namespace, kind, name) for kind, name, *_ in VICTIMS}
        assert all(u is not None and u != before[key] for key, u in now.items()), now
        return now

    eventually(made_again, timeout=180, interval=1)
    repaired = time.monotonic() - back
    h.wait_ready(api_client, namespace, NAME, STAGE, timeout=120)
    assert checks.problems(api_client, k, namespace, NAME, STAGE, {}) == []

    assert op.alive() and op.pid == pid and op.starts == 1  # no restart did it
    gone = {labels["resource"]: value for labels, value in op.samples("z2m_relist_deletions_total")}
    relisted = [line for line in op.output().splitlines() if "while the watch was away" in line]
    report(
        f"watch gap (kube-apiserver down, 3 children deleted in etcd): made again by the "
        f"same process {repaired:.1f} s after the API answered; "
        f"deletions the relistings found: {gone}"
    )
    for line in relisted:
        print("  ", line[:200])
    for _, _, resource, _ in VICTIMS:
        assert gone.get(resource, 0) >= 1, gone

"""Two operator replicas behind a Lease: one writes at a time, and a killed leader hands over.

Each replica is `z2m run --leader-elect` with its own identity, as two pods of
the chart's Deployment. Who wrote is proved three ways: the Lease names one
holder; the follower's own metrics show no pass and no write request; and every
child's managedFields carry one Apply manager only (z2m's), so no second writer
ever owned a field. The hand-over time after a SIGKILL is measured from the
kill to the new holder's acquireTime; what is asserted is the condition (the
other replica leads and reconciles), the seconds are printed.
"""

from __future__ import annotations

import datetime
import statistics
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from tests.conftest import eventually, report
from tests.reliability.conftest import OperatorProcess
from z2m import builders, kube, leader

NAME = "shop"
LEASE = "z2m-test"
WRITE_VERBS = ("apply", "create", "patch", "delete")


def lease(api_client: ApiClient, namespace: str) -> kubernetes.client.V1Lease:
    return kubernetes.client.CoordinationV1Api(api_client).read_namespaced_lease(LEASE, namespace)


def holder(api_client: ApiClient, namespace: str) -> str | None:
    try:
        return lease(api_client, namespace).spec.holder_identity or None
    except kubernetes.client.ApiException:
        return None


def writes(op: OperatorProcess) -> float:
    return sum(
        v for labels, v in op.samples("z2m_api_requests_total") if labels["verb"] in WRITE_VERBS
    )


@pytest.fixture
def replicas(kubeconfig: str, namespace: str, tmp_path: Path) -> dict[str, OperatorProcess]:
    ops = {
        identity: OperatorProcess(
            kubeconfig,
            namespace,
            tmp_path / f"{identity}.log",
            args=(
                "--leader-elect",
                "--lease-name",
                LEASE,
                "--lease-namespace",
                namespace,
                "--identity",
                identity,
            ),
        )
        for identity in ("replica-a", "replica-b")
    }
    yield ops
    for op in ops.values():
        op.stop()


def apply_managers(k: kube.Kube, namespace: str) -> set[str]:
    return {
        entry["manager"]
        for child in k.children(namespace, NAME)
        for entry in child["metadata"].get("managedFields") or []
        if entry["operation"] == "Apply"
    }


def test_one_replica_writes_and_a_killed_leader_hands_over(
    api_client: ApiClient, k: kube.Kube, namespace: str, replicas: dict[str, OperatorProcess]
) -> None:
    for op in replicas.values():
        op.start()
    h.create(api_client, namespace, h.scaling_stage(NAME, 1))
    h.wait_ready(api_client, namespace, NAME, 1)

    handovers: list[float] = []
    for stage in (2, 3, 4):
        current = eventually(lambda: holder(api_client, namespace))
        other = next(i for i in replicas if i != current)
        leading, following = replicas[current], replicas[other]
        # Exactly one writes: the follower has run no pass and sent no write at all.
        assert following.total("z2m_reconciles_total") == 0
        assert writes(following) == 0
        assert leading.total("z2m_reconciles_total") > 0 and writes(leading) > 0
        assert apply_managers(k, namespace) == {builders.FIELD_MANAGER}

        killed_at = datetime.datetime.now(datetime.UTC)
        leading.kill()
        h.set_stage(api_client, namespace, NAME, stage)
        eventually(lambda o=other: holder(api_client, namespace) == o, timeout=60)
        h.wait_ready(api_client, namespace, NAME, stage, timeout=120)
        assert following.total("z2m_reconciles_total") > 0  # the new leader reconciled
        acquired = lease(api_client, namespace).spec.acquire_time
        handovers.append((acquired - killed_at).total_seconds())
        # The killed replica comes back as a pod would, and follows.
        leading.start()
        eventually(lambda o=leading: o.serving(), timeout=60)

    assert apply_managers(k, namespace) == {builders.FIELD_MANAGER}
    assert lease(api_client, namespace).spec.lease_transitions >= 3
    timing = leader.Timing()
    report(
        f"leader hand-over after SIGKILL: median {statistics.median(handovers):.1f} s "
        f"({', '.join(f'{s:.1f}' for s in handovers)} s; lease {timing.lease_duration:.0f} s, "
        f"renew deadline {timing.renew_deadline:.0f} s, retry {timing.retry_period:.0f} s)"
    )


def test_a_leader_stopped_gracefully_releases_the_lease_at_once(
    api_client: ApiClient, namespace: str, replicas: dict[str, OperatorProcess]
) -> None:
    for op in replicas.values():
        op.start()
    h.create(api_client, namespace, h.scaling_stage(NAME, 1))
    h.wait_ready(api_client, namespace, NAME, 1)
    current = eventually(lambda: holder(api_client, namespace))
    other = next(i for i in replicas if i != current)
    stopped_at = datetime.datetime.now(datetime.UTC)
    replicas[current].stop()  # SIGTERM, as a rolling update sends
    assert "leader election: released the Lease" in replicas[current].output()
    eventually(lambda: holder(api_client, namespace) == other, timeout=60)
    h.set_stage(api_client, namespace, NAME, 2)
    h.wait_ready(api_client, namespace, NAME, 2)
    seconds = (lease(api_client, namespace).spec.acquire_time - stopped_at).total_seconds()
    report(f"leader hand-over after SIGTERM (Lease released): {seconds:.1f} s")

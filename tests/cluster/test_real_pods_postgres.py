"""PostgreSQL failover on real pods: Patroni promotes the standby, the app follows, nothing is lost.

A kind cluster, our images, the operator installed by Helm into a namespace that
enforces the `restricted` Pod Security level. Stage 5 with `database.synchronous`
runs the primary, a standby Patroni may promote, and three read replicas. A load pod
writes through the app the whole time, journalling every acknowledged write. The
primary's container is frozen from its node (SIGSTOP to every process: a hung
machine, which the kubelet does not restart; a crashed container comes back within
Patroni's lock and simply resumes as primary): within 60 s (the seed's promise, the
only time bound here) the standby must be the primary and the app's writes must
succeed again through the same Service. Every acknowledged write must be on the new
primary. Thawed, the old primary must step down and come back as a replica. Then the
stage is lowered to 4, which removes the standby: the operator must
first hand the primary back to the pod that stays, and no acknowledged write may be
lost. The promotion time, the app's write outage and the failed requests are reported.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import kubernetes
import pytest
from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from tests.conftest import eventually, report
from z2m import builders

pytestmark = [pytest.mark.cluster, pytest.mark.kind, pytest.mark.timeout(3600)]
NAME = "shop"
PRIMARY, STANDBY = f"{NAME}-db-0", f"{NAME}-db-standby-0"


@pytest.fixture(scope="module")
def app_namespace(kind_api: ApiClient, kind_kubeconfig: str) -> Iterator[str]:
    with h.helm_namespace(kind_api, kind_kubeconfig, "pg") as name:
        yield name


def _leaders(api_client: ApiClient, namespace: str) -> list[str]:
    """The pods Patroni has labelled leader (normally exactly one)."""
    selector = f"{builders.POSTGRES_CLUSTER}={builders.patroni_scope(NAME)},role=master"
    pods = kubernetes.client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=selector
    )
    return sorted(p.metadata.name for p in pods.items)


def _role(api_client: ApiClient, namespace: str, pod: str) -> str:
    found = kubernetes.client.CoreV1Api(api_client).read_namespaced_pod(pod, namespace)
    return str((found.metadata.labels or {}).get("role", ""))


def _acked(journal: list[dict[str, object]], after: float = 0.0) -> list[int]:
    return sorted(
        {int(str(e["post"])) for e in journal if "post" in e and float(str(e["t"])) > after}
    )


def _stored(kubeconfig: str, namespace: str, pod: str, ids: list[int]) -> int:
    assert ids, "no acknowledged writes to look for"
    listed = ",".join(map(str, ids))
    sql = f"SELECT count(*) FROM posts WHERE id IN ({listed})"
    return int(h.psql(kubeconfig, namespace, pod, sql))


def test_the_app_follows_a_postgres_failover_and_leaving_stage_5_keeps_every_write(
    kind_api: ApiClient, kind_kubeconfig: str, app_namespace: str
) -> None:
    ns, kc = app_namespace, kind_kubeconfig
    core = kubernetes.client.CoreV1Api(kind_api)
    spec = h.scaling_stage(NAME, 5, app=h.SMALL_APP, database={"synchronous": True})
    h.create(kind_api, ns, spec)
    h.wait_ready(kind_api, ns, NAME, 5, timeout=900)
    assert _leaders(kind_api, ns) == [PRIMARY]
    sync = f"SELECT sync_state FROM pg_stat_replication WHERE application_name = '{STANDBY}'"
    eventually(lambda: h.psql(kc, ns, PRIMARY, sync) == "sync", timeout=120)

    core.create_namespaced_pod(ns, h.load_pod(NAME, "load", 8, journal=True))
    eventually(lambda: len(_acked(h.journal(kc, ns))) > 20, timeout=300)

    h.signal_container(kind_api, ns, PRIMARY, "postgres", "STOP")
    crashed = time.time()
    # The frozen pod keeps its stale label (nobody can change it), but it is not ready.
    eventually(
        lambda: (
            STANDBY in _leaders(kind_api, ns)
            and h.psql(kc, ns, STANDBY, "SELECT pg_is_in_recovery()") == "f"
        ),
        timeout=60,
    )
    promoted = time.time() - crashed
    # The app follows through the same Service: writes are acknowledged again. (A write
    # in flight at the kill may be journalled just after it: the first second is skipped.)
    eventually(lambda: _acked_times(h.journal(kc, ns), after=crashed + 1), timeout=60)
    back = min(_acked_times(h.journal(kc, ns), after=crashed + 1)) - crashed
    # Thawed, the old primary finds the lock taken, steps down and follows (pg_rewind).
    h.signal_container(kind_api, ns, PRIMARY, "postgres", "CONT")
    eventually(lambda: _role(kind_api, ns, PRIMARY) == "replica", timeout=240)
    streaming = f"SELECT count(*) FROM pg_stat_replication WHERE application_name = '{PRIMARY}'"
    eventually(lambda: h.psql(kc, ns, STANDBY, streaming) == "1", timeout=120)

    journal = h.journal(kc, ns)
    acked = _acked(journal)
    failed = [e for e in journal if "error" in e and float(str(e["t"])) >= crashed]
    lost = len(acked) - _stored(kc, ns, STANDBY, acked)
    report(
        f"postgres failover on real pods (synchronous): {STANDBY} promoted {promoted:.1f} s "
        f"after {PRIMARY} froze; app writes back after {back:.1f} s"
    )
    report(f"  {len(acked)} acknowledged writes, {lost} lost; {len(failed)} failed requests")
    assert lost == 0

    demoted = time.time()
    h.set_stage(kind_api, ns, NAME, 4)
    h.wait_ready(kind_api, ns, NAME, 4, timeout=900)
    report(f"  5 -> 4 ready after {time.time() - demoted:.0f} s")
    switchovers = [
        e.message
        for e in core.list_namespaced_event(ns).items
        if e.reason == "PostgresSwitchover" and e.involved_object.name == NAME
    ]
    assert switchovers, "the standby led, yet it was removed without a switchover"
    report(f"  the operator switched PostgreSQL back over first: {switchovers[0]}")
    assert _leaders(kind_api, ns) == [PRIMARY]
    apps = kubernetes.client.AppsV1Api(kind_api)
    names = {s.metadata.name for s in apps.list_namespaced_stateful_set(ns).items}
    assert f"{NAME}-db-standby" not in names
    claims = {c.metadata.name for c in core.list_namespaced_persistent_volume_claim(ns).items}
    assert f"data-{STANDBY}" in claims  # kept, like every claim

    mark = time.time()
    eventually(lambda: _acked(h.journal(kc, ns), after=mark), timeout=120)
    journal = h.journal(kc, ns)  # read before the load pod goes, with its log
    core.delete_namespaced_pod("load", ns, grace_period_seconds=0)
    acked = _acked(journal)
    lost = len(acked) - _stored(kc, ns, PRIMARY, acked)
    failed = [e for e in journal if "error" in e and float(str(e["t"])) >= demoted]
    report(f"  after 5 -> 4: {len(acked)} acknowledged writes in all, {lost} lost")
    report(f"  failed requests during 5 -> 4: {len(failed)}")
    assert lost == 0


def _acked_times(journal: list[dict[str, object]], after: float) -> list[float]:
    return [float(str(e["t"])) for e in journal if "post" in e and float(str(e["t"])) > after]

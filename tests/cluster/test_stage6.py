"""Stage 6 on the local control plane: its pieces run, spread over two regions, and go again.

The fake nodes (hack/cluster.sh) sit in three zones and two regions: zones 0 and 1
in region-a, zone 2 in region-b. This test checks the pieces stage 6 adds, and that
6 -> 5 removes exactly them while every claim stays. The rows' move into the shards
and back runs against PostgreSQL on loopback (`move_urls`); test_shard_move_operator
checks the rows themselves.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from tests.conftest import eventually, report
from z2m import builders, kube, transition

pytestmark = pytest.mark.cluster
NAME = "shop"
SERVICES = ("service-users", "service-feed", "service-notifications")
SHARDS = ("database-shard-0", "database-shard-1")
STAGE6_COMPONENTS = {"gateway", "cache-cluster", *SERVICES, *SHARDS}
REGIONAL = ("app", "read-replica", "cache-cluster", *SERVICES)


def pods_by_component(api_client: ApiClient, namespace: str) -> dict[str, list[Any]]:
    pods = (
        kubernetes.client.CoreV1Api(api_client)
        .list_namespaced_pod(namespace, label_selector=f"{builders.PART_OF}={NAME}")
        .items
    )
    found: dict[str, list[Any]] = defaultdict(list)
    for pod in pods:
        if pod.metadata.deletion_timestamp is None:
            found[pod.metadata.labels[builders.COMPONENT]].append(pod)
    return found


def ready(pod: Any) -> bool:
    return bool(pod.status.container_statuses) and all(
        c.ready for c in pod.status.container_statuses
    )


def rolled_out(api_client: ApiClient, namespace: str) -> bool:
    """Every workload of the ScalingStage runs only its current template, all of it ready.

    Pods of the stage-5 template (placed without the region spread) are still there
    while the app's Deployment and the read replicas roll; placement is checked after.
    """
    apps = kubernetes.client.AppsV1Api(api_client)
    selector = f"{builders.PART_OF}={NAME}"
    for d in apps.list_namespaced_deployment(namespace, label_selector=selector).items:
        st, want = d.status, d.spec.replicas or 0
        if (st.observed_generation or 0) < d.metadata.generation or not (
            (st.replicas or 0) == (st.updated_replicas or 0) == (st.ready_replicas or 0) == want
        ):
            return False
    for s in apps.list_namespaced_stateful_set(namespace, label_selector=selector).items:
        st = s.status
        if (st.observed_generation or 0) < s.metadata.generation or not (
            st.update_revision == st.current_revision
            and (st.ready_replicas or 0) == (s.spec.replicas or 0)
        ):
            return False
    return True


def edge_moved_onto_gateway_before(
    api_client: ApiClient, namespace: str, since: str
) -> tuple[str, dict[str, bool]]:
    """Replay the Deployments' events since `since`, in the apiserver's order, and say what
    each Deployment behind the gateway looked like when the edge first pointed at it.

    Returns (the edge's new upstream, name -> whether it ran its current template, ready).
    """
    apps = kubernetes.client.AppsV1Api(api_client)
    seen: dict[str, dict[str, Any]] = {}
    watch = kubernetes.watch.Watch()
    for event in watch.stream(
        apps.list_namespaced_deployment,
        namespace,
        label_selector=f"{builders.PART_OF}={NAME}",
        resource_version=since,
        timeout_seconds=5,
    ):
        obj = api_client.sanitize_for_serialization(event["object"])
        name = obj["metadata"]["name"]
        if name == f"{NAME}-edge":
            env = obj["spec"]["template"]["spec"]["containers"][0]["env"]
            upstream = next(e["value"] for e in env if e["name"] == "UPSTREAM")
            if "gateway" in upstream:
                watch.stop()
                behind = {
                    n: transition.rolled_out(o)
                    for n, o in seen.items()
                    if n in (f"{NAME}-gateway", f"{NAME}-app")
                    or n.removeprefix(f"{NAME}-") in SERVICES
                }
                return upstream, behind
        seen[name] = obj
    raise AssertionError("the edge never pointed at the gateway")


def node_regions(api_client: ApiClient) -> dict[str, str]:
    nodes = kubernetes.client.CoreV1Api(api_client).list_node().items
    return {n.metadata.name: (n.metadata.labels or {}).get(builders.REGION, "") for n in nodes}


def test_stage_6_spreads_its_pieces_over_two_regions_and_6_to_5_removes_only_them(
    api_client: ApiClient,
    k: kube.Kube,
    namespace: str,
    operator: Any,
    empty_queue: str,
    sentinel_watching: Callable[[str], str],
    move_urls: dict[str, Any],
) -> None:
    regions = node_regions(api_client)
    assert len(set(regions.values())) >= 2, regions
    spec = {
        "queue": {"managementUrl": empty_queue},
        "cache": {"sentinelAddress": sentinel_watching(f"{NAME}-redis-0.{NAME}-redis")},
        "database": {"moveUrls": move_urls},
    }
    h.create(api_client, namespace, h.scaling_stage(NAME, 5, **spec))
    h.wait_ready(api_client, namespace, NAME, 5)
    before = h.claims(api_client, namespace)

    apps = kubernetes.client.AppsV1Api(api_client)
    since = apps.list_namespaced_deployment(namespace).metadata.resource_version
    started = time.monotonic()
    h.set_stage(api_client, namespace, NAME, 6)
    obj = h.wait_ready(api_client, namespace, NAME, 6, timeout=120)
    up = time.monotonic() - started
    # The edge takes user traffic: it points at the gateway only once the gateway and
    # all it routes to are ready, or the gateway would answer with 502 meanwhile.
    upstream, behind = edge_moved_onto_gateway_before(api_client, namespace, since)
    assert upstream == f"{NAME}-gateway:80"
    assert len(behind) == 2 + len(SERVICES) and all(behind.values()), behind
    eventually(lambda: h.children(k, namespace, NAME) == h.expected(6, NAME, namespace, **spec))

    def stage6_running() -> dict[str, list[Any]] | None:
        found = pods_by_component(api_client, namespace)
        enough = {
            "gateway": 2,
            "cache-cluster": 6,
            **dict.fromkeys(SERVICES, 2),
            **dict.fromkeys(SHARDS, 1),
        }
        if rolled_out(api_client, namespace) and all(
            sum(ready(p) for p in found.get(c, [])) >= n for c, n in enough.items()
        ):
            return found
        return None

    found = eventually(stage6_running, timeout=90)
    hpas = {
        name for kind, name in h.children(k, namespace, NAME) if kind == "HorizontalPodAutoscaler"
    }
    assert {f"{NAME}-{s}" for s in SERVICES} <= hpas
    spread = {c: sorted(regions[p.spec.node_name] for p in found[c] if ready(p)) for c in REGIONAL}
    # Split between the regions, not merely present in both: zones alone (two of the three
    # in region-a) would put 4 of 6 Redis Cluster pods, or 3 of 4 app pods, in region-a.
    for c, placed in spread.items():
        per_region = [placed.count(r) for r in sorted(set(regions.values()))]
        assert max(per_region) - min(per_region) <= 1, (c, placed)
    # The primary is not spread: it stays on one node, so in one region.
    assert len({regions[p.spec.node_name] for p in found["database"]}) == 1
    assert "cache" not in found and "cache-sentinel" not in found  # the pair went
    st = obj["status"]
    assert st["plan"]["services"] == ["users", "feed", "notifications"]
    assert st["plan"]["regions"] == 2 and st["plan"]["shardedDatabase"]
    assert st["plan"]["shards"] == 2
    # Ready at 6 only once the rows are on the shards.
    sharded = h.condition(obj, "DatabaseSharded")
    assert sharded is not None and (sharded["status"], sharded["reason"]) == ("True", "Moved")
    warmup = h.condition(obj, "CacheClustered")
    assert warmup is not None and "warming up" in warmup["message"]
    counts = {c: len(found[c]) for c in sorted(found)}

    started = time.monotonic()
    h.set_stage(api_client, namespace, NAME, 5)
    h.wait_ready(api_client, namespace, NAME, 5, timeout=120)
    down = time.monotonic() - started
    eventually(lambda: h.children(k, namespace, NAME) == h.expected(5, NAME, namespace, **spec))
    eventually(
        lambda: not STAGE6_COMPONENTS & set(pods_by_component(api_client, namespace)), timeout=90
    )
    after = h.claims(api_client, namespace)
    assert all(after.get(name) == uid for name, uid in before.items())
    assert {f"data-{NAME}-redis-cl-{i}" for i in range(6)} <= set(after)
    assert {f"data-{NAME}-db-shard-{k}-0" for k in range(2)} <= set(after)
    per_region = {c: [p.count(r) for r in ("region-a", "region-b")] for c, p in spread.items()}
    report(
        f"stage 6 on KWOK: 5->6 Ready in {up:.1f} s, 6->5 in {down:.1f} s; pods at 6 by "
        f"component {counts}; per region (a, b) {per_region}; {len(after)} claims kept"
    )

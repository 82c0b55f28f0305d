"""The ladder on real pods: a kind cluster, our images, the operator installed by Helm.

The sample app serves a read-heavy mix with writes (each write queues a fan-out job)
from a load generator pod for the whole walk, through the app's Service, in a namespace
that enforces the `restricted` Pod Security level. Along the way the read replica must
stream, the edge cache must serve static files, Redis must answer hits and the HPA must
add pods on real CPU. The step 5->4 is not the test's: auto mode with no Prometheus
URL must take it, from the Prometheus z2m runs at stage 5 scraping the real pods. After
the walk every write the app acknowledged must be in the primary, every job must have
been done exactly once in effect, and no generated password may appear in any log,
Event, status or `kubectl describe` output of the namespace. The failed requests of
each transition are reported.

The jobs move from RabbitMQ to Kafka at 4->5 and back at 5->4. For those two steps the
job path is measured, not asserted against a clock: how many jobs were accepted
(queued, or run inline while no broker took them) and lost, the longest time in which
no job was accepted and in which none was processed, and the longest time an accepted
job waited to be done.
"""

from __future__ import annotations

import base64
import itertools
import re
import time
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from tests.conftest import eventually, kubectl, report
from z2m import api, builders

# The first kind test also pays for the session's cluster, image builds and loads.
pytestmark = [pytest.mark.cluster, pytest.mark.kind, pytest.mark.timeout(3600)]
NAME = "shop"
WALK = [1, 2, 3, 4, 5, 4, 3, 2, 1]


@pytest.fixture(scope="module")
def app_namespace(kind_api: ApiClient, kind_kubeconfig: str) -> Iterator[str]:
    with h.helm_namespace(kind_api, kind_kubeconfig, "walk") as name:
        yield name


def _load_pod(name: str, rps: int, *, journal: bool) -> dict[str, Any]:
    return h.load_pod(NAME, name, rps, journal=journal)


_exec = h.pod_exec


def _psql(kubeconfig: str, namespace: str, sql: str, pod: str = f"{NAME}-db-0") -> str:
    return h.psql(kubeconfig, namespace, pod, sql)


def _python(kubeconfig: str, namespace: str, pod: str, code: str) -> str:
    return _exec(kubeconfig, namespace, pod, "python", "-c", code)


_journal = h.journal


def _acked(kubeconfig: str, namespace: str) -> int:
    return len([e for e in _journal(kubeconfig, namespace) if "post" in e])


def _app_pods(api_client: ApiClient, namespace: str) -> list[str]:
    pods = kubernetes.client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/component=app"
    )
    return [p.metadata.name for p in pods.items if p.status.phase == "Running"]


def _cache_lookups(api_client: ApiClient, kubeconfig: str, namespace: str) -> dict[str, float]:
    """Redis hits and misses summed over the app pods, from their /metrics."""
    code = (
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:8080/metrics').read().decode())"
    )
    totals = {"hit": 0.0, "miss": 0.0}
    for pod in _app_pods(api_client, namespace):
        text = _python(kubeconfig, namespace, pod, code)
        for result, value in re.findall(
            r'^app_cache_requests_total\{result="(\w+)"\} (\S+)$', text, re.M
        ):
            totals[result] = totals.get(result, 0.0) + float(value)
    return totals


def _edge_cache_status(kubeconfig: str, namespace: str) -> list[str]:
    """X-Cache-Status of one static file fetched six times through the edge Service.

    The edge runs two nginx pods, each with its own cache, and the Service picks one per
    connection: the first fetch on each pod is a MISS, the later ones must be HITs.
    """
    code = (
        "import urllib.request\n"
        "for _ in range(6):\n"
        f"    r = urllib.request.urlopen('http://{NAME}-edge/static/app.css')\n"
        "    print(r.headers.get('X-Cache-Status'))\n"
    )
    return _python(kubeconfig, namespace, "load", code).split()


def _hpa_scales_up(api_client: ApiClient, kubeconfig: str, namespace: str) -> int:
    """Add load until the HPA runs more app pods than its minimum; return how many ran."""
    core = kubernetes.client.CoreV1Api(api_client)
    autoscaling = kubernetes.client.AutoscalingV2Api(api_client)
    minimum = autoscaling.read_namespaced_horizontal_pod_autoscaler(
        f"{NAME}-app", namespace
    ).spec.min_replicas
    core.create_namespaced_pod(namespace, _load_pod("burst", 60, journal=False))
    try:

        def ready_app_pods() -> int | None:
            dep = kubernetes.client.AppsV1Api(api_client).read_namespaced_deployment(
                f"{NAME}-app", namespace
            )
            ready = dep.status.ready_replicas or 0
            return ready if ready > minimum else None

        ready: int = eventually(ready_app_pods, timeout=420, interval=5)
    finally:
        core.delete_namespaced_pod("burst", namespace, grace_period_seconds=0)
    return ready


def _demoted_by_z2ms_own_prometheus(api_client: ApiClient, namespace: str) -> dict[str, Any]:
    """Turn on auto mode without a Prometheus URL at stage 5; wait for z2m to demote to 4.

    The windows are short so that the test does not wait half an hour; the signals are
    the defaults, read from `<name>-prometheus`, which scrapes the app and worker pods.
    Returns the ScalingStage as the demotion left it; auto mode is turned off again.
    """
    promotion = {
        "mode": "auto",
        "minStage": 4,
        "intervalSeconds": 5,
        "promoteWindowSeconds": 0,
        "demoteWindowSeconds": 30,
        "cooldownSeconds": 0,
        "prometheus": {"rateWindow": "1m"},
        # A 2-core machine running the whole suite answers slowly whatever the stage; the
        # subject here is where the signals come from, not this node's latency.
        "thresholds": {"latencyP95Seconds": 30},
    }
    crd = (api.GROUP, api.VERSION, namespace, api.PLURAL, NAME)
    h.custom(api_client).patch_namespaced_custom_object(*crd, {"spec": {"promotion": promotion}})

    def demoted() -> dict[str, Any]:
        obj = h.get(api_client, namespace, NAME)
        decision = (obj.get("status") or {}).get("lastDecision")
        assert obj["spec"]["stage"] == 4, f"still at 5; last decision: {decision}"
        history = (obj.get("status") or {}).get("history") or [{}]
        return obj if history[-1].get("toStage") == 4 else None

    try:
        return dict(eventually(demoted, timeout=600, interval=5))
    finally:
        h.custom(api_client).patch_namespaced_custom_object(*crd, {"spec": {"promotion": None}})


def _passwords_seen(api_client: ApiClient, kubeconfig: str, namespace: str) -> list[str]:
    """Where any generated password shows: every pod's logs, Events, status, `describe`."""
    secret = kubernetes.client.CoreV1Api(api_client).read_namespaced_secret(
        builders.secret_name(NAME), namespace
    )
    passwords = {k: base64.b64decode(v).decode() for k, v in secret.data.items()}
    assert passwords and all(len(p) >= 32 for p in passwords.values()), sorted(passwords)
    kinds = "all,scalingstages,configmaps,pvc,pdb,hpa,roles,rolebindings,serviceaccounts"
    texts = {
        "events": ["get", "events", "-o", "yaml"],
        "scalingstages": ["get", "scalingstages", "-o", "yaml"],
        "describe": ["describe", kinds],
    }
    pods = kubernetes.client.CoreV1Api(api_client).list_namespaced_pod(namespace)
    for pod in pods.items:
        texts[f"logs of {pod.metadata.name}"] = ["logs", pod.metadata.name, "--all-containers"]
    seen = []
    for where, argv in texts.items():
        out = kubectl(*argv, "-n", namespace, kubeconfig=kubeconfig, check=False)
        assert out.returncode == 0 or "logs" in where, (where, out.stderr)
        seen += [f"{key} in {where}" for key, p in passwords.items() if p in out.stdout]
    report(f"  passwords: {len(passwords)} searched in {len(texts)} outputs, {len(seen)} found")
    return seen


def _memory_mib(api_client: ApiClient, namespace: str) -> tuple[float, float]:
    """The node's memory in use and the app namespace's pods' share, from metrics-server."""
    metrics = kubernetes.client.CustomObjectsApi(api_client)

    def mib(quantity: str) -> float:
        return float(kubernetes.utils.parse_quantity(quantity)) / 2**20

    nodes = metrics.list_cluster_custom_object("metrics.k8s.io", "v1beta1", "nodes")["items"]
    pods = metrics.list_namespaced_custom_object("metrics.k8s.io", "v1beta1", namespace, "pods")
    node = sum(mib(n["usage"]["memory"]) for n in nodes)
    ours = sum(mib(c["usage"]["memory"]) for p in pods["items"] for c in p["containers"])
    return node, ours


def _epochs(kubeconfig: str, namespace: str, sql: str) -> list[float]:
    out = _psql(kubeconfig, namespace, sql)
    return [float(line) for line in out.split() if line]


def _longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] with none of `times` in it."""
    points = [start, *sorted(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(points))


def _job_path(
    kubeconfig: str, namespace: str, journal: list[dict[str, Any]], start: float, end: float
) -> tuple[str, int]:
    """One step's job path: accepted, lost, and how long jobs could not go through."""
    accepted = [e for e in journal if "post" in e and start <= e["t"] <= end]
    queued = sum(1 for e in accepted if e.get("fanout") == "queued")
    ids = ",".join(str(int(e["post"])) for e in accepted) or "0"
    # A post whose author has followers but none of them was notified: its job was lost.
    lost = _psql(
        kubeconfig,
        namespace,
        f"SELECT count(*) FROM posts p WHERE p.id IN ({ids}) AND"
        " EXISTS (SELECT 1 FROM follows f WHERE f.followee_id = p.author_id) AND"
        " NOT EXISTS (SELECT 1 FROM notifications n WHERE n.post_id = p.id)",
    )
    done = _epochs(
        kubeconfig,
        namespace,
        "SELECT extract(epoch FROM processed_at) FROM processed_jobs"
        f" WHERE processed_at BETWEEN to_timestamp({start}) AND to_timestamp({end})",
    )
    # When each accepted job took effect: its post's first notification.
    first = dict(
        line.split("|")
        for line in _psql(
            kubeconfig,
            namespace,
            "SELECT post_id, extract(epoch FROM min(created_at)) FROM notifications"
            f" WHERE post_id IN ({ids}) GROUP BY post_id",
        ).split()
    )
    waits = [float(first[str(e["post"])]) - e["t"] for e in accepted if str(e["post"]) in first]
    accepted_gap = _longest_gap([e["t"] for e in accepted], start, end)
    return (
        f"{len(accepted)} jobs accepted ({queued} queued, {len(accepted) - queued} inline), "
        f"{lost} lost; longest with no job accepted {accepted_gap:.1f} s, with none processed "
        f"{_longest_gap(done, start, end):.1f} s; longest wait of a job "
        f"{max(waits, default=0.0):.1f} s"
    ), int(lost)


def _pod_memory_mib(api_client: ApiClient, namespace: str, pod: str) -> float:
    """One pod's memory in use, or 0 until metrics-server has scraped it once."""
    metrics = kubernetes.client.CustomObjectsApi(api_client)
    try:
        usage = metrics.get_namespaced_custom_object(
            "metrics.k8s.io", "v1beta1", namespace, "pods", pod
        )
    except kubernetes.client.exceptions.ApiException as exc:
        if exc.status == 404:  # a new pod, not yet scraped
            return 0.0
        raise
    return sum(
        float(kubernetes.utils.parse_quantity(c["usage"]["memory"])) / 2**20
        for c in usage["containers"]
    )


def test_the_walk_under_live_traffic_loses_no_acknowledged_write_and_no_job(
    kind_api: ApiClient, kind_kubeconfig: str, app_namespace: str
) -> None:
    ns, kc = app_namespace, kind_kubeconfig
    core = kubernetes.client.CoreV1Api(kind_api)
    h.create(kind_api, ns, h.scaling_stage(NAME, WALK[0], app=h.SMALL_APP))
    h.wait_ready(kind_api, ns, NAME, WALK[0], timeout=600)
    core.create_namespaced_pod(ns, _load_pod("load", 8, journal=True))
    eventually(lambda: _acked(kc, ns) > 0, timeout=300)
    windows: list[tuple[str, float, float]] = []
    seen: dict[str, Any] = {}
    for before, stage in itertools.pairwise(WALK):
        started = time.time()
        if (before, stage) == (5, 4):
            seen["demotion"] = _demoted_by_z2ms_own_prometheus(kind_api, ns)
        else:
            h.set_stage(kind_api, ns, NAME, stage)
        h.wait_ready(kind_api, ns, NAME, stage, timeout=900)
        # Traffic keeps flowing a little after Ready, so late failures are counted too.
        mark = _acked(kc, ns)
        eventually(lambda m=mark: _acked(kc, ns) > m + 3)
        windows.append((f"{before}->{stage}", started, time.time()))
        if (before, stage) == (2, 3):
            streaming = _psql(
                kc, ns, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
            )
            assert streaming == "1", f"stage 3's read replica does not stream: {streaming!r}"
            seen["edge"] = _edge_cache_status(kc, ns)
            assert len(seen["edge"]) == 6 and seen["edge"].count("MISS") <= 2, seen
        if (before, stage) == (3, 4):
            seen["cache"] = eventually(
                lambda: (c := _cache_lookups(kind_api, kc, ns))["hit"] > 0 and c, timeout=120
            )
        if (before, stage) == (4, 5):
            seen["hpa"] = _hpa_scales_up(kind_api, kc, ns)
            seen["memory"] = _memory_mib(kind_api, ns)
            seen["kafka"] = eventually(
                lambda: _pod_memory_mib(kind_api, ns, f"{NAME}-streaming-0"), timeout=120
            )

    journal = _journal(kc, ns)
    acked = sorted({int(e["post"]) for e in journal if "post" in e})
    errors = [e for e in journal if "error" in e]
    report(f"real-pod walk {WALK}: {len(acked)} acknowledged writes")
    for label, start, end in windows:
        failed = [e for e in errors if start <= e["t"] <= end]
        kinds = sorted({e["error"] for e in failed})
        report(f"  {label}: {end - start:5.0f} s, {len(failed)} failed requests {kinds}")
    lost_jobs = {}
    for label, start, end in windows:
        if label in ("4->5", "5->4"):
            line, lost_jobs[label] = _job_path(kc, ns, journal, start, end)
            report(f"  {label} job path: {line}")
    outside = [e for e in errors if not any(s <= e["t"] <= t for _, s, t in windows)]
    report(f"  between transitions: {len(outside)} failed requests")
    hits, misses = seen["cache"]["hit"], seen["cache"]["miss"]
    report(f"  stage 4 Redis hit ratio {hits / (hits + misses):.2f} ({hits:.0f} hits)")
    report(f"  stage 3 edge cache, one file six times: {seen['edge']}")
    report(f"  stage 5 HPA on real CPU: {seen['hpa']} app pods ready (minimum 4)")
    node, ours = seen["memory"]
    report(f"  stage 5 memory: node {node:.0f} MiB in use, the app's pods {ours:.0f} MiB")
    report(f"  stage 5 Kafka pod: {seen['kafka']:.0f} MiB")
    demotion = seen["demotion"]["status"]
    decision, last = demotion["lastDecision"], demotion["history"][-1]
    report(f"  5->4 by z2m from its own Prometheus: {decision['reason']}")
    assert (last["fromStage"], last["toStage"], last["by"]) == (5, 4, "operator"), last
    assert decision["action"] == "demote" and decision["signals"], decision

    ids = ",".join(map(str, acked))
    stored = _psql(kc, ns, f"SELECT count(*) FROM posts WHERE id IN ({ids})")
    assert acked and stored == str(len(acked)), f"{len(acked)} acknowledged, {stored} stored"
    report(f"  acknowledged writes lost: {len(acked) - int(stored)}")
    # Each acknowledged post queued one fan-out job: every follower of its author holds
    # exactly one notification for it (a redelivered job is a no-op by construction).
    undone = _psql(
        kc,
        ns,
        f"SELECT count(*) FROM posts p WHERE p.id IN ({ids}) AND"
        " (SELECT count(*) FROM notifications n WHERE n.post_id = p.id) <>"
        " (SELECT count(*) FROM follows f WHERE f.followee_id = p.author_id)",
    )
    jobs = _psql(kc, ns, "SELECT count(*) FROM processed_jobs")
    report(f"  jobs: {jobs} processed, {undone} posts whose fan-out is missing or doubled")
    assert undone == "0"
    assert lost_jobs == {"4->5": 0, "5->4": 0}
    assert _passwords_seen(kind_api, kc, ns) == []

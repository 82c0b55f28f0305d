"""Faults at stage 4 on real pods: a killed worker, a restarted broker, a node drain's evictions.

A kind cluster, our images, the operator installed by Helm into a namespace that
enforces the `restricted` Pod Security level. One ScalingStage runs stage 4 (RabbitMQ,
two workers, PodDisruptionBudgets) and a load pod writes through the app the whole
time, each acknowledged post queuing a fan-out job. Then, in turn:

1. a worker is frozen until RabbitMQ has delivered it jobs it has not acknowledged,
   then SIGKILLed: those jobs are redelivered, and a job it had done but not acked
   is done again harmlessly (the job id makes it a no-op);
2. both workers are frozen until jobs queue up, the queue is checked durable with
   persistent messages, and the RabbitMQ pod is deleted; its StatefulSet brings it
   back on the same volume and the thawed (or restarted) workers do the queued jobs;
3. every pod of the namespace but the load pod is evicted in turn through the
   Eviction API, as `kubectl drain` would: an eviction a PodDisruptionBudget forbids
   is refused (429) and retried until allowed; the ScalingStage must be Ready again.

After each fault every post acknowledged so far must have exactly one notification per
follower of its author (no job lost, none doubled), and at the end every acknowledged
post must be in the primary. Jobs in flight, duplicates absorbed, the broker's
recovery, refused evictions and failed requests are reported; no time is asserted.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from tests.conftest import eventually, report

pytestmark = [pytest.mark.cluster, pytest.mark.kind, pytest.mark.timeout(3600)]
NAME = "shop"
QUEUE_POD = f"{NAME}-queue-0"
QUEUED = 10
"""Jobs that must wait in RabbitMQ (delivered to a frozen worker or ready) before it goes."""


@pytest.fixture(scope="module")
def app_namespace(kind_api: ApiClient, kind_kubeconfig: str) -> Iterator[str]:
    with h.helm_namespace(kind_api, kind_kubeconfig, "faults") as name:
        yield name


def _pods(api_client: ApiClient, namespace: str, component: str) -> list[Any]:
    pods = kubernetes.client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=f"app.kubernetes.io/component={component}"
    )
    return sorted(
        (
            p
            for p in pods.items
            if p.status.phase == "Running" and not p.metadata.deletion_timestamp
        ),
        key=lambda p: p.metadata.name,
    )


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _rabbitmqctl(kubeconfig: str, namespace: str, *argv: str) -> list[dict[str, Any]]:
    out = h.pod_exec(
        kubeconfig, namespace, QUEUE_POD, "rabbitmqctl", "-q", *argv, "--formatter", "json"
    )
    try:
        rows: list[dict[str, Any]] = json.loads(out)
    except ValueError:
        return []  # RabbitMQ is not answering (yet)
    return rows


def _queue(kubeconfig: str, namespace: str) -> dict[str, Any]:
    items = ["name", "durable", "messages", "messages_persistent"]
    rows = _rabbitmqctl(kubeconfig, namespace, "list_queues", *items)
    return next((r for r in rows if r["name"] == "z2m.jobs"), {})


def _unacked_on(kubeconfig: str, namespace: str, ip: str) -> int:
    """Deliveries not yet acknowledged on the channels of the consumer at `ip`."""
    rows = _rabbitmqctl(kubeconfig, namespace, "list_channels", "name", "messages_unacknowledged")
    return sum(r["messages_unacknowledged"] for r in rows if r["name"].startswith(f"{ip}:"))


def _duplicates(api_client: ApiClient, kubeconfig: str, namespace: str) -> dict[str, float]:
    """Jobs each worker found already done (redeliveries), from its /metrics."""
    code = (
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:8080/metrics').read().decode())"
    )
    counts = {}
    for pod in _pods(api_client, namespace, "worker"):
        text = h.pod_exec(kubeconfig, namespace, pod.metadata.name, "python", "-c", code)
        found = re.search(r'^app_jobs_processed_total\{outcome="duplicate"\} (\S+)$', text, re.M)
        counts[pod.metadata.name] = float(found.group(1)) if found else 0.0
    return counts


def _acked(kubeconfig: str, namespace: str) -> list[int]:
    return sorted({int(e["post"]) for e in h.journal(kubeconfig, namespace) if "post" in e})


def _fanout_wrong(kubeconfig: str, namespace: str, posts: list[int]) -> int:
    """Posts whose fan-out is missing or doubled: not one notification per follower."""
    ids = ",".join(map(str, posts))
    out = h.psql(
        kubeconfig,
        namespace,
        f"{NAME}-db-0",
        f"SELECT count(*) FROM posts p WHERE p.id IN ({ids}) AND"
        " (SELECT count(*) FROM notifications n WHERE n.post_id = p.id) <>"
        " (SELECT count(*) FROM follows f WHERE f.followee_id = p.author_id)",
    )
    return int(out) if out.isdigit() else -1


def _all_jobs_done(kubeconfig: str, namespace: str) -> list[int]:
    """Wait until every post acknowledged so far has its fan-out done exactly once."""
    posts = _acked(kubeconfig, namespace)
    assert posts, "no acknowledged write yet"
    eventually(lambda: _fanout_wrong(kubeconfig, namespace, posts) == 0, timeout=180, interval=2)
    return posts


def _restarted(api_client: ApiClient, namespace: str, pod: str, restarts: int) -> bool:
    found = kubernetes.client.CoreV1Api(api_client).read_namespaced_pod(pod, namespace)
    count = sum(c.restart_count for c in found.status.container_statuses or [])
    return count > restarts and _ready(found)


def _evict(core: kubernetes.client.CoreV1Api, namespace: str, pod: str) -> int:
    """Evict `pod` as `kubectl drain` does, retrying while a PDB forbids it; the refusals."""
    body = kubernetes.client.V1Eviction(
        metadata=kubernetes.client.V1ObjectMeta(name=pod, namespace=namespace)
    )
    refused = 0

    def evicted() -> bool:
        nonlocal refused
        try:
            core.create_namespaced_pod_eviction(pod, namespace, body)
        except kubernetes.client.ApiException as exc:
            if exc.status == 429:
                refused += 1
                return False
            if exc.status != 404:  # 404: already gone
                raise
        return True

    eventually(evicted, timeout=600, interval=2)
    return refused


def test_stage_4_loses_no_job_and_no_write_to_a_killed_worker_a_broker_restart_and_a_drain(
    kind_api: ApiClient, kind_kubeconfig: str, app_namespace: str
) -> None:
    ns, kc = app_namespace, kind_kubeconfig
    core = kubernetes.client.CoreV1Api(kind_api)
    h.create(kind_api, ns, h.scaling_stage(NAME, 4, app=h.SMALL_APP))
    h.wait_ready(kind_api, ns, NAME, 4, timeout=900)
    core.create_namespaced_pod(ns, h.load_pod(NAME, "load", 8, journal=True))
    eventually(lambda: len(_acked(kc, ns)) > 5, timeout=300)

    # 1. A worker dies holding jobs: frozen until RabbitMQ has handed it some, then killed.
    victim, *others = _pods(kind_api, ns, "worker")
    assert others, "stage 4 runs two workers"
    name = victim.metadata.name
    before = _duplicates(kind_api, kc, ns)
    restarts = sum(c.restart_count for c in victim.status.container_statuses)
    h.signal_container(kind_api, ns, name, "worker", "STOP")
    in_flight = eventually(lambda: _unacked_on(kc, ns, victim.status.pod_ip), timeout=120)
    h.signal_container(kind_api, ns, name, "worker", "KILL")
    eventually(lambda: _restarted(kind_api, ns, name, restarts), timeout=180)
    jobs = _all_jobs_done(kc, ns)
    after = _duplicates(kind_api, kc, ns)
    absorbed = sum(after.values()) - sum(n for pod, n in before.items() if pod != name)
    report(f"worker SIGKILL mid-job ({in_flight} jobs delivered to it, unacknowledged):")
    report(f"  {len(jobs)} jobs, 0 lost, {absorbed:.0f} duplicates absorbed")

    # 2. Jobs wait in RabbitMQ (both workers frozen), then its pod is deleted.
    workers = [p.metadata.name for p in _pods(kind_api, ns, "worker")]
    for pod in workers:
        h.signal_container(kind_api, ns, pod, "worker", "STOP")
    queued = eventually(lambda: (q := _queue(kc, ns)).get("messages", 0) >= QUEUED and q)
    assert queued["durable"] and queued["messages_persistent"] == queued["messages"], queued
    old = core.read_namespaced_pod(QUEUE_POD, ns).metadata.uid
    deleted = time.monotonic()
    core.delete_namespaced_pod(QUEUE_POD, ns)

    def replaced() -> bool:
        try:
            return bool(core.read_namespaced_pod(QUEUE_POD, ns).metadata.uid != old)
        except kubernetes.client.ApiException as exc:
            return exc.status == 404

    eventually(replaced, timeout=180)
    for pod in workers:  # a no-op for a worker its liveness probe has restarted meanwhile
        h.signal_container(kind_api, ns, pod, "worker", "CONT")
    eventually(lambda: _ready(core.read_namespaced_pod(QUEUE_POD, ns)), timeout=300)
    jobs = _all_jobs_done(kc, ns)
    report(
        f"RabbitMQ pod deleted with {queued['messages']} jobs queued: 0 lost,"
        f" recovery {time.monotonic() - deleted:.0f} s ({len(jobs)} jobs checked)"
    )

    # 3. A node drain: every pod evicted in turn, PDB refusals retried.
    pods = sorted(p.metadata.name for p in core.list_namespaced_pod(ns).items)
    pods.remove("load")  # the measuring instrument; a bare pod a drain would refuse anyway
    started = time.time()
    refusals = [_evict(core, ns, pod) for pod in pods]
    h.wait_ready(kind_api, ns, NAME, 4, timeout=900)
    mark = len(_acked(kc, ns))
    eventually(lambda: len(_acked(kc, ns)) > mark + 3, timeout=120)
    ended = time.time()
    posts = _all_jobs_done(kc, ns)
    ids = ",".join(map(str, posts))
    stored = h.psql(kc, ns, f"{NAME}-db-0", f"SELECT count(*) FROM posts WHERE id IN ({ids})")
    failed = [e for e in h.journal(kc, ns) if "error" in e and started <= e["t"] <= ended]
    kinds = sorted({e["error"] for e in failed})
    report(
        f"eviction of {len(pods)} pods: {sum(refusals)} refused by PDBs (429,"
        f" {sum(1 for n in refusals if n)} pods waited),"
        f" {len(posts) - int(stored or 0)} acknowledged writes lost,"
        f" failed requests {len(failed)} {kinds}"
    )
    assert stored == str(len(posts)), f"{len(posts)} acknowledged, {stored} stored"
    assert any(refusals), "no eviction was refused: the PodDisruptionBudgets did not hold"

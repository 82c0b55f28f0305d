"""z2m against a real kube-apiserver: the ladder, convergence, drift and data safety."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import kubernetes
import pytest
from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from tests.conftest import eventually, report
from z2m import builders, kube, metrics

pytestmark = pytest.mark.cluster
NAME = "shop"


@pytest.mark.parametrize("stage", [1, 2, 3, 4, 5, 6])
def test_each_stage_converges_to_its_objects_and_becomes_ready(
    api_client: ApiClient,
    k: kube.Kube,
    namespace: str,
    operator: Any,
    stage: int,
    request: pytest.FixtureRequest,
) -> None:
    # Created at 6, the app starts on one database and its rows then move into the
    # shards: on fake pods, between PostgreSQL servers on loopback.
    spec = {"database": {"moveUrls": request.getfixturevalue("move_urls")}} if stage == 6 else {}
    h.create(api_client, namespace, h.scaling_stage(NAME, stage, **spec))
    obj = h.wait_ready(api_client, namespace, NAME, stage, timeout=180)
    assert h.children(k, namespace, NAME) == h.expected(stage, NAME, namespace, **spec)
    if stage == 6:
        sharded = h.condition(obj, "DatabaseSharded")
        assert sharded is not None and sharded["reason"] == "Moved", sharded
    components = obj["status"]["components"]
    assert components and all(c["available"] for c in components)
    assert obj["status"]["estimatedMonthlyCost"].startswith("$")
    for ctype in ("Ready", "Progressing", "Degraded"):
        cond = h.condition(obj, ctype)
        assert cond is not None and cond["observedGeneration"] == obj["metadata"]["generation"]
        assert cond["lastTransitionTime"] and cond["reason"]


def test_stage_1_puts_the_app_on_the_database_node(
    api_client: ApiClient, namespace: str, operator: Any
) -> None:
    h.create(api_client, namespace, h.scaling_stage(NAME, 1))
    h.wait_ready(api_client, namespace, NAME, 1)
    pods = (
        kubernetes.client.CoreV1Api(api_client)
        .list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/part-of={NAME}")
        .items
    )
    by_component = {p.metadata.labels["app.kubernetes.io/component"]: p for p in pods}
    assert sorted(by_component) == ["app", "database"]
    assert by_component["app"].spec.node_name == by_component["database"].spec.node_name
    assert all(c.ready for p in pods for c in p.status.container_statuses)


@pytest.mark.parametrize(
    "walk",
    [[1, 2, 3, 4, 5, 6, 5, 4, 3, 2, 1], [1, 5, 1], [1, 6, 1]],
    ids=["one-by-one", "jump", "jump-6"],
)
def test_walks_converge_to_exactly_the_target_stage_and_keep_every_claim(
    api_client: ApiClient,
    k: kube.Kube,
    namespace: str,
    operator: Any,
    walk: list[int],
    empty_queue: str,
    kafka_servers: str,
    sentinel_watching: Callable[[str], str],
    move_urls: dict[str, Any],
) -> None:
    # Leaving stage 5, Redis shrinks only once Sentinel names ordinal 0 the master, and
    # Kafka goes only once its consumer group has no lag. Into and out of stage 6 the
    # rows move between PostgreSQL servers on loopback.
    spec = {
        "queue": {"managementUrl": empty_queue},
        "streaming": {"bootstrapServers": kafka_servers},
        "cache": {"sentinelAddress": sentinel_watching(f"{NAME}-redis-0.{NAME}-redis")},
        "database": {"moveUrls": move_urls},
    }
    h.create(api_client, namespace, h.scaling_stage(NAME, walk[0], **spec))
    h.wait_ready(api_client, namespace, NAME, walk[0])
    seen_claims: dict[str, str] = {}
    for stage in walk[1:]:
        h.set_stage(api_client, namespace, NAME, stage)
        h.wait_ready(api_client, namespace, NAME, stage, timeout=120)
        eventually(
            lambda s=stage, sp=spec: (
                h.children(k, namespace, NAME) == h.expected(s, NAME, namespace, **sp)
            )
        )
        now = h.claims(api_client, namespace)
        # Every claim ever made is still there, with the same identity: nothing was recreated.
        assert all(now.get(name) == uid for name, uid in seen_claims.items()), (stage, now)
        seen_claims.update(now)
    assert "data-shop-db-0" in seen_claims
    if any(stage in (4, 5) for stage in walk):
        assert "data-shop-redis-0" in seen_claims
    if 4 in walk:  # stages 5 and 6 stream their jobs through Kafka: no RabbitMQ there
        assert "data-shop-queue-0" in seen_claims
    if max(walk) >= 5:
        assert "data-shop-streaming-0" in seen_claims
    if max(walk) >= 6:
        assert {f"data-shop-redis-cl-{i}" for i in range(6)} <= set(seen_claims)


WRITE_VERBS = {"apply", "create", "patch", "delete"}


def requests(verbs: set[str]) -> float:
    """Requests the operator in this process sent to the apiserver with these verbs."""
    return sum(
        s.value
        for family in metrics.API_REQUESTS.collect()
        for s in family.samples
        if s.name.endswith("_total") and s.labels["verb"] in verbs
    )


def passes(outcome: str | None = None) -> float:
    return sum(
        s.value
        for family in metrics.RECONCILES.collect()
        for s in family.samples
        if s.name.endswith("_total") and outcome in (None, s.labels["outcome"])
    )


SETTLED = {"shop": 4, "blog": 2, "wiki": 3, "chat": 2}


def by_verb(verb: str, kind: str | None = None) -> float:
    """Requests of one verb (and kind) the operator in this process sent."""
    return sum(
        s.value
        for family in metrics.API_REQUESTS.collect()
        for s in family.samples
        if s.name.endswith("_total")
        and s.labels["verb"] == verb
        and kind in (None, s.labels["kind"])
    )


def test_a_resync_of_settled_objects_lists_nothing_and_writes_nothing(
    api_client: ApiClient, k: kube.Kube, namespace: str, operator: Any
) -> None:
    for name, stage in SETTLED.items():
        spec = {"queue": {"managementUrl": "http://127.0.0.1:9"}} if stage >= 4 else {}
        h.create(api_client, namespace, h.scaling_stage(name, stage, **spec))
    for name, stage in SETTLED.items():
        h.wait_ready(api_client, namespace, name, stage)
    # Converged: two passes per object in a row that changed nothing (re-check every 2 s).
    settled = passes("unchanged")
    eventually(lambda: passes("unchanged") >= settled + 2 * len(SETTLED))
    # (The test's own reads go through z2m.kube too, so they are made outside the count.)
    versions = {n: h.versions(k, namespace, n) for n in SETTLED}
    stored = {n: h.get(api_client, namespace, n)["metadata"]["resourceVersion"] for n in SETTLED}
    writes, lists, gets, before = requests(WRITE_VERBS), by_verb("list"), by_verb("get"), passes()

    # Three more periodic re-checks of every object; children come from the watches' indices.
    eventually(lambda: passes() >= before + 3 * len(SETTLED))
    made, listed, wrote, got = (
        passes() - before,
        by_verb("list"),
        requests(WRITE_VERBS),
        by_verb("get"),
    )
    assert listed == lists
    assert wrote == writes
    assert {n: h.versions(k, namespace, n) for n in SETTLED} == versions
    assert {
        n: h.get(api_client, namespace, n)["metadata"]["resourceVersion"] for n in SETTLED
    } == stored
    report(
        f"resync of {len(SETTLED)} settled ScalingStages: {made:.0f} passes, "
        f"{listed - lists:.0f} LISTs, {wrote - writes:.0f} writes, "
        f"{(got - gets) / made:.1f} GETs per pass"
    )


def test_a_child_deleted_by_hand_comes_back(
    api_client: ApiClient, namespace: str, operator: Any
) -> None:
    h.create(api_client, namespace, h.scaling_stage(NAME, 3))
    h.wait_ready(api_client, namespace, NAME, 3)
    core = kubernetes.client.CoreV1Api(api_client)
    old = core.read_namespaced_service(f"{NAME}-db-ro", namespace).metadata.uid
    core.delete_namespaced_service(f"{NAME}-db-ro", namespace)

    def recreated() -> bool:
        try:
            return bool(
                core.read_namespaced_service(f"{NAME}-db-ro", namespace).metadata.uid != old
            )
        except kubernetes.client.ApiException:
            return False

    eventually(recreated, timeout=30)


def test_a_hand_edit_is_reverted(api_client: ApiClient, namespace: str, operator: Any) -> None:
    h.create(api_client, namespace, h.scaling_stage(NAME, 3))
    h.wait_ready(api_client, namespace, NAME, 3)
    apps = kubernetes.client.AppsV1Api(api_client)
    apps.patch_namespaced_deployment(f"{NAME}-app", namespace, {"spec": {"replicas": 9}})
    eventually(
        lambda: apps.read_namespaced_deployment(f"{NAME}-app", namespace).spec.replicas == 2,
        timeout=30,
    )


def test_the_hpa_replica_count_survives_reconciles(
    api_client: ApiClient, namespace: str, operator: Any, empty_queue: str
) -> None:
    # 4 -> 5 retires RabbitMQ once its queue is shown empty: a real, empty one on loopback.
    h.create(api_client, namespace, h.scaling_stage(NAME, 4, queue={"managementUrl": empty_queue}))
    h.wait_ready(api_client, namespace, NAME, 4)
    h.set_stage(api_client, namespace, NAME, 5)
    h.wait_ready(api_client, namespace, NAME, 5)
    apps = kubernetes.client.AppsV1Api(api_client)
    app = apps.read_namespaced_deployment(f"{NAME}-app", namespace)
    # The hand-over kept the four replicas of stage 4: no drop to one on the way to the HPA.
    assert app.spec.replicas == 4
    # What the HPA does: write the scale subresource.
    apps.patch_namespaced_deployment_scale(f"{NAME}-app", namespace, {"spec": {"replicas": 7}})
    custom = h.custom(api_client)
    custom.patch_namespaced_custom_object(
        "z2m.dev",
        "v1alpha1",
        namespace,
        "scalingstages",
        NAME,
        {"spec": {"app": {"env": [{"name": "POKE", "value": "1"}]}}},
    )
    eventually(lambda: h.get(api_client, namespace, NAME)["status"]["observedGeneration"] == 3)
    time.sleep(4)
    deployment = apps.read_namespaced_deployment(f"{NAME}-app", namespace)
    env = {e.name for e in deployment.spec.template.spec.containers[0].env}
    assert "POKE" in env  # the reconcile did write the Deployment
    assert deployment.spec.replicas == 7


def test_replicas_can_be_handed_to_another_autoscaler(
    api_client: ApiClient, namespace: str, operator: Any
) -> None:
    h.create(
        api_client,
        namespace,
        h.scaling_stage(NAME, 3, overrides={"replicasManagedExternally": True}),
    )
    h.wait_ready(api_client, namespace, NAME, 3)
    apps = kubernetes.client.AppsV1Api(api_client)
    apps.patch_namespaced_deployment_scale(f"{NAME}-app", namespace, {"spec": {"replicas": 5}})
    time.sleep(5)
    assert apps.read_namespaced_deployment(f"{NAME}-app", namespace).spec.replicas == 5


def test_stage_7_is_a_plan_that_keeps_the_running_stage_and_going_back_down_works(
    api_client: ApiClient, k: kube.Kube, namespace: str, operator: Any
) -> None:
    h.create(api_client, namespace, h.scaling_stage(NAME, 3))
    h.wait_ready(api_client, namespace, NAME, 3)
    apps = kubernetes.client.AppsV1Api(api_client)

    def spec_generations() -> dict[tuple[str, str], str]:
        """Per child, what moves only when its spec or data is written."""
        return {
            (o["kind"], o["metadata"]["name"]): str(
                o["metadata"].get("generation") or o["metadata"]["resourceVersion"]
            )
            for o in k.children(namespace, NAME)
        }

    running = spec_generations()
    h.set_stage(api_client, namespace, NAME, 7)

    def plan_only(generation: int) -> dict[str, Any] | None:
        obj = h.get(api_client, namespace, NAME)
        cond = h.condition(obj, "Ready")
        seen = obj["status"].get("observedGeneration") == generation
        return obj if seen and cond and cond["reason"] == "PlanOnly" else None

    obj = eventually(lambda: plan_only(2), timeout=30)
    ready = h.condition(obj, "Ready")
    assert ready is not None and ready["status"] == "False"
    assert "stage 3 keeps running" in ready["message"]
    assert obj["status"]["stage"] == 3 and obj["status"]["planOnly"]["stage"] == 7
    assert all(a["userBrings"] for a in obj["status"]["planOnly"]["additions"])
    # Nothing was built, removed or rewritten.
    assert h.children(k, namespace, NAME) == h.expected(3, NAME, namespace)
    assert spec_generations() == running
    assert apps.read_namespaced_deployment(f"{NAME}-app", namespace).spec.replicas == 2

    # A later pass at stage 7 (a new generation) says nothing new.
    h.custom(api_client).patch_namespaced_custom_object(
        "z2m.dev",
        "v1alpha1",
        namespace,
        "scalingstages",
        NAME,
        {"spec": {"app": {"env": [{"name": "POKE", "value": "1"}]}}},
    )
    eventually(lambda: plan_only(3), timeout=30)
    assert spec_generations() == running

    h.set_stage(api_client, namespace, NAME, 2)
    obj = h.wait_ready(api_client, namespace, NAME, 2)
    assert h.children(k, namespace, NAME) == h.expected(2, NAME, namespace)
    assert "planOnly" not in obj["status"]
    events = kubernetes.client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    said = [e for e in events if e.reason == "PlanOnly" and e.involved_object.name == NAME]
    assert [e.type for e in said] == ["Warning"]


def test_stage_5_says_how_postgresql_fails_over(
    api_client: ApiClient, namespace: str, operator: Any
) -> None:
    h.create(api_client, namespace, h.scaling_stage(NAME, 5))
    obj = h.wait_ready(api_client, namespace, NAME, 5)
    cond = h.condition(obj, "FailoverAvailable")
    assert cond is not None and cond["status"] == "True" and cond["reason"] == "Patroni"
    assert "asynchronous" in cond["message"]
    assert obj["status"]["plan"]["databaseFailover"] == "patroni"
    # The local control plane's nodes are in three zones: the standby must be in another
    # zone than the primary, and the scheduler placed it so.
    zoned = h.condition(obj, "ZoneRedundant")
    assert zoned is not None and zoned["status"] == "True", zoned
    core = kubernetes.client.CoreV1Api(api_client)

    def zone(pod: str) -> str:
        node = eventually(lambda: core.read_namespaced_pod(pod, namespace).spec.node_name)
        labels = core.read_node(node).metadata.labels
        return str(labels["topology.kubernetes.io/zone"])

    assert zone(f"{NAME}-db-0") != zone(f"{NAME}-db-standby-0")


def test_deleting_the_scaling_stage_removes_children_but_keeps_claims_and_credentials(
    api_client: ApiClient, k: kube.Kube, namespace: str, operator: Any
) -> None:
    h.create(api_client, namespace, h.scaling_stage(NAME, 2))
    h.wait_ready(api_client, namespace, NAME, 2)
    claims = h.claims(api_client, namespace)
    h.custom(api_client).delete_namespaced_custom_object(
        "z2m.dev", "v1alpha1", namespace, "scalingstages", NAME
    )
    eventually(lambda: not h.children(k, namespace, NAME), timeout=60)
    assert h.claims(api_client, namespace) == claims
    core = kubernetes.client.CoreV1Api(api_client)
    assert core.read_namespaced_secret(f"{NAME}-credentials", namespace).data


def test_credentials_are_generated_once_and_never_rotated(
    api_client: ApiClient, namespace: str, operator: Any
) -> None:
    h.create(api_client, namespace, h.scaling_stage(NAME, 2))
    h.wait_ready(api_client, namespace, NAME, 2)
    core = kubernetes.client.CoreV1Api(api_client)
    first = core.read_namespaced_secret(f"{NAME}-credentials", namespace).data
    h.set_stage(api_client, namespace, NAME, 3)
    h.wait_ready(api_client, namespace, NAME, 3)
    assert core.read_namespaced_secret(f"{NAME}-credentials", namespace).data == first


def test_every_stage_change_emits_an_event(
    api_client: ApiClient, namespace: str, operator: Any
) -> None:
    h.create(api_client, namespace, h.scaling_stage(NAME, 1))
    h.wait_ready(api_client, namespace, NAME, 1)
    h.set_stage(api_client, namespace, NAME, 2)
    h.wait_ready(api_client, namespace, NAME, 2)
    core = kubernetes.client.CoreV1Api(api_client)

    def messages() -> list[str]:
        return [
            e.message
            for e in core.list_namespaced_event(namespace).items
            if e.reason == "StageChanged"
        ]

    found = eventually(lambda: [m for m in messages() if "1 -> 2" in m])
    assert found


def test_a_pod_no_node_can_take_is_named_in_the_status_and_an_event(
    api_client: ApiClient, namespace: str, operator: Any
) -> None:
    """A rollout waiting for CPU no node has says so, and goes on once it fits."""
    too_big = {"resources": {"requests": {"cpu": "500", "memory": "96Mi"}}}
    h.create(api_client, namespace, h.scaling_stage(NAME, 2, app=too_big))

    def stuck() -> dict[str, Any] | None:
        ready = h.condition(h.get(api_client, namespace, NAME), "Ready")
        return ready if ready is not None and ready["reason"] == "Unschedulable" else None

    ready = eventually(stuck, timeout=180)
    assert ready["status"] == "False"
    assert f"no node can take pod {NAME}-app-" in ready["message"], ready
    assert "Insufficient cpu" in ready["message"], ready
    core = kubernetes.client.CoreV1Api(api_client)
    events = eventually(
        lambda: [
            e
            for e in core.list_namespaced_event(namespace).items
            if e.reason == "Unschedulable" and e.type == "Warning"
        ]
    )
    assert "Insufficient cpu" in events[0].message
    h.custom(api_client).patch_namespaced_custom_object(
        "z2m.dev", "v1alpha1", namespace, "scalingstages", NAME, {"spec": {"app": h.SMALL_APP}}
    )
    h.wait_ready(api_client, namespace, NAME, 2, timeout=180)


def test_a_demotion_below_stage_4_waits_until_the_queue_is_drained(
    api_client: ApiClient, k: kube.Kube, namespace: str, operator: Any, empty_queue: str
) -> None:
    queue = f"jobs-{namespace}"
    auth = ("z2m", "queue-test-password")
    httpx.put(
        f"{empty_queue}/api/queues/%2F/{queue}", json={"durable": True}, auth=auth
    ).raise_for_status()
    for n in range(3):
        httpx.post(
            f"{empty_queue}/api/exchanges/%2F/amq.default/publish",
            json={
                "properties": {"delivery_mode": 2},
                "routing_key": queue,
                "payload": f"job {n}",
                "payload_encoding": "string",
            },
            auth=auth,
        ).raise_for_status()
    spec = {"queue": {"managementUrl": empty_queue, "queueName": queue}}
    h.create(api_client, namespace, h.scaling_stage(NAME, 4, **spec))
    h.wait_ready(api_client, namespace, NAME, 4)
    h.set_stage(api_client, namespace, NAME, 3)

    def waiting() -> dict[str, Any] | None:
        cond = h.condition(h.get(api_client, namespace, NAME), "Progressing")
        return cond if cond and "still holds 3 job(s)" in cond["message"] else None

    eventually(waiting, timeout=60)
    apps = kubernetes.client.AppsV1Api(api_client)

    # Redis goes at once; only the queue and its workers wait.
    def redis_gone() -> set[tuple[str, str]] | None:
        now = h.children(k, namespace, NAME)
        return now if ("StatefulSet", f"{NAME}-redis") not in now else None

    left = eventually(redis_gone)
    assert ("StatefulSet", f"{NAME}-queue") in left and ("Deployment", f"{NAME}-worker") in left
    app_env = {
        e.name
        for e in apps.read_namespaced_deployment(f"{NAME}-app", namespace)
        .spec.template.spec.containers[0]
        .env
    }
    assert "BROKER_URL" not in app_env  # the app stopped publishing; workers keep draining
    time.sleep(4)  # several re-checks later it still waits
    assert ("StatefulSet", f"{NAME}-queue") in h.children(k, namespace, NAME)

    httpx.delete(f"{empty_queue}/api/queues/%2F/{queue}/contents", auth=auth).raise_for_status()
    h.wait_ready(api_client, namespace, NAME, 3, timeout=90)
    eventually(lambda: h.children(k, namespace, NAME) == h.expected(3, NAME, namespace, **spec))
    assert "data-shop-queue-0" in h.claims(api_client, namespace)


def test_an_unreachable_queue_is_never_assumed_empty(
    api_client: ApiClient, k: kube.Kube, namespace: str, operator: Any
) -> None:
    spec = {"queue": {"managementUrl": "http://127.0.0.1:9"}}
    h.create(api_client, namespace, h.scaling_stage(NAME, 4, **spec))
    h.wait_ready(api_client, namespace, NAME, 4)
    h.set_stage(api_client, namespace, NAME, 2)

    def waiting() -> dict[str, Any] | None:
        cond = h.condition(h.get(api_client, namespace, NAME), "Progressing")
        return cond if cond and "cannot read the depth" in cond["message"] else None

    eventually(waiting, timeout=60)
    assert ("StatefulSet", f"{NAME}-queue") in h.children(k, namespace, NAME)


def _publish_and_consume(servers: str, topic: str, group: str, produce: int, commit: int) -> None:
    """Put `produce` records on a fresh topic; the group commits past the first `commit`."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=servers)
        await admin.start()
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
        await producer.start()
        for n in range(produce):
            await producer.send_and_wait(topic, f"job {n}".encode(), partition=0)
        await producer.stop()
        if commit:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=servers, group_id=group, enable_auto_commit=False
            )
            await consumer.start()
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.commit({TopicPartition(topic, 0): commit})
            await consumer.stop()

    asyncio.run(run())


def test_a_demotion_from_stage_5_waits_until_the_consumer_group_has_no_lag(
    api_client: ApiClient,
    k: kube.Kube,
    namespace: str,
    operator: Any,
    empty_queue: str,
    kafka_servers: str,
    sentinel_watching: Callable[[str], str],
) -> None:
    topic, group = f"jobs-{namespace}", f"workers-{namespace}"
    _publish_and_consume(kafka_servers, topic, group, produce=3, commit=0)
    streaming = {"bootstrapServers": kafka_servers, "topic": topic, "consumerGroup": group}
    spec = {
        "queue": {"managementUrl": empty_queue},
        "streaming": streaming,
        # Redis hands over first (its own gate), so that only Kafka's is left to wait on.
        "cache": {"sentinelAddress": sentinel_watching(f"{NAME}-redis-0.{NAME}-redis")},
    }
    h.create(api_client, namespace, h.scaling_stage(NAME, 5, **spec))
    h.wait_ready(api_client, namespace, NAME, 5)
    h.set_stage(api_client, namespace, NAME, 4)

    def waiting() -> dict[str, Any] | None:
        cond = h.condition(h.get(api_client, namespace, NAME), "Progressing")
        return cond if cond and "is 3 record(s) behind" in cond["message"] else None

    eventually(waiting, timeout=90)
    apps = kubernetes.client.AppsV1Api(api_client)
    # RabbitMQ is back and the app publishes to it; Kafka and its group stay meanwhile.
    left = h.children(k, namespace, NAME)
    assert {("StatefulSet", f"{NAME}-queue"), ("Deployment", f"{NAME}-worker")} <= left
    assert {
        ("StatefulSet", f"{NAME}-streaming"),
        ("Deployment", f"{NAME}-stream-worker"),
    } <= left
    app_env = {
        e.name
        for e in apps.read_namespaced_deployment(f"{NAME}-app", namespace)
        .spec.template.spec.containers[0]
        .env
    }
    assert "BROKER_URL" in app_env and "KAFKA_BOOTSTRAP_SERVERS" not in app_env

    # The group catches up (as its workers would): then, and only then, Kafka goes.
    _publish_and_consume(kafka_servers, topic, group, produce=0, commit=3)
    h.wait_ready(api_client, namespace, NAME, 4, timeout=90)
    eventually(lambda: h.children(k, namespace, NAME) == h.expected(4, NAME, namespace, **spec))
    assert "data-shop-streaming-0" in h.claims(api_client, namespace)


def test_an_unreachable_kafka_is_never_assumed_drained(
    api_client: ApiClient,
    k: kube.Kube,
    namespace: str,
    operator: Any,
    empty_queue: str,
    sentinel_watching: Callable[[str], str],
) -> None:
    spec = {
        "queue": {"managementUrl": empty_queue},
        "streaming": {"bootstrapServers": "127.0.0.1:9"},
        "cache": {"sentinelAddress": sentinel_watching(f"{NAME}-redis-0.{NAME}-redis")},
    }
    h.create(api_client, namespace, h.scaling_stage(NAME, 5, **spec))
    h.wait_ready(api_client, namespace, NAME, 5)
    h.set_stage(api_client, namespace, NAME, 4)

    def waiting() -> dict[str, Any] | None:
        cond = h.condition(h.get(api_client, namespace, NAME), "Progressing")
        return cond if cond and "cannot read the lag" in cond["message"] else None

    eventually(waiting, timeout=90)
    assert ("StatefulSet", f"{NAME}-streaming") in h.children(k, namespace, NAME)


@pytest.mark.parametrize(
    ("announce", "words"),
    [
        (f"{NAME}-redis-1.{NAME}-redis", "the master is ordinal 1"),
        (None, "cannot tell which Redis pod is the master"),
    ],
    ids=["ordinal-1-is-master", "sentinel-unreachable"],
)
def test_leaving_stage_5_keeps_both_redis_pods_until_ordinal_0_is_the_master(
    api_client: ApiClient,
    k: kube.Kube,
    namespace: str,
    operator: Any,
    empty_queue: str,
    kafka_servers: str,
    sentinel_watching: Callable[[str], str],
    announce: str | None,
    words: str,
) -> None:
    address = sentinel_watching(announce) if announce else "127.0.0.1:9"
    spec = {
        "queue": {"managementUrl": empty_queue},
        "cache": {"sentinelAddress": address},
        "streaming": {"bootstrapServers": kafka_servers},
    }
    h.create(api_client, namespace, h.scaling_stage(NAME, 5, **spec))
    h.wait_ready(api_client, namespace, NAME, 5)
    h.set_stage(api_client, namespace, NAME, 4)

    def waiting() -> dict[str, Any] | None:
        cond = h.condition(h.get(api_client, namespace, NAME), "Progressing")
        return cond if cond and words in cond["message"] else None

    eventually(waiting, timeout=60)
    apps = kubernetes.client.AppsV1Api(api_client)
    assert apps.read_namespaced_stateful_set(f"{NAME}-redis", namespace).spec.replicas == 2
    assert ("Deployment", f"{NAME}-redis-sentinel") in h.children(k, namespace, NAME)
    app_env = {
        e.name
        for e in apps.read_namespaced_deployment(f"{NAME}-app", namespace)
        .spec.template.spec.containers[0]
        .env
    }
    assert "REDIS_SENTINELS" in app_env  # the app keeps following Sentinel meanwhile


def test_a_read_replica_stops_getting_reads_before_it_is_removed(
    api_client: ApiClient, namespace: str, operator: Any
) -> None:
    spec = {"overrides": {"queue": False, "workers": 0}}
    h.create(api_client, namespace, h.scaling_stage(NAME, 4, **spec))
    h.wait_ready(api_client, namespace, NAME, 4)
    seen: list[tuple[str, int]] = []
    apps = kubernetes.client.AppsV1Api(api_client)
    stop = threading.Event()

    def record() -> None:
        # Watch both objects and note, in the order the apiserver reports them,
        # how many replica URLs the app has and how many replicas the StatefulSet wants.
        watch = kubernetes.watch.Watch()
        for event in watch.stream(apps.list_namespaced_deployment, namespace, timeout_seconds=60):
            obj = event["object"]
            if obj.metadata.name == f"{NAME}-app":
                env = {e.name: e.value for e in obj.spec.template.spec.containers[0].env}
                seen.append(
                    ("app-urls", env.get("DATABASE_REPLICA_URLS", "").count("postgresql://"))
                )
            if stop.is_set():
                return

    def record_sts() -> None:
        watch = kubernetes.watch.Watch()
        for event in watch.stream(apps.list_namespaced_stateful_set, namespace, timeout_seconds=60):
            obj = event["object"]
            if obj.metadata.name == f"{NAME}-db-replica":
                seen.append(("replicas", obj.spec.replicas))
            if stop.is_set():
                return

    threads = [threading.Thread(target=f, daemon=True) for f in (record, record_sts)]
    for t in threads:
        t.start()
    time.sleep(1)
    h.set_stage(api_client, namespace, NAME, 3)
    h.wait_ready(api_client, namespace, NAME, 3)
    time.sleep(1)
    stop.set()
    rewired = next(i for i, e in enumerate(seen) if e == ("app-urls", 1))
    shrunk = next(i for i, e in enumerate(seen) if e == ("replicas", 1))
    assert rewired < shrunk, seen


def test_a_read_replica_stays_while_an_app_pod_of_the_old_template_still_runs(
    api_client: ApiClient, k: kube.Kube, namespace: str, operator: Any
) -> None:
    h.create(api_client, namespace, h.scaling_stage(NAME, 3))
    h.wait_ready(api_client, namespace, NAME, 3)
    core = kubernetes.client.CoreV1Api(api_client)
    apps = kubernetes.client.AppsV1Api(api_client)
    hold = "z2m.dev/test-hold"
    # The stage-3 app pods, still wired to the read replica, keep running after they
    # are told to stop (a finalizer stands in for a long shutdown on real nodes).
    old = core.list_namespaced_pod(
        namespace, label_selector=f"{builders.PART_OF}={NAME},{builders.COMPONENT}=app"
    ).items
    assert len(old) == 2
    for pod in old:
        core.patch_namespaced_pod(
            pod.metadata.name, namespace, {"metadata": {"finalizers": [hold]}}
        )
    try:
        h.set_stage(api_client, namespace, NAME, 2)

        def new_pods_up_old_pods_lingering() -> bool:
            d = apps.read_namespaced_deployment(f"{NAME}-app", namespace)
            st = d.status
            return bool(
                st.observed_generation == d.metadata.generation
                and st.updated_replicas == 1
                and st.replicas == 1
                and st.available_replicas == 1
                and (st.terminating_replicas or 0) > 0
            )

        eventually(new_pods_up_old_pods_lingering, timeout=60)
        # A pass that starts from here on must still keep the replica.
        h.custom(api_client).patch_namespaced_custom_object(
            "z2m.dev",
            "v1alpha1",
            namespace,
            "scalingstages",
            NAME,
            {"spec": {"promotion": {"intervalSeconds": 31}}},
        )
        generation = h.get(api_client, namespace, NAME)["metadata"]["generation"]

        def still_rewiring() -> dict[str, Any] | None:
            obj = h.get(api_client, namespace, NAME)
            cond = h.condition(obj, "Progressing")
            if obj["status"].get("observedGeneration") != generation or cond is None:
                return None
            return cond if f"rewiring {NAME}-app" in cond["message"] else None

        eventually(still_rewiring, timeout=30)
        assert ("StatefulSet", f"{NAME}-db-replica") in h.children(k, namespace, NAME)
    finally:
        for pod in old:
            with contextlib.suppress(kubernetes.client.ApiException):
                core.patch_namespaced_pod(
                    pod.metadata.name, namespace, {"metadata": {"finalizers": None}}
                )
    h.wait_ready(api_client, namespace, NAME, 2)
    eventually(lambda: h.children(k, namespace, NAME) == h.expected(2, NAME, namespace))


def _passes() -> float:
    return sum(metrics.RECONCILES.labels(o)._value.get() for o in ("changed", "unchanged"))


def test_the_operator_never_writes_over_patronis_lock_and_changes_only_its_own_config(
    api_client: ApiClient, namespace: str, operator: Any, empty_queue: str
) -> None:
    """Patroni renews its lock with a resourceVersion-conditional update: another write
    in between makes it demote the primary. So after making them, z2m leaves Patroni's
    ConfigMaps alone, except the dynamic configuration it owns, and only when it changes.
    (A guard: server-side apply of an unchanged body writes nothing either.)"""
    core = kubernetes.client.CoreV1Api(api_client)
    # 4 -> 5 retires RabbitMQ once its queue is shown empty: a real, empty one on loopback.
    h.create(api_client, namespace, h.scaling_stage(NAME, 4, queue={"managementUrl": empty_queue}))
    h.wait_ready(api_client, namespace, NAME, 4)
    scope = builders.patroni_scope(NAME)
    # What Patroni does: take the lock, and note the cluster's identity on the config.
    lock = {"leader": f"{NAME}-db-0", "ttl": "15", "renewTime": "now"}
    core.patch_namespaced_config_map(
        f"{scope}-leader", namespace, {"metadata": {"annotations": lock}}
    )
    core.patch_namespaced_config_map(
        f"{scope}-config", namespace, {"metadata": {"annotations": {"initialize": "7711"}}}
    )
    versions = {
        s: core.read_namespaced_config_map(f"{scope}-{s}", namespace).metadata.resource_version
        for s in ("leader", "config")
    }
    seen = _passes()
    eventually(lambda: _passes() >= seen + 3, timeout=60)  # three resyncs later
    for suffix, version in versions.items():
        now = core.read_namespaced_config_map(f"{scope}-{suffix}", namespace).metadata
        assert now.resource_version == version, f"z2m wrote to {scope}-{suffix}"
    # A stage change rewrites only the dynamic configuration (the standby's slot appears).
    h.set_stage(api_client, namespace, NAME, 5)
    h.wait_ready(api_client, namespace, NAME, 5)
    config = core.read_namespaced_config_map(f"{scope}-config", namespace).metadata.annotations
    assert "shop_db_standby_0" in config["config"] and config["initialize"] == "7711"
    leader = core.read_namespaced_config_map(f"{scope}-leader", namespace).metadata
    assert leader.resource_version == versions["leader"]
    assert leader.annotations == lock

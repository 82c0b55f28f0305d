"""Stage 5's Kafka, its consumer group and the moves to and from RabbitMQ; no cluster."""

from typing import Any

import pytest

from z2m import api, builders, catalog, cli, crd, plan, transition
from z2m.builders import streaming

OWNER = builders.Owner(name="shop", uid="6f1c1bd2-8a0e-4d43-9d0f-2f5f7d1b7c11")


def build(stage: int, **spec: Any) -> list[dict[str, Any]]:
    p = plan.resolve(api.ScalingStageSpec(stage=stage, **spec), name="shop", namespace="ns")
    return builders.build(p, OWNER)


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def names(objs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objs}


def env(obj: dict[str, Any]) -> dict[str, str]:
    container = obj["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "<ref>") for e in container["env"]}


def steps(before: int, after: int) -> dict[str, dict[tuple[str, str, str], frozenset[str]]]:
    return {
        phase.name: {
            (s.action, s.obj["kind"], s.obj["metadata"]["name"]): frozenset(s.gates)
            for s in phase.steps
        }
        for phase in transition.phases(build(before), build(after), OWNER.uid)
    }


def test_stages_5_and_6_stream_events_and_run_no_rabbitmq() -> None:
    streaming_stages = [
        s.number for s in catalog.STAGES if s.topology and s.topology.event_streaming
    ]
    assert streaming_stages == [5, 6]
    for stage in (5, 6):
        assert ("StatefulSet", "shop-streaming") in names(build(stage))
        assert ("StatefulSet", "shop-queue") not in names(build(stage))
    assert ("StatefulSet", "shop-streaming") not in names(build(4))


def test_kafka_keeps_its_log_on_a_retained_claim_and_is_ready_on_its_broker_port() -> None:
    kafka = find(build(5), "StatefulSet", "shop-streaming")
    (claim,) = kafka["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["labels"][builders.RETAINED] == "true"
    assert kafka["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    container = kafka["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["tcpSocket"]["port"] == streaming.KAFKA_PORT
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/var/lib/kafka"}]
    variables = env(kafka)
    assert variables["KAFKA_LOG_DIRS"].startswith("/var/lib/kafka/")
    assert variables["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert variables["KAFKA_ADVERTISED_LISTENERS"].startswith(
        "PLAINTEXT://$(POD_NAME).shop-streaming.ns.svc:9092"
    )
    assert variables["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert ("PersistentVolumeClaim", "shop-streaming") not in builders.PRUNABLE


def test_kafka_is_reached_by_a_headless_service_that_names_its_pod() -> None:
    service = find(build(5), "Service", "shop-streaming")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert [p["port"] for p in service["spec"]["ports"]] == [9092]


def test_the_cluster_id_is_fixed_by_the_owner_and_shaped_as_kafka_wants() -> None:
    first = streaming.cluster_id(OWNER)
    assert first == streaming.cluster_id(OWNER)
    assert len(first) == 22 and "=" not in first
    assert first != streaming.cluster_id(
        builders.Owner("shop", "1b4e28ba-2fa1-11d2-883f-0016d3cca427")
    )
    assert len(streaming.cluster_id(builders.Owner("shop", ""))) == 22  # z2m render: no uid


def test_at_stage_5_the_app_publishes_to_kafka_and_the_workers_are_its_consumer_group() -> None:
    objs = build(5)
    app = env(find(objs, "Deployment", "shop-app"))
    assert app["KAFKA_BOOTSTRAP_SERVERS"] == "shop-streaming:9092"
    assert (app["KAFKA_TOPIC"], app["KAFKA_GROUP"], app["KAFKA_PARTITIONS"]) == (
        "z2m.jobs",
        "z2m.workers",
        "6",
    )
    assert "BROKER_URL" not in app
    workers = env(find(objs, "Deployment", "shop-stream-worker"))
    assert workers["ROLE"] == "worker" and workers["KAFKA_GROUP"] == "z2m.workers"
    assert ("Deployment", "shop-worker") not in names(objs)


def test_at_stage_4_nothing_is_told_about_kafka() -> None:
    for obj in build(4):
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] in ("shop-app", "shop-worker"):
            assert "KAFKA_BOOTSTRAP_SERVERS" not in env(obj)
            assert "BROKER_URL" in env(obj)


@pytest.mark.parametrize(
    ("partitions", "low", "high"), [(6, 2, 6), (3, 2, 3), (1, 1, 1), (20, 2, 8)]
)
def test_the_workers_never_outnumber_the_partitions(partitions: int, low: int, high: int) -> None:
    objs = build(5, streaming={"partitions": partitions})
    hpa = find(objs, "HorizontalPodAutoscaler", "shop-stream-worker")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (low, high)
    assert "replicas" not in find(objs, "Deployment", "shop-stream-worker")["spec"]


def test_without_autoscaling_the_worker_count_is_capped_at_the_partitions_too() -> None:
    p = plan.resolve(
        api.ScalingStageSpec(stage=5, overrides={"workers": 5}, streaming={"partitions": 2}),
        name="shop",
        namespace="ns",
    )
    unscaled = plan.Plan(**{**p.__dict__, "worker_autoscaling": None})
    (deployment,) = builders.app.stream_workers(unscaled, OWNER)
    assert deployment["spec"]["replicas"] == 2


def test_4_to_5_provides_kafka_rewires_then_retires_rabbitmq_only_once_its_queue_is_empty() -> None:
    plan_ = steps(4, 5)
    assert ("apply", "StatefulSet", "shop-streaming") in plan_["provide"]
    assert ("apply", "Service", "shop-streaming") in plan_["provide"]
    assert ("apply", "Deployment", "shop-app") in plan_["rewire"]
    assert ("apply", "Deployment", "shop-stream-worker") in plan_["rewire"]
    drained = frozenset({"rewired", "queue-empty"})
    assert plan_["retire"][("delete", "StatefulSet", "shop-queue")] == drained
    assert plan_["retire"][("delete", "Service", "shop-queue")] == drained
    # RabbitMQ's workers keep draining it until then: they are not touched before.
    assert plan_["retire"][("delete", "Deployment", "shop-worker")] == drained
    assert not any(name == "shop-worker" for _, _, name in plan_["rewire"])


def test_5_to_4_brings_rabbitmq_back_first_and_retires_kafka_only_once_the_group_has_no_lag() -> (
    None
):
    plan_ = steps(5, 4)
    assert ("apply", "StatefulSet", "shop-queue") in plan_["provide"]
    assert ("apply", "Deployment", "shop-worker") in plan_["rewire"]
    drained = frozenset({"rewired", "stream-drained"})
    for kind in ("StatefulSet", "Service"):
        assert plan_["retire"][("delete", kind, "shop-streaming")] == drained
    for kind in ("Deployment", "HorizontalPodAutoscaler"):
        assert plan_["retire"][("delete", kind, "shop-stream-worker")] == drained
    assert not any(gates & {"queue-empty"} for gates in plan_["retire"].values())


def test_kafka_s_claims_are_never_a_step_of_any_move() -> None:
    for before, after in [(5, 4), (5, 1), (4, 5)]:
        for phase in transition.phases(build(before), build(after), OWNER.uid):
            assert all(s.obj["kind"] != "PersistentVolumeClaim" for s in phase.steps)


def test_the_stage_5_diagram_shows_kafka_and_the_partition_cap() -> None:
    diagram = cli.diagram(5)
    assert "Kafka (KRaft)" in diagram and "at most 6" in diagram
    assert "RabbitMQ" not in diagram


def test_partitions_may_grow_but_the_crd_refuses_a_shrink() -> None:
    spec = crd.schema_of(api.ScalingStageSpec)
    rules = [r for r in spec["x-kubernetes-validations"] if "partitions" in r["rule"]]
    assert len(rules) == 1
    assert "cannot shrink" in rules[0]["message"]

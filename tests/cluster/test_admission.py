"""Invalid ScalingStages are refused by the real apiserver, with messages a person understands."""

from __future__ import annotations

import json

import pytest

from tests.conftest import kubectl

pytestmark = pytest.mark.cluster


def apply(kubeconfig: str, namespace: str, spec: dict[str, object]) -> tuple[int, str]:
    body = {
        "apiVersion": "z2m.dev/v1alpha1",
        "kind": "ScalingStage",
        "metadata": {"name": "bad", "namespace": namespace},
        "spec": spec,
    }
    out = kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        kubeconfig=kubeconfig,
        check=False,
        stdin=json.dumps(body),
    )
    return out.returncode, out.stderr


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"stage": 0},
            "spec.stage: Invalid value: 0: spec.stage in body should be greater than or equal to 1",
        ),
        ({"stage": 8}, "spec.stage in body should be less than or equal to 7"),
        (
            {"stage": 2, "overrides": {"appReplicas": -1}},
            "spec.overrides.appReplicas in body should be greater than or equal to 1",
        ),
        ({"stage": 2, "overrides": {"appReplicas": 100000}}, "less than or equal to 1000"),
        (
            {"stage": 1, "overrides": {"appReplicas": 3}},
            "stage 1 is one machine shared by the app and its database",
        ),
        ({"stage": 1, "overrides": {"readReplicas": 1}}, "read replicas start at stage 2"),
        (
            {"stage": 3, "overrides": {"autoscaling": {"minReplicas": 6, "maxReplicas": 2}}},
            "autoscaling.minReplicas must not be above autoscaling.maxReplicas",
        ),
        (
            {
                "stage": 3,
                "overrides": {
                    "appReplicas": 3,
                    "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
                },
            },
            "with autoscaling the HPA owns the replica count",
        ),
        ({"stage": 2, "overrides": {"workers": 2}}, "workers need the queue"),
        (
            {"stage": 2, "promotion": {"mode": "auto", "maxStage": 4}},
            "promotion.prometheus.url is required when promotion.mode is recommend or auto "
            "and maxStage is below 5",
        ),
        (
            {"stage": 2, "promotion": {"minStage": 4, "maxStage": 3}},
            "promotion.minStage must not be above promotion.maxStage",
        ),
        (
            {"stage": 5, "promotion": {"mode": "auto", "maxStage": 6}},
            "promotion.maxStage 6 in recommend or auto mode needs promotion.allowStage6: true",
        ),
        (
            {
                "stage": 2,
                "promotion": {
                    "mode": "auto",
                    "prometheus": {"url": "http://p:9090"},
                    "minStage": 3,
                },
            },
            "spec.stage must lie between promotion.minStage and promotion.maxStage",
        ),
        (
            {"stage": 2, "promotion": {"promoteWindowSeconds": 600, "demoteWindowSeconds": 60}},
            "so that the stage climbs faster than it falls",
        ),
        (
            {"stage": 2, "app": {"port": 70000}},
            "spec.app.port in body should be less than or equal to 65535",
        ),
        ({"stage": 2, "replicaz": 3}, ".spec.replicaz: field not declared in schema"),
        ({"stage": 2, "app": {"imag": "x"}}, ".spec.app.imag: field not declared in schema"),
    ],
)
def test_the_apiserver_refuses_bad_input_with_a_clear_message(
    kubeconfig: str, namespace: str, spec: dict[str, object], message: str
) -> None:
    code, stderr = apply(kubeconfig, namespace, spec)
    assert code != 0
    assert message in stderr, stderr


def test_a_valid_scaling_stage_is_accepted_and_defaulted(kubeconfig: str, namespace: str) -> None:
    code, stderr = apply(
        kubeconfig,
        namespace,
        {"stage": 3, "promotion": {"mode": "recommend", "prometheus": {"url": "http://p:9090"}}},
    )
    assert code == 0, stderr
    got = json.loads(
        kubectl("get", "sstage", "bad", "-n", namespace, "-o", "json", kubeconfig=kubeconfig).stdout
    )
    assert got["spec"]["promotion"]["maxStage"] == 5
    assert got["spec"]["promotion"]["cooldownSeconds"] == 600


def test_auto_mode_may_reach_stage_6_with_the_explicit_opt_in(
    kubeconfig: str, namespace: str
) -> None:
    spec = {"stage": 5, "promotion": {"mode": "auto", "maxStage": 6, "allowStage6": True}}
    code, stderr = apply(kubeconfig, namespace, spec)
    assert code == 0, stderr


def test_promotion_up_to_stage_5_may_leave_the_url_to_z2ms_own_prometheus(
    kubeconfig: str, namespace: str
) -> None:
    code, stderr = apply(kubeconfig, namespace, {"stage": 3, "promotion": {"mode": "auto"}})
    assert code == 0, stderr
    got = json.loads(
        kubectl("get", "sstage", "bad", "-n", namespace, "-o", "json", kubeconfig=kubeconfig).stdout
    )
    assert got["spec"]["promotion"]["maxStage"] == 5
    assert "prometheus" not in got["spec"]["promotion"]


def db(**storage: str) -> dict[str, object]:
    return {"database": {"storage": storage}}


@pytest.mark.parametrize(
    ("before", "after", "message"),
    [
        (
            db(size="2Gi"),
            db(size="1Gi"),
            "spec.database.storage.size cannot shrink: a volume that holds data never gets smaller",
        ),
        ({}, {"queue": {"storage": {"size": "512Mi"}}}, "spec.queue.storage.size cannot shrink"),
        (
            {},
            {"monitoring": {"storage": {"size": "512Mi"}}},
            "spec.monitoring.storage.size cannot shrink",
        ),
        (
            {},
            {"cache": {"storage": {"storageClassName": "fast"}}},
            "spec.cache.storage.storageClassName cannot change (nor be set or unset) once the "
            "ScalingStage exists: its claims keep the class they were made with",
        ),
        (
            db(storageClassName="slow"),
            db(storageClassName="fast"),
            "spec.database.storage.storageClassName cannot change",
        ),
        (db(storageClassName="slow"), {}, "spec.database.storage.storageClassName cannot change"),
    ],
    ids=[
        "shrink",
        "shrink-from-default",
        "prometheus-shrink",
        "set-class",
        "change-class",
        "unset-class",
    ],
)
def test_storage_edits_the_volumes_cannot_follow_are_refused_at_admission(
    kubeconfig: str,
    namespace: str,
    before: dict[str, object],
    after: dict[str, object],
    message: str,
) -> None:
    code, stderr = apply(kubeconfig, namespace, {"stage": 2, **before})
    assert code == 0, stderr
    code, stderr = apply(kubeconfig, namespace, {"stage": 2, **after})
    assert code != 0
    assert message in stderr, stderr


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({}, db(size="1024Mi")),
        (db(size="1Gi"), {}),
        ({}, db(size="5Gi")),
        (db(storageClassName="slow"), db(storageClassName="slow", size="2Gi")),
        (db(storageClassName="slow"), {"stage": 3, **db(storageClassName="slow")}),
    ],
    ids=["same-size-spelt-otherwise", "default-spelt-out", "grow", "grow-same-class", "stage"],
)
def test_storage_edits_that_keep_the_claims_valid_are_accepted(
    kubeconfig: str, namespace: str, before: dict[str, object], after: dict[str, object]
) -> None:
    code, stderr = apply(kubeconfig, namespace, {"stage": 2, **before})
    assert code == 0, stderr
    code, stderr = apply(kubeconfig, namespace, {"stage": 2, **after})
    assert code == 0, stderr


def test_the_shard_count_cannot_change_while_the_database_is_sharded(
    kubeconfig: str, namespace: str
) -> None:
    code, stderr = apply(kubeconfig, namespace, {"stage": 6})
    assert code == 0, stderr
    code, stderr = apply(kubeconfig, namespace, {"stage": 6, "database": {"shards": 3}})
    assert code != 0
    assert "spec.database.shards cannot change while the database is sharded" in stderr, stderr
    # Back at stage 5 the rows are on one database again: the count is free.
    code, stderr = apply(kubeconfig, namespace, {"stage": 5, "database": {"shards": 3}})
    assert code == 0, stderr
    code, stderr = apply(kubeconfig, namespace, {"stage": 6, "database": {"shards": 3}})
    assert code == 0, stderr

"""Metrics-driven promotion against a real apiserver and a real Prometheus.

The app is stood in for by an exporter in the test process that serves the
sample app's metric names with values the test sets; a real Prometheus scrapes
it every second with the labels a Kubernetes scrape adds, so z2m's default
queries run unchanged. Windows are seconds long so that each test takes
seconds. Stages stay within 1-3, which need no RabbitMQ.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiClient

from tests import prometheus as prom
from tests.cluster import helpers as h
from tests.conftest import eventually
from tests.services import free_port

pytestmark = pytest.mark.cluster
NAME = "shop"
PROMOTE, DEMOTE, COOLDOWN = 3, 6, 2


@pytest.fixture
def z2m(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings for the operator fixture: list every half second."""
    monkeypatch.setenv("Z2M_PROMOTION_TICK", "0.5")
    monkeypatch.setenv("Z2M_PROMOTION_REFRESH", "5")
    yield


def promoting(stage: int, url: str, mode: str = "auto", **promotion: Any) -> dict[str, Any]:
    spec = {
        "mode": mode,
        "prometheus": {"url": url, "timeoutSeconds": 2, "rateWindow": "4s"},
        "intervalSeconds": 1,
        "promoteWindowSeconds": PROMOTE,
        "demoteWindowSeconds": DEMOTE,
        "cooldownSeconds": COOLDOWN,
        "minStage": 1,
        "maxStage": 3,
        **promotion,
    }
    return h.scaling_stage(NAME, stage, promotion=spec)


def status(api_client: ApiClient, namespace: str, name: str = NAME) -> dict[str, Any]:
    return dict(h.get(api_client, namespace, name).get("status") or {})


def spec_stage(api_client: ApiClient, namespace: str, name: str = NAME) -> int:
    return int(h.get(api_client, namespace, name)["spec"]["stage"])


def history(api_client: ApiClient, namespace: str, name: str = NAME) -> list[dict[str, Any]]:
    return list(status(api_client, namespace, name).get("history") or [])


def seconds(entry: dict[str, Any]) -> float:
    from z2m import promote

    t = promote.parse_time(entry["time"])
    assert t is not None
    return t


def events(
    api_client: ApiClient, namespace: str, name: str = NAME
) -> list[tuple[str | None, str | None]]:
    items = (
        kubernetes.client.CoreV1Api(api_client)
        .list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        .items
    )
    return [(e.reason, e.message) for e in items]


def saw_event(api_client: ApiClient, namespace: str, reason: str, name: str = NAME) -> None:
    """Wait for an Event with `reason`: it is posted after the change it explains."""
    eventually(lambda: reason in [r for r, _ in events(api_client, namespace, name)], timeout=30)


def has_condition(
    api_client: ApiClient, namespace: str, ctype: str, value: str, reason: str, name: str = NAME
) -> dict[str, Any] | None:
    c = h.condition(h.get(api_client, namespace, name), ctype)
    return c if c and c["status"] == value and c["reason"] == reason else None


def test_sustained_load_climbs_one_stage_per_window_and_stops_at_max_stage(
    api_client: ApiClient,
    namespace: str,
    exporter: prom.Exporter,
    prometheus: prom.Prometheus,
    z2m: None,
    operator: Any,
) -> None:
    h.create(api_client, namespace, promoting(1, prometheus.url))
    h.wait_ready(api_client, namespace, NAME, 1)
    eventually(lambda: has_condition(api_client, namespace, "Recommendation", "False", "StageFits"))
    load_began = time.time()
    exporter.set(rps=1000.0, cpu_percent=95.0)
    eventually(lambda: spec_stage(api_client, namespace) == 3, timeout=60)
    eventually(lambda: has_condition(api_client, namespace, "Recommendation", "False", "AtLimit"))
    time.sleep(PROMOTE + COOLDOWN + 1)
    assert spec_stage(api_client, namespace) == 3  # maxStage holds under the same load
    steps = history(api_client, namespace)
    assert [(s["fromStage"], s["toStage"], s["by"]) for s in steps] == [
        (1, 2, "operator"),
        (2, 3, "operator"),
    ]
    # A full window of breach before each step; the rate needs a few seconds to rise first.
    assert seconds(steps[0]) - load_began >= PROMOTE
    assert seconds(steps[1]) - seconds(steps[0]) >= PROMOTE
    assert "bottleneck" in steps[0]["reason"] and "stage 2 adds" in steps[0]["reason"]
    eventually(
        lambda: [r for r, _ in events(api_client, namespace)].count("Promoted") == 2, timeout=30
    )
    saw_event(api_client, namespace, "AtStageLimit")
    decision = status(api_client, namespace)["lastDecision"]
    assert decision["signals"]["rps"] > 800 and decision["bottleneck"] == "traffic"
    h.wait_ready(api_client, namespace, NAME, 3)


def test_falling_load_demotes_one_stage_per_longer_window_and_stops_at_min_stage(
    api_client: ApiClient,
    namespace: str,
    exporter: prom.Exporter,
    prometheus: prom.Prometheus,
    z2m: None,
    operator: Any,
) -> None:
    exporter.set(rps=0.1, cpu_percent=1.0)
    created = time.time()
    h.create(api_client, namespace, promoting(3, prometheus.url))
    eventually(lambda: spec_stage(api_client, namespace) == 1, timeout=90)
    # The loop changes spec.stage first and records the change in status just after.
    steps = eventually(
        lambda: len(history(api_client, namespace)) == 2 and history(api_client, namespace)
    )
    assert [(s["fromStage"], s["toStage"]) for s in steps] == [(3, 2), (2, 1)]
    assert seconds(steps[0]) - created >= DEMOTE
    assert seconds(steps[1]) - seconds(steps[0]) >= DEMOTE
    assert "demote 3 -> 2" in steps[0]["reason"]
    time.sleep(DEMOTE + COOLDOWN + 1)
    assert spec_stage(api_client, namespace) == 1
    assert len(history(api_client, namespace)) == 2


def test_min_stage_holds_an_idle_app(
    api_client: ApiClient,
    namespace: str,
    exporter: prom.Exporter,
    prometheus: prom.Prometheus,
    z2m: None,
    operator: Any,
) -> None:
    exporter.set(rps=0.0, cpu_percent=1.0)
    h.create(api_client, namespace, promoting(2, prometheus.url, minStage=2))
    eventually(
        lambda: has_condition(api_client, namespace, "Recommendation", "False", "AtLimit"),
        timeout=30,
    )
    time.sleep(DEMOTE + COOLDOWN)
    assert spec_stage(api_client, namespace) == 2 and history(api_client, namespace) == []


def test_without_prometheus_nothing_changes_and_decisions_resume_when_it_returns(
    api_client: ApiClient,
    namespace: str,
    exporter: prom.Exporter,
    prometheus: prom.Prometheus,
    z2m: None,
    operator: Any,
) -> None:
    h.create(api_client, namespace, promoting(2, prometheus.url))
    eventually(
        lambda: has_condition(api_client, namespace, "MetricsAvailable", "True", "SignalsRead")
    )
    prometheus.stop()
    # Metrics gone while the app is idle must not read as "idle": no demotion, no promotion.
    cond = eventually(
        lambda: has_condition(
            api_client, namespace, "MetricsAvailable", "False", "PrometheusUnreachable"
        ),
        timeout=30,
    )
    assert prometheus.url in cond["message"]
    assert has_condition(api_client, namespace, "Recommendation", "Unknown", "NoData")
    exporter.set(rps=1000.0, cpu_percent=95.0)
    time.sleep(DEMOTE + PROMOTE + COOLDOWN + 2)
    assert spec_stage(api_client, namespace) == 2 and history(api_client, namespace) == []
    saw_event(api_client, namespace, "MetricsPrometheusUnreachable")
    prometheus.start()
    eventually(
        lambda: has_condition(api_client, namespace, "MetricsAvailable", "True", "SignalsRead"),
        timeout=60,
    )
    eventually(lambda: spec_stage(api_client, namespace) == 3, timeout=60)
    saw_event(api_client, namespace, "MetricsAvailable")


def test_recommend_mode_changes_nothing_until_the_recommendation_is_approved(
    api_client: ApiClient,
    namespace: str,
    exporter: prom.Exporter,
    prometheus: prom.Prometheus,
    z2m: None,
    operator: Any,
) -> None:
    exporter.set(rps=1000.0, cpu_percent=95.0)
    h.create(api_client, namespace, promoting(1, prometheus.url, mode="recommend"))
    cond = eventually(
        lambda: has_condition(
            api_client, namespace, "Recommendation", "True", "PromotionRecommended"
        ),
        timeout=60,
    )
    assert "z2m.dev/approve-stage=2" in cond["message"]
    assert status(api_client, namespace)["recommendedStage"] == 2
    time.sleep(PROMOTE + COOLDOWN + 2)
    assert spec_stage(api_client, namespace) == 1
    saw_event(api_client, namespace, "PromotionRecommended")

    def annotate(value: str) -> None:
        h.custom(api_client).patch_namespaced_custom_object(
            "z2m.dev",
            "v1alpha1",
            namespace,
            "scalingstages",
            NAME,
            {"metadata": {"annotations": {"z2m.dev/approve-stage": value}}},
        )

    def annotations() -> dict[str, str]:
        return dict(h.get(api_client, namespace, NAME)["metadata"].get("annotations") or {})

    annotate("3")  # not what is recommended: removed, and nothing changes
    eventually(lambda: "z2m.dev/approve-stage" not in annotations(), timeout=30)
    saw_event(api_client, namespace, "ApprovalIgnored")
    assert spec_stage(api_client, namespace) == 1
    annotate("2")
    eventually(lambda: spec_stage(api_client, namespace) == 2, timeout=30)
    assert "z2m.dev/approve-stage" not in annotations()
    steps = history(api_client, namespace)
    assert [(s["fromStage"], s["toStage"], s["by"]) for s in steps] == [(1, 2, "user")]
    saw_event(api_client, namespace, "Approved")
    h.wait_ready(api_client, namespace, NAME, 2)


def test_bad_promql_an_unreachable_url_and_a_pause_each_say_why_and_change_nothing(
    api_client: ApiClient,
    namespace: str,
    exporter: prom.Exporter,
    prometheus: prom.Prometheus,
    z2m: None,
    operator: Any,
) -> None:
    exporter.set(rps=1000.0, cpu_percent=95.0)
    bad = promoting(1, prometheus.url, signals={"rps": "sum(rate(app_http_requests_total[1m]"})
    bad["metadata"]["name"] = "bad"
    nowhere = promoting(1, f"http://127.0.0.1:{free_port()}")
    nowhere["metadata"]["name"] = "nowhere"
    paused = promoting(1, prometheus.url)
    paused["metadata"]["name"] = "paused"
    paused["spec"]["paused"] = True
    for body in (bad, nowhere, paused):
        h.create(api_client, namespace, body)
    cond = eventually(
        lambda: has_condition(api_client, namespace, "MetricsAvailable", "False", "BadQuery", "bad")
    )
    assert "rps" in cond["message"] and "parse error" in cond["message"]
    cond = eventually(
        lambda: has_condition(
            api_client, namespace, "MetricsAvailable", "False", "PrometheusUnreachable", "nowhere"
        )
    )
    assert "cannot reach" in cond["message"]
    eventually(
        lambda: has_condition(
            api_client, namespace, "Recommendation", "Unknown", "Paused", "paused"
        )
    )
    time.sleep(PROMOTE + COOLDOWN + 2)
    for name in ("bad", "nowhere", "paused"):
        assert spec_stage(api_client, namespace, name) == 1, name
    saw_event(api_client, namespace, "MetricsBadQuery", "bad")
    # The operator is still healthy: a good object next to the broken ones still climbs.
    h.create(api_client, namespace, promoting(1, prometheus.url))
    eventually(lambda: spec_stage(api_client, namespace) == 2, timeout=60)


def test_demotion_judges_cpu_by_the_app_replicas_actually_running(
    api_client: ApiClient,
    namespace: str,
    exporter: prom.Exporter,
    prometheus: prom.Prometheus,
    z2m: None,
    operator: Any,
) -> None:
    # 15% on each of six app pods is 90% of one pod at stage 2, though stage 3's
    # catalog count (two) would make it 30% and look like a safe demotion.
    exporter.set(rps=0.1, cpu_percent=15.0)
    body = promoting(3, prometheus.url, mode="recommend")
    body["spec"]["overrides"] = {"replicasManagedExternally": True}
    h.create(api_client, namespace, body)
    h.wait_ready(api_client, namespace, NAME, 3)
    apps = kubernetes.client.AppsV1Api(api_client)
    apps.patch_namespaced_deployment_scale(f"{NAME}-app", namespace, {"spec": {"replicas": 6}})
    eventually(
        lambda: apps.read_namespaced_deployment(f"{NAME}-app", namespace).status.replicas == 6
    )

    def judged_on_six() -> dict[str, Any] | None:
        cond = has_condition(api_client, namespace, "Recommendation", "False", "StageFits")
        return cond if cond and "on 6 replica(s) would be 90% on 1" in cond["message"] else None

    eventually(judged_on_six, timeout=60)
    assert status(api_client, namespace)["recommendedStage"] == 3

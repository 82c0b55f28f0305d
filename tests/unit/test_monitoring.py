"""Stage 5's monitoring, built with no cluster: z2m's own Prometheus, or the Prometheus
Operator's objects where the cluster serves them, and which Prometheus promotion asks."""

import json
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from z2m import api, builders, plan, promote

OWNER = builders.Owner(name="shop", uid="uid-1")
Obj = dict[str, Any]


def the_plan(stage: int, **spec: Any) -> plan.Plan:
    return plan.resolve(api.ScalingStageSpec(stage=stage, **spec), name="shop", namespace="ns")


def build(stage: int, *, prometheus_operator: bool = False, **spec: Any) -> list[Obj]:
    return builders.build(the_plan(stage, **spec), OWNER, prometheus_operator=prometheus_operator)


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def names(objs: list[Obj]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objs}


def matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions with In) against a pod's labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "In"
        if labels.get(e["key"]) not in e["values"]:
            return False
    return True


def pod_templates(objs: list[Obj]) -> dict[str, Obj]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]
        for o in objs
        if o["kind"] in ("Deployment", "StatefulSet")
    }


OWN = {
    ("ServiceAccount", "shop-prometheus"),
    ("Role", "shop-prometheus"),
    ("RoleBinding", "shop-prometheus"),
    ("ConfigMap", "shop-prometheus"),
    ("StatefulSet", "shop-prometheus"),
    ("Service", "shop-prometheus"),
}
OPERATORS = {("PodMonitor", "shop-monitoring"), ("PrometheusRule", "shop-monitoring")}


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_below_stage_5_nothing_monitors_either_way(stage: int) -> None:
    for served in (False, True):
        objs = build(stage, prometheus_operator=served)
        assert not names(objs) & (OWN | OPERATORS | {("ConfigMap", "shop-monitoring")})


def test_stage_5_runs_its_own_prometheus_where_the_prometheus_operator_is_not_served() -> None:
    objs = names(build(5))
    assert objs >= OWN | {("ConfigMap", "shop-monitoring")}
    assert not objs & OPERATORS


def test_stage_5_writes_a_pod_monitor_and_a_rule_instead_where_the_operator_is_served() -> None:
    objs = names(build(5, prometheus_operator=True))
    assert objs >= OPERATORS | {("ConfigMap", "shop-monitoring")}
    assert not objs & OWN


def test_the_dashboard_is_a_configmap_for_grafanas_sidecar_either_way() -> None:
    for served in (False, True):
        dashboard = find(build(5, prometheus_operator=served), "ConfigMap", "shop-monitoring")
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert list(dashboard["data"]) == ["dashboard.json"]
        assert json.loads(dashboard["data"]["dashboard.json"])["panels"]


def test_prometheus_may_only_find_pods_and_only_in_its_own_namespace() -> None:
    objs = build(5)
    role = find(objs, "Role", "shop-prometheus")
    assert role["metadata"]["namespace"] == "ns"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    binding = find(objs, "RoleBinding", "shop-prometheus")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "shop-prometheus",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "shop-prometheus", "namespace": "ns"}
    ]
    pod = find(objs, "StatefulSet", "shop-prometheus")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "shop-prometheus"


def _covers(granted: list[Obj], rule: Obj) -> bool:
    return all(
        any(
            group in g["apiGroups"] and resource in g["resources"] and verb in g["verbs"]
            for g in granted
        )
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    )


def test_the_operator_holds_every_rule_it_grants_and_may_write_the_operators_kinds() -> None:
    """The apiserver lets a Role be made only by who holds its rules (no escalation)."""
    docs = list(yaml.safe_load_all((ROOT / "manifests" / "02-rbac.yaml").read_text()))
    held = next(
        d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "z2m-operator"
    )
    objs = build(5)
    for role in ("shop-prometheus", "shop-db"):
        for rule in find(objs, "Role", role)["rules"]:
            assert _covers(held["rules"], rule), (role, rule)
    writes = ["get", "list", "watch", "create", "patch", "update", "delete"]
    for kind in ("podmonitors", "prometheusrules"):
        rule = {"apiGroups": ["monitoring.coreos.com"], "resources": [kind], "verbs": writes}
        assert _covers(held["rules"], rule), kind


def test_discovery_selects_exactly_the_app_and_worker_pods_and_hands_prometheus_their_list() -> (
    None
):
    objs = build(5)
    pod = find(objs, "StatefulSet", "shop-prometheus")["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in pod["containers"]}
    discovery = {e["name"]: e["value"] for e in by_name["discovery"]["env"]}
    assert discovery["SD_SELECTOR"] == (
        "app.kubernetes.io/managed-by=z2m,app.kubernetes.io/part-of=shop,"
        "app.kubernetes.io/component in (app,worker,stream-worker)"
    )
    templates = pod_templates(objs)
    scraped = {
        name
        for name, t in templates.items()
        if t["metadata"]["labels"][builders.COMPONENT] in ("app", "worker", "stream-worker")
    }
    assert scraped == {"shop-app", "shop-stream-worker"}
    for name in scraped:  # each serves /metrics on a port named as the sidecar asks
        ports = {p["name"] for c in templates[name]["spec"]["containers"] for p in c["ports"]}
        assert discovery["SD_PORT_NAME"] in ports
    config = json.loads(find(objs, "ConfigMap", "shop-prometheus")["data"]["prometheus.yml"])
    (job,) = config["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == [discovery["SD_FILE"]]
    # Both containers see the file through the same emptyDir.
    mounts = {
        c: {m["name"]: m["mountPath"] for m in by_name[c]["volumeMounts"]}
        for c in ("prometheus", "discovery")
    }
    assert mounts["prometheus"]["targets"] == mounts["discovery"]["targets"]
    assert discovery["SD_FILE"].startswith(mounts["discovery"]["targets"] + "/")
    assert {"name": "targets", "emptyDir": {}} in pod["volumes"]


def test_prometheus_loads_the_rules_and_sends_alerts_to_its_alertmanager() -> None:
    objs = build(5)
    data = find(objs, "ConfigMap", "shop-prometheus")["data"]
    config = json.loads(data["prometheus.yml"])
    assert config["rule_files"] == [f"{builders.MONITORING_DIR}/alerts.yml"]
    assert json.loads(data["alerts.yml"]) == {"groups": builders.alert_rules(the_plan(5))}
    (target,) = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    pod = find(objs, "StatefulSet", "shop-prometheus")["spec"]["template"]["spec"]
    alertmanager = next(c for c in pod["containers"] if c["name"] == "alertmanager")
    assert target == f"localhost:{alertmanager['ports'][0]['containerPort']}"
    assert f"--config.file={builders.MONITORING_DIR}/alertmanager.yml" in alertmanager["command"]


def test_prometheus_keeps_its_data_on_a_claim_that_outlives_it() -> None:
    sts = find(build(5, monitoring={"storage": {"size": "5Gi"}}), "StatefulSet", "shop-prometheus")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["metadata"]["labels"][builders.RETAINED] == "true"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    prometheus = sts["spec"]["template"]["spec"]["containers"][0]
    assert "--storage.tsdb.retention.time=7d" in prometheus["command"]


def test_a_new_configuration_rolls_the_prometheus_pod() -> None:
    def config_hash(**spec: Any) -> str:
        sts = find(build(5, **spec), "StatefulSet", "shop-prometheus")
        return str(sts["spec"]["template"]["metadata"]["annotations"][builders.CONFIG_HASH])

    assert config_hash() == config_hash()
    other = builders.build(
        plan.resolve(api.ScalingStageSpec(stage=5), name="shop", namespace="elsewhere"), OWNER
    )
    sts = find(other, "StatefulSet", "shop-prometheus")
    assert sts["spec"]["template"]["metadata"]["annotations"][builders.CONFIG_HASH] != config_hash()


def test_the_pod_monitor_selects_the_app_and_worker_pods_by_a_port_they_serve() -> None:
    objs = build(5, prometheus_operator=True)
    monitor = find(objs, "PodMonitor", "shop-monitoring")["spec"]
    templates = pod_templates(objs)
    selected = {
        n for n, t in templates.items() if matches(monitor["selector"], t["metadata"]["labels"])
    }
    assert selected == {"shop-app", "shop-stream-worker"}
    (endpoint,) = monitor["podMetricsEndpoints"]
    for name in selected:
        ports = {p["name"] for c in templates[name]["spec"]["containers"] for p in c["ports"]}
        assert endpoint["port"] in ports
    assert endpoint["path"] == "/metrics"
    assert "namespaceSelector" not in monitor  # its own namespace only


def test_the_prometheus_rule_carries_the_same_alerts_and_the_users_labels_not_over_ours() -> None:
    labels = {"release": "kube-prometheus-stack", builders.PART_OF: "not-shop"}
    objs = build(5, prometheus_operator=True, monitoring={"labels": labels})
    for kind in ("PodMonitor", "PrometheusRule"):
        meta = find(objs, kind, "shop-monitoring")["metadata"]
        assert meta["labels"]["release"] == "kube-prometheus-stack"
        assert meta["labels"][builders.PART_OF] == "shop"
        assert meta["ownerReferences"][0]["uid"] == OWNER.uid
    rule = find(objs, "PrometheusRule", "shop-monitoring")["spec"]
    assert rule == {"groups": builders.alert_rules(the_plan(5))}
    assert {r["alert"] for r in rule["groups"][0]["rules"]} == {
        "Z2MHighLatency",
        "Z2MHighErrorRate",
        "Z2MQueueBacklog",
    }


def test_the_operators_kinds_are_pruned_like_every_other_child() -> None:
    assert set(builders.PROMETHEUS_OPERATOR_KINDS) <= builders.PRUNABLE
    assert {k for _, k in builders.PROMETHEUS_OPERATOR_KINDS} <= set(builders.KIND_ORDER)


# --- which Prometheus the promotion loop asks ------------------------------------------------


def spec(stage: int, **prometheus: Any) -> api.ScalingStageSpec:
    promotion: Obj = {"mode": "auto"}
    if prometheus:
        promotion["prometheus"] = prometheus
    return api.ScalingStageSpec(stage=stage, promotion=promotion)


def test_promotion_asks_the_url_it_is_given_whatever_runs() -> None:
    for stage in (2, 5):
        for served in (False, True):
            given = spec(stage, url="http://prom.example:9090")
            assert promote.prometheus_url(given, "ns", "shop", served) == "http://prom.example:9090"


def test_promotion_without_a_url_asks_z2ms_own_prometheus_at_stage_5() -> None:
    url = promote.prometheus_url(spec(5), "ns", "shop", prometheus_operator=False)
    assert url == "http://shop-prometheus.ns.svc:9090"
    service = find(build(5), "Service", "shop-prometheus")
    assert (service["metadata"]["name"], service["spec"]["ports"][0]["port"]) == (
        "shop-prometheus",
        9090,
    )
    # Settings without a URL (a timeout, a rate window) still leave the choice to z2m.
    assert promote.prometheus_url(spec(5, timeoutSeconds=2), "ns", "shop", False) == url


@pytest.mark.parametrize(
    ("stage", "served"), [(4, False), (2, False), (5, True), (6, True), (7, False)]
)
def test_promotion_without_a_url_knows_no_prometheus_where_z2m_runs_none(
    stage: int, served: bool
) -> None:
    assert promote.prometheus_url(spec(stage), "ns", "shop", served) is None

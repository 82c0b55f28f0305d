"""Stage 6 without sharding: its gateway, services, Redis Cluster and regions, built purely."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from z2m import api, builders, cli, plan, transition
from z2m.builders import gateway

OWNER = builders.Owner(name="shop", uid="uid-1")
Obj = dict[str, Any]
SERVICES = ("users", "feed", "notifications")


def build(stage: int, *, regions: int | None = None, gateway_api: bool = False) -> list[Obj]:
    p = plan.resolve(
        api.ScalingStageSpec(stage=stage), name="shop", namespace="ns", regions=regions
    )
    return builders.build(p, OWNER, gateway_api=gateway_api)


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def names(objs: list[Obj], kind: str) -> set[str]:
    return {o["metadata"]["name"] for o in objs if o["kind"] == kind}


def env(obj: Obj) -> dict[str, str]:
    container = obj["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "<secret>") for e in container["env"]}


# --- services ---------------------------------------------------------------------------------


def test_each_service_is_the_apps_image_in_one_role_with_its_own_service_hpa_and_pdb() -> None:
    objs = build(6)
    app = find(objs, "Deployment", "shop-app")
    for role in SERVICES:
        name = f"shop-service-{role}"
        deployment = find(objs, "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        assert (
            pod["containers"][0]["image"]
            == app["spec"]["template"]["spec"]["containers"][0]["image"]
        )
        assert env(deployment)["SERVICE"] == role and env(deployment)["SERVICE_ROUTES"]
        assert "replicas" not in deployment["spec"]  # the HPA owns the count
        hpa = find(objs, "HorizontalPodAutoscaler", name)
        assert hpa["spec"]["scaleTargetRef"]["name"] == name and hpa["spec"]["minReplicas"] >= 2
        assert find(objs, "Service", name)["spec"]["selector"] == builders.labels(
            "shop", f"service-{role}"
        )
        assert find(objs, "PodDisruptionBudget", name)


def test_the_app_and_services_reach_redis_cluster_and_no_sentinel() -> None:
    objs = build(6)
    for name in ("shop-app", "shop-service-feed"):
        wiring = env(find(objs, "Deployment", name))
        nodes = wiring["REDIS_CLUSTER_NODES"].split(",")
        assert len(nodes) == 6 and nodes[0] == "shop-redis-cl-0.shop-redis-cl.ns.svc:6379"
        assert "REDIS_SENTINELS" not in wiring and "REDIS_URL" not in wiring


# --- Redis Cluster ----------------------------------------------------------------------------


def test_redis_cluster_is_six_pods_started_together_and_replaces_the_sentinel_pair() -> None:
    objs = build(6)
    sts = find(objs, "StatefulSet", "shop-redis-cl")
    assert sts["spec"]["replicas"] == 6 and sts["spec"]["podManagementPolicy"] == "Parallel"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "/etc/z2m/redis-cluster.sh"]
    assert env(sts)["CLUSTER_REPLICAS"] == "1" and len(env(sts)["CLUSTER_NODES"].split()) == 6
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    assert find(objs, "Service", "shop-redis-cl")["spec"]["clusterIP"] == "None"
    assert "shop-redis" not in names(objs, "StatefulSet")
    assert "shop-redis-sentinel" not in names(objs, "Deployment")


def test_the_cluster_script_is_shell_that_forms_the_cluster_only_when_no_node_is_joined() -> None:
    text = builders.script("redis-cluster.sh")
    assert "--cluster create" in text and "--cluster-replicas" in text
    assert 'if [ "$joined" = 1 ]' in text
    subprocess.run(["sh", "-n", "-c", text], check=True)


# --- regions ----------------------------------------------------------------------------------


def regional_keys(obj: Obj) -> list[str]:
    spec = obj["spec"]["template"]["spec"]["topologySpreadConstraints"]
    return [c["topologyKey"] for c in spec if c["whenUnsatisfiable"] == "DoNotSchedule"]


def test_with_two_regions_app_services_replicas_and_cache_are_split_between_them() -> None:
    objs = build(6, regions=2)
    spread = [
        ("Deployment", "shop-app"),
        *(("Deployment", f"shop-service-{r}") for r in SERVICES),
        ("StatefulSet", "shop-db-replica"),
        ("StatefulSet", "shop-redis-cl"),
    ]
    for kind, name in spread:
        assert regional_keys(find(objs, kind, name)) == [builders.REGION], name


def test_the_primary_stays_in_one_region_and_one_region_spreads_nothing() -> None:
    objs = build(6, regions=2)
    assert regional_keys(find(objs, "StatefulSet", "shop-db")) == []
    assert regional_keys(find(objs, "StatefulSet", "shop-db-standby")) == []
    for obj in build(6, regions=1) + build(5, regions=2):
        if obj["kind"] in ("Deployment", "StatefulSet"):
            assert regional_keys(obj) == [], obj["metadata"]["name"]


# --- the gateway ------------------------------------------------------------------------------


def test_without_the_gateway_api_z2m_runs_an_nginx_gateway_the_edge_forwards_to() -> None:
    objs = build(6)
    deployment = find(objs, "Deployment", "shop-gateway")
    assert (
        deployment["spec"]["template"]["spec"]["containers"][0]["image"] == api.DEFAULT_NGINX_IMAGE
    )
    assert gateway.CONFIG_HASH in deployment["spec"]["template"]["metadata"]["annotations"]
    assert env(find(objs, "Deployment", "shop-edge"))["UPSTREAM"] == "shop-gateway:80"
    assert not {"Gateway", "HTTPRoute"} & {o["kind"] for o in objs}


def test_the_nginx_gateway_routes_each_service_limits_rates_and_checks_sessions() -> None:
    conf = find(build(6), "ConfigMap", "shop-gateway")["data"]["nginx.conf"]
    for route, role in (("/api/users", "users"), ("/api/posts", "feed")):
        block = conf.split(f"location {route} {{")[1].split("}")[0]
        assert f"proxy_pass http://{role};" in block and "limit_req zone=per_client" in block
        assert "auth_request" not in block
    notifications = conf.split("location /api/notifications {")[1].split("}")[0]
    assert "auth_request /_z2m_auth;" in notifications
    assert "proxy_pass http://users/api/me;" in conf
    assert "limit_req_status 429;" in conf and "proxy_pass http://app;" in conf


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs Debian's nginx")
def test_nginx_accepts_the_gateway_configuration(tmp_path: Path) -> None:
    conf = find(build(6), "ConfigMap", "shop-gateway")["data"]["nginx.conf"]
    # Resolvable upstreams and a writable pid: only the names differ from the pod's file.
    conf = re.sub(r"server shop-[a-z-]+:80;", "server 127.0.0.1:9;", conf)
    conf = conf.replace("/tmp/", f"{tmp_path}/")
    (tmp_path / "nginx.conf").write_text(conf)
    done = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_where_the_gateway_api_is_served_it_writes_a_gateway_and_one_route_per_service() -> None:
    objs = build(6, gateway_api=True)
    gw = find(objs, "Gateway", "shop-gateway")
    assert gw["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert gw["spec"]["gatewayClassName"] == "z2m"
    route = find(objs, "HTTPRoute", "shop-api")
    backends = [r["backendRefs"][0]["name"] for r in route["spec"]["rules"]]
    assert backends == [*(f"shop-service-{r}" for r in SERVICES), "shop-app"]
    assert route["spec"]["parentRefs"] == [{"name": "shop-gateway"}]
    assert "shop-gateway" not in names(objs, "Deployment")
    assert env(find(objs, "Deployment", "shop-edge"))["UPSTREAM"] == "shop-app:80"
    assert set(builders.GATEWAY_API_KINDS) <= builders.PRUNABLE


# --- the transition ---------------------------------------------------------------------------


def steps(before: int, after: int) -> dict[str, set[tuple[str, str, str, frozenset[str]]]]:
    return {
        phase.name: {
            (s.action, s.obj["kind"], s.obj["metadata"]["name"], frozenset(s.gates))
            for s in phase.steps
        }
        for phase in transition.phases(build(before), build(after), OWNER.uid)
    }


STAGE6_ONLY = {
    ("ConfigMap", "shop-gateway"),
    ("Service", "shop-gateway"),
    ("Deployment", "shop-gateway"),
    ("PodDisruptionBudget", "shop-gateway"),
    ("StatefulSet", "shop-redis-cl"),
    ("Service", "shop-redis-cl"),
    ("PodDisruptionBudget", "shop-redis-cl"),
    *((kind, f"shop-db-shard-{k}") for k in range(2) for kind in ("StatefulSet", "Service")),
    *(("ConfigMap", f"shop-pg-shard-{k}-{dcs}") for k in range(2) for dcs in ("config", "leader")),
    *(
        (kind, f"shop-service-{r}")
        for r in SERVICES
        for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget")
    ),
}
STAGE5_ONLY = {
    ("StatefulSet", "shop-redis"),
    ("Service", "shop-redis"),
    ("PodDisruptionBudget", "shop-redis"),
    ("Deployment", "shop-redis-sentinel"),
    ("Service", "shop-redis-sentinel"),
    ("PodDisruptionBudget", "shop-redis-sentinel"),
}


def keys(objs: list[Obj]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objs}


def test_5_to_6_adds_exactly_stage_6s_pieces_and_removes_exactly_the_sentinel_pair() -> None:
    five, six = keys(build(5)), keys(build(6))
    assert six - five == STAGE6_ONLY and five - six == STAGE5_ONLY


def test_5_to_6_retires_the_pair_once_rewired_and_waits_on_no_redis_handover() -> None:
    plan_ = steps(5, 6)
    deleted = {(kind, name) for action, kind, name, _ in plan_["retire"] if action == "delete"}
    assert deleted == STAGE5_ONLY
    assert all(gates == {"rewired"} for *_, gates in plan_["retire"])
    rewired = {(kind, name) for _, kind, name, _ in plan_["rewire"]}
    assert ("Deployment", "shop-gateway") in rewired and (
        "Deployment",
        "shop-service-feed",
    ) in rewired
    # No Redis hand-over; only the edge waits, for the gateway and all behind it.
    gated = {name: gates for _, _, name, gates in plan_["rewire"] if gates}
    assert gated == {"shop-edge": {"gateway-ready"}}


def test_6_to_5_removes_exactly_stage_6s_pieces_after_rewiring_and_never_a_claim() -> None:
    plan_ = steps(6, 5)
    deleted = {(kind, name) for action, kind, name, _ in plan_["retire"] if action == "delete"}
    assert deleted == STAGE6_ONLY
    assert all("rewired" in gates for *_, gates in plan_["retire"])
    assert not any(kind == "PersistentVolumeClaim" for _, kind, _, _ in plan_["retire"])


def test_the_plan_says_the_cache_moves_by_warming_up_both_ways() -> None:
    up = cli.plan_lines(build(5), build(6))
    down = cli.plan_lines(build(6), build(5))
    assert up[-1] == down[-1] == f"note: {transition.CACHE_WARMUP}"
    assert not any("warming" in line for line in cli.plan_lines(build(4), build(5)))


# --- the API ----------------------------------------------------------------------------------


def test_the_crd_refuses_max_stage_6_in_auto_mode_without_the_opt_in() -> None:
    rules = api.Promotion.model_json_schema()["x-kubernetes-validations"]
    rule = next(r for r in rules if "allowStage6" in r["rule"])
    assert rule["fieldPath"] == ".allowStage6" and "explicit opt-in" in rule["message"]
    assert api.Promotion().allow_stage6 is False


def test_at_6_to_5_the_edge_moves_back_to_the_app_before_the_gateway_may_go() -> None:
    plan_ = steps(6, 5)
    rewired = {(kind, name) for _, kind, name, _ in plan_["rewire"]}
    assert ("Deployment", "shop-edge") in rewired
    gone = {name for action, kind, name, gates in plan_["retire"] if "rewired" in gates}
    assert "shop-gateway" in gone
    assert transition.is_consumer("edge") and transition.is_consumer("gateway")


def test_z2m_render_shows_the_gateway_api_shape_when_asked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    shop = Path(__file__).parents[2] / "examples" / "shop.yaml"
    assert cli.main(["render", "-f", str(shop), "--stage", "6", "--gateway-api"]) == 0
    out = capsys.readouterr().out
    assert "kind: HTTPRoute" in out and "kind: Gateway\n" in out
    assert cli.main(["render", "-f", str(shop), "--stage", "6"]) == 0
    assert "kind: HTTPRoute" not in capsys.readouterr().out


def test_at_stage_6_the_services_are_scraped_and_counted_as_the_apps_traffic() -> None:
    from z2m import signals
    from z2m.builders import monitoring

    six = plan.resolve(api.ScalingStageSpec(stage=6), name="shop", namespace="ns")
    five = plan.resolve(api.ScalingStageSpec(stage=5), name="shop", namespace="ns")
    workers = ("app", "worker", "stream-worker")
    assert monitoring.scraped(six) == (*workers, *(f"service-{r}" for r in SERVICES))
    assert monitoring.scraped(five) == workers
    pods = re.search(r'pod=~"\$name-([^"]+)"', signals.DEFAULT_QUERIES["rps"])
    assert pods is not None
    for pod, counted in (
        ("service-feed-7d9f8c6b5-x2bq4", True),
        ("app-7d9f8c6b5-x2bq4", True),
        ("worker-7d9f8c6b5-x2bq4", False),
        ("gateway-7d9f8c6b5-x2bq4", False),
    ):
        assert bool(re.fullmatch(pods.group(1), pod)) is counted, pod

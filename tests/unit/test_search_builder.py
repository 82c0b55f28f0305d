"""OpenSearch is opt-in at the stages that offer search: its objects and the app's wiring."""

from typing import Any

from z2m import api, builders, catalog, crd, plan, transition

OWNER = builders.Owner(name="shop", uid="uid-1")
ON = {"search": {"enabled": True}}


def build(stage: int, **spec: Any) -> list[dict[str, Any]]:
    p = plan.resolve(api.ScalingStageSpec(stage=stage, **spec), name="shop", namespace="ns")
    return builders.build(p, OWNER)


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next((o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name), None)


def app_env(objs: list[dict[str, Any]]) -> dict[str, str]:
    app = find(objs, "Deployment", "shop-app")
    assert app is not None
    container = app["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "<secret>") for e in container["env"]}


def test_stages_5_and_6_offer_search() -> None:
    offered = [s.number for s in catalog.STAGES if s.topology and s.topology.search]
    assert offered == [5, 6]


def test_search_is_off_by_default_even_at_stage_5() -> None:
    objs = build(5)
    assert find(objs, "StatefulSet", "shop-search") is None
    assert "SEARCH_URL" not in app_env(objs)


def test_enabled_below_stage_5_runs_nothing_and_the_app_searches_postgres() -> None:
    for stage in (1, 2, 3, 4):
        objs = build(stage, **ON)
        assert find(objs, "StatefulSet", "shop-search") is None
        assert "SEARCH_URL" not in app_env(objs)


def test_enabled_at_stage_5_runs_one_node_on_a_kept_volume_and_tells_the_app() -> None:
    objs = build(5, **ON)
    sts = find(objs, "StatefulSet", "shop-search")
    assert sts is not None
    assert sts["spec"]["replicas"] == 1
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["labels"][builders.RETAINED] == "true"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 1000
    (container,) = pod["containers"]
    assert container["image"] == api.DEFAULT_OPENSEARCH_IMAGE
    assert container["readinessProbe"]["httpGet"]["port"] == builders.SEARCH_PORT
    assert {"name": "data", "mountPath": "/usr/share/opensearch/data"} in container["volumeMounts"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["discovery.type"] == "single-node"
    assert env["OPENSEARCH_JAVA_OPTS"] == "-Xms256m -Xmx256m"
    service = find(objs, "Service", "shop-search")
    assert service is not None
    assert [p["port"] for p in service["spec"]["ports"]] == [9200]
    assert app_env(objs)["SEARCH_URL"] == "http://shop-search:9200"


def test_the_official_image_and_its_size_come_from_the_spec() -> None:
    spec = {
        "search": {
            "enabled": True,
            "image": "opensearchproject/opensearch:2.19.4",
            "heap": "512m",
            "storage": {"size": "5Gi"},
        }
    }
    sts = find(build(5, **spec), "StatefulSet", "shop-search")
    assert sts is not None
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "opensearchproject/opensearch:2.19.4"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["OPENSEARCH_JAVA_OPTS"] == "-Xms512m -Xmx512m"
    assert env["DISABLE_SECURITY_PLUGIN"] == "true"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"


def test_plan_status_says_whether_search_runs() -> None:
    def status(stage: int, **spec: Any) -> bool:
        p = plan.resolve(api.ScalingStageSpec(stage=stage, **spec), name="shop", namespace="ns")
        return p.status().search

    assert status(5, **ON) and not status(5) and not status(4, **ON)


def test_leaving_stage_5_deletes_opensearch_only_after_the_app_stops_using_it() -> None:
    phases = transition.phases(build(5, **ON), build(4, **ON), OWNER.uid)
    retire = {
        (s.action, s.obj["kind"], s.obj["metadata"]["name"]): s.gates
        for phase in phases
        if phase.name == "retire"
        for s in phase.steps
    }
    assert retire[("delete", "StatefulSet", "shop-search")] == {"rewired"}
    assert retire[("delete", "Service", "shop-search")] == {"rewired"}
    rewire = [s.obj["metadata"]["name"] for p in phases if p.name == "rewire" for s in p.steps]
    assert "shop-app" in rewire


def test_the_crd_offers_search_switched_off_with_our_image() -> None:
    schema = crd.definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    search = schema["properties"]["spec"]["properties"]["search"]["properties"]
    assert search["enabled"]["default"] is False
    assert search["image"]["default"] == api.DEFAULT_OPENSEARCH_IMAGE

"""The sample app's stage-6 settings: one service's routes, and Redis Cluster. Pure, no I/O."""

from __future__ import annotations

import pytest

from sample_app.config import ConfigError, parse_env
from sample_app.web import create_app
from z2m import api, builders, plan


def paths(env: dict[str, str]) -> set[str]:
    app = create_app(parse_env(env))
    return {getattr(route, "path", "") for route in app.routes}


def test_without_service_the_app_serves_every_route_as_before() -> None:
    served = paths({})
    assert {"/", "/static", "/api/users", "/api/posts", "/api/notifications"} <= served


def test_a_service_serves_only_its_routes_and_health_and_metrics() -> None:
    served = paths({"SERVICE": "users", "SERVICE_ROUTES": "/api/users,/api/me"})
    assert served == {
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/users",
        "/api/me",
        "/api/users/{user_id:int}/follow",
        "/api/users/{user_id:int}/posts",
    }


def test_every_stage_6_route_is_served_by_exactly_one_service_and_the_app_keeps_the_rest() -> None:
    p = plan.resolve(api.ScalingStageSpec(stage=6), name="shop", namespace="ns")
    everything = paths({}) - {"/healthz", "/readyz", "/metrics"}
    owners: dict[str, list[str]] = {path: [] for path in everything}
    for obj in builders.build(p, builders.Owner("shop", "u")):
        if obj["kind"] != "Deployment" or not obj["metadata"]["name"].startswith("shop-service-"):
            continue
        env = {
            e["name"]: e["value"]
            for e in obj["spec"]["template"]["spec"]["containers"][0]["env"]
            if "value" in e
        }
        for path in paths({"SERVICE": env["SERVICE"], "SERVICE_ROUTES": env["SERVICE_ROUTES"]}):
            if path in owners:
                owners[path].append(env["SERVICE"])
    assert all(len(o) <= 1 for o in owners.values()), owners
    # The page, static files and search (the catalog gives no service the search route).
    assert {path for path, o in owners.items() if not o} == {"/", "/static", "/api/search"}


def test_redis_cluster_nodes_are_parsed_with_the_password() -> None:
    config = parse_env({"REDIS_CLUSTER_NODES": "a.svc:6379, b.svc:6379", "REDIS_PASSWORD": "pw"})
    assert config.redis_cluster_nodes == (("a.svc", 6379), ("b.svc", 6379))
    assert config.redis_password == "pw" and "cache(cluster=2)" in config.stage_features


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"REDIS_CLUSTER_NODES": "a:6379", "REDIS_URL": "redis://r:6379/0"}, "REDIS_CLUSTER_NODES"),
        ({"REDIS_CLUSTER_NODES": "a"}, "REDIS_CLUSTER_NODES"),
        ({"SERVICE": "feed"}, "SERVICE_ROUTES"),
        ({"SERVICE_ROUTES": "/api/posts"}, "SERVICE_ROUTES"),
        ({"SERVICE": "Feed!", "SERVICE_ROUTES": "/api/posts"}, "SERVICE"),
        ({"SERVICE": "feed", "SERVICE_ROUTES": "/"}, "SERVICE_ROUTES"),
    ],
)
def test_a_bad_stage_6_setting_is_refused_naming_the_variable(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_env(env)
    assert refused.value.variable == variable

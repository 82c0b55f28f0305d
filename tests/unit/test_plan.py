"""The plan lays overrides over the catalog's stage defaults, and refuses contradictions."""

import pytest

from z2m import api, catalog, plan


def resolve(**spec: object) -> plan.Plan:
    return plan.resolve(api.ScalingStageSpec.model_validate(spec), name="shop", namespace="ns")


@pytest.mark.parametrize("stage", [s.number for s in catalog.STAGES if s.implemented])
def test_each_stage_takes_its_numbers_from_the_catalog(stage: int) -> None:
    p = resolve(stage=stage)
    entry = catalog.topology(stage)
    assert p.read_replicas == entry.read_replicas
    assert p.redis is entry.redis and p.queue is entry.queue
    assert p.app_autoscaling == entry.app_autoscaling


def test_the_seed_numbers_are_in_the_catalog() -> None:
    assert [catalog.topology(n).app_replicas for n in range(1, 5)] == [1, 1, 2, 4]
    assert [catalog.topology(n).read_replicas for n in range(1, 6)] == [0, 0, 1, 2, 3]
    five = catalog.topology(5).app_autoscaling
    assert five is not None and (five.min_replicas, five.max_replicas, five.cpu_percent) == (
        4,
        12,
        70,
    )


def test_stage_5_hands_app_replicas_to_the_hpa() -> None:
    assert resolve(stage=5).app_replicas is None


def test_replicas_managed_externally_leaves_replicas_alone() -> None:
    p = resolve(stage=3, overrides={"replicasManagedExternally": True})
    assert p.app_replicas is None and p.app_autoscaling is None


def test_overrides_change_only_what_they_name() -> None:
    p = resolve(stage=4, overrides={"readReplicas": 1, "redis": False})
    assert (p.read_replicas, p.redis, p.queue, p.app_replicas) == (1, False, True, 4)


def test_app_replicas_override_replaces_the_stage_5_hpa() -> None:
    p = resolve(stage=5, overrides={"appReplicas": 6})
    assert p.app_replicas == 6 and p.app_autoscaling is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"stage": 1, "overrides": {"appReplicas": 2}}, "one app replica"),
        ({"stage": 1, "overrides": {"readReplicas": 1}}, "no separate database"),
        ({"stage": 2, "overrides": {"workers": 3}}, "workers need the queue"),
        (
            {
                "stage": 3,
                "overrides": {
                    "appReplicas": 3,
                    "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
                },
            },
            "not both",
        ),
    ],
)
def test_contradictions_are_refused_with_a_reason(spec: dict[str, object], message: str) -> None:
    with pytest.raises(plan.PlanError, match=message):
        resolve(**spec)


def test_stage_6_resolves_to_services_a_gateway_and_redis_cluster_on_stage_5s_database() -> None:
    p = resolve(stage=6)
    assert p.gateway and [m.role for m in p.microservices] == ["users", "feed", "notifications"]
    assert p.redis_cluster is not None and not p.sentinel
    assert (p.failover_standbys, p.read_replicas) == (1, 3)
    shown = p.status()
    assert shown.services == ["users", "feed", "notifications"]
    assert (shown.sharded_database, shown.shards) == (True, 2)
    assert (resolve(stage=5).shards, resolve(stage=5).status().shards) == (0, None)


def test_stage_6_spreads_by_region_only_where_the_nodes_are_in_two_or_more() -> None:
    spec = api.ScalingStageSpec(stage=6)
    assert plan.resolve(spec, name="s", namespace="n", regions=2).region_spread
    assert not plan.resolve(spec, name="s", namespace="n", regions=1).region_spread
    assert not plan.resolve(spec, name="s", namespace="n").region_spread
    five = api.ScalingStageSpec(stage=5)
    assert not plan.resolve(five, name="s", namespace="n", regions=2).region_spread


def test_stage_7_says_it_is_a_plan_only() -> None:
    with pytest.raises(plan.NotBuiltError, match="plan only") as refused:
        resolve(stage=7)
    assert refused.value.stage.plan_only


def test_stage_5_has_a_failover_standby_and_synchronous_mode_is_a_choice() -> None:
    assert resolve(stage=5).failover_standbys == 1
    assert resolve(stage=5).synchronous is False
    assert resolve(stage=5, database={"synchronous": True}).synchronous is True
    assert resolve(stage=5).status().database_failover == "patroni"
    # Below stage 5 there is no standby to wait for: the choice takes effect at stage 5.
    four = resolve(stage=4, database={"synchronous": True})
    assert (four.failover_standbys, four.synchronous) == (0, False)
    assert four.status().database_failover == "none"


def test_unknown_fields_are_refused_by_the_models() -> None:
    with pytest.raises(ValueError, match="extra"):
        api.ScalingStageSpec.model_validate({"stage": 1, "replicaz": 3})

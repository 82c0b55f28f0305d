"""The catalog says what z2m builds at each stage, and claims nothing for the stages it does not."""

import pytest

from z2m import catalog, cli


def test_stages_1_to_6_are_built_and_7_is_a_plan_only() -> None:
    built = [s.number for s in catalog.STAGES if s.topology is not None]
    planned = [s.number for s in catalog.STAGES if s.blueprint is not None]
    assert (built, planned, catalog.MAX_IMPLEMENTED) == ([1, 2, 3, 4, 5, 6], [7], 6)


def test_stage_6_provides_shards_and_says_the_rows_move_in_not_yet_tested_on_real_pods() -> None:
    six = catalog.topology(6)
    assert six.sharded_database and six.database_failover and six.read_replicas == 3
    adds = " ".join(catalog.stage(6).adds)
    assert "the operator moves the rows into them online" in adds
    assert "not yet with real pods" in adds
    assert "shards by user ID" in catalog.stage(6).title


def test_stage_6_splits_the_app_into_three_autoscaled_services_behind_a_gateway() -> None:
    six = catalog.topology(6)
    assert six.gateway and [m.role for m in six.microservices] == [
        "users",
        "feed",
        "notifications",
    ]
    assert all(m.autoscaling.min_replicas >= 2 for m in six.microservices)
    routes = [r for m in six.microservices for r in m.routes]
    assert len(routes) == len(set(routes))


def test_stage_6_runs_redis_cluster_of_3_primaries_and_3_replicas_over_regions() -> None:
    six = catalog.topology(6)
    assert six.redis_cluster == catalog.RedisCluster(primaries=3, replicas_per_primary=1)
    assert six.redis_cluster.nodes == 6 and six.regions


def test_stages_1_to_5_have_none_of_stage_6s_pieces() -> None:
    for number in range(1, 6):
        t = catalog.topology(number)
        assert (t.gateway, t.microservices, t.redis_cluster, t.regions) == (False, (), None, False)


def test_a_stage_z2m_does_not_build_has_no_topology_to_look_up() -> None:
    with pytest.raises(KeyError, match="does not build"):
        catalog.topology(7)


def test_there_is_no_stage_8() -> None:
    with pytest.raises(KeyError, match="no stage 8"):
        catalog.stage(8)


def test_stage_7_keeps_the_seeds_open_ended_figures() -> None:
    seven = catalog.stage(7)
    assert (str(seven.rps), str(seven.monthly_cost_usd)) == ("200K-1M+", "500K-5M+")
    assert str(catalog.stage(6).monthly_cost_usd) == "50K-150K"


def test_stage_7_plans_every_piece_the_seed_adds_and_what_the_user_brings_for_each() -> None:
    blueprint = catalog.stage(7).blueprint
    assert blueprint is not None
    names = {a.name for a in blueprint.additions}
    for piece in ("multi-CDN", "edge computing", "specialised databases", "stream processing"):
        assert piece in names
    assert "3+ regions" in names
    assert all(a.user_brings and a.cost for a in blueprint.additions)
    assert blueprint.why_not_here


def test_the_diagram_of_a_stage_not_built_draws_no_component() -> None:
    drawn = cli.diagram(7)
    for piece in ("App", "PostgreSQL", "Redis", "RabbitMQ", "Users"):
        assert piece not in drawn
    assert "plan only" in drawn


def test_the_diagram_of_stage_6_draws_what_is_built_and_says_when_the_rows_move() -> None:
    drawn = cli.diagram(6)
    for piece in ("API gateway", "users service", "feed service", "notifications service"):
        assert piece in drawn
    assert "Redis Cluster: 3 primaries + 3 replicas" in drawn and "Sentinel" not in drawn
    assert "PostgreSQL shards x2 by user ID" in drawn and "the rows move in at 5 -> 6" in drawn
    assert drawn.count("PostgreSQL primary") == 1


def test_the_docs_table_gives_stage_7_no_pieces_and_stage_6_what_it_runs() -> None:
    rows = {line[:3]: line for line in cli.docs().splitlines() if line[:3] in ("| 6", "| 7")}
    assert "plan only" in rows["| 7"]
    assert "Redis" not in rows["| 7"] and "RabbitMQ" not in rows["| 7"] and "HPA" not in rows["| 7"]
    assert "3 services (HPA) behind a gateway" in rows["| 6"]
    assert "Redis Cluster (6 nodes)" in rows["| 6"]

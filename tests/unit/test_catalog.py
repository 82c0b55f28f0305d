"""The catalog says what z2m builds at each stage, and claims nothing for the stages it does not."""

import pytest

from z2m import catalog, cli


def test_stages_1_to_5_are_built_6_is_not_yet_and_7_is_a_plan_only() -> None:
    built = [s.number for s in catalog.STAGES if s.topology is not None]
    planned = [s.number for s in catalog.STAGES if s.blueprint is not None]
    assert (built, planned, catalog.MAX_IMPLEMENTED) == ([1, 2, 3, 4, 5], [7], 5)
    six = catalog.stage(6)
    assert (six.implemented, six.plan_only) == (False, False)


@pytest.mark.parametrize("stage", [6, 7])
def test_a_stage_z2m_does_not_build_has_no_topology_to_look_up(stage: int) -> None:
    with pytest.raises(KeyError, match="does not build"):
        catalog.topology(stage)


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


@pytest.mark.parametrize("stage", [6, 7])
def test_the_diagram_of_a_stage_not_built_draws_no_component(stage: int) -> None:
    drawn = cli.diagram(stage)
    for piece in ("App", "PostgreSQL", "Redis", "RabbitMQ", "Users"):
        assert piece not in drawn
    assert ("plan only" if stage == 7 else "not built yet") in drawn


def test_the_docs_table_gives_stages_6_and_7_no_pieces_of_stage_5() -> None:
    rows = {line[:3]: line for line in cli.docs().splitlines() if line[:3] in ("| 6", "| 7")}
    assert "not built yet" in rows["| 6"] and "plan only" in rows["| 7"]
    for row in rows.values():
        assert "Redis" not in row and "RabbitMQ" not in row and "HPA" not in row

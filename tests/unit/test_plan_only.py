"""Stage 7 is a plan only: `z2m plan --to 7` and the status say what it adds and needs."""

from typing import Any

import pytest

from z2m import api, catalog, cli, plan, status

SEVEN = catalog.stage(7)
NOW = "2025-01-01T00:00:00Z"


def test_the_plan_text_says_nothing_is_built_and_which_stage_keeps_running() -> None:
    lines = cli.blueprint_lines(SEVEN, running=3)
    assert "plan only" in lines[0] and "stage 3 keeps running" in lines[0]
    assert "$500K-5M+/month" in lines[1] and "$50K-150K/month" in lines[1]


def test_the_plan_text_lists_every_addition_its_cost_and_what_the_user_brings() -> None:
    text = "\n".join(cli.blueprint_lines(SEVEN, running=None))
    assert SEVEN.blueprint is not None
    for a in SEVEN.blueprint.additions:
        assert f"+ {a.name}: {a.what}" in text
        assert a.cost in text
        assert all(need in text for need in a.user_brings)
    assert all(why in text for why in SEVEN.blueprint.why_not_here)


def test_plan_to_7_needs_no_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "--to", "7"]) == 0
    assert "plan only" in capsys.readouterr().out


def test_plan_to_6_needs_the_file_like_every_built_stage() -> None:
    with pytest.raises(SystemExit, match="needs -f FILE"):
        cli.main(["plan", "--to", "6"])


def test_plan_to_a_built_stage_still_needs_the_file() -> None:
    with pytest.raises(SystemExit, match="needs -f FILE"):
        cli.main(["plan", "--to", "3"])


def plan_only_status(previous: dict[str, Any]) -> dict[str, Any]:
    return status.build(previous, status.Observation(4, None, plan_only=SEVEN), NOW)


def conditions(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in st["conditions"]}


def test_the_condition_says_plan_only_not_ready_and_keeps_the_running_stage() -> None:
    st = plan_only_status({"stage": 3})
    ready = conditions(st)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "PlanOnly")
    assert "stage 3 keeps running" in ready["message"]
    assert conditions(st)["Degraded"]["status"] == "False"
    assert (st["stage"], st["ready"], st["observedGeneration"]) == (3, "False", 4)
    assert "plan" not in st


def test_without_a_running_stage_the_condition_says_nothing_runs_yet() -> None:
    assert "nothing runs yet" in conditions(plan_only_status({}))["Ready"]["message"]


def test_the_status_carries_the_plan_additions_costs_and_what_the_user_brings() -> None:
    shown = plan_only_status({"stage": 5})["planOnly"]
    assert SEVEN.blueprint is not None
    assert (shown["stage"], shown["monthlyCost"]) == (7, "$500K-5M+/month")
    assert [a["name"] for a in shown["additions"]] == [a.name for a in SEVEN.blueprint.additions]
    assert all(a["userBrings"] for a in shown["additions"])
    assert shown["whyNotHere"] == list(SEVEN.blueprint.why_not_here)


def test_leaving_plan_only_for_a_built_stage_drops_the_plan_from_status() -> None:
    before = plan_only_status({"stage": 3})
    two = plan.resolve(api.ScalingStageSpec(stage=2), name="shop", namespace="ns")
    after = status.build(before, status.Observation(5, two), NOW)
    assert "planOnly" not in after and after["stage"] == 2
    assert conditions(after)["Ready"]["reason"] == "StageReady"

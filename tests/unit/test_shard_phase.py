"""The shard move as a phase of a stage change: which move, where, gated how, reported how."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from z2m import api, builders, plan, shard_phase, status, transition
from z2m.builders import postgres

OWNER = builders.Owner(name="shop", uid="uid-1")
URLS = {"source": "postgresql://s/app", "shards": ["postgresql://a/app", "postgresql://b/app"]}


def resolve(stage: int, **spec: Any) -> plan.Plan:
    return plan.resolve(api.ScalingStageSpec(stage=stage, **spec), name="shop", namespace="ns")


def env(p: plan.Plan) -> dict[str, str]:
    app = next(
        o
        for o in builders.build(p, OWNER)
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "shop-app"
    )
    return {
        e["name"]: e.get("value", "")
        for e in app["spec"]["template"]["spec"]["containers"][0]["env"]
    }


# --- which move -----------------------------------------------------------------------------


def test_5_to_6_splits_6_to_5_merges_and_a_recorded_layout_that_matches_needs_no_move() -> None:
    assert shard_phase.needed(resolve(6), "single") == "split"
    assert shard_phase.needed(resolve(5), "shards") == "merge"
    assert shard_phase.needed(resolve(1), "shards") == "merge"
    assert shard_phase.needed(resolve(6), "shards") is None
    assert shard_phase.needed(resolve(5), "single") is None


def test_the_layout_is_one_database_until_a_cutover_records_the_shards() -> None:
    assert shard_phase.recorded(None) == "single"
    assert shard_phase.recorded({"stage": 6}) == "single"
    assert shard_phase.recorded({"databaseLayout": "shards"}) == "shards"


def test_a_split_reads_stage_5s_database_and_a_merge_writes_it() -> None:
    urls = shard_phase.Urls("postgresql://one/app", ("postgresql://a/app", "postgresql://b/app"))
    assert urls.endpoints("split") == (["postgresql://one/app"], list(urls.shards))
    assert urls.endpoints("merge") == (list(urls.shards), ["postgresql://one/app"])
    merge = shard_phase.move("merge", 2)
    assert (merge.sources, merge.targets, merge.name) == (2, 1, "merge")


def test_move_urls_win_and_otherwise_the_services_are_reached_as_the_superuser() -> None:
    given = shard_phase.urls(resolve(6, database={"moveUrls": URLS}), None)
    assert given.single == URLS["source"] and list(given.shards) == URLS["shards"]
    inside = shard_phase.urls(resolve(6), "pw")
    assert inside.single == "postgresql://postgres:pw@shop-db.ns.svc:5432/app"
    assert inside.shards[1] == "postgresql://postgres:pw@shop-db-shard-1.ns.svc:5432/app"


def test_move_urls_with_another_number_of_shards_are_refused_with_why() -> None:
    with pytest.raises(ValueError, match="lists 2 shard"):
        shard_phase.urls(resolve(6, database={"shards": 3, "moveUrls": URLS}), None)


def test_move_urls_must_be_postgresql_urls() -> None:
    bad = {**URLS, "shards": ["postgresql://a/app", "http://b"]}
    # The pattern is in the CRD's schema too, so the apiserver refuses it the same way.
    with pytest.raises(ValueError, match=r"moveUrls.shards.1\n.*should match pattern '\^postgres"):
        api.DatabaseSpec.model_validate({"moveUrls": bad})


def test_a_split_waits_for_every_shard_to_be_ready_and_a_merge_for_none() -> None:
    ready = {"shop-db-shard-0": 1, "shop-db-shard-1": 0}
    assert shard_phase.not_ready("split", ready, 2, "shop") == ["shop-db-shard-1"]
    assert shard_phase.not_ready("split", {**ready, "shop-db-shard-1": 1}, 2, "shop") == []
    assert shard_phase.not_ready("merge", {}, 2, "shop") == []


# --- the condition --------------------------------------------------------------------------


def progress(direction: str, phase: str, message: str = "m") -> api.DatabaseMoveStatus:
    return api.DatabaseMoveStatus.model_validate(
        {"direction": direction, "phase": phase, "message": message}
    )


def test_database_sharded_goes_not_moved_moving_moved_at_stage_6() -> None:
    six = resolve(6)
    reasons = [
        shard_phase.condition(six, "single", None),
        shard_phase.condition(six, "single", progress("split", "wait")),
        shard_phase.condition(six, "shards", progress("split", "drop-subscription")),
        shard_phase.condition(six, "shards", progress("split", "done")),
    ]
    assert [(c[0], c[1]) for c in reasons if c] == [
        (False, "NotMoved"),
        (False, "Moving"),
        (False, "Moving"),
        (True, "Moved"),
    ]


def test_trouble_is_a_condition_that_says_why_and_that_it_is_retried() -> None:
    found = shard_phase.condition(resolve(6), "single", progress("split", "failed", "refused"))
    assert found == (False, "MoveFailed", "the split is retried: refused")


def test_at_stage_5_the_condition_shows_only_a_merge() -> None:
    five = resolve(5)
    assert shard_phase.condition(five, "single", None) is None
    assert shard_phase.condition(five, "shards", progress("merge", "wait"))[:2] == (  # type: ignore[index]
        True,
        "Merging",
    )
    assert shard_phase.condition(five, "single", progress("merge", "done"))[:2] == (  # type: ignore[index]
        False,
        "Merged",
    )


# --- the gate and the app's wiring ----------------------------------------------------------


def gated(before: int, after: int, moving: bool) -> dict[str, set[frozenset[str]]]:
    phases = transition.phases(
        builders.build(resolve(before), OWNER),
        builders.build(resolve(after), OWNER),
        OWNER.uid,
        moving,
    )
    return {p.name: {frozenset(s.gates) for s in p.steps} for p in phases}


def test_while_the_rows_move_every_rewire_step_waits_for_the_move_and_nothing_else_does() -> None:
    split = gated(5, 6, moving=True)
    assert split["rewire"] and all("database-moved" in g for g in split["rewire"])
    assert not any("database-moved" in g for g in split["provide"] | split["retire"])
    assert not any("database-moved" in g for gates in gated(5, 6, False).values() for g in gates)


def test_at_6_to_5_the_shards_go_in_the_retire_phase_after_the_gated_rewire() -> None:
    merge = transition.phases(
        builders.build(resolve(6), OWNER), builders.build(resolve(5), OWNER), OWNER.uid, True
    )
    retire = {s.obj["metadata"]["name"] for s in merge[2].steps if s.action == "delete"}
    assert {"shop-db-shard-0", "shop-db-shard-1"} <= retire
    assert all("database-moved" in s.gates for s in merge[1].steps)


def test_the_app_gets_database_shards_only_once_the_cutover_is_recorded() -> None:
    six = resolve(6)
    assert "DATABASE_SHARDS" not in env(six)
    routed = env(dataclasses.replace(six, shards_routed=2))
    urls = routed["DATABASE_SHARDS"].split(",")
    assert [u.split("@")[1] for u in urls] == [
        "shop-db-shard-0:5432/app",
        "shop-db-shard-1:5432/app",
    ]
    # During 6 -> 5 the stage-5 app keeps the shards until the merge's cutover.
    assert "DATABASE_SHARDS" in env(dataclasses.replace(resolve(5), shards_routed=2))


@pytest.mark.parametrize("stage", [1, 5])
def test_postgresql_runs_logical_wal_at_every_stage_so_no_stage_change_restarts_it(
    stage: int,
) -> None:
    config = postgres.patroni_config(resolve(stage))
    assert config["postgresql"]["parameters"]["wal_level"] == "logical"


def test_the_reconciler_never_sends_nor_compares_the_cutovers_record() -> None:
    seen = status.Observation(1, resolve(6), database_move=progress("split", "wait"))
    built = status.build({"databaseLayout": "shards"}, seen, "2026-01-01T00:00:00Z")
    assert "databaseLayout" not in built and built["databaseMove"]["phase"] == "wait"
    assert not status.changed({**built, "databaseLayout": "shards"}, built)


def test_a_stage_6_created_from_scratch_starts_its_app_first_and_splits_after() -> None:
    # No app yet: nothing to keep wired, and no schema to move; the app makes it first.
    assert not shard_phase.gates_rewire("split", app_runs=False)
    assert shard_phase.gates_rewire("split", app_runs=True)
    assert shard_phase.gates_rewire("merge", app_runs=True)
    assert not shard_phase.gates_rewire(None, app_runs=True)

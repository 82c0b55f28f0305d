"""A stage change is a plan of phases whose destructive steps wait on gates; no cluster."""

from typing import Any

import pytest

from z2m import api, builders, cli, plan, transition

OWNER = builders.Owner(name="shop", uid="uid-1")


def build(stage: int) -> list[dict[str, Any]]:
    p = plan.resolve(api.ScalingStageSpec(stage=stage), name="shop", namespace="ns")
    return builders.build(p, OWNER)


def steps(before: int, after: int) -> dict[str, list[tuple[str, str, str, frozenset[str]]]]:
    return {
        phase.name: [
            (s.action, s.obj["kind"], s.obj["metadata"]["name"], frozenset(s.gates))
            for s in phase.steps
        ]
        for phase in transition.phases(build(before), build(after), OWNER.uid)
    }


def test_a_promotion_waits_on_nothing_and_provides_before_it_rewires() -> None:
    plan_ = steps(3, 4)
    assert plan_["retire"] == []
    provided = {(kind, name) for _, kind, name, _ in plan_["provide"]}
    assert {("StatefulSet", "shop-redis"), ("StatefulSet", "shop-queue")} <= provided
    rewired = [(kind, name) for _, kind, name, _ in plan_["rewire"]]
    assert ("Deployment", "shop-app") in rewired and ("Deployment", "shop-worker") in rewired
    assert all(not gates for phase in plan_.values() for *_, gates in phase)


def test_a_demotion_deletes_only_after_rewiring_and_the_queue_side_after_the_queue_drains() -> None:
    plan_ = steps(4, 3)
    retire = {(action, kind, name): gates for action, kind, name, gates in plan_["retire"]}
    assert retire[("delete", "StatefulSet", "shop-redis")] == {"rewired"}
    assert retire[("delete", "StatefulSet", "shop-queue")] == {"rewired", "queue-empty"}
    assert retire[("delete", "Deployment", "shop-worker")] == {"rewired", "queue-empty"}
    # The app is rewired (no Redis, no broker) in the phase before.
    assert ("apply", "Deployment", "shop-app", frozenset()) in plan_["rewire"]
    assert not any(name == "shop-redis" for _, _, name, _ in plan_["provide"])


def test_read_replicas_shrink_only_after_the_app_stops_reading_from_the_ones_that_go() -> None:
    plan_ = steps(5, 4)
    shrink = [s for s in plan_["retire"] if s[2] == "shop-db-replica"]
    assert shrink == [("apply", "StatefulSet", "shop-db-replica", frozenset({"rewired"}))]
    assert ("StatefulSet", "shop-db-replica") not in {(k, n) for _, k, n, _ in plan_["provide"]}


def test_claims_and_credentials_are_never_steps() -> None:
    for before, after in [(5, 1), (4, 2), (3, 1)]:
        for phase in transition.phases(build(before), build(after), OWNER.uid):
            for step in phase.steps:
                assert step.obj["kind"] not in ("PersistentVolumeClaim", "Secret")


def deployment(generation: int, observed: int, **status: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": observed, **status},
    }


@pytest.mark.parametrize(
    ("live", "done"),
    [
        (deployment(3, 3, replicas=2, updatedReplicas=2, availableReplicas=2), True),
        # Available, but one pod is still of the old template (still wired to what goes).
        (deployment(3, 3, replicas=3, updatedReplicas=2, availableReplicas=3), False),
        # The controller has not seen the new template yet: its counts are of the old one.
        (deployment(4, 3, replicas=2, updatedReplicas=2, availableReplicas=2), False),
        (deployment(3, 3, replicas=2, updatedReplicas=2, availableReplicas=1), False),
        (
            deployment(
                3, 3, replicas=2, updatedReplicas=2, availableReplicas=2, terminatingReplicas=1
            ),
            False,
        ),
        (None, True),
    ],
)
def test_rolled_out_means_no_pod_of_an_old_template_is_left(
    live: dict[str, Any] | None, done: bool
) -> None:
    assert transition.rolled_out(live) is done


def test_z2m_plan_prints_the_phases_and_what_each_removal_waits_for() -> None:
    lines = cli.plan_lines(build(4), build(3), OWNER.uid)
    assert lines.index("rewire:") < lines.index("retire:")
    assert "  - StatefulSet shop-queue (its PVCs are kept)  [once: queue-empty, rewired]" in lines
    assert cli.plan_lines(build(3), build(3)) == []


def test_a_demotion_that_keeps_rabbitmq_does_not_wait_for_the_queue_to_empty() -> None:
    """5 -> 4 drops the workers' HPA, not the queue: jobs keep flowing."""
    for phase in transition.phases(build(5), build(4), OWNER.uid):
        assert all("queue-empty" not in s.gates for s in phase.steps), phase.name


def test_the_failover_standby_goes_only_once_the_staying_primary_holds_the_lock() -> None:
    plan_ = steps(5, 4)
    standby = [s for s in plan_["retire"] if s[2] == "shop-db-standby"]
    assert standby == [
        ("delete", "StatefulSet", "shop-db-standby", frozenset({"rewired", "postgres-leader-kept"}))
    ]

    # The primary's StatefulSet is the same object at 4 and 5: nothing restarts it.
    def primary(stage: int) -> dict[str, Any]:
        return next(
            o
            for o in build(stage)
            if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "shop-db"
        )

    assert primary(4) == primary(5)


def test_at_5_to_6_the_edge_moves_onto_the_gateway_only_once_what_it_routes_to_is_ready() -> None:
    plan_ = steps(5, 6)
    gated = [(kind, name) for _, kind, name, gates in plan_["rewire"] if "gateway-ready" in gates]
    assert gated == [("Deployment", "shop-edge")]
    # Back down, and staying at 6, nothing waits for the gateway.
    for before, after in [(6, 5), (6, 6), (4, 5)]:
        assert all("gateway-ready" not in g for *_, g in steps(before, after)["rewire"])


def rolled(obj: dict[str, Any], ready: bool) -> dict[str, Any]:
    want = obj["spec"].get("replicas") or 1
    return {
        **obj,
        "metadata": {**obj["metadata"], "generation": 1},
        "status": {
            "observedGeneration": 1,
            "replicas": want,
            "updatedReplicas": want,
            "availableReplicas": want if ready else 0,
        },
    }


def test_the_gateway_gate_holds_once_the_gateway_services_and_app_are_seen_ready() -> None:
    desired = build(6)
    behind = [
        o
        for o in desired
        if o["kind"] == "Deployment"
        and (
            transition.component(o) in ("gateway", "app")
            or transition.component(o).startswith(transition.SERVICE_PREFIX)
        )
    ]
    names = sorted(o["metadata"]["name"] for o in behind)
    assert "shop-gateway" in names and "shop-app" in names and len(names) >= 4, names
    live = {builders.key(o): rolled(o, ready=True) for o in behind}
    assert transition.gateway_unready(desired, live) is None
    # Not yet seen by the watches (created by this very pass): not ready.
    first = builders.key(behind[0])
    unseen = {k: v for k, v in live.items() if k != first}
    message = transition.gateway_unready(desired, unseen)
    assert message is not None and behind[0]["metadata"]["name"] in message
    assert "502" in message
    # Seen, but its pods are not available yet.
    starting = {**live, first: rolled(behind[0], ready=False)}
    assert transition.gateway_unready(desired, starting) == message

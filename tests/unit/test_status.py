"""Pure status: when a workload counts as available (rolled out), from its own status."""

from __future__ import annotations

from typing import Any

from z2m import status


def deployment(desired: int, st: dict[str, int], generation: int = 2) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": "shop-app", "generation": generation, "labels": {}},
        "spec": {"replicas": desired},
        "status": st,
    }


ROLLED_OUT = {
    "observedGeneration": 2,
    "replicas": 2,
    "updatedReplicas": 2,
    "readyReplicas": 2,
    "availableReplicas": 2,
}


def available(obj: dict[str, Any]) -> bool:
    found = status.component_status(obj)
    assert found is not None
    return found.available


def test_a_deployment_whose_every_pod_runs_the_new_template_is_available() -> None:
    assert available(deployment(2, ROLLED_OUT))


def test_old_pods_still_running_beside_a_full_set_of_new_ones_are_not_available() -> None:
    # Surge: the new template has all its pods, the old one still has a ready pod,
    # still wired to whatever the old template named.
    old_pod_left = {**ROLLED_OUT, "replicas": 2, "updatedReplicas": 1, "readyReplicas": 2}
    assert not available(deployment(1, old_pod_left))


def test_a_spec_the_controller_has_not_seen_is_not_available() -> None:
    assert not available(deployment(2, ROLLED_OUT, generation=3))


def test_new_pods_that_are_ready_but_not_yet_available_are_not_enough() -> None:
    assert not available(deployment(2, {**ROLLED_OUT, "availableReplicas": 1}))


def test_pods_still_shutting_down_after_a_scale_down_leave_it_available() -> None:
    assert available(deployment(2, {**ROLLED_OUT, "terminatingReplicas": 1}))


def test_snake_case_objects_from_the_typed_client_are_understood() -> None:
    snake = {
        "observed_generation": 2,
        "replicas": 2,
        "updated_replicas": 1,
        "ready_replicas": 2,
        "available_replicas": 2,
    }
    assert not available(deployment(1, snake))
    assert available(deployment(2, {**snake, "updated_replicas": 2}))


# --- the reconciler's part of status ---------------------------------------------------------

PROMOTER_PART = {
    "lastDecision": {"time": "2026-01-01T00:00:00Z", "action": "hold"},
    "recommendedStage": 3,
    "history": [{"fromStage": 2, "toStage": 3}],
}
RECOMMENDATION = {
    "type": "Recommendation",
    "status": "False",
    "reason": "StageFits",
    "message": "",
    "lastTransitionTime": "2026-01-01T00:00:00Z",
}


def test_the_reconcilers_status_never_carries_the_promotion_loops_fields() -> None:
    previous = {**PROMOTER_PART, "conditions": [RECOMMENDATION]}
    new = status.build(previous, status.Observation(1, None), "2026-01-02T00:00:00Z")
    assert not set(PROMOTER_PART) & set(new)
    assert "Recommendation" not in {c["type"] for c in new["conditions"]}


def test_a_change_only_in_the_promotion_loops_part_is_no_change_for_the_reconciler() -> None:
    mine = status.build({}, status.Observation(1, None), "2026-01-02T00:00:00Z")
    theirs = {**mine, **PROMOTER_PART, "conditions": [*mine["conditions"], RECOMMENDATION]}
    assert not status.changed(theirs, mine)
    assert status.changed({**theirs, "observedGeneration": 0}, mine)


def pending(name: str, since: str, reason: str = "Unschedulable") -> dict[str, Any]:
    message = "0/1 nodes are available: 1 Insufficient cpu."
    condition = {"type": "PodScheduled", "status": "False", "reason": reason}
    return {
        "metadata": {"name": name},
        "status": {"conditions": [{**condition, "lastTransitionTime": since, "message": message}]},
    }


def test_a_pod_no_node_could_take_for_30_s_is_reported_with_the_schedulers_words() -> None:
    pods = [
        pending("shop-app-b", "2026-01-02T00:00:00Z"),
        pending("shop-app-a", "2026-01-02T00:00:10Z"),
        pending("shop-app-new", "2026-01-02T00:00:31Z"),  # 29 s: a claim may still be binding
        pending("shop-app-gated", "2026-01-02T00:00:00Z", reason="SchedulingGated"),
        {"metadata": {"name": "shop-app-running"}, "status": {"phase": "Running"}},
    ]
    found = status.unschedulable(pods, "2026-01-02T00:01:00Z")
    assert found == [
        ("shop-app-a", "0/1 nodes are available: 1 Insufficient cpu."),
        ("shop-app-b", "0/1 nodes are available: 1 Insufficient cpu."),
    ]


def test_a_rollout_stuck_for_want_of_a_node_says_so_instead_of_waiting_in_silence() -> None:
    stuck = deployment(4, {**ROLLED_OUT, "updatedReplicas": 3})
    seen = status.Observation(
        2, None, [stuck], unschedulable=[("shop-app-x", "1 Insufficient cpu"), ("y", "z")]
    )
    conditions = {
        c["type"]: c for c in status.build({}, seen, "2026-01-02T00:00:00Z")["conditions"]
    }
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == (
        "False",
        "Unschedulable",
    )
    assert conditions["Progressing"]["status"] == "False"
    message = conditions["Ready"]["message"]
    assert "no node can take pod shop-app-x (1 Insufficient cpu)" in message
    assert "1 more pods cannot either" in message

    rolling = status.Observation(2, None, [stuck])
    ready = status.build({}, rolling, "2026-01-02T00:00:00Z")["conditions"][0]
    assert ready["reason"] == "ComponentsNotReady"


def test_a_step_waiting_on_a_rollout_no_node_has_room_for_says_both() -> None:
    """The 4 -> 5 shape on a full node: RabbitMQ goes only once the app rolled, and the
    app's new pod waits for the CPU RabbitMQ holds."""
    stuck = deployment(4, {**ROLLED_OUT, "updatedReplicas": 3})
    waiting = "rewiring shop-app: pods of the old template still run"
    seen = status.Observation(
        2, None, [stuck], waiting=waiting, unschedulable=[("shop-app-x", "1 Insufficient cpu")]
    )
    ready = status.build({}, seen, "2026-01-02T00:00:00Z")["conditions"][0]
    assert (ready["reason"], ready["status"]) == ("Unschedulable", "False")
    assert ready["message"].startswith(waiting + "; ")
    assert "no node can take pod shop-app-x (1 Insufficient cpu)" in ready["message"]

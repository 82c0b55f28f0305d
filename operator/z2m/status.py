"""Pure status: rebuild a ScalingStage's status from what the reconciler observed.

Status is reconstituted from the world on every pass: component readiness from
the children as they are, conditions from what this pass found. Only a
condition's lastTransitionTime is carried over, and only while its status has
not changed. Time is passed in, so tests control it.

The status has two writers, each with its own server-side apply field manager:
the reconciler owns what `build` returns, the promotion loop owns
`PROMOTER_FIELDS` and the `FOREIGN` conditions. `build` never returns the
loop's fields, so a reconcile cannot put back a stale copy of them. The same
holds for `ROUTING_FIELDS`, the shard move's cutover record.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from pydantic.alias_generators import to_camel

from z2m import api, builders, catalog, plan, transition

Obj = dict[str, Any]
FOREIGN = frozenset({"MetricsAvailable", "Recommendation"})
"""Condition types written by the promotion loop (z2m.promote), not by the reconciler."""
PROMOTER_FIELDS = frozenset({"lastDecision", "recommendedStage", "history"})
"""Status fields the promotion loop owns, besides its conditions; the reconciler owns the rest."""
UNSCHEDULABLE_AFTER = 30
"""Seconds a pod waits for a node before the status says so: a claim being bound or a
node being drained keeps a pod pending for a moment in any rollout."""
ROUTING_FIELDS = frozenset({"databaseLayout"})
"""Written by the shard move's cutover (`movers.StatusRouting`), its own field manager."""
FOREIGN_FIELDS = PROMOTER_FIELDS | ROUTING_FIELDS


@dataclass(frozen=True)
class Observation:
    """What one reconcile pass saw and did, in plain data."""

    generation: int
    plan: plan.Plan | None
    children: list[Obj] = field(default_factory=list)
    waiting: str | None = None
    """Why the pass stopped short of the plan (queue draining, app rewiring), if it did."""
    problem: tuple[str, str] | None = None
    """(reason, message) of an error that keeps the plan from being applied."""
    notices: dict[str, tuple[bool, str, str]] = field(default_factory=dict)
    """Extra conditions: type -> (status, reason, message), e.g. FailoverAvailable."""
    plan_only: catalog.Stage | None = None
    """The stage asked for is one z2m only plans: nothing was built or removed."""
    unschedulable: list[tuple[str, str]] = field(default_factory=list)
    """(pod, the scheduler's message) of our pods no node can take (`unschedulable`)."""
    database_move: api.DatabaseMoveStatus | None = None
    """The shard move's progress, as the mover reported it (or as status last said)."""


def _seconds(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def unschedulable(pods: list[Obj], now: str) -> list[tuple[str, str]]:
    """(name, the scheduler's message) of pods that have waited for a node too long.

    A pod counts once its PodScheduled condition has said Unschedulable for
    `UNSCHEDULABLE_AFTER` seconds, so a claim that is still being bound does not.
    """
    found = []
    for pod in pods:
        for c in (pod.get("status") or {}).get("conditions") or []:
            if (c.get("type"), c.get("status"), c.get("reason")) != (
                "PodScheduled",
                "False",
                "Unschedulable",
            ):
                continue
            since = c.get("lastTransitionTime") or now
            if _seconds(now) - _seconds(since) >= UNSCHEDULABLE_AFTER:
                found.append((pod["metadata"]["name"], str(c.get("message") or "").strip()))
    return sorted(found)


def _unschedulable_message(waiting_for: str, pods: list[tuple[str, str]]) -> str:
    pod, why = pods[0]
    more = f"; {len(pods) - 1} more pods cannot either" if len(pods) > 1 else ""
    return (
        f"waiting for {waiting_for}: no node can take pod {pod} ({why}){more}. "
        "Free room on the nodes, add nodes, or lower the requests in spec"
    )


def component_status(obj: Obj) -> api.ComponentStatus | None:
    """Readiness of a workload child; None for kinds without pods.

    Available means rolled out (`transition.rolled_out`): ready pods of an older
    template do not count, since they still run the old wiring. Pods merely
    shutting down after a scale-down do not make a component unavailable. Objects
    as the dynamic client returns them (camelCase) or as the typed one does
    (snake_case) are both understood.
    """
    kind = obj["kind"]
    if kind not in ("Deployment", "StatefulSet"):
        return None
    spec = obj.get("spec") or {}
    st = {to_camel(k): v for k, v in (obj.get("status") or {}).items()}
    desired = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    return api.ComponentStatus(
        name=obj["metadata"]["name"],
        component=obj["metadata"].get("labels", {}).get(builders.COMPONENT, ""),
        kind=kind,
        desired=desired,
        ready=int(st.get("readyReplicas") or 0),
        available=transition.rolled_out({**obj, "status": st}, terminating=False),
    )


def _condition(
    previous: list[Obj],
    ctype: str,
    value: bool,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> api.Condition:
    status = "True" if value else "False"
    since = now
    for old in previous:
        if old.get("type") == ctype and old.get("status") == status:
            since = old.get("lastTransitionTime") or now
    return api.Condition(
        type=ctype,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=since,
    )


def build(previous: Obj, seen: Observation, now: str) -> Obj:
    """The new status as a JSON-ready dict (camelCase), carrying over decision history."""
    old_conditions = list(previous.get("conditions") or [])
    components = [c for c in map(component_status, seen.children) if c is not None]
    components.sort(key=lambda c: c.name)
    not_ready = [c for c in components if not c.available]

    def cond(ctype: str, value: bool, reason: str, message: str) -> api.Condition:
        return _condition(old_conditions, ctype, value, reason, message, seen.generation, now)

    conditions: list[api.Condition] = []
    if seen.problem is not None:
        reason, message = seen.problem
        conditions += [
            cond("Ready", False, reason, message),
            cond("Progressing", False, reason, message),
            cond("Degraded", True, reason, message),
        ]
    elif seen.plan_only is not None:
        message = plan_only_message(seen.plan_only, previous.get("stage"))
        conditions += [
            cond("Ready", False, "PlanOnly", message),
            cond("Progressing", False, "PlanOnly", message),
            cond("Degraded", False, "AsExpected", ""),
        ]
    elif not_ready and seen.unschedulable:
        # Before a plain wait: a step that waits for a rollout no node has room for
        # (the CPU only a later step frees, say) would wait forever in silence.
        names = ", ".join(f"{c.name} {c.ready}/{c.desired}" for c in not_ready)
        message = _unschedulable_message(names, seen.unschedulable)
        if seen.waiting is not None:
            message = f"{seen.waiting}; {message}"
        conditions += [
            cond("Ready", False, "Unschedulable", message),
            cond("Progressing", False, "Unschedulable", message),
            cond("Degraded", False, "AsExpected", ""),
        ]
    elif seen.waiting is not None:
        conditions += [
            cond("Ready", False, "Waiting", seen.waiting),
            cond("Progressing", True, "Waiting", seen.waiting),
            cond("Degraded", False, "AsExpected", ""),
        ]
    elif not_ready:
        names = ", ".join(f"{c.name} {c.ready}/{c.desired}" for c in not_ready)
        conditions += [
            cond("Ready", False, "ComponentsNotReady", f"waiting for {names}"),
            cond("Progressing", True, "RollingOut", f"waiting for {names}"),
            cond("Degraded", False, "AsExpected", ""),
        ]
    else:
        stage = seen.plan.stage.number if seen.plan else 0
        conditions += [
            cond("Ready", True, "StageReady", f"every component of stage {stage} is ready"),
            cond("Progressing", False, "Converged", "children match the plan"),
            cond("Degraded", False, "AsExpected", ""),
        ]
    for ctype, (value, reason, message) in sorted(seen.notices.items()):
        conditions.append(cond(ctype, value, reason, message))
    out = api.ScalingStageStatus(
        observed_generation=seen.generation,
        stage=seen.plan.stage.number if seen.plan else previous.get("stage"),
        ready="True" if conditions[0].status == "True" else "False",
        estimated_monthly_cost=_cost(seen.plan.stage) if seen.plan else None,
        capacity=_capacity(seen.plan.stage) if seen.plan else None,
        plan=seen.plan.status() if seen.plan else None,
        plan_only=_blueprint(seen.plan_only) if seen.plan_only else None,
        components=components,
        conditions=conditions,
        database_move=seen.database_move,
    ).model_dump(by_alias=True, exclude_none=True, mode="json")
    # The promotion loop's fields are its own (server-side apply, another field manager):
    # sending a copy of them here could put back what it has since replaced.
    for theirs in FOREIGN_FIELDS:
        out.pop(theirs, None)
    return out


def plan_only_message(stage: catalog.Stage, running: int | None) -> str:
    """What the Ready condition and the Event say when a plan-only stage is asked for."""
    kept = (
        f"stage {running} keeps running as it is"
        if running
        else f"nothing runs yet: set a stage from {catalog.MIN_STAGE} to "
        f"{catalog.MAX_IMPLEMENTED} to build one"
    )
    return (
        f"stage {stage.number} ({stage.title}) is a plan only: z2m builds none of it and "
        f"changes nothing; {kept}. status.planOnly and `z2m plan --to {stage.number}` show "
        f"what it adds, what it costs and what you must bring"
    )


def _blueprint(stage: catalog.Stage) -> api.PlanOnlyStatus | None:
    if stage.blueprint is None:
        return None
    return api.PlanOnlyStatus(
        stage=stage.number,
        monthly_cost=_cost(stage),
        additions=[
            api.PlannedAddition(
                name=a.name, what=a.what, cost=a.cost, user_brings=list(a.user_brings)
            )
            for a in stage.blueprint.additions
        ],
        why_not_here=list(stage.blueprint.why_not_here),
    )


def _cost(stage: catalog.Stage) -> str:
    band = stage.monthly_cost_usd
    return f"${band}/month"


def _capacity(stage: catalog.Stage) -> str:
    return f"{stage.users} users, {stage.rps} RPS"


def ours(st: Obj) -> Obj:
    """The part of a status the reconciler owns: all but the other writers' fields."""
    out = {k: v for k, v in st.items() if k not in FOREIGN_FIELDS}
    if "conditions" in out:
        mine = [c for c in out["conditions"] if c.get("type") not in FOREIGN]
        out["conditions"] = sorted(mine, key=lambda c: str(c.get("type")))
    return out


def changed(old: Obj, new: Obj) -> bool:
    """Whether the reconciler's part of status `old` differs from its rebuilt `new`."""
    return ours(old) != ours(new)

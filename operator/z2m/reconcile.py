"""One reconcile pass: read a ScalingStage and its children, converge, report.

The pass reads the world, asks the pure layers (plan, builders, transition,
status) what it should look like and in which phases to get there, then runs
each step whose gates hold: server-side apply, or a delete of what the stage no
longer wants. The gates are asked of the world here: consumers are rewired
before a provider goes or shrinks, and the queue goes only once it is empty.
Everything here is synchronous and runs in a worker thread; `handlers` decides
when a pass runs.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic
from kubernetes.client.exceptions import ApiException

from z2m import api, builders, kube, metrics, plan, status, transition

log = logging.getLogger(__name__)

Obj = dict[str, Any]
CONSUMERS = transition.CONSUMERS


def utcnow() -> str:
    """Now, as an RFC 3339 timestamp."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Gates:
    """The preconditions of one pass's steps, each asked of the world at most once."""

    reconciler: Reconciler
    the_plan: plan.Plan
    desired: list[Obj]
    _answers: dict[str, str | None] = field(default_factory=dict)

    def unmet(self, gate: transition.Gate) -> str | None:
        """None if `gate` holds, else a sentence saying what it waits for."""
        if gate not in self._answers:
            self._answers[gate] = self._ask(gate)
        return self._answers[gate]

    def _ask(self, gate: transition.Gate) -> str | None:
        if gate == "queue-empty":
            return self.reconciler.queue_drained(self.the_plan)
        lagging = self.reconciler.rewiring(self.the_plan.namespace, self.desired)
        if not lagging:
            return None
        return f"rewiring {', '.join(lagging)}: pods of the old template still run"


@dataclass(frozen=True)
class Result:
    """What a pass did, and when it wants to look again."""

    writes: int
    requeue_after: float | None


@dataclass
class Reconciler:
    """Converges ScalingStages; one instance per operator process."""

    kube: kube.Kube
    clock: Callable[[], str] = utcnow
    retry_seconds: float = 5.0
    queue_quiet_seconds: float = 15.0
    """How long a queue must keep reading empty before it is removed.

    RabbitMQ's management statistics lag the queue by up to their collection
    interval (5 s by default), so one empty reading is not proof.
    """
    _empty_since: dict[tuple[str, str], float] = field(default_factory=dict)

    def reconcile(self, namespace: str, name: str) -> Result:
        """Run one pass and record its metrics."""
        started = time.perf_counter()
        try:
            result = self._pass(namespace, name)
        except ApiException as exc:
            if exc.status != 409:
                metrics.RECONCILES.labels("error").inc()
                metrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
                raise
            # The ScalingStage changed under this pass (a user, or the promotion loop):
            # nothing is wrong, the next pass starts from the newer object.
            metrics.RECONCILES.labels("conflict").inc()
            return Result(0, 0.2)
        except Exception as exc:
            metrics.RECONCILES.labels("error").inc()
            metrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        metrics.RECONCILES.labels("changed" if result.writes else "unchanged").inc()
        return result

    def _pass(self, namespace: str, name: str) -> Result:
        body = self.kube.scaling_stage(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            with contextlib.suppress(KeyError):  # never reported, or already removed
                metrics.STAGE.remove(namespace, name)
            return Result(0, None)
        meta = body["metadata"]
        generation = int(meta.get("generation") or 0)
        previous: Obj = body.get("status") or {}

        try:
            spec = api.ScalingStageSpec.model_validate(body["spec"])
        except pydantic.ValidationError as exc:
            return self._report_problem(body, previous, generation, "InvalidSpec", str(exc))
        if spec.paused:
            seen = status.Observation(
                generation,
                None,
                self.kube.children(namespace, name),
                waiting="paused: spec.paused is true, so nothing is changed",
            )
            self.write_status(body, previous, seen)
            return Result(0, None)
        try:
            the_plan = plan.resolve(
                spec,
                name=name,
                namespace=namespace,
                cloudnativepg=self.kube.cloudnativepg_installed() if spec.stage >= 5 else False,
            )
        except plan.PlanError as exc:
            implemented = "not implemented" not in str(exc)
            reason = "InvalidSpec" if implemented else "StageNotImplemented"
            return self._report_problem(body, previous, generation, reason, str(exc))

        owner = builders.Owner(name=name, uid=meta["uid"])
        self.kube.ensure_credentials(namespace, name)
        current = self.kube.children(namespace, name)
        by_key = {builders.key(o): o for o in current}

        desired = builders.build(the_plan, owner)
        gates = _Gates(self, the_plan, desired)
        writes, removed = 0, []
        waits: dict[str, list[str]] = {}
        for phase in transition.phases(current, desired):
            for step in phase.steps:
                unmet = [why for gate in sorted(step.gates) if (why := gates.unmet(gate))]
                if unmet:
                    # A step waits for the first gate that does not hold.
                    waits.setdefault(unmet[0], []).append(step.describe())
                    continue
                if step.action == "apply":
                    writes += self._apply(step.obj, by_key)
                else:
                    self.kube.delete(step.obj)
                    metrics.WRITES.labels("delete", step.obj["kind"]).inc()
                    removed.append(step.obj)
                    writes += 1
        if removed:
            self.kube.event(
                body,
                "Normal",
                "Pruned",
                "removed " + ", ".join(sorted(_describe(o) for o in removed)),
            )
        waiting = (
            "; ".join(f"{why} (then: {', '.join(steps)})" for why, steps in waits.items()) or None
        )
        return self._finish(body, previous, generation, the_plan, waiting, writes)

    # --- steps ---------------------------------------------------------------------------

    def _apply(self, obj: Obj, by_key: dict[tuple[str, str, str], Obj]) -> int:
        before = by_key.get(builders.key(obj))
        hands_over = obj["kind"] == "Deployment" and "replicas" not in obj["spec"]
        if hands_over and before is not None and self.kube.hand_over_replicas(obj):
            metrics.WRITES.labels("handover", obj["kind"]).inc()
        after = self.kube.apply(obj)
        old_version = (before or {}).get("metadata", {}).get("resourceVersion")
        new_version = after["metadata"].get("resourceVersion")
        if old_version == new_version:
            return 0
        metrics.WRITES.labels("apply", obj["kind"]).inc()
        return 1

    def rewiring(self, namespace: str, desired: list[Obj]) -> list[str]:
        """Consumer Deployments that still run pods of an old template."""
        lagging = []
        for obj in desired:
            if obj["kind"] != "Deployment" or transition.component(obj) not in CONSUMERS:
                continue
            name = obj["metadata"]["name"]
            if not transition.rolled_out(self.kube.get("apps/v1", "Deployment", namespace, name)):
                lagging.append(name)
        return lagging

    def queue_drained(self, the_plan: plan.Plan) -> str | None:
        """None once the jobs queue has read empty for the quiet period, else why not."""
        spec = the_plan.spec.queue
        url = spec.management_url or (
            f"http://{builders.child(the_plan.name, 'queue')}.{the_plan.namespace}.svc:"
            f"{builders.AMQP_MANAGEMENT_PORT}"
        )
        try:
            secret = self.kube.ensure_credentials(the_plan.namespace, the_plan.name)
            if secret is None:
                raise PermissionError("the operator may not read the credentials Secret here")
            password = kube.secret_value(secret, "queue-password")
            depth: int | None = kube.queue_depth(url, "z2m", password, spec.queue_name)
            trouble = ""
        except Exception as exc:  # any failure means "not shown empty"
            depth, trouble = None, f"{type(exc).__name__}: {exc}"
        key = (the_plan.namespace, the_plan.name)
        if depth == 0:
            since = self._empty_since.setdefault(key, time.monotonic())
            if time.monotonic() - since >= self.queue_quiet_seconds:
                self._empty_since.pop(key, None)
                return None
            return (
                f"queue {spec.queue_name!r} reads empty; confirming for "
                f"{self.queue_quiet_seconds:g} s before RabbitMQ and its workers go"
            )
        self._empty_since.pop(key, None)
        if depth is None:
            return (
                f"cannot read the depth of queue {spec.queue_name!r} ({trouble}); RabbitMQ "
                "and its workers stay until the queue can be shown empty"
            )
        return (
            f"queue {spec.queue_name!r} still holds {depth} job(s); RabbitMQ and its workers "
            "stay until it drains"
        )

    def _report_problem(
        self, body: Obj, previous: Obj, generation: int, reason: str, message: str
    ) -> Result:
        seen = status.Observation(generation, None, problem=(reason, message))
        if self.write_status(body, previous, seen):
            self.kube.event(body, "Warning", reason, message)
        return Result(0, None)

    def _finish(
        self,
        body: Obj,
        previous: Obj,
        generation: int,
        the_plan: plan.Plan,
        waiting: str | None,
        writes: int,
    ) -> Result:
        meta = body["metadata"]
        notices: dict[str, tuple[bool, str, str]] = {}
        if the_plan.failover == "unavailable":
            notices["FailoverAvailable"] = (
                False,
                "CloudNativePGNotInstalled",
                "stage 5 wants automatic database failover; without the CloudNativePG CRDs "
                "the builtin primary and streaming replicas are kept, with no automatic failover",
            )
        elif the_plan.failover == "cloudnativepg":
            notices["FailoverAvailable"] = (
                True,
                "CloudNativePG",
                "a CloudNativePG Cluster streams from the builtin primary",
            )
        children = self.kube.children(meta["namespace"], meta["name"])
        seen = status.Observation(generation, the_plan, children, waiting=waiting, notices=notices)
        new = self.write_status(body, previous, seen)
        metrics.STAGE.labels(meta["namespace"], meta["name"]).set(the_plan.stage.number)
        old_stage = previous.get("stage")
        if old_stage != the_plan.stage.number:
            adds = "; ".join(the_plan.stage.adds)
            moved = f"{old_stage} -> {the_plan.stage.number}" if old_stage else "set to"
            self.kube.event(
                body,
                "Normal",
                "StageChanged",
                f"stage {moved} {the_plan.stage.number}: {adds}"
                if not old_stage
                else f"stage {moved}: {the_plan.stage.title}",
            )
        if new is not None and new.get("ready") != previous.get("ready"):
            kind = "Normal" if new.get("ready") == "True" else "Warning"
            ready = next(c for c in new["conditions"] if c["type"] == "Ready")
            if kind == "Normal" or waiting or ready["reason"] != "ComponentsNotReady":
                self.kube.event(body, kind, ready["reason"], ready["message"] or "ready")
        settled = (new or previous).get("ready") == "True" and waiting is None
        return Result(writes, None if settled else self.retry_seconds)

    def write_status(self, body: Obj, previous: Obj, seen: status.Observation) -> Obj | None:
        """Apply the status this pass observed, if it differs; returns it, or None.

        Server-side apply as `kube.RECONCILER_MANAGER`, with only the reconciler's
        fields: whatever the promotion loop wrote since `body` was read stays as it
        wrote it, so no resourceVersion is needed and no write has to be retried.
        """
        new = status.build(previous, seen, self.clock())
        if not status.changed(previous, new):
            return None
        meta = body["metadata"]
        self.kube.apply_status(meta["namespace"], meta["name"], new, kube.RECONCILER_MANAGER)
        return new


def _describe(obj: Obj) -> str:
    return f"{obj['kind']} {obj['metadata']['name']}"

"""One reconcile pass: read a ScalingStage and its children, converge, report.

The pass reads the world, asks the pure layers (plan, builders, status) what
it should look like, then writes the difference with server-side apply and
prunes what the stage no longer wants. Destructive steps wait for their
preconditions: consumers are rewired before a provider goes, the queue
goes only once it is empty, and Redis shrinks to ordinal 0 only once ordinal 0
is the master. Everything here is synchronous and runs in a worker
thread; `handlers` decides when a pass runs.
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

from z2m import api, builders, kube, metrics, plan, redis_handover, status

log = logging.getLogger(__name__)

Obj = dict[str, Any]
CONSUMERS = ("app", "worker")


def utcnow() -> str:
    """Now, as an RFC 3339 timestamp."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
            self._write_status(body, previous, seen)
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

        waiting: str | None = None
        if not the_plan.queue and any(_component(o) == "queue" for o in current):
            waiting, the_plan = self._hold_queue(the_plan, current)
        redis_waiting, the_plan = self._hold_redis(body, the_plan, current)
        waiting = waiting or redis_waiting
        desired = builders.build(the_plan, owner)
        wanted = {builders.key(o) for o in desired}
        removing = [o for o in current if builders.key(o) not in wanted]
        shrinking = bool(removing) or any(_scales_down(o, by_key) for o in desired)

        writes = 0
        if shrinking:
            # Consumers first: the app stops using what is about to go before it goes.
            for obj in desired:
                if obj["kind"] == "Deployment" and _component(obj) in CONSUMERS:
                    writes += self._apply(obj, by_key)
            lagging = [n for n in self._rolling_consumers(namespace, desired) if n is not None]
            if lagging:
                waiting = waiting or (
                    f"rewiring {', '.join(lagging)} before removing or shrinking "
                    f"{', '.join(sorted({_describe(o) for o in removing})) or 'read replicas'}"
                )
                return self._finish(body, previous, generation, the_plan, waiting, writes)
        for obj in desired:
            writes += self._apply(obj, by_key)
        for obj in removing:
            self.kube.delete(obj)
            metrics.WRITES.labels("delete", obj["kind"]).inc()
            writes += 1
        if removing:
            self.kube.event(
                body,
                "Normal",
                "Pruned",
                "removed " + ", ".join(sorted(_describe(o) for o in removing)),
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

    def _rolling_consumers(self, namespace: str, desired: list[Obj]) -> list[str | None]:
        lagging: list[str | None] = []
        for obj in desired:
            if obj["kind"] != "Deployment" or _component(obj) not in CONSUMERS:
                continue
            live = self.kube.get("apps/v1", "Deployment", namespace, obj["metadata"]["name"])
            state = status.component_status(live) if live else None
            lagging.append(None if state is None or state.available else state.name)
        return lagging

    def _hold_queue(self, the_plan: plan.Plan, current: list[Obj]) -> tuple[str | None, plan.Plan]:
        """Keep RabbitMQ and its workers until the queue is shown to be empty."""
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
                return None, the_plan
        else:
            self._empty_since.pop(key, None)
        workers = max(
            (
                int((o.get("spec") or {}).get("replicas") or 1)
                for o in current
                if o["kind"] == "Deployment" and _component(o) == "worker"
            ),
            default=1,
        )
        held = plan.keep_queue(the_plan, workers)
        if depth == 0:
            return (
                f"queue {spec.queue_name!r} reads empty; confirming for "
                f"{self.queue_quiet_seconds:g} s before RabbitMQ and its workers go",
                held,
            )
        if depth is None:
            return (
                f"cannot read the depth of queue {spec.queue_name!r} ({trouble}); RabbitMQ "
                "and its workers stay until the queue can be shown empty",
                held,
            )
        return (
            f"queue {spec.queue_name!r} still holds {depth} job(s); RabbitMQ and its workers "
            "stay until it drains",
            held,
        )

    def _hold_redis(
        self, body: Obj, the_plan: plan.Plan, current: list[Obj]
    ) -> tuple[str | None, plan.Plan]:
        """Keep Redis's pods and Sentinel until ordinal 0 is the master, failing over to it.

        Redis shrinks to ordinal 0 (or goes) when the stage leaves Sentinel behind; if
        Sentinel made another pod the master, ordinal 0's data is stale until it is the
        master again. Waiting is reported, never raised.
        """
        live = next(
            (
                o
                for o in current
                if o["kind"] == "StatefulSet"
                and o["metadata"]["name"] == builders.child(the_plan.name, "redis")
            ),
            None,
        )
        live_replicas = int(((live or {}).get("spec") or {}).get("replicas") or 0)
        wanted = 1 + the_plan.redis_replicas if the_plan.redis else 0
        if not redis_handover.needed(live_replicas, wanted):
            return None, the_plan
        sentinel = the_plan.spec.cache.sentinel_address or (
            f"{builders.child(the_plan.name, 'redis-sentinel')}.{the_plan.namespace}.svc:"
            f"{builders.SENTINEL_PORT}"
        )
        master: redis_handover.Master | None = None
        trouble = ""
        try:
            secret = self.kube.ensure_credentials(the_plan.namespace, the_plan.name)
            if secret is None:
                raise PermissionError("the operator may not read the credentials Secret here")
            password = kube.secret_value(secret, "redis-password")
            master = kube.redis_master(sentinel, builders.REDIS_MASTER_NAME, password)
        except Exception as exc:  # any failure means "not shown to be ordinal 0"
            trouble = f"{type(exc).__name__}: {exc}"
        statefulset = builders.child(the_plan.name, "redis")
        verdict = redis_handover.decide(master, statefulset, trouble)
        if verdict.step == "shrink":
            return None, the_plan
        if verdict.step == "failover":
            try:
                started = kube.redis_failover(sentinel, builders.REDIS_MASTER_NAME)
            except Exception as exc:
                return (
                    f"{verdict.message}, but Sentinel refused ({type(exc).__name__}: {exc})",
                    redis_handover.hold(the_plan, live_replicas),
                )
            if started:
                self.kube.event(body, "Normal", "RedisFailover", verdict.message)
            return (
                f"{verdict.message}; waiting until ordinal 0 reports itself the master",
                redis_handover.hold(the_plan, live_replicas),
            )
        return verdict.message, redis_handover.hold(the_plan, live_replicas)

    def _report_problem(
        self, body: Obj, previous: Obj, generation: int, reason: str, message: str
    ) -> Result:
        seen = status.Observation(generation, None, problem=(reason, message))
        if self._write_status(body, previous, seen):
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
        new = self._write_status(body, previous, seen)
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

    def _write_status(self, body: Obj, previous: Obj, seen: status.Observation) -> Obj | None:
        new = status.build(previous, seen, self.clock())
        patch = status.patch(previous, new)
        if patch is None:
            return None
        meta = body["metadata"]
        # Based on what this pass read: if the promotion loop wrote status since, the
        # apiserver refuses (409) and the next pass rebuilds from the newer status.
        self.kube.patch_status(meta["namespace"], meta["name"], patch, meta.get("resourceVersion"))
        return new


def _component(obj: Obj) -> str:
    labels: dict[str, str] = obj["metadata"].get("labels") or {}
    return labels.get(builders.COMPONENT, "")


def _describe(obj: Obj) -> str:
    return f"{obj['kind']} {obj['metadata']['name']}"


def _scales_down(obj: Obj, by_key: dict[tuple[str, str, str], Obj]) -> bool:
    live = by_key.get(builders.key(obj))
    if live is None or obj["kind"] != "StatefulSet":
        return False
    return int(obj["spec"]["replicas"]) < int((live.get("spec") or {}).get("replicas") or 0)

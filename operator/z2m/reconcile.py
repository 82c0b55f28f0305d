"""One reconcile pass: read a ScalingStage and its children, converge, report.

The pass reads the world, asks the pure layers (plan, builders, transition,
status) what it should look like and in which phases to get there, then runs
each step whose gates hold: server-side apply, or a delete of what the stage no
longer wants. The gates are asked of the world here: consumers are rewired
before a provider goes or shrinks, the queue goes only once it is empty, and Kafka
only once its consumer group has no lag.
StatefulSet claim templates cannot change, so a bigger `storage.size` is
applied to the claims themselves, where their StorageClass allows expansion.
Everything here is synchronous and runs in a worker thread; `handlers` decides
when a pass runs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kubernetes
import pydantic
from kubernetes.client.exceptions import ApiException

from z2m import (
    api,
    builders,
    catalog,
    kube,
    metrics,
    movers,
    plan,
    postgres_handover,
    redis_handover,
    shard_phase,
    status,
    stream_lag,
    transition,
)

log = logging.getLogger(__name__)

Obj = dict[str, Any]


def utcnow() -> str:
    """Now, as an RFC 3339 timestamp."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Gates:
    """The preconditions of one pass's steps, each asked of the world at most once."""

    reconciler: Reconciler
    body: Obj
    the_plan: plan.Plan
    desired: list[Obj]
    live: dict[tuple[str, str, str], Obj]
    current: list[Obj] = field(default_factory=list)
    _answers: dict[str, str | None] = field(default_factory=dict)

    def unmet(self, gate: transition.Gate) -> str | None:
        """None if `gate` holds, else a sentence saying what it waits for."""
        if gate not in self._answers:
            self._answers[gate] = self._ask(gate)
        return self._answers[gate]

    def _ask(self, gate: transition.Gate) -> str | None:
        if gate == "queue-empty":
            return self.reconciler.queue_drained(self.the_plan)
        if gate == "stream-drained":
            return self.reconciler.stream_drained(self.the_plan)
        if gate == "redis-master-kept":
            return self.reconciler.redis_master_kept(self.body, self.the_plan)
        if gate == "postgres-leader-kept":
            return self.reconciler.postgres_leader_kept(self.body, self.the_plan)
        if gate == "gateway-ready":
            return transition.gateway_unready(self.desired, self.live)
        if gate == "database-moved":
            return self.reconciler.database_moved(self.body, self.the_plan, self.current)
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
    _drained_since: dict[tuple[str, str], float] = field(default_factory=dict)
    movers: movers.Movers | None = None
    """Runs shard moves on the operator's event loop; None where no loop runs them (the CLI)."""
    _applied: dict[tuple[str, str], dict[tuple[str, str, str], tuple[str, str]]] = field(
        default_factory=dict
    )
    """Per ScalingStage, per child: (hash of the body we last applied, the resourceVersion
    that apply left)."""

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
            self._applied.pop((namespace, name), None)
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
            zones = self.kube.zones() if spec.stage in (5, 6) else None
            regions = self.kube.regions() if spec.stage == 6 else None
            the_plan = plan.resolve(
                spec, name=name, namespace=namespace, zones=zones, regions=regions
            )
        except plan.NotBuiltError as exc:
            if exc.stage.plan_only:
                return self._plan_only(body, previous, generation, exc.stage)
            return self._report_problem(body, previous, generation, "StageNotImplemented", str(exc))
        except plan.PlanError as exc:
            return self._report_problem(body, previous, generation, "InvalidSpec", str(exc))

        layout = shard_phase.recorded(previous)
        if layout == "shards":
            # The app routes to the shards once a cutover recorded it, whatever the stage.
            the_plan = dataclasses.replace(
                the_plan, shards_routed=shard_phase.shard_count(the_plan)
            )
        direction = shard_phase.needed(the_plan, layout)
        owner = builders.Owner(name=name, uid=meta["uid"])
        self.kube.ensure_credentials(namespace, name)
        current = self.kube.children(namespace, name)
        by_key = {builders.key(o): o for o in current}

        # Stage 5 writes the Prometheus Operator's kinds where the cluster serves them.
        served = the_plan.monitoring and self.kube.prometheus_operator()
        # Stage 6 writes the Gateway API's kinds where the cluster serves them.
        gateway_api = the_plan.gateway and self.kube.gateway_api()
        desired = builders.build(
            the_plan, owner, prometheus_operator=served, gateway_api=gateway_api
        )
        taken = self.taken(desired, by_key, meta["uid"])
        desired = [o for o in desired if builders.key(o) not in taken]
        desired, growth = keep_claim_templates(desired, by_key)
        notices = self._grow_claims(body, previous, growth)
        notices.update(self._names_taken(body, previous, taken))
        gates = _Gates(self, body, the_plan, desired, by_key, current)
        writes, removed = 0, []
        waits: dict[str, list[str]] = {}
        if direction is None:
            self._finish_move(body, the_plan, current)
        app_runs = any(
            o["kind"] == "Deployment" and transition.component(o) == "app" for o in current
        )
        moving = shard_phase.gates_rewire(direction, app_runs)
        for phase in transition.phases(current, desired, meta["uid"], moving=moving):
            if waits:
                # A phase starts only once every step of the phases before it has run.
                waits.setdefault(f"the {phase.name} phase waits for the one before", [])
                break
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
        if taken:
            waits[notices["NamesAvailable"][2]] = []
        waiting = (
            "; ".join(
                f"{why} (then: {', '.join(steps)})" if steps else why
                for why, steps in waits.items()
            )
            or None
        )
        return self._finish(body, previous, generation, the_plan, waiting, writes, notices)

    # --- steps ---------------------------------------------------------------------------

    def _apply(self, obj: Obj, by_key: dict[tuple[str, str, str], Obj]) -> int:
        before = by_key.get(builders.key(obj))
        if before is not None and builders.shared_with_patroni(obj):
            have = before["metadata"].get("annotations") or {}
            want = obj["metadata"].get("annotations") or {}
            changed = {k: v for k, v in want.items() if have.get(k) != v}
            if not changed:
                return 0
            self.kube.annotate(obj, changed)
            metrics.WRITES.labels("annotate", obj["kind"]).inc()
            return 1
        meta = obj["metadata"]
        applied = self._applied.setdefault((meta["namespace"], _owner_name(obj)), {})
        body = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
        old_version = (before or {}).get("metadata", {}).get("resourceVersion")
        if old_version and applied.get(builders.key(obj)) == (body, old_version):
            # Nothing changed it since we applied this very body: the apply would be a no-op.
            return 0
        hands_over = obj["kind"] == "Deployment" and "replicas" not in obj["spec"]
        if hands_over and before is not None and self.kube.hand_over_replicas(obj):
            metrics.WRITES.labels("handover", obj["kind"]).inc()
        after = self.kube.apply(obj)
        new_version = after["metadata"].get("resourceVersion")
        applied[builders.key(obj)] = (body, new_version)
        if old_version == new_version:
            return 0
        metrics.WRITES.labels("apply", obj["kind"]).inc()
        return 1

    def taken(
        self, desired: list[Obj], by_key: dict[tuple[str, str, str], Obj], uid: str
    ) -> dict[tuple[str, str, str], Obj]:
        """Objects that hold a child's name but that the ScalingStage does not control.

        A user's object, with or without our labels, is never applied over (that
        would adopt it: server-side apply takes its fields and adds our owner
        reference) and never pruned. Objects without our labels are not in
        `by_key`, so a child we have not made yet is looked up by name.
        """
        out: dict[tuple[str, str, str], Obj] = {}
        for obj in desired:
            live = by_key.get(builders.key(obj))
            if live is None:
                meta = obj["metadata"]
                live = self.kube.get(
                    obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]
                )
            if live is not None and not transition.controlled_by(live, uid):
                out[builders.key(obj)] = live
        return out

    def _names_taken(
        self, body: Obj, previous: Obj, taken: dict[tuple[str, str, str], Obj]
    ) -> dict[str, tuple[bool, str, str]]:
        """The NamesAvailable condition (none when every name is free or ours), and its Event."""
        if not taken:
            return {}
        names = ", ".join(sorted(f"{kind} {name}" for _, kind, name in taken))
        message = (
            f"{names} already exist(s) and this ScalingStage does not control it (no controller "
            "owner reference to it): z2m leaves it as it is; delete or rename it and z2m "
            "makes its own"
        )
        before: Obj = next(
            (c for c in previous.get("conditions") or [] if c.get("type") == "NamesAvailable"), {}
        )
        if before.get("message") != message:
            self.kube.event(body, "Warning", "NameTaken", message)
        return {"NamesAvailable": (False, "NameTaken", message)}

    def rewiring(self, namespace: str, desired: list[Obj]) -> list[str]:
        """Consumer Deployments that still run pods of an old template."""
        lagging = []
        for obj in desired:
            if obj["kind"] != "Deployment" or not transition.is_consumer(transition.component(obj)):
                continue
            name = obj["metadata"]["name"]
            if not transition.rolled_out(self.kube.get("apps/v1", "Deployment", namespace, name)):
                lagging.append(name)
        return lagging

    def _grow_claims(
        self, body: Obj, previous: Obj, growth: list[Growth]
    ) -> dict[str, tuple[bool, str, str]]:
        """Expand the claims a bigger `storage.size` asks for, where their class allows it.

        Returns the StorageExpanded condition (none when no size grew). A claim whose
        StorageClass does not allow expansion keeps its size; the condition and a
        Warning Event say so, and everything else carries on.
        """
        if not growth:
            return {}
        namespace = body["metadata"]["namespace"]
        refused: list[str] = []
        asked: list[str] = []
        for g in growth:
            selector = (
                f"{builders.PART_OF}={body['metadata']['name']},{builders.COMPONENT}={g.component}"
            )
            for claim in self.kube.claims(namespace, selector):
                name = claim["metadata"]["name"]
                if not name.startswith(f"{g.template}-{g.statefulset}-"):
                    continue
                requests = ((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}
                have = requests.get("storage", "0")
                if quantity(have) >= quantity(g.size):
                    continue
                klass = (claim.get("spec") or {}).get("storageClassName")
                try:
                    found = self.kube.storage_class(klass) if klass else None
                except ApiException as exc:
                    if exc.status != 403:
                        raise
                    refused.append(
                        f"{name} stays at {have} (z2m may not read StorageClass {klass})"
                    )
                    continue
                if not (found or {}).get("allowVolumeExpansion"):
                    refused.append(f"{name} stays at {have} (StorageClass {klass or 'none'})")
                    continue
                self.kube.expand_claim(namespace, name, g.size)
                metrics.WRITES.labels("expand", "PersistentVolumeClaim").inc()
                asked.append(f"{name} from {have} to {g.size}")
        if asked:
            self.kube.event(body, "Normal", "StorageExpanding", "expanding " + ", ".join(asked))
        sizes = ", ".join(sorted({f"{g.statefulset} {g.size}" for g in growth}))
        if refused:
            message = (
                f"storage.size asks for more ({sizes}), but the claims' StorageClass does not "
                "allow volume expansion (allowVolumeExpansion: true): "
                + "; ".join(refused)
                + ". Allow expansion on the class and z2m expands them; "
                "the size cannot shrink back."
            )
            before: Obj = next(
                (c for c in previous.get("conditions") or [] if c.get("type") == "StorageExpanded"),
                {},
            )
            if before.get("reason") != "ExpansionNotAllowed":
                self.kube.event(body, "Warning", "ExpansionNotAllowed", message)
            return {"StorageExpanded": (False, "ExpansionNotAllowed", message)}
        return {
            "StorageExpanded": (
                True,
                "ClaimsExpanded",
                f"every claim asks for its storage.size ({sizes}); the StatefulSets' claim "
                "templates keep the size they were made with, since they cannot change",
            )
        }

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

    def stream_drained(self, the_plan: plan.Plan) -> str | None:
        """None once Kafka's consumer group has read lag 0 for the quiet period, else why not.

        A lag read exactly from the broker, but the last web pods of the old template may
        still publish while they drain: the quiet period outlasts that, as for RabbitMQ.
        """
        spec = the_plan.spec.streaming
        servers = spec.bootstrap_servers or (
            f"{builders.child(the_plan.name, 'streaming')}.{the_plan.namespace}.svc:"
            f"{builders.KAFKA_PORT}"
        )
        try:
            lag: int | None = stream_lag.group_lag(servers, spec.topic, spec.consumer_group)
            trouble = ""
        except Exception as exc:  # any failure means "not shown drained"
            lag, trouble = None, f"{type(exc).__name__}: {exc}"
        key = (the_plan.namespace, the_plan.name)
        if lag == 0:
            since = self._drained_since.setdefault(key, time.monotonic())
            if time.monotonic() - since >= self.queue_quiet_seconds:
                self._drained_since.pop(key, None)
                return None
            return (
                f"consumer group {spec.consumer_group!r} has no lag on topic {spec.topic!r}; "
                f"confirming for {self.queue_quiet_seconds:g} s before Kafka and its workers go"
            )
        self._drained_since.pop(key, None)
        if lag is None:
            return (
                f"cannot read the lag of consumer group {spec.consumer_group!r} ({trouble}); "
                "Kafka and its workers stay until the topic can be shown drained"
            )
        return (
            f"consumer group {spec.consumer_group!r} is {lag} record(s) behind on topic "
            f"{spec.topic!r}; Kafka and its workers stay until it catches up"
        )

    def redis_master_kept(self, body: Obj, the_plan: plan.Plan) -> str | None:
        """None once ordinal 0 is the Redis master, else why not (asking Sentinel to fail over).

        Redis shrinks to ordinal 0 (or goes, its claim kept) when the stage leaves
        Sentinel behind; if Sentinel made another pod the master, ordinal 0's data is
        stale until it is the master again. Waiting is reported, never raised.
        """
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
            return None
        if verdict.step == "failover":
            try:
                started = kube.redis_failover(sentinel, builders.REDIS_MASTER_NAME)
            except Exception as exc:
                return f"{verdict.message}, but Sentinel refused ({type(exc).__name__}: {exc})"
            if started:
                self.kube.event(body, "Normal", "RedisFailover", verdict.message)
            return f"{verdict.message}; waiting until ordinal 0 reports itself the master"
        return verdict.message

    def postgres_leader_kept(self, body: Obj, the_plan: plan.Plan) -> str | None:
        """None once the pod that stays holds Patroni's leader lock, else why not.

        When the failover standby is the primary, Patroni is asked for a switchover
        to the staying pod; the standby goes once that pod reports itself leader.
        """
        namespace = the_plan.namespace
        stays = f"{builders.child(the_plan.name, 'db')}-0"
        leader, pods = self.kube.postgres_members(namespace, builders.patroni_scope(the_plan.name))
        members = [postgres_handover.Member.from_pod(p) for p in pods]
        verdict = postgres_handover.decide(leader, stays, members)
        if verdict.step == "retire":
            return None
        if verdict.step == "switchover":
            holder = next((m for m in members if m.name == verdict.leader), None)
            try:
                if holder is None or not holder.api_url:
                    raise RuntimeError(f"{verdict.leader} reports no REST API address")
                secret = self.kube.ensure_credentials(namespace, the_plan.name)
                if secret is None:
                    raise PermissionError("the operator may not read the credentials Secret here")
                password = kube.secret_value(secret, "replication-password")
                answer = kube.patroni_switchover(
                    holder.api_url, str(verdict.leader), str(verdict.candidate), password
                )
            except Exception as exc:
                return f"{verdict.message}, but Patroni refused ({type(exc).__name__}: {exc})"
            self.kube.event(body, "Normal", "PostgresSwitchover", f"{verdict.message}: {answer}")
            return f"{verdict.message}; waiting until {stays} reports itself leader"
        return verdict.message

    def database_moved(self, body: Obj, the_plan: plan.Plan, current: list[Obj]) -> str | None:
        """Never None while the gate is asked: the next pass, after the cutover, drops it.

        Starts the move (or keeps it running) once every target is ready, and says
        where it is. Trouble is reported in status and an Event, and retried.
        """
        layout = shard_phase.recorded(body.get("status"))
        direction = shard_phase.needed(the_plan, layout)
        if direction is None:
            return None
        count = shard_phase.shard_count(the_plan)
        ready = {
            o["metadata"]["name"]: int((o.get("status") or {}).get("readyReplicas") or 0)
            for o in current
            if o["kind"] == "StatefulSet"
        }
        waiting = shard_phase.not_ready(direction, ready, count, the_plan.name)
        if waiting:
            return f"the {direction} waits for {', '.join(waiting)} to be ready"
        progress = self._start_move(body, the_plan, direction)
        return f"the {direction} of the rows runs: {progress}"

    def _start_move(self, body: Obj, the_plan: plan.Plan, direction: shard_phase.Direction) -> str:
        """Ensure the mover runs `direction`; returns its progress, in words."""
        if self.movers is None:
            return "no mover runs in this process (the operator runs moves, not the CLI)"
        try:
            password = None
            if the_plan.spec.database.move_urls is None:
                secret = self.kube.ensure_credentials(the_plan.namespace, the_plan.name)
                if secret is None:
                    raise PermissionError("the operator may not read the credentials Secret here")
                password = kube.secret_value(secret, "database-password")
            urls = shard_phase.urls(the_plan, password)
        except Exception as exc:
            return f"cannot address the databases ({type(exc).__name__}: {exc})"
        sources, targets = urls.endpoints(direction)
        key = (the_plan.namespace, the_plan.name)
        count = shard_phase.shard_count(the_plan)
        progress = self.movers.ensure(key, direction, count, sources, targets)
        return f"{progress.phase}: {progress.message}"

    def _finish_move(self, body: Obj, the_plan: plan.Plan, current: list[Obj]) -> None:
        """After a cutover: let the move drop its replication (a restart resumes that too)."""
        if self.movers is None:
            return
        key = (the_plan.namespace, the_plan.name)
        progress = self.movers.progress(key) or _carried_move(body.get("status") or {})
        if progress is None or progress.phase in ("done", "failed"):
            return
        layout = shard_phase.recorded(body.get("status"))
        if (progress.direction == "split") != (layout == "shards"):
            return  # that move never cut over; the stage no longer wants it
        self._start_move(body, the_plan, progress.direction)

    def _report_problem(
        self, body: Obj, previous: Obj, generation: int, reason: str, message: str
    ) -> Result:
        seen = status.Observation(generation, None, problem=(reason, message))
        if self.write_status(body, previous, seen):
            self.kube.event(body, "Warning", reason, message)
        return Result(0, None)

    def _plan_only(self, body: Obj, previous: Obj, generation: int, stage: catalog.Stage) -> Result:
        """A stage z2m only plans: build and remove nothing, show the plan, say so once.

        The children of the stage that runs stay exactly as they are: the user asked
        for more than z2m builds, and guessing a stage in between would change what
        runs without being asked to. One Warning Event marks the entry into PlanOnly.
        """
        meta = body["metadata"]
        children = self.kube.children(meta["namespace"], meta["name"])
        seen = status.Observation(generation, None, children, plan_only=stage)
        new = self.write_status(body, previous, seen)
        was: Obj = next(
            (c for c in previous.get("conditions") or [] if c.get("type") == "Ready"), {}
        )
        if new is not None and was.get("reason") != "PlanOnly":
            ready = next(c for c in new["conditions"] if c["type"] == "Ready")
            self.kube.event(body, "Warning", "PlanOnly", ready["message"])
        return Result(0, None)

    def _finish(
        self,
        body: Obj,
        previous: Obj,
        generation: int,
        the_plan: plan.Plan,
        waiting: str | None,
        writes: int,
        notices: dict[str, tuple[bool, str, str]],
    ) -> Result:
        meta = body["metadata"]
        notices = dict(notices)
        if the_plan.redis_cluster is not None:
            notices["CacheClustered"] = (True, "RedisCluster", transition.CACHE_WARMUP)
        key = (meta["namespace"], meta["name"])
        progress = (self.movers.progress(key) if self.movers else None) or _carried_move(previous)
        layout = shard_phase.recorded(previous)
        if (sharded := shard_phase.condition(the_plan, layout, progress)) is not None:
            notices["DatabaseSharded"] = sharded
        self._move_events(body, previous, progress)
        if the_plan.failover_standbys:
            notices["FailoverAvailable"] = (
                True,
                "Patroni",
                "Patroni promotes the PostgreSQL standby within about 30 s if the primary "
                "dies; the app's Service follows the leader"
                + (
                    "; commits wait for the standby, so a failover loses no acknowledged write"
                    if the_plan.synchronous
                    else "; replication is asynchronous, so a failover can lose the last "
                    "commits (spec.database.synchronous: true prevents that)"
                ),
            )
            notices["ZoneRedundant"] = _zone_redundancy(the_plan.zones)
        children = self.kube.children(meta["namespace"], meta["name"])
        stuck: list[tuple[str, str]] = []
        if any(c is not None and not c.available for c in map(status.component_status, children)):
            pods = self.kube.pods(meta["namespace"], meta["name"])
            stuck = status.unschedulable(pods, self.clock())
        seen = status.Observation(
            generation,
            the_plan,
            children,
            waiting=waiting,
            notices=notices,
            unschedulable=stuck,
            database_move=progress,
        )
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
        if new is not None and _ready_event(previous, new, waiting):
            kind = "Normal" if new.get("ready") == "True" else "Warning"
            ready = next(c for c in new["conditions"] if c["type"] == "Ready")
            self.kube.event(body, kind, ready["reason"], ready["message"] or "ready")
        settled = (new or previous).get("ready") == "True" and waiting is None
        return Result(writes, None if settled else self.retry_seconds)

    def _move_events(
        self, body: Obj, previous: Obj, progress: api.DatabaseMoveStatus | None
    ) -> None:
        """One Event when the move starts, finishes or fails (per new message).

        The cutover's Event is the mover's own (`movers.StatusRouting.switch`).
        """
        if progress is None:
            return
        before = _carried_move(previous)
        if before == progress or (before and before.phase == progress.phase == "wait"):
            return
        what = f"the {progress.direction} of the rows"
        if progress.phase == "failed":
            if before is None or before.message != progress.message:
                self.kube.event(body, "Warning", "ShardMoveFailed", f"{what}: {progress.message}")
        elif progress.phase == "done":
            self.kube.event(body, "Normal", "ShardMoveDone", f"{what}: {progress.message}")
        elif before is None or before.direction != progress.direction:
            self.kube.event(body, "Normal", "ShardMoveStarted", f"{what}: {progress.message}")

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


def _ready_reason(st: Obj) -> str | None:
    ready = [c for c in st.get("conditions") or [] if c.get("type") == "Ready"]
    return str(ready[0].get("reason")) if ready else None


def _ready_event(previous: Obj, new: Obj, waiting: str | None) -> bool:
    """Whether a new status is worth an Event.

    It is when readiness came, or went for a reason other than a rollout in
    progress, or when pods started waiting for a node.
    """
    if new.get("ready") != previous.get("ready"):
        return (
            new.get("ready") == "True"
            or bool(waiting)
            or _ready_reason(new) != "ComponentsNotReady"
        )
    return _ready_reason(new) == "Unschedulable" != _ready_reason(previous)


def _carried_move(previous: Obj) -> api.DatabaseMoveStatus | None:
    """The move's progress as status last said (after an operator restart, say)."""
    raw = previous.get("databaseMove")
    if not raw:
        return None
    try:
        return api.DatabaseMoveStatus.model_validate(raw)
    except pydantic.ValidationError:
        return None


def _owner_name(obj: Obj) -> str:
    labels: dict[str, str] = obj["metadata"].get("labels") or {}
    return labels.get(builders.PART_OF, "")


@dataclass(frozen=True)
class Growth:
    """A claim template whose claims `storage.size` asks to grow."""

    statefulset: str
    component: str
    template: str
    size: str


def quantity(text: str) -> float:
    """A Kubernetes quantity as a number, for comparing sizes."""
    return float(kubernetes.utils.parse_quantity(text))  # type: ignore[no-untyped-call]


def keep_claim_templates(
    desired: list[Obj], live: dict[tuple[str, str, str], Obj]
) -> tuple[list[Obj], list[Growth]]:
    """Desired objects with every live StatefulSet's claim templates kept as they are.

    A StatefulSet's volumeClaimTemplates cannot change (the apiserver answers 422),
    so applying a new size or class would fail on every pass. The live size and
    class are applied instead; a bigger size is returned as growth, to be made on
    the claims themselves. (A smaller size or another class is refused at admission.)
    """
    out: list[Obj] = []
    growth: list[Growth] = []
    for obj in desired:
        before = live.get(builders.key(obj))
        if obj["kind"] != "StatefulSet" or before is None:
            out.append(obj)
            continue
        kept = {
            t["metadata"]["name"]: t
            for t in (before.get("spec") or {}).get("volumeClaimTemplates") or []
        }
        obj = copy.deepcopy(obj)
        for template in obj["spec"].get("volumeClaimTemplates") or []:
            old = kept.get(template["metadata"]["name"])
            if old is None:
                continue
            spec, old_spec = template["spec"], old.get("spec") or {}
            wanted = spec["resources"]["requests"]["storage"]
            have = ((old_spec.get("resources") or {}).get("requests") or {}).get("storage")
            if have is not None:
                spec["resources"]["requests"]["storage"] = have
                if quantity(wanted) > quantity(have):
                    growth.append(
                        Growth(
                            obj["metadata"]["name"],
                            transition.component(obj),
                            old["metadata"]["name"],
                            wanted,
                        )
                    )
            if "storageClassName" in old_spec:
                spec["storageClassName"] = old_spec["storageClassName"]
            else:
                spec.pop("storageClassName", None)
        out.append(obj)
    return out, growth


def _zone_redundancy(zones: int | None) -> tuple[bool, str, str]:
    """The ZoneRedundant condition of a stage with a failover standby."""
    if zones and zones >= 2:
        return (
            True,
            "SeparateZones",
            f"the standby must run in another zone than the primary ({zones} zones)",
        )
    why = (
        "the nodes are in one zone (or carry no topology.kubernetes.io/zone label)"
        if zones
        else "z2m may not list nodes, so it cannot tell zones apart"
    )
    return (
        False,
        "SingleZone" if zones else "ZonesUnknown",
        f"{why}: the standby keeps off the primary's node where it can, but one zone's "
        "outage can take both",
    )


def _describe(obj: Obj) -> str:
    return f"{obj['kind']} {obj['metadata']['name']}"

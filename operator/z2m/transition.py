"""A stage change as an explicit plan: phases of steps, each step with its preconditions.

Pure: from the children that exist and the objects the new stage wants, `phases`
returns what to do, in order. The reconciler evaluates the gates (they need I/O)
and runs each step whose gates hold; a step that waits is reported, with why.

1. **provide**: what others use, new or changed (ConfigMaps, Services, the stateful
   servers that keep or gain pods, the edge cache, Sentinel). No gate: nothing uses
   a new provider yet, and a changed one keeps its data.
2. **rewire**: the consumers (app and worker Deployments, stage 6's services, and
   the proxies in front of them: the gateway and the edge cache) take the new
   stage's wiring, then their autoscalers and disruption budgets. The app treats a
   provider that is still starting as down and degrades, so the one gate is:
   - `redis-master-kept`: when Redis shrinks from its Sentinel-watched pods,
     ordinal 0 (the pod that stays) must be the master first; the app keeps
     following Sentinel until then (see `redis_handover`). Not at 5 -> 6: there
     Redis Cluster takes the cache over and starts cold, so nothing of the pair
     is carried on (a cache warm-up, not a data migration).

   - `gateway-ready`: when the edge cache's upstream moves onto z2m's gateway
     (5 -> 6), the edge is rewired only once the gateway and every Deployment it
     routes to (the services and the app) run their current template, ready.
     Sooner, nginx would answer a route whose pods are not there yet with 502.
   - `database-moved`: when the stage change moves the rows between stage 5's
     database and the shards (5 -> 6 splits, 6 -> 5 merges; see `shard_phase`),
     the consumers keep their wiring until the move's cutover is recorded. The
     move runs meanwhile, outside the pass (`movers`); at 6 -> 5 the shards are
     therefore retired only after the merge, as the retire phase waits for this one.

   At 6 -> 5 every old consumer pod, edge pods forwarding to the gateway among
   them, must be gone before the gateway, services and Redis Cluster are retired.
3. **retire**: what the stage drops is deleted, and stateful servers that shrink are
   scaled down, each only once its gates hold (and every step of the phases
   before has run):
   - `rewired`: no consumer pod of an old template is left, so nothing still uses
     what goes;
   - `queue-empty`: when the stage drops RabbitMQ, it and its workers go only once
     the jobs queue is shown empty, and the workers keep consuming until then;
   - `stream-drained`: when the stage drops Kafka, it and its consumer group's
     workers go only once the group's lag is shown 0 (every record's offset
     committed), and the workers keep consuming until then;
   - `postgres-leader-kept`: when PostgreSQL's failover standby goes, the pod that
     stays must hold Patroni's leader lock first (see `postgres_handover`).

Claims (PVCs) and the credentials Secret are never steps: they outlive every
demotion (see `builders.PRUNABLE`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from z2m import builders, redis_handover

Obj = dict[str, Any]
Gate = Literal[
    "rewired",
    "queue-empty",
    "stream-drained",
    "redis-master-kept",
    "postgres-leader-kept",
    "gateway-ready",
    "database-moved",
]
PhaseName = Literal["provide", "rewire", "retire"]

CONSUMERS = frozenset({"app", "worker", "stream-worker"})
"""Components whose pods hold the stage's wiring (env) and so must move before a provider.

Stage 6's services (`is_consumer`) are consumers as well."""
SERVICE_PREFIX = builders.workloads.SERVICE_PREFIX
"""The component prefix of stage 6's services."""
QUEUE_SIDE = frozenset({"queue", "worker"})
"""Components that go only once the queue is empty: RabbitMQ and the workers draining it."""
STREAM_SIDE = frozenset({"streaming", "stream-worker"})
"""Components that go only once the group's lag is 0: Kafka and its consumer group."""
STANDBY = "database-standby"
"""PostgreSQL's failover standby: it goes only once the pod that stays is the leader."""


@dataclass(frozen=True)
class Step:
    """Apply or delete one object, once every gate holds."""

    action: Literal["apply", "delete"]
    obj: Obj
    gates: frozenset[Gate] = field(default_factory=frozenset)

    def describe(self) -> str:
        """`apply StatefulSet shop-db`, for logs, Events and `z2m plan`."""
        return f"{self.action} {self.obj['kind']} {self.obj['metadata']['name']}"


@dataclass(frozen=True)
class Phase:
    """A named group of steps, run in order after the phases before it."""

    name: PhaseName
    steps: tuple[Step, ...]


def component(obj: Obj) -> str:
    """The `app.kubernetes.io/component` label of a child."""
    labels: dict[str, str] = obj["metadata"].get("labels") or {}
    return labels.get(builders.COMPONENT, "")


def _replicas(obj: Obj | None) -> int:
    return int(((obj or {}).get("spec") or {}).get("replicas") or 0)


def shrinks(obj: Obj, live: Obj | None) -> bool:
    """Whether applying `obj` removes pods of a stateful server (and their reads)."""
    return obj["kind"] == "StatefulSet" and live is not None and _replicas(obj) < _replicas(live)


FRONTS = frozenset({"gateway", "edge"})
"""Proxies whose upstream is a consumer: the gateway (to the services) and the edge cache
(to the gateway at stage 6, else the app). They move with the consumers, so at 6 -> 5 the
gateway goes only once no edge pod still forwards to it."""


def is_consumer(name: str) -> bool:
    """Whether a component's pods hold the stage's wiring: app, workers, services, fronts."""
    return name in CONSUMERS or name in FRONTS or name.startswith(SERVICE_PREFIX)


def _is_consumer_side(obj: Obj) -> bool:
    """Consumer Deployments and what refers to them (their HPAs and PDBs)."""
    if not is_consumer(component(obj)):
        return False
    return obj["kind"] in ("Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget")


def _retire_gates(obj: Obj, queue_goes: bool, stream_goes: bool) -> frozenset[Gate]:
    if queue_goes and component(obj) in QUEUE_SIDE:
        return frozenset({"rewired", "queue-empty"})
    if stream_goes and component(obj) in STREAM_SIDE:
        return frozenset({"rewired", "stream-drained"})
    if obj["kind"] == "StatefulSet" and component(obj) == STANDBY:
        return frozenset({"rewired", "postgres-leader-kept"})
    return frozenset({"rewired"})


def _upstream(obj: Obj | None) -> str | None:
    """The edge cache's `UPSTREAM` (host:port), from its pod template."""
    if obj is None:
        return None
    for container in obj["spec"]["template"]["spec"].get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == "UPSTREAM":
                return str(env.get("value"))
    return None


def _behind_gateway(obj: Obj) -> bool:
    """The gateway's Deployment and those it routes to: the services and the app."""
    name = component(obj)
    return obj["kind"] == "Deployment" and (
        name in ("gateway", "app") or name.startswith(SERVICE_PREFIX)
    )


def moves_onto_gateway(obj: Obj, live: Obj | None, desired: list[Obj]) -> bool:
    """Whether applying `obj` points the running edge cache at a gateway of `desired`."""
    if obj["kind"] != "Deployment" or component(obj) != "edge" or live is None:
        return False
    new = _upstream(obj)
    gateways = {
        o["metadata"]["name"]
        for o in desired
        if o["kind"] == "Deployment" and component(o) == "gateway"
    }
    return new != _upstream(live) and (new or "").split(":")[0] in gateways


def gateway_unready(desired: list[Obj], live: dict[tuple[str, str, str], Obj]) -> str | None:
    """None once the gateway and all it routes to run their current template, ready.

    A Deployment the watches have not seen yet is not ready: one created by this
    very pass is still starting.
    """
    waiting = sorted(
        o["metadata"]["name"]
        for o in desired
        if _behind_gateway(o)
        and ((seen := live.get(builders.key(o))) is None or not rolled_out(seen))
    )
    if not waiting:
        return None
    return (
        f"the edge moves onto the gateway once {', '.join(waiting)} run ready: the gateway "
        "would answer their routes with 502 until then"
    )


def controlled_by(obj: Obj, uid: str) -> bool:
    """Whether the object's controller owner reference names the ScalingStage with `uid`."""
    refs = obj["metadata"].get("ownerReferences") or []
    return any(ref.get("controller") and ref.get("uid") == uid for ref in refs)


def phases(
    current: list[Obj], desired: list[Obj], owner_uid: str, moving: bool = False
) -> tuple[Phase, ...]:
    """The steps that take the children from `current` to `desired`, phase by phase.

    `desired` is in the builders' apply order; each phase keeps it. Steps that
    would change nothing are still listed: server-side apply makes them no-ops.
    Labels find the candidates to delete, but only what the ScalingStage with
    `owner_uid` controls is ever deleted: a look-alike with our labels stays.
    `moving`: the rows move between databases, so every rewire step waits for that.
    """
    live = {builders.key(o): o for o in current}
    wanted = {builders.key(o) for o in desired}
    redis = [o for o in desired if o["kind"] == "StatefulSet" and component(o) == "cache"]
    live_redis = [o for o in current if o["kind"] == "StatefulSet" and component(o) == "cache"]
    handover = redis_handover.needed(
        max((_replicas(o) for o in live_redis), default=0),
        max((_replicas(o) for o in redis), default=0),
    )
    # At 5 -> 6 Redis Cluster replaces the pair and starts cold: nothing to hand over.
    cluster = any(o["kind"] == "StatefulSet" and component(o) == "cache-cluster" for o in desired)
    handover = handover and not cluster
    consumer_gates: frozenset[Gate] = frozenset({"redis-master-kept"}) if handover else frozenset()
    if moving:
        consumer_gates |= {"database-moved"}
    # Only a stage without RabbitMQ drains the queue: at 5 -> 4 the workers' HPA goes and
    # the queue stays, so nothing waits for it to empty.
    queue_goes, stream_goes = (
        any(
            o["kind"] == "StatefulSet" and component(o) == server and builders.key(o) not in wanted
            for o in current
        )
        for server in ("queue", "streaming")
    )
    provide: list[Step] = []
    rewire: list[Step] = []
    retire: list[Step] = []
    for obj in desired:
        before = live.get(builders.key(obj))
        if shrinks(obj, before):
            retire.append(Step("apply", obj, _retire_gates(obj, queue_goes, stream_goes)))
        elif _is_consumer_side(obj):
            gates = consumer_gates
            if moves_onto_gateway(obj, before, desired):
                gates = gates | {"gateway-ready"}
            rewire.append(Step("apply", obj, gates))
        else:
            provide.append(Step("apply", obj))
    for obj in current:
        if builders.key(obj) not in wanted and controlled_by(obj, owner_uid):
            retire.append(Step("delete", obj, _retire_gates(obj, queue_goes, stream_goes)))
    return (
        Phase("provide", tuple(provide)),
        Phase("rewire", tuple(rewire)),
        Phase("retire", tuple(retire)),
    )


CACHE_WARMUP = (
    "the cache moves between Redis with Sentinel and Redis Cluster by warming up, not by "
    "a data migration: the new one starts empty and fills from the database on misses, "
    "and the old one's claim is kept"
)


def notes(current: list[Obj], desired: list[Obj]) -> list[str]:
    """What a person should know about this change beyond its steps."""

    def has_cluster(objs: list[Obj]) -> bool:
        return any(o["kind"] == "StatefulSet" and component(o) == "cache-cluster" for o in objs)

    def has_pair(objs: list[Obj]) -> bool:
        return any(o["kind"] == "StatefulSet" and component(o) == "cache" for o in objs)

    moved = (has_cluster(desired) and has_pair(current)) or (
        has_pair(desired) and has_cluster(current)
    )
    return [CACHE_WARMUP] if moved else []


def rolled_out(live: Obj | None, *, terminating: bool = True) -> bool:
    """Whether a Deployment runs only pods of its current template, enough of them ready.

    Available alone is not enough: during a rollout the old pods, still wired to what
    is about to go, count as available too. So the controller must have seen the
    current generation, every pod must be updated, and none of the old ones left.
    An old web pod may still finish its drain (seconds) after this: the app treats
    a provider that went as down, and the queue's quiet period outlasts the drain.
    With `terminating=False` (for status), pods shutting down do not count.
    """
    if live is None:
        return True
    spec, st = live.get("spec") or {}, live.get("status") or {}
    want = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    generation = int((live.get("metadata") or {}).get("generation") or 0)
    return (
        int(st.get("observedGeneration") or 0) >= generation
        and int(st.get("updatedReplicas") or 0) >= want
        and int(st.get("replicas") or 0) == int(st.get("updatedReplicas") or 0)
        and int(st.get("availableReplicas") or 0) >= want
        # Where the apiserver counts them (1.33+), pods still shutting down count as old.
        and not (terminating and int(st.get("terminatingReplicas") or 0))
    )

"""Resolve a ScalingStage spec against the stage catalog into the plan in effect.

A plan is the stage's defaults with the user's overrides laid on top. It is
pure: it takes no fact about the world.
"""

from __future__ import annotations

from dataclasses import dataclass

from z2m import api, catalog


class PlanError(ValueError):
    """The spec asks for something no plan can satisfy."""


class NotBuiltError(PlanError):
    """The spec asks for a stage z2m does not build: not yet (6), or only plans (7)."""

    def __init__(self, stage: catalog.Stage) -> None:
        self.stage = stage
        what = "is not implemented yet"
        if stage.plan_only:
            what = f"is a plan only (`z2m plan --to {stage.number}`): z2m does not build it"
        super().__init__(
            f"stage {stage.number} ({stage.title}) {what}; "
            f"the highest stage z2m builds is {catalog.MAX_IMPLEMENTED}"
        )


@dataclass(frozen=True)
class Plan:
    """What the operator converges one ScalingStage to."""

    name: str
    namespace: str
    spec: api.ScalingStageSpec
    stage: catalog.Stage
    app_replicas: int | None
    """None when the HPA or another autoscaler owns the replica count."""
    app_autoscaling: catalog.Autoscaling | None
    colocated_database: bool
    """Stage 1: the app runs on the database's node (the database is a StatefulSet anyway)."""
    read_replicas: int
    edge_cache: bool
    redis: bool
    redis_replicas: int
    queue: bool
    event_streaming: bool
    """Kafka carries the jobs; the workers are its consumer group (at most one per partition)."""
    workers: int
    worker_autoscaling: catalog.Autoscaling | None
    failover_standbys: int
    """PostgreSQL standbys Patroni may promote when the primary dies (stage 5: one)."""
    synchronous: bool
    """Commits wait for a standby, so a failover loses no acknowledged write."""
    zones: int | None
    """How many zones the cluster's nodes are in (None: not known); 2+ separates the standby."""
    monitoring: bool
    search: bool = False
    """OpenSearch runs: the user enabled it (spec.search) and the stage offers it."""
    gateway: bool = False
    """Stage 6: one entry point (Gateway API, or an nginx gateway) in front of the services."""
    microservices: tuple[catalog.Microservice, ...] = ()
    redis_cluster: catalog.RedisCluster | None = None
    """Stage 6: Redis in cluster mode instead of one Redis (with Sentinel at stage 5)."""
    regions: int | None = None
    """How many regions the nodes are in (None: not known or not asked); 2+ spreads by region."""
    shards: int = 0
    """Stage 6: PostgreSQL shards by user ID (0: the database is not sharded)."""
    shards_routed: int = 0
    """How many shards the app routes to (DATABASE_SHARDS); 0: one database. Set from the
    layout the shard move's cutover recorded (`z2m.shard_phase`), never from the stage."""

    @property
    def sentinel(self) -> bool:
        """Redis replicas are watched by Sentinel, which fails the primary over."""
        return self.redis and self.redis_cluster is None and self.redis_replicas > 0

    @property
    def region_spread(self) -> bool:
        """The stage spreads pods over regions, and the nodes are in two or more."""
        return (
            bool(self.stage.topology and self.stage.topology.regions) and (self.regions or 0) >= 2
        )

    def status(self) -> api.PlanStatus:
        """The plan as shown in the ScalingStage's status."""
        scaling = self.app_autoscaling
        return api.PlanStatus(
            app_replicas=self.app_replicas,
            autoscaling=(
                f"{scaling.min_replicas}-{scaling.max_replicas} at {scaling.cpu_percent}% CPU"
                if scaling
                else None
            ),
            read_replicas=self.read_replicas,
            redis=self.redis,
            redis_replicas=self.redis_replicas,
            queue=self.queue,
            event_streaming=self.event_streaming,
            workers=self.workers,
            edge_cache=self.edge_cache,
            database_failover=(
                ("patroni, synchronous" if self.synchronous else "patroni")
                if self.failover_standbys
                else "none"
            ),
            monitoring=self.monitoring,
            search=self.search,
            gateway=self.gateway,
            services=[m.role for m in self.microservices],
            redis_cluster=(
                f"{self.redis_cluster.primaries} primaries + "
                f"{self.redis_cluster.primaries * self.redis_cluster.replicas_per_primary} "
                "replicas"
                if self.redis_cluster
                else None
            ),
            regions=self.regions if self.region_spread else None,
            sharded_database=bool(self.shards),
            shards=self.shards or None,
        )


def resolve(
    spec: api.ScalingStageSpec,
    *,
    name: str,
    namespace: str,
    zones: int | None = None,
    regions: int | None = None,
) -> Plan:
    """Lay the spec's overrides over its stage's defaults.

    The CRD's CEL rules refuse contradictions at admission; the same checks are
    repeated here so that `z2m render` and unit tests give the same answer
    without an apiserver.
    """
    stage = catalog.stage(spec.stage)
    if stage.topology is None:
        raise NotBuiltError(stage)
    entry = stage.topology
    o = spec.overrides
    colocated = entry.colocated_database
    if colocated and (o.app_replicas or 1) > 1:
        raise PlanError("stage 1 is one machine shared with the database: one app replica only")
    if colocated and (o.read_replicas or 0) > 0:
        raise PlanError("stage 1 is one machine with no separate database to replicate")
    if colocated and o.autoscaling is not None:
        raise PlanError("stage 1 cannot autoscale: it is one machine, shared with the database")
    if o.autoscaling is not None and o.app_replicas is not None:
        raise PlanError("set either overrides.appReplicas or overrides.autoscaling, not both")

    autoscaling = entry.app_autoscaling
    if o.autoscaling is not None:
        autoscaling = catalog.Autoscaling(
            o.autoscaling.min_replicas, o.autoscaling.max_replicas, o.autoscaling.target_cpu_percent
        )
    if o.app_replicas is not None:
        autoscaling = None
    if autoscaling is not None and autoscaling.min_replicas > autoscaling.max_replicas:
        raise PlanError("autoscaling.minReplicas must not be above autoscaling.maxReplicas")

    app_replicas: int | None = o.app_replicas or entry.app_replicas
    if autoscaling is not None or o.replicas_managed_externally:
        app_replicas = None

    queue = entry.queue if o.queue is None else o.queue
    streaming = entry.event_streaming
    workers = entry.workers if o.workers is None else o.workers
    if o.workers and not (queue or streaming):
        # Only workers the user asks for need the queue; the stage's own go with it.
        raise PlanError("workers need the queue: set overrides.queue or use stage 4 or higher")
    if not (queue or streaming):
        workers = 0

    redis = entry.redis if o.redis is None else o.redis
    standbys = 1 if entry.database_failover else 0

    return Plan(
        name=name,
        namespace=namespace,
        spec=spec,
        stage=stage,
        app_replicas=app_replicas,
        app_autoscaling=autoscaling,
        colocated_database=colocated,
        read_replicas=entry.read_replicas if o.read_replicas is None else o.read_replicas,
        edge_cache=entry.edge_cache if o.edge_cache is None else o.edge_cache,
        redis=redis,
        redis_replicas=entry.redis_replicas if redis else 0,
        queue=queue,
        event_streaming=streaming,
        workers=workers,
        worker_autoscaling=entry.worker_autoscaling if (queue or streaming) and workers else None,
        failover_standbys=standbys,
        synchronous=bool(standbys) and spec.database.synchronous,
        zones=zones,
        monitoring=entry.monitoring,
        search=entry.search and spec.search.enabled,
        gateway=entry.gateway,
        microservices=entry.microservices,
        redis_cluster=entry.redis_cluster if redis else None,
        regions=regions if entry.regions else None,
        shards=spec.database.shards if entry.sharded_database else 0,
    )

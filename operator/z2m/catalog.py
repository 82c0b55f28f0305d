"""The stage catalog: the seed's seven stages as data.

Everything that differs between stages lives in this table, so that builders,
the planner, the CLI diagram and the docs read one source. This module holds no
logic beyond lookups; it never talks to Kubernetes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Band:
    """A closed range of numbers, such as the RPS a stage handles or what it costs."""

    low: float
    high: float

    def __str__(self) -> str:
        return f"{_human(self.low)}-{_human(self.high)}"


def _human(n: float) -> str:
    for size, suffix in ((1_000_000, "M"), (1_000, "K")):
        if n >= size:
            return f"{n / size:g}{suffix}"
    return f"{n:g}"


@dataclass(frozen=True)
class Autoscaling:
    """An HPA's range and CPU target."""

    min_replicas: int
    max_replicas: int
    cpu_percent: int


@dataclass(frozen=True)
class Stage:
    """One rung of the ladder: what runs, what it costs, what it can carry."""

    number: int
    title: str
    users: str
    rps: Band
    monthly_cost_usd: Band
    app_replicas: int
    colocated_database: bool
    read_replicas: int
    edge_cache: bool
    redis: bool
    redis_replicas: int
    queue: bool
    workers: int
    app_autoscaling: Autoscaling | None
    worker_autoscaling: Autoscaling | None
    database_failover: bool
    monitoring: bool
    implemented: bool
    adds: tuple[str, ...]
    """What this stage adds over the previous one, and why (from the seed)."""


STAGES: tuple[Stage, ...] = (
    Stage(
        number=1,
        title="1 user: everything on one machine",
        users="1",
        rps=Band(0, 1),
        monthly_cost_usd=Band(5, 20),
        app_replicas=1,
        colocated_database=True,
        read_replicas=0,
        edge_cache=False,
        redis=False,
        redis_replicas=0,
        queue=False,
        workers=0,
        app_autoscaling=None,
        worker_autoscaling=None,
        database_failover=False,
        monitoring=False,
        implemented=True,
        adds=(
            "one machine: the app and PostgreSQL on the same node, PostgreSQL in its own "
            "StatefulSet from the start so that no later stage moves its data",
        ),
    ),
    Stage(
        number=2,
        title="100 users: a separate database",
        users="100",
        rps=Band(1, 10),
        monthly_cost_usd=Band(50, 80),
        app_replicas=1,
        colocated_database=False,
        read_replicas=0,
        edge_cache=False,
        redis=False,
        redis_replicas=0,
        queue=False,
        workers=0,
        app_autoscaling=None,
        worker_autoscaling=None,
        database_failover=False,
        monitoring=False,
        implemented=True,
        adds=(
            "the database gets a machine of its own: the app is no longer pinned to its node "
            "and keeps off it where there is another, so it stops starving the database",
        ),
    ),
    Stage(
        number=3,
        title="10K users: load balancer, read replica, edge cache",
        users="10K",
        rps=Band(100, 500),
        monthly_cost_usd=Band(300, 500),
        app_replicas=2,
        colocated_database=False,
        read_replicas=1,
        edge_cache=True,
        redis=False,
        redis_replicas=0,
        queue=False,
        workers=0,
        app_autoscaling=None,
        worker_autoscaling=None,
        database_failover=False,
        monitoring=False,
        implemented=True,
        adds=(
            "two stateless app replicas behind a load-balancing Service",
            "a streaming read replica takes the reads (80-90% of traffic)",
            "an edge cache serves static assets",
        ),
    ),
    Stage(
        number=4,
        title="100K users: cache, more replicas, queue and workers",
        users="100K",
        rps=Band(1_000, 5_000),
        monthly_cost_usd=Band(800, 1_500),
        app_replicas=4,
        colocated_database=False,
        read_replicas=2,
        edge_cache=True,
        redis=True,
        redis_replicas=0,
        queue=True,
        workers=2,
        app_autoscaling=None,
        worker_autoscaling=None,
        database_failover=False,
        monitoring=False,
        implemented=True,
        adds=(
            "Redis cache-aside: the biggest lever, 80-90% fewer database reads",
            "four app replicas and a second read replica",
            "RabbitMQ and workers take slow work out of the request",
        ),
    ),
    Stage(
        number=5,
        title="1M users: autoscaling, failover, replicated cache, monitoring",
        users="1M",
        rps=Band(10_000, 50_000),
        monthly_cost_usd=Band(5_000, 15_000),
        app_replicas=4,
        colocated_database=False,
        read_replicas=3,
        edge_cache=True,
        redis=True,
        redis_replicas=1,
        queue=True,
        workers=2,
        app_autoscaling=Autoscaling(min_replicas=4, max_replicas=12, cpu_percent=70),
        worker_autoscaling=Autoscaling(min_replicas=2, max_replicas=8, cpu_percent=70),
        database_failover=True,
        monitoring=True,
        implemented=True,
        adds=(
            "the app autoscales from 4 to 12 replicas at 70% CPU",
            "a PostgreSQL standby in another zone, promoted by Patroni within about 20 s "
            "when the primary dies; a third read replica",
            "Redis gets a replica and Sentinel",
            "monitoring: scrape config, alert rules and a dashboard",
        ),
    ),
)

# Stages 6 and 7 are not built yet: they keep stage 5's topology and carry the seed's numbers.
STAGES = (
    *STAGES,
    replace(
        STAGES[-1],
        number=6,
        title="10M users: microservices, sharding, multi-region",
        users="10M",
        rps=Band(50_000, 200_000),
        monthly_cost_usd=Band(50_000, 150_000),
        implemented=False,
        adds=("microservices, an API gateway, database sharding, multi-region, Redis Cluster",),
    ),
    replace(
        STAGES[-1],
        number=7,
        title="100M users: world scale",
        users="100M",
        rps=Band(200_000, 1_000_000),
        monthly_cost_usd=Band(500_000, 5_000_000),
        implemented=False,
        adds=("multi-CDN, edge computing, specialised databases, stream processing, 3+ regions",),
    ),
)


@dataclass(frozen=True)
class Footprint:
    """Default requests and memory limit of a server z2m runs (the user's app has its own).

    Small on purpose: they make the pods Burstable rather than BestEffort, the first to be
    evicted, and still fit stage 5 on one small node. The spec overrides them per component.
    """

    cpu: str
    memory: str
    memory_limit: str


FOOTPRINTS: dict[str, Footprint] = {
    "database": Footprint(cpu="50m", memory="128Mi", memory_limit="512Mi"),
    "read-replica": Footprint(cpu="50m", memory="128Mi", memory_limit="512Mi"),
    "cache": Footprint(cpu="25m", memory="32Mi", memory_limit="256Mi"),
    "cache-sentinel": Footprint(cpu="10m", memory="16Mi", memory_limit="64Mi"),
    "queue": Footprint(cpu="50m", memory="128Mi", memory_limit="512Mi"),
    "edge": Footprint(cpu="10m", memory="16Mi", memory_limit="128Mi"),
}

# The user each of our server images runs as (their Dockerfiles' USER).
SERVER_UIDS: dict[str, int] = {"postgres": 999, "redis": 999, "rabbitmq": 999, "nginx": 101}

MIN_STAGE = STAGES[0].number
MAX_STAGE = STAGES[-1].number
MAX_IMPLEMENTED = max(s.number for s in STAGES if s.implemented)


def stage(number: int) -> Stage:
    """Return the catalog entry for a stage number, raising KeyError outside 1-7."""
    for entry in STAGES:
        if entry.number == number:
            return entry
    raise KeyError(f"there is no stage {number}; stages run from {MIN_STAGE} to {MAX_STAGE}")

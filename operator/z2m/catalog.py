"""The stage catalog: the seed's seven stages as data.

Everything that differs between stages lives in this table, so that builders,
the planner, the CLI diagram and the docs read one source. A stage z2m builds
has a `Topology`; one it only plans (stage 7) has a `Blueprint` instead: what it
adds, what drives each piece's cost, what the user must bring, and why one
cluster and one operator should not run it. A stage with neither would be
not built yet, and claim no pieces. Stage 6 provides its shards, and the
operator moves the rows into them (and back at 6 -> 5) as a phase of the stage
change (`shard_phase`). This module holds no logic beyond lookups; it never talks
to Kubernetes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Band:
    """A closed range of numbers, such as the RPS a stage handles or what it costs."""

    low: float
    high: float
    open_ended: bool = False
    """The seed writes the top as "and more" (stage 7's "1M+" RPS, "$5,000,000+")."""

    def __str__(self) -> str:
        return f"{_human(self.low)}-{_human(self.high)}{'+' if self.open_ended else ''}"


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
class Microservice:
    """One service the app is split into at stage 6: the same image, one role's routes."""

    role: str
    routes: tuple[str, ...]
    """Path prefixes the gateway sends to it (and the only ones its pods serve)."""
    autoscaling: Autoscaling
    authenticated: bool = False
    """The gateway lets a request through only with a session the users service accepts."""


@dataclass(frozen=True)
class RedisCluster:
    """Redis in cluster mode: hash slots spread over primaries, each with its replicas."""

    primaries: int
    replicas_per_primary: int

    @property
    def nodes(self) -> int:
        """How many Redis pods the cluster runs."""
        return self.primaries * (1 + self.replicas_per_primary)


@dataclass(frozen=True)
class Topology:
    """What z2m runs for a stage it builds.

    The fields after `monitoring` are stage 6's; they default to "absent" so that
    stages 1-5 need not name them.
    """

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
    search: bool
    """The stage offers a search engine (OpenSearch) the user may switch on (spec.search):
    stage 5, where the seed adds it, and stage 6, which keeps it."""
    gateway: bool = False
    """One entry point in front of the services: routing, rate limiting, authentication."""
    microservices: tuple[Microservice, ...] = ()
    redis_cluster: RedisCluster | None = None
    """Replaces the Sentinel-watched pair: the cache moves by warming up, not by copying."""
    regions: bool = False
    """The app, its services, read replicas and cache spread over the nodes' regions
    (`topology.kubernetes.io/region`); the database primary stays where it is."""
    sharded_database: bool = False
    """The database split by user ID: N PostgreSQL shards (spec.database.shards) are provided
    beside stage 5's database, and the rows move into them before the app is rewired."""
    event_streaming: bool = False
    """Kafka (KRaft) carries the jobs instead of RabbitMQ; the workers form its consumer group."""


@dataclass(frozen=True)
class Addition:
    """One piece of a stage z2m only plans: what it is, what drives its cost, what it needs."""

    name: str
    what: str
    cost: str
    """What its bill grows with. The seed prices stage 7 as a whole, not piece by piece."""
    user_brings: tuple[str, ...]
    """What the user must have before it can run: accounts, providers, teams, clusters."""


@dataclass(frozen=True)
class Blueprint:
    """A stage z2m describes but does not run: what it adds and why it stays outside z2m."""

    additions: tuple[Addition, ...]
    why_not_here: tuple[str, ...]
    """Why one cluster and one operator should not run it."""


@dataclass(frozen=True)
class Stage:
    """One rung of the seed's ladder: what it carries, what it costs, and what z2m does with it.

    `topology` is what z2m builds; None where it builds nothing. `blueprint` is set
    for a stage z2m only plans. A stage with neither is simply not built yet.
    """

    number: int
    title: str
    users: str
    rps: Band
    monthly_cost_usd: Band
    adds: tuple[str, ...]
    """What this stage adds over the previous one, and why (from the seed)."""
    topology: Topology | None
    blueprint: Blueprint | None = None

    @property
    def implemented(self) -> bool:
        """z2m builds this stage."""
        return self.topology is not None

    @property
    def plan_only(self) -> bool:
        """z2m describes this stage (`blueprint`) and will not build it."""
        return self.blueprint is not None


STAGES: tuple[Stage, ...] = (
    Stage(
        number=1,
        title="1 user: everything on one machine",
        users="1",
        rps=Band(0, 1),
        monthly_cost_usd=Band(5, 20),
        adds=(
            "one machine: the app and PostgreSQL on the same node, PostgreSQL in its own "
            "StatefulSet from the start so that no later stage moves its data",
        ),
        topology=Topology(
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
            search=False,
        ),
    ),
    Stage(
        number=2,
        title="100 users: a separate database",
        users="100",
        rps=Band(1, 10),
        monthly_cost_usd=Band(50, 80),
        adds=(
            "the database gets a machine of its own: the app is no longer pinned to its node "
            "and keeps off it where there is another, so it stops starving the database",
        ),
        topology=Topology(
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
            search=False,
        ),
    ),
    Stage(
        number=3,
        title="10K users: load balancer, read replica, edge cache",
        users="10K",
        rps=Band(100, 500),
        monthly_cost_usd=Band(300, 500),
        adds=(
            "two stateless app replicas behind a load-balancing Service",
            "a streaming read replica takes the reads (80-90% of traffic)",
            "an edge cache serves static assets",
        ),
        topology=Topology(
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
            search=False,
        ),
    ),
    Stage(
        number=4,
        title="100K users: cache, more replicas, queue and workers",
        users="100K",
        rps=Band(1_000, 5_000),
        monthly_cost_usd=Band(800, 1_500),
        adds=(
            "Redis cache-aside: the biggest lever, 80-90% fewer database reads",
            "four app replicas and a second read replica",
            "RabbitMQ and workers take slow work out of the request",
        ),
        topology=Topology(
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
            search=False,
        ),
    ),
    Stage(
        number=5,
        title="1M users: autoscaling, failover, replicated cache, monitoring, event streaming",
        users="1M",
        rps=Band(10_000, 50_000),
        monthly_cost_usd=Band(5_000, 15_000),
        adds=(
            "the app autoscales from 4 to 12 replicas at 70% CPU",
            "a PostgreSQL standby in another zone, promoted by Patroni within about 30 s "
            "when the primary dies; a third read replica",
            "Redis gets a replica and Sentinel",
            "event streaming: Kafka (KRaft) takes the jobs over from RabbitMQ, which goes once "
            "drained; the workers are a consumer group, as many as the topic has partitions",
            "monitoring: Prometheus and Alertmanager scrape the app and workers and load "
            "z2m's alert rules (a PodMonitor and a PrometheusRule instead where the "
            "Prometheus Operator runs); a Grafana dashboard; auto-promotion needs no URL",
            "search, if your app has search: an OpenSearch node the app indexes posts into "
            "and searches (opt-in, spec.search.enabled); below this stage, and whenever the "
            "engine is away, the app searches with PostgreSQL's full-text search",
        ),
        topology=Topology(
            app_replicas=4,
            colocated_database=False,
            read_replicas=3,
            edge_cache=True,
            redis=True,
            redis_replicas=1,
            queue=False,
            workers=2,
            app_autoscaling=Autoscaling(min_replicas=4, max_replicas=12, cpu_percent=70),
            worker_autoscaling=Autoscaling(min_replicas=2, max_replicas=8, cpu_percent=70),
            database_failover=True,
            monitoring=True,
            search=True,
            event_streaming=True,
        ),
    ),
    Stage(
        number=6,
        title="10M users: microservices, gateway, Redis Cluster, regions, shards by user ID",
        users="10M",
        rps=Band(50_000, 200_000),
        monthly_cost_usd=Band(50_000, 150_000),
        adds=(
            "microservices behind an API gateway (authentication, rate limiting, routing): "
            "users, feed and notifications, each a Deployment of the app's image in one role "
            "with its own HPA; the app keeps the routes no service has taken yet",
            "Redis Cluster (3 primaries, 3 replicas) replaces the Sentinel pair; the cache "
            "moves by warming up again, no data is copied",
            "two or more regions: the app, services, read replicas and cache spread over "
            "the nodes' regions; the database primary stays in one region",
            "PostgreSQL shards by user ID (spec.database.shards, 2 by default), each its own "
            "Patroni cluster on a retained claim; the operator moves the rows into them online "
            "(logical replication, then a write fence of well under a second on loopback) "
            "and only then gives the app DATABASE_SHARDS; back at 6 -> 5 it merges them into "
            "stage 5's database first. Tested with real databases, not yet with real pods",
        ),
        topology=Topology(
            app_replicas=4,
            colocated_database=False,
            read_replicas=3,
            edge_cache=True,
            redis=True,
            redis_replicas=0,
            queue=False,
            workers=2,
            app_autoscaling=Autoscaling(min_replicas=4, max_replicas=12, cpu_percent=70),
            worker_autoscaling=Autoscaling(min_replicas=2, max_replicas=8, cpu_percent=70),
            database_failover=True,
            monitoring=True,
            search=True,
            event_streaming=True,
            gateway=True,
            microservices=(
                Microservice(
                    role="users",
                    routes=("/api/users", "/api/me"),
                    autoscaling=Autoscaling(min_replicas=2, max_replicas=10, cpu_percent=70),
                ),
                Microservice(
                    role="feed",
                    routes=("/api/posts",),
                    autoscaling=Autoscaling(min_replicas=2, max_replicas=20, cpu_percent=70),
                ),
                Microservice(
                    role="notifications",
                    routes=("/api/notifications",),
                    autoscaling=Autoscaling(min_replicas=2, max_replicas=8, cpu_percent=70),
                    authenticated=True,
                ),
            ),
            redis_cluster=RedisCluster(primaries=3, replicas_per_primary=1),
            regions=True,
            sharded_database=True,
        ),
    ),
    Stage(
        number=7,
        title="100M users: world scale",
        users="100M",
        rps=Band(200_000, 1_000_000, open_ended=True),
        monthly_cost_usd=Band(500_000, 5_000_000, open_ended=True),
        adds=(
            "multi-CDN and edge computing in front of everything",
            "50+ microservices, specialised databases and stream processing",
            "3+ regions, each (mostly) independent, and a data infrastructure",
        ),
        topology=None,
        blueprint=Blueprint(
            additions=(
                Addition(
                    name="multi-CDN",
                    what="several CDN providers, traffic steered between them by performance "
                    "and cost",
                    cost="each provider bills the traffic it serves, plus the steering service",
                    user_brings=(
                        "accounts with two or more CDN providers",
                        "DNS with traffic steering between them, and the domain's TLS "
                        "certificates on each",
                    ),
                ),
                Addition(
                    name="edge computing",
                    what="authentication, A/B tests, personalisation and rate limiting run at "
                    "the CDN edge, before a request reaches a data centre",
                    cost="billed per request and CPU time by the edge platform",
                    user_brings=("an edge-compute platform on those CDNs and code written for it",),
                ),
                Addition(
                    name="50+ microservices",
                    what="each major feature a service with its own team, database and "
                    "deployment pipeline",
                    cost="grows with the number of services and teams",
                    user_brings=("the teams, one deployment pipeline per service",),
                ),
                Addition(
                    name="specialised databases",
                    what="PostgreSQL for relational data, a key-value store, a search engine, "
                    "a time-series store, a graph database for recommendations",
                    cost="one bill per database, each sized and replicated for its own load",
                    user_brings=(
                        "managed databases, or each one's own operator and the people to run it",
                        "the app's data model split across them",
                    ),
                ),
                Addition(
                    name="stream processing",
                    what="Kafka feeding Flink or Spark Streaming for analytics, fraud "
                    "detection and personalisation",
                    cost="brokers and processing clusters sized for the event rate",
                    user_brings=("Kafka and a stream processor, managed or with their operators",),
                ),
                Addition(
                    name="3+ regions",
                    what="full deployments in the US, Europe and Asia, (mostly) independent, "
                    "with cross-region replication for data that must be globally consistent",
                    cost="every region's whole stack, plus cross-region traffic",
                    user_brings=(
                        "a Kubernetes cluster in each of three or more regions",
                        "global DNS or load balancing across them",
                    ),
                ),
                Addition(
                    name="data infrastructure",
                    what="events flow from Kafka through stream processing into a data "
                    "warehouse that data scientists query",
                    cost="warehouse storage and queries",
                    user_brings=("a data warehouse and the pipeline into it",),
                ),
            ),
            why_not_here=(
                "a cluster lives in one region, and an operator reconciles inside one cluster: "
                "three regions are three clusters, and no region's failure may take the others' "
                "control with it",
                "CDNs, edge platforms and DNS are other companies' services, set up through "
                "their accounts and APIs, not Kubernetes objects in this cluster",
                "each specialised database and stream processor has an operator or managed "
                "service of its own, kept by people who run it at scale; one operator wrapping "
                "them all would be a worse copy of each",
                'at this size "almost everything is custom-built" (the seed): the architecture '
                "follows the organisation, which no catalog entry can choose",
            ),
        ),
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
    # Kafka's heap is 384 MiB (its image's default); the JVM adds about 100 MiB beside it.
    # Its CPU request is small like the others': during 4 -> 5 RabbitMQ, its workers, Kafka
    # and the new consumer group all run at once, and on a 2-core node 100m did not fit.
    "streaming": Footprint(cpu="25m", memory="512Mi", memory_limit="768Mi"),
    "edge": Footprint(cpu="10m", memory="16Mi", memory_limit="128Mi"),
    "prometheus": Footprint(cpu="50m", memory="128Mi", memory_limit="512Mi"),
    "alertmanager": Footprint(cpu="10m", memory="32Mi", memory_limit="128Mi"),
    "prometheus-discovery": Footprint(cpu="5m", memory="8Mi", memory_limit="64Mi"),
    # A 256 MiB heap (builders/search.py); the JVM around it measured 350-510 MiB.
    "search": Footprint(cpu="100m", memory="512Mi", memory_limit="1Gi"),
    "gateway": Footprint(cpu="10m", memory="16Mi", memory_limit="128Mi"),
    "cache-cluster": Footprint(cpu="25m", memory="32Mi", memory_limit="256Mi"),
}

# The user each of our server images runs as (their Dockerfiles' USER).
SERVER_UIDS: dict[str, int] = {
    "postgres": 999,
    "redis": 999,
    "rabbitmq": 999,
    "kafka": 999,
    "nginx": 101,
    "prometheus": 999,
    "opensearch": 1000,
}

MIN_STAGE = STAGES[0].number
MAX_STAGE = STAGES[-1].number
MAX_IMPLEMENTED = max(s.number for s in STAGES if s.implemented)


def stage(number: int) -> Stage:
    """Return the catalog entry for a stage number, raising KeyError outside 1-7."""
    for entry in STAGES:
        if entry.number == number:
            return entry
    raise KeyError(f"there is no stage {number}; stages run from {MIN_STAGE} to {MAX_STAGE}")


def topology(number: int) -> Topology:
    """What z2m runs at a stage, raising KeyError for a stage it does not build."""
    built = stage(number).topology
    if built is None:
        raise KeyError(f"z2m does not build stage {number}; it builds 1 to {MAX_IMPLEMENTED}")
    return built

"""The ScalingStage API: pydantic models that are the one source of truth for the CRD.

`crds/scalingstage.yaml` is generated from these models by `z2m crd` (see
`z2m.crd`); a test fails when the committed file drifts from them. Cross-field
rules that the apiserver must enforce at admission are attached here as CEL
`x-kubernetes-validations`, next to the fields they constrain.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from kubernetes.utils import parse_quantity
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

GROUP = "z2m.dev"
VERSION = "v1alpha1"
KIND = "ScalingStage"
PLURAL = "scalingstages"
SINGULAR = "scalingstage"
SHORT_NAMES = ("sstage",)

# Images z2m builds (hack/images.sh; `make images` loads them into kind). Debian's
# PostgreSQL 15, RabbitMQ 3.10, Redis 7.0, nginx 1.22, Prometheus 2.42 and Alertmanager 0.25 inside.
IMAGE_TAG = "0.1.0"
DEFAULT_APP_IMAGE = f"z2m/sample-app:{IMAGE_TAG}"
DEFAULT_POSTGRES_IMAGE = f"z2m/postgres:{IMAGE_TAG}"
DEFAULT_REDIS_IMAGE = f"z2m/redis:{IMAGE_TAG}"
DEFAULT_RABBITMQ_IMAGE = f"z2m/rabbitmq:{IMAGE_TAG}"
DEFAULT_KAFKA_IMAGE = f"z2m/kafka:{IMAGE_TAG}"
DEFAULT_NGINX_IMAGE = f"z2m/nginx:{IMAGE_TAG}"
DEFAULT_PROMETHEUS_IMAGE = f"z2m/prometheus:{IMAGE_TAG}"
# OpenSearch 2.19.6 from its Maven Central jars (hack/images/opensearch).
DEFAULT_OPENSEARCH_IMAGE = f"z2m/opensearch:{IMAGE_TAG}"

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"
DNS_LABEL_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
IMAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$"
"""An image reference (`registry:5000/team/app:1.2@sha256:...`): no spaces, ASCII only."""
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


MAX_NAME_LENGTH = 41
"""The longest ScalingStage name whose children all get valid names.

Children are named `<name>-<component>`: a Service name is a DNS label (63 at
most, starting with a letter), and a StatefulSet's pods carry a
`controller-revision-hash` label of `<statefulset>-<hash of 10>`, also 63 at most,
so `<name>-db-replica` may be 52 long. A unit test renders every stage at this
length to keep the number honest.
"""

NAME_RULES: list[dict[str, str]] = [
    {
        "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH} "
        "&& self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters of lowercase "
        "letters, digits and '-', starting with a letter: it begins the names of the "
        "Services and StatefulSets z2m makes (such as <name>-redis-sentinel), which "
        "Kubernetes keeps to 63 characters",
        # No fieldPath: the apiserver allows none into metadata; the message names the field.
    }
]
"""CEL rules on the ScalingStage's own name, set at the root of the CRD's schema."""


def _rules(*rules: tuple[str, str, str]) -> dict[str, Any]:
    """CEL rules as `(rule, message, field)`, for `json_schema_extra`.

    `field` (a path from the object the rule sits on, `.overrides.appReplicas`) is
    the field a refusal names, so `kubectl apply` points at what to change.
    """
    return {
        "x-kubernetes-validations": [{"rule": r, "message": m, "fieldPath": f} for r, m, f in rules]
    }


class Model(BaseModel):
    """Base for every API model: frozen, camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
    )


class EnvVar(Model):
    """A plain environment variable for the app and its workers."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_LABEL_PATTERN)
    value: str = Field(default="", max_length=32768)


class ResourceList(Model):
    """CPU and memory, as Kubernetes quantities."""

    cpu: str | None = Field(default=None, pattern=QUANTITY_PATTERN, max_length=32)
    memory: str | None = Field(default=None, pattern=QUANTITY_PATTERN, max_length=32)


DEFAULT_REQUESTS = {"cpu": "100m", "memory": "128Mi"}
DEFAULT_LIMITS = {"memory": "512Mi"}


def _quantity(text: str) -> float:
    return float(parse_quantity(text))  # type: ignore[no-untyped-call]


def _within_limit(resource: str) -> tuple[str, str, str]:
    """A rule: the request of `resource` is not above its limit, defaults counted.

    An unset `requests` (or `limits`) takes the model's default as a whole, which
    the CRD cannot show (nested defaults are not in the schema), so it is spelled
    out here; a Pod whose request is above its limit is refused by the apiserver.
    """

    def effective(side: str, defaults: dict[str, str]) -> str:
        default = f"'{defaults[resource]}'" if resource in defaults else "''"
        return (
            f"(has(self.{side}) ? (has(self.{side}.{resource}) ? self.{side}.{resource} : '') "
            f": {default})"
        )

    request, limit = effective("requests", DEFAULT_REQUESTS), effective("limits", DEFAULT_LIMITS)
    return (
        f"{request} == '' || {limit} == '' "
        f"|| quantity({request}).compareTo(quantity({limit})) <= 0",
        f"resources.requests.{resource} must not be above resources.limits.{resource} "
        f"(when requests or limits is unset, it is {DEFAULT_REQUESTS} or {DEFAULT_LIMITS})",
        ".requests",
    )


class Resources(Model):
    """Requests and limits for one container."""

    requests: ResourceList = ResourceList.model_validate(DEFAULT_REQUESTS)
    limits: ResourceList = ResourceList.model_validate(DEFAULT_LIMITS)

    model_config = ConfigDict(
        json_schema_extra=_rules(_within_limit("cpu"), _within_limit("memory"))
    )

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        for resource in ("cpu", "memory"):
            request = getattr(self.requests, resource)
            limit = getattr(self.limits, resource)
            if request and limit and _quantity(request) > _quantity(limit):
                raise ValueError(_within_limit(resource)[1])
        return self


class AppSpec(Model):
    """The user's application: one stateless image that serves web and, as workers, jobs."""

    image: str = Field(default=DEFAULT_APP_IMAGE, pattern=IMAGE_PATTERN, max_length=512)
    port: int = Field(default=8080, ge=1, le=65535)
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=100,
        # A map keyed by name: the apiserver refuses a name twice, as server-side apply
        # of the Deployment would.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    resources: Resources = Resources()
    worker_command: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Command for worker pods; empty runs the image's own entrypoint "
        "with ROLE=worker.",
    )
    static_path: str = Field(
        default="/static/",
        pattern=r"^/.*/$",
        max_length=256,
        description="URL prefix of static assets, cached by the edge cache from stage 3.",
    )


class Autoscaling(Model):
    """An HPA range for the app, replacing the stage's default."""

    min_replicas: int = Field(ge=1, le=1000)
    max_replicas: int = Field(ge=1, le=1000)
    target_cpu_percent: int = Field(default=70, ge=1, le=100)

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "self.minReplicas <= self.maxReplicas",
                "autoscaling.minReplicas must not be above autoscaling.maxReplicas",
                ".minReplicas",
            )
        )
    )


class Overrides(Model):
    """Stage defaults a user may change. Unset fields take the stage's value."""

    app_replicas: int | None = Field(default=None, ge=1, le=1000)
    read_replicas: int | None = Field(default=None, ge=0, le=15)
    redis: bool | None = None
    queue: bool | None = None
    workers: int | None = Field(default=None, ge=0, le=1000)
    edge_cache: bool | None = None
    autoscaling: Autoscaling | None = None
    replicas_managed_externally: bool = Field(
        default=False,
        description="Hand the app's replica count to another autoscaler (KEDA, GitOps): "
        "the operator never writes the app Deployment's spec.replicas.",
    )


DEFAULT_STORAGE_SIZE = "1Gi"


class Storage(Model):
    """Size and class of the volumes of a stateful component."""

    size: str = Field(
        default=DEFAULT_STORAGE_SIZE,
        pattern=QUANTITY_PATTERN,
        max_length=32,
        description="The size of each volume. It may grow (the claims are expanded where "
        "their StorageClass allows it) but never shrink.",
    )
    storage_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="The StorageClass of the volumes; unset takes the cluster's default. "
        "Fixed once the ScalingStage exists: claims keep the class they were made with.",
    )

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "!has(self.size) || quantity(self.size).compareTo(quantity('0')) > 0",
                "storage.size must be more than 0: a volume holds the data",
                ".size",
            )
        )
    )

    @model_validator(mode="after")
    def _not_empty(self) -> Storage:
        if _quantity(self.size) <= 0:
            raise ValueError("storage.size must be more than 0: a volume holds the data")
        return self


POSTGRES_URL = r"^postgres(ql)?://[^\s,]+$"


class ShardMoveUrls(Model):
    """The databases of a shard move, for an operator outside the cluster (or a test)."""

    source: str = Field(
        pattern=POSTGRES_URL,
        max_length=512,
        description="Stage 5's database: the split's source and the merge's target.",
    )
    shards: list[Annotated[str, StringConstraints(pattern=POSTGRES_URL, max_length=512)]] = Field(
        min_length=2,
        max_length=16,
        description="Each shard's database, in shard order (as many as database.shards).",
    )


class DatabaseSpec(Model):
    """PostgreSQL under Patroni: its own StatefulSet at every stage, beside the app at stage 1.

    Stage 5 adds a standby that Patroni promotes when the primary dies.
    """

    image: str = Field(default=DEFAULT_POSTGRES_IMAGE, pattern=IMAGE_PATTERN, max_length=512)
    storage: Storage = Storage()
    resources: Resources | None = Field(
        default=None,
        description="Requests and limits of the primary and its read replicas; the "
        "catalog's small defaults when unset.",
    )
    synchronous: bool = Field(
        default=False,
        description="From stage 5: a commit is acknowledged only once the failover standby "
        "has it (Patroni's synchronous mode), so a failover loses no acknowledged write. "
        "Each commit waits one round trip to the standby.",
    )
    shards: int = Field(
        default=2,
        ge=2,
        le=16,
        description="Stage 6: how many PostgreSQL shards the database is split into by user "
        "ID (a user's rows live on shard user_id % shards). Fixed while the stage stays 6: "
        "re-sharding N to M is not a move z2m makes; go back to stage 5 first.",
    )
    move_urls: ShardMoveUrls | None = Field(
        default=None,
        description="Where the operator reaches the databases when it moves the rows at 5 -> 6 "
        "and back at 6 -> 5, as superuser libpq URLs; by default stage 5's database and "
        "the shards' Services inside the cluster, as the postgres superuser.",
    )


class QueueSpec(Model):
    """RabbitMQ and where the operator reads the jobs queue's depth from."""

    image: str = Field(default=DEFAULT_RABBITMQ_IMAGE, pattern=IMAGE_PATTERN, max_length=512)
    storage: Storage = Storage()
    resources: Resources | None = Field(
        default=None,
        description="Requests and limits of RabbitMQ; the catalog's small defaults when unset.",
    )
    queue_name: str = Field(
        default="z2m.jobs",
        min_length=1,
        max_length=255,
        description="The jobs queue: the app and workers are told it (QUEUE_NAME), and the "
        "operator drains it before RabbitMQ goes.",
    )
    management_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        max_length=512,
        description="RabbitMQ management API the operator asks for the queue depth before "
        "removing the queue; defaults to the queue Service inside the cluster.",
    )


class StreamingSpec(Model):
    """Kafka (KRaft, one node) at stage 5: the jobs topic and the workers' consumer group."""

    image: str = Field(
        default=DEFAULT_KAFKA_IMAGE,
        pattern=IMAGE_PATTERN,
        max_length=512,
        description="A Kafka image configured by KAFKA_* variables as the official "
        "apache/kafka image is (z2m's own, built from Maven Central, by default).",
    )
    storage: Storage = Storage()
    resources: Resources | None = Field(
        default=None,
        description="Requests and limits of Kafka; the catalog's defaults when unset.",
    )
    topic: str = Field(
        default="z2m.jobs",
        min_length=1,
        max_length=249,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="The jobs topic: the app and workers are told it (KAFKA_TOPIC).",
    )
    consumer_group: str = Field(
        default="z2m.workers",
        min_length=1,
        max_length=255,
        description="The workers' consumer group (KAFKA_GROUP); the operator waits for its lag "
        "to reach 0 before Kafka goes.",
    )
    partitions: int = Field(
        default=6,
        ge=1,
        le=1000,
        description="The topic's partitions, which bound the workers: their replicas and "
        "their autoscaler's maximum never exceed it. It may grow, never shrink.",
    )
    bootstrap_servers: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._:\[\]-]+(,[A-Za-z0-9._:\[\]-]+)*$",
        max_length=512,
        description="Kafka the operator asks for the consumer group's lag before removing "
        "Kafka; defaults to the streaming Service inside the cluster.",
    )


class CacheSpec(Model):
    """Redis, from stage 4."""

    image: str = Field(default=DEFAULT_REDIS_IMAGE, pattern=IMAGE_PATTERN, max_length=512)
    storage: Storage = Storage()
    resources: Resources | None = Field(
        default=None,
        description="Requests and limits of Redis; the catalog's small defaults when unset.",
    )
    sentinel_address: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]+:[0-9]{1,5}$",
        max_length=256,
        description="Redis Sentinel (host:port) the operator asks which Redis pod is the "
        "master before Redis shrinks to ordinal 0 (leaving stage 5); defaults to the "
        "sentinel Service inside the cluster.",
    )


class MonitoringSpec(Model):
    """Stage 5's Prometheus and Alertmanager, or a PodMonitor and PrometheusRule instead.

    The latter where the cluster serves the Prometheus Operator's kinds: z2m then runs no
    Prometheus, and `labels` lets the cluster's Prometheus select what z2m writes.
    """

    image: str = Field(
        default=DEFAULT_PROMETHEUS_IMAGE,
        min_length=1,
        max_length=512,
        description="An image with `prometheus`, `prometheus-alertmanager`, `curl` and `jq` "
        "on PATH (z2m's: hack/images/prometheus).",
    )
    storage: Storage = Storage()
    resources: Resources | None = Field(
        default=None,
        description="Requests and limits of Prometheus; the catalog's small defaults when unset.",
    )
    retention: str = Field(
        default="7d",
        pattern=r"^[0-9]+(h|d|w|y)$",
        max_length=16,
        description="How long Prometheus keeps samples (--storage.tsdb.retention.time).",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=16,
        description="Extra labels on the PodMonitor and PrometheusRule, for a Prometheus that "
        "selects them by label (kube-prometheus-stack's `release: <name>`).",
    )


class SearchSpec(Model):
    """An opt-in OpenSearch node for the app's search, at the stages that offer it (5).

    Off, or below such a stage, the app searches with PostgreSQL's full-text search.
    """

    enabled: bool = Field(
        default=False,
        description="Run OpenSearch and tell the app where it is (SEARCH_URL) at the stages "
        "that offer search (5). Off by default: only an app that has search needs it.",
    )
    image: str = Field(
        default=DEFAULT_OPENSEARCH_IMAGE,
        pattern=IMAGE_PATTERN,
        max_length=512,
        description="An OpenSearch 2.x image: z2m's (hack/images/opensearch), or the "
        "official opensearchproject/opensearch:2.19.x, which works as it is (z2m sets "
        "DISABLE_SECURITY_PLUGIN and DISABLE_INSTALL_DEMO_CONFIG for it: the node has no "
        "TLS and no users, and only a ClusterIP Service leads to it).",
    )
    storage: Storage = Storage()
    resources: Resources | None = Field(
        default=None,
        description="Requests and limits of OpenSearch; the catalog's defaults when unset.",
    )
    heap: str = Field(
        default="256m",
        pattern=r"^[0-9]+[mg]$",
        max_length=16,
        description="The JVM heap (-Xms and -Xmx, OPENSEARCH_JAVA_OPTS); keep it at about "
        "half the memory limit.",
    )


class Thresholds(Model):
    """When a signal says the current stage is the bottleneck, or oversized."""

    rps_promote_fraction: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Promote when RPS exceeds this fraction of the stage's upper RPS band.",
    )
    rps_demote_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Demote when RPS falls below this fraction of the lower stage's upper band.",
    )
    app_cpu_percent: float = Field(default=80, gt=0, le=1000)
    latency_p95_seconds: float = Field(default=0.5, gt=0, le=60)
    database_connections: float = Field(default=80, gt=0, le=100000)
    database_queries_per_second: float = Field(default=2000, gt=0)
    cache_hit_ratio: float = Field(default=0.8, ge=0, le=1)
    queue_depth: float = Field(default=1000, gt=0)

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "self.rpsDemoteFraction < self.rpsPromoteFraction",
                "thresholds.rpsDemoteFraction must be below rpsPromoteFraction, "
                "or a load between the two would promote and demote in turn",
                ".rpsDemoteFraction",
            )
        )
    )


class Signals(Model):
    """PromQL per signal; `$namespace` and `$name` are substituted. Unset keeps the default."""

    rps: str | None = Field(default=None, max_length=4096)
    app_cpu_percent: str | None = Field(default=None, max_length=4096)
    latency_p95_seconds: str | None = Field(default=None, max_length=4096)
    database_connections: str | None = Field(default=None, max_length=4096)
    database_queries_per_second: str | None = Field(default=None, max_length=4096)
    cache_hit_ratio: str | None = Field(default=None, max_length=4096)
    queue_depth: str | None = Field(default=None, max_length=4096)
    write_ratio: str | None = Field(
        default=None,
        max_length=4096,
        description="Share of requests that write; tells database writes from reads.",
    )
    static_ratio: str | None = Field(
        default=None,
        max_length=4096,
        description="Share of requests for static assets; names the edge cache as the fix.",
    )


class Prometheus(Model):
    """Where metrics come from."""

    url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        max_length=512,
        description="Prometheus' base URL. Unset: the Prometheus z2m runs at stage 5 "
        "(http://<name>-prometheus.<namespace>.svc:9090), where z2m runs one.",
    )
    timeout_seconds: float = Field(default=5, gt=0, le=60)
    rate_window: str = Field(
        default="2m",
        pattern=r"^[0-9]+(ms|s|m|h)$",
        max_length=16,
        description="The range of rate() in the default queries (`$window`); "
        "at least four scrape intervals.",
    )


class GatewaySpec(Model):
    """Stage 6's API gateway."""

    class_name: str = Field(
        default="z2m",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="The GatewayClass of the Gateway z2m writes where the cluster serves "
        "gateway.networking.k8s.io; elsewhere z2m runs an nginx gateway of its own.",
    )


class Promotion(Model):
    """How the operator may choose the stage from metrics."""

    mode: Literal["manual", "recommend", "auto"] = "manual"
    prometheus: Prometheus | None = None
    interval_seconds: int = Field(default=30, ge=1, le=3600)
    min_stage: int = Field(default=1, ge=1, le=7)
    max_stage: int = Field(default=5, ge=1, le=7)
    promote_window_seconds: int = Field(default=300, ge=0, le=86400)
    demote_window_seconds: int = Field(default=1800, ge=0, le=604800)
    cooldown_seconds: int = Field(default=600, ge=0, le=604800)
    allow_stage6: bool = Field(
        default=False,
        description="Let recommend and auto mode propose or cross 5 -> 6 (microservices, "
        "a gateway, Redis Cluster, regions). Off by default: stage 6 splits the app into "
        "services, which is not undone lightly.",
    )
    thresholds: Thresholds = Thresholds()
    signals: Signals = Signals()

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "self.minStage <= self.maxStage",
                "promotion.minStage must not be above promotion.maxStage",
                ".minStage",
            ),
            (
                "self.mode == 'manual' || self.maxStage >= 5 "
                "|| (has(self.prometheus) && has(self.prometheus.url))",
                "promotion.prometheus.url is required when promotion.mode is recommend or auto "
                "and maxStage is below 5 (z2m runs a Prometheus of its own only at stage 5)",
                ".mode",
            ),
            (
                "self.mode == 'manual' || self.maxStage < 6 || self.allowStage6",
                "promotion.maxStage 6 in recommend or auto mode needs promotion.allowStage6: "
                "true, an explicit opt-in: stage 6 splits the app into services behind a "
                "gateway and moves the cache to Redis Cluster",
                ".allowStage6",
            ),
            (
                "self.demoteWindowSeconds >= self.promoteWindowSeconds",
                "promotion.demoteWindowSeconds must be at least promoteWindowSeconds, "
                "so that the stage climbs faster than it falls and cannot flap",
                ".demoteWindowSeconds",
            ),
        )
    )


_SPEC_RULES = _rules(
    (
        "self.stage > 1 || !has(self.overrides) || !has(self.overrides.appReplicas) "
        "|| self.overrides.appReplicas == 1",
        "stage 1 is one machine shared by the app and its database, so it runs exactly one "
        "app replica; use stage 2 or higher for more",
        ".overrides.appReplicas",
    ),
    (
        "self.stage > 1 || !has(self.overrides) || !has(self.overrides.readReplicas) "
        "|| self.overrides.readReplicas == 0",
        "stage 1 is one machine with no separate database to replicate; read replicas start "
        "at stage 2",
        ".overrides.readReplicas",
    ),
    (
        "self.stage > 1 || !has(self.overrides) || !has(self.overrides.autoscaling)",
        "stage 1 cannot autoscale: it is one machine, shared with the database",
        ".overrides.autoscaling",
    ),
    (
        "!has(self.overrides) || !has(self.overrides.autoscaling) "
        "|| !has(self.overrides.appReplicas)",
        "set either overrides.appReplicas or overrides.autoscaling, not both: "
        "with autoscaling the HPA owns the replica count",
        ".overrides.autoscaling",
    ),
    (
        "!has(self.overrides) || !has(self.overrides.workers) || self.overrides.workers == 0 "
        "|| (has(self.overrides.queue) ? self.overrides.queue : self.stage >= 4)",
        "workers need the queue: set overrides.queue to true or use stage 4 or higher",
        ".overrides.workers",
    ),
    (
        "!has(self.promotion) || self.promotion.mode == 'manual' "
        "|| (self.stage >= self.promotion.minStage && self.stage <= self.promotion.maxStage)",
        "spec.stage must lie between promotion.minStage and promotion.maxStage",
        ".stage",
    ),
)


def _storage_rules(component: str) -> list[tuple[str, str, str]]:
    """Transition rules: a component's volumes never shrink and keep their class.

    StatefulSet claim templates cannot change, and a volume never gets smaller,
    so an edit the operator could never carry out is refused at admission instead
    of failing every reconcile. Written at the spec level, where `oldSelf` always
    exists, with the defaults spelled out: `database`, its `storage` and `size` may
    each be missing on either side.
    """
    storage = f"{component}.storage"

    def size(root: str) -> str:
        return (
            f"(has({root}.{component}) && has({root}.{storage}) "
            f"&& has({root}.{storage}.size) ? {root}.{storage}.size : '{DEFAULT_STORAGE_SIZE}')"
        )

    def klass(root: str) -> str:
        return (
            f"(has({root}.{component}) && has({root}.{storage}) "
            f"&& has({root}.{storage}.storageClassName) ? {root}.{storage}.storageClassName : '')"
        )

    return [
        (
            f"quantity({size('self')}).compareTo(quantity({size('oldSelf')})) >= 0",
            f"spec.{storage}.size cannot shrink: a volume that holds data never gets "
            "smaller; keep the size or grow it",
            f".{storage}.size",
        ),
        (
            f"{klass('self')} == {klass('oldSelf')}",
            f"spec.{storage}.storageClassName cannot change (nor be set or unset) once the "
            "ScalingStage exists: its claims keep the class they were made with; to move the "
            "data to another class, copy it into a new ScalingStage",
            f".{storage}.storageClassName",
        ),
    ]


_SPEC_RULES["x-kubernetes-validations"] += [
    {"rule": r, "message": m, "fieldPath": f}
    for component in ("database", "cache", "queue", "streaming", "monitoring", "search")
    for r, m, f in _storage_rules(component)
]


def _shards(root: str) -> str:
    return (
        f"(has({root}.database) && has({root}.database.shards) "
        f"? {root}.database.shards : {DatabaseSpec.model_fields['shards'].default})"
    )


_SPEC_RULES["x-kubernetes-validations"].append(
    {
        "rule": f"self.stage < 6 || oldSelf.stage < 6 || {_shards('self')} == {_shards('oldSelf')}",
        "message": "spec.database.shards cannot change while the database is sharded (stage "
        "6): the users' rows are spread over that many shards, and z2m moves them only "
        "between one database and the shards; go back to stage 5 first, then change it",
        "fieldPath": ".database.shards",
    }
)


def _partitions(root: str) -> str:
    return (
        f"(has({root}.streaming) && has({root}.streaming.partitions) "
        f"? {root}.streaming.partitions : 6)"
    )


_SPEC_RULES["x-kubernetes-validations"].append(
    {
        "rule": f"{_partitions('self')} >= {_partitions('oldSelf')}",
        "message": "spec.streaming.partitions cannot shrink: Kafka adds partitions to a topic "
        "but never removes them; keep the number or raise it",
        "fieldPath": ".streaming.partitions",
    }
)


class ScalingStageSpec(Model):
    """What the user asks for: a stage, the app, and any overrides."""

    stage: int = Field(
        ge=1,
        le=7,
        description="The rung of the ladder, 1 (one pod) to 7 (world scale). "
        "In auto mode the operator changes it.",
    )
    app: AppSpec = AppSpec()
    overrides: Overrides = Overrides()
    database: DatabaseSpec = DatabaseSpec()
    cache: CacheSpec = CacheSpec()
    queue: QueueSpec = QueueSpec()
    streaming: StreamingSpec = StreamingSpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    search: SearchSpec = SearchSpec()
    gateway: GatewaySpec = GatewaySpec()
    promotion: Promotion = Promotion()
    paused: bool = Field(
        default=False,
        description="Stop reconciling and deciding; nothing is changed while paused.",
    )

    model_config = ConfigDict(json_schema_extra=_SPEC_RULES)


class Condition(Model):
    """A Kubernetes API convention condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str


class ComponentStatus(Model):
    """Readiness of one component (app, database, read-replica, ...)."""

    name: str
    component: str
    kind: str
    desired: int
    ready: int
    available: bool


class PlanStatus(Model):
    """The effective plan after overrides: what the operator is converging to."""

    app_replicas: int | None = None
    autoscaling: str | None = None
    read_replicas: int = 0
    redis: bool = False
    redis_replicas: int = 0
    queue: bool = False
    event_streaming: bool = False
    workers: int = 0
    edge_cache: bool = False
    database_failover: str = Field(
        default="none",
        description="How PostgreSQL fails over: none, patroni, or patroni, synchronous.",
    )
    monitoring: bool = False
    search: bool = False
    gateway: bool = Field(default=False, description="Stage 6: an API gateway in front.")
    services: list[str] = Field(
        default_factory=list, description="Stage 6: the roles the app is split into."
    )
    redis_cluster: str | None = Field(default=None, description="Stage 6: Redis Cluster's shape.")
    regions: int | None = Field(
        default=None, description="Stage 6: how many regions pods are spread over."
    )
    sharded_database: bool = Field(
        default=False,
        description="Stage 6: PostgreSQL shards by user ID are provided; the DatabaseSharded "
        "condition says whether the rows are on them.",
    )
    shards: int | None = Field(default=None, description="Stage 6: how many shards.")


class PlannedAddition(Model):
    """One piece a plan-only stage would add."""

    name: str
    what: str
    cost: str = Field(description="What its bill grows with.")
    user_brings: list[str] = Field(
        default_factory=list, description="What the user must have before it can run."
    )


class PlanOnlyStatus(Model):
    """The stage asked for is a plan only: z2m builds none of it and changes nothing."""

    stage: int
    monthly_cost: str = Field(description="The seed's figure for the whole stage.")
    additions: list[PlannedAddition] = Field(default_factory=list)
    why_not_here: list[str] = Field(
        default_factory=list, description="Why one cluster and one operator should not run it."
    )


class DecisionMemory(Model):
    """The decision windows' state, kept in status so an operator restart resets nothing."""

    stage: int = Field(description="The stage the windows below were measured at.")
    breach_since: str | None = Field(
        default=None, description="Since when the stage has been the bottleneck, unbroken."
    )
    oversized_since: str | None = Field(
        default=None, description="Since when every signal has been comfortably low, unbroken."
    )
    last_change: str | None = Field(
        default=None, description="When spec.stage last changed, by anyone; starts the cooldown."
    )


class Decision(Model):
    """The auto-promotion logic's last verdict and the evidence behind it."""

    time: str
    current_stage: int
    recommended_stage: int
    action: Literal["promote", "demote", "hold"]
    reason: str
    bottleneck: str | None = None
    signals: dict[str, float] = Field(default_factory=dict)
    memory: DecisionMemory | None = None


class Transition(Model):
    """One stage change in the bounded history."""

    time: str
    from_stage: int
    to_stage: int
    reason: str
    by: Literal["user", "operator"]


class DatabaseMoveStatus(Model):
    """The rows' move between stage 5's database and the shards (at 5 -> 6 and 6 -> 5)."""

    direction: Literal["split", "merge"]
    phase: str = Field(
        description="Starting, the move's last step (publish, subscribe, wait, fence, "
        "cutover, drop-subscription, drop-publication), done, or failed."
    )
    message: str = ""
    fence_seconds: float | None = Field(
        default=None, description="How long writes were refused: from the fence to the cutover."
    )


class ScalingStageStatus(Model):
    """What the operator observed on its last pass; rebuilt from the world every time."""

    observed_generation: int | None = None
    stage: int | None = None
    ready: str | None = None
    estimated_monthly_cost: str | None = None
    capacity: str | None = None
    plan: PlanStatus | None = None
    plan_only: PlanOnlyStatus | None = None
    components: list[ComponentStatus] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    last_decision: Decision | None = None
    recommended_stage: int | None = None
    history: list[Transition] = Field(default_factory=list)
    database_layout: Literal["single", "shards"] | None = Field(
        default=None,
        description="Where the app's database configuration points: one database, or the "
        "shards (DATABASE_SHARDS). Written by the shard move's cutover, after the fence.",
    )
    database_move: DatabaseMoveStatus | None = None

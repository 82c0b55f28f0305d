"""Environment contract: parse ``os.environ`` into a frozen :class:`Config`.

Pure code, no I/O.  A variable that is unset or empty switches its feature
off; a variable that is set but malformed raises :class:`ConfigError`, whose
message names the variable and never echoes secrets (URLs may hold passwords).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import SplitResult, urlsplit

Role = Literal["web", "worker"]

DEFAULT_PORT = 8080
MIN_SECRET_KEY_LENGTH = 16

_POSTGRES_SCHEMES = frozenset({"postgres", "postgresql"})
_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
_AMQP_SCHEMES = frozenset({"amqp", "amqps"})
_HTTP_SCHEMES = frozenset({"http", "https"})


class ConfigError(ValueError):
    """A set environment variable has a value the app can't use."""

    def __init__(self, variable: str, problem: str) -> None:
        """Remember which variable is wrong and why."""
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class Config:
    """Everything the app reads from the environment, validated."""

    role: Role = "web"
    port: int = DEFAULT_PORT
    database_url: str | None = None
    replica_urls: tuple[str, ...] = ()
    database_shards: tuple[str, ...] = ()
    """DATABASE_SHARDS: the shards' URLs in shard order (stage 6); a user's rows live on
    shard ``user_id % N`` (``sample_app.shards``). Set, it replaces DATABASE_URL and
    DATABASE_REPLICA_URLS (those replicas follow the unsharded database)."""
    redis_url: str | None = None
    """REDIS_URL: one Redis (stage 4)."""
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    """REDIS_SENTINELS: Sentinels that name the current Redis master (stage 5)."""
    redis_master_name: str | None = None
    """REDIS_MASTER_NAME: the master's name in Sentinel; needed with REDIS_SENTINELS."""
    redis_password: str | None = None
    """REDIS_PASSWORD: the password with REDIS_SENTINELS or REDIS_CLUSTER_NODES (a URL
    carries its own)."""
    redis_cluster_nodes: tuple[tuple[str, int], ...] = ()
    """REDIS_CLUSTER_NODES: some nodes of a Redis Cluster (stage 6); the client learns the rest."""
    service: str | None = None
    """SERVICE: the one service of the app this process is (stage 6), e.g. ``feed``."""
    service_routes: tuple[str, ...] = ()
    """SERVICE_ROUTES: the path prefixes that service serves; none: every route (the app)."""
    broker_url: str | None = None
    queue_name: str = "z2m.jobs"
    """QUEUE_NAME: the jobs queue, as the operator names it (spec.queue.queueName)."""
    kafka_servers: str | None = None
    """KAFKA_BOOTSTRAP_SERVERS: comma-separated host:port; jobs go to Kafka (stage 5)."""
    kafka_topic: str = "z2m.jobs"
    """KAFKA_TOPIC: the jobs topic (spec.streaming.topic)."""
    kafka_group: str = "z2m.workers"
    """KAFKA_GROUP: the workers' consumer group (spec.streaming.consumerGroup)."""
    kafka_partitions: int = 6
    """KAFKA_PARTITIONS: the topic's partitions, made so if the topic has fewer."""
    secret_key: str | None = None
    search_url: str | None = None
    """SEARCH_URL: an OpenSearch node (the search stage); unset means PostgreSQL search."""
    search_index: str = "posts"
    """SEARCH_INDEX: the index the posts are copied into."""

    @property
    def stage_features(self) -> list[str]:
        """Names of the optional features that are on, for the start-up log line."""
        features = []
        if self.database_url and not self.database_shards:
            features.append("database")
        if self.database_shards:
            features.append(f"database(shards={len(self.database_shards)})")
        if self.replica_urls:
            features.append(f"replicas={len(self.replica_urls)}")
        if self.redis_url:
            features.append("cache")
        if self.redis_sentinels:
            features.append(f"cache(sentinels={len(self.redis_sentinels)})")
        if self.redis_cluster_nodes:
            features.append(f"cache(cluster={len(self.redis_cluster_nodes)})")
        if self.service:
            features.append(f"service={self.service}")
        if self.broker_url:
            features.append("queue")
        if self.search_url:
            features.append("search")
        if self.kafka_servers:
            features.append(f"stream(partitions={self.kafka_partitions})")
        if self.secret_key:
            features.append("secret_key")
        return features

    def serves(self, path: str) -> bool:
        """Whether this process serves the route ``path``: health and metrics always."""
        if not self.service_routes or path in ALWAYS_SERVED:
            return True
        return any(path.startswith(prefix) for prefix in self.service_routes)


ALWAYS_SERVED = frozenset({"/healthz", "/readyz", "/metrics"})
"""Routes every process serves, whatever its service: the kubelet and Prometheus ask them."""
_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def _get(env: Mapping[str, str], name: str) -> str | None:
    # Kubernetes renders an absent optional value as "", so empty means unset.
    value = env.get(name, "").strip()
    return value or None


def _check_url(variable: str, value: str, schemes: frozenset[str]) -> SplitResult:
    wanted = " or ".join(f"{s}://" for s in sorted(schemes))
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        raise ConfigError(variable, f"not a valid URL ({exc})") from None
    if parts.scheme not in schemes:
        shown = f"{parts.scheme!r}" if parts.scheme else "none"
        raise ConfigError(variable, f"must be a {wanted} URL (scheme is {shown})")
    return parts


def _check_postgres_url(variable: str, value: str) -> str:
    parts = _check_url(variable, value, _POSTGRES_SCHEMES)
    if not parts.path.strip("/") and not parts.netloc:
        raise ConfigError(variable, "needs a host or a database name")
    return value


def parse_port(value: str | None) -> int:
    """Parse ``PORT``: an integer in 1..65535, default 8080."""
    if value is None:
        return DEFAULT_PORT
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ConfigError("PORT", f"must be an integer from 1 to 65535, got {value!r}")
    return int(value)


def parse_role(value: str | None) -> Role:
    """Parse ``ROLE``: ``web`` (default) or ``worker``."""
    if value is None or value == "web":
        return "web"
    if value == "worker":
        return "worker"
    raise ConfigError("ROLE", f"must be 'web' or 'worker', got {value!r}")


def parse_replica_urls(value: str | None) -> tuple[str, ...]:
    """Parse ``DATABASE_REPLICA_URLS``: comma-separated PostgreSQL URLs."""
    if value is None:
        return ()
    return _postgres_urls(
        "DATABASE_REPLICA_URLS", tuple(item.strip() for item in value.split(",") if item.strip())
    )


def parse_shard_urls(value: str | None) -> tuple[str, ...]:
    """Parse ``DATABASE_SHARDS``: comma-separated PostgreSQL URLs, in shard order."""
    if value is None:
        return ()
    urls = tuple(item.strip() for item in value.split(","))
    for index, url in enumerate(urls):
        # An empty entry would shift every later shard: user ids would land on the wrong one.
        if not url:
            raise ConfigError("DATABASE_SHARDS", f"entry {index + 1} is empty")
    return _postgres_urls("DATABASE_SHARDS", urls)


def _postgres_urls(name: str, urls: tuple[str, ...]) -> tuple[str, ...]:
    """Check each of a list variable's PostgreSQL URLs, naming the entry that is wrong."""
    for index, url in enumerate(urls):
        try:
            _check_postgres_url(name, url)
        except ConfigError as exc:
            problem = str(exc).removeprefix(f"{name}: ")
            raise ConfigError(name, f"entry {index + 1}: {problem}") from None
    return urls


def parse_sentinels(
    value: str | None, variable: str = "REDIS_SENTINELS"
) -> tuple[tuple[str, int], ...]:
    """Parse ``REDIS_SENTINELS`` (or ``variable``): comma-separated ``host:port`` addresses."""
    if value is None:
        return ()
    found: list[tuple[str, int]] = []
    for index, item in enumerate(i.strip() for i in value.split(",")):
        if not item:
            continue
        host, colon, port = item.rpartition(":")
        if not colon or not host or "/" in host or not port.isdigit():
            raise ConfigError(variable, f"entry {index + 1}: must be host:port, got {item!r}")
        if not 1 <= int(port) <= 65535:
            raise ConfigError(
                variable, f"entry {index + 1}: port must be from 1 to 65535, got {port}"
            )
        found.append((host.strip("[]"), int(port)))
    return tuple(found)


def parse_service_routes(service: str | None, value: str | None) -> tuple[str, ...]:
    """Parse ``SERVICE_ROUTES``: comma-separated path prefixes, each starting with ``/``."""
    if service is not None and not _SERVICE_NAME.match(service):
        raise ConfigError("SERVICE", f"must be a lowercase name like 'feed', got {service!r}")
    routes = tuple(r.strip() for r in (value or "").split(",") if r.strip())
    if service is None:
        if routes:
            raise ConfigError("SERVICE_ROUTES", "is set but SERVICE is not")
        return ()
    if not routes:
        raise ConfigError("SERVICE_ROUTES", "is needed when SERVICE is set")
    for index, route in enumerate(routes):
        if not route.startswith("/") or route == "/":
            raise ConfigError(
                "SERVICE_ROUTES", f"entry {index + 1}: must be a path below /, got {route!r}"
            )
    return routes


def parse_partitions(value: str | None) -> int:
    """Parse ``KAFKA_PARTITIONS``: an integer in 1..1000, default 6."""
    if value is None:
        return Config.kafka_partitions
    if not value.isdigit() or not 1 <= int(value) <= 1000:
        raise ConfigError("KAFKA_PARTITIONS", f"must be an integer from 1 to 1000, got {value!r}")
    return int(value)


def parse_env(env: Mapping[str, str]) -> Config:
    """Build a :class:`Config` from an environment mapping or raise :class:`ConfigError`."""
    database_url = _get(env, "DATABASE_URL")
    if database_url is not None:
        _check_postgres_url("DATABASE_URL", database_url)
    replica_urls = parse_replica_urls(_get(env, "DATABASE_REPLICA_URLS"))
    if replica_urls and database_url is None:
        # Replicas only serve reads; without a primary nothing could write, so
        # this is a deployment mistake rather than a feature switched off.
        raise ConfigError("DATABASE_REPLICA_URLS", "is set but DATABASE_URL is not")
    database_shards = parse_shard_urls(_get(env, "DATABASE_SHARDS"))
    if database_shards:
        # The replicas stream from DATABASE_URL's server, which the move fenced and no
        # longer writes to: reading them would serve stale rows. Shards read their primary.
        replica_urls = ()
    redis_url = _get(env, "REDIS_URL")
    if redis_url is not None:
        _check_url("REDIS_URL", redis_url, _REDIS_SCHEMES)
    sentinels = parse_sentinels(_get(env, "REDIS_SENTINELS"))
    master_name = _get(env, "REDIS_MASTER_NAME")
    if sentinels and redis_url is not None:
        # Two answers to "where is the cache" would be a deployment mistake.
        raise ConfigError("REDIS_SENTINELS", "is set together with REDIS_URL; set one of them")
    if sentinels and master_name is None:
        raise ConfigError("REDIS_MASTER_NAME", "is needed when REDIS_SENTINELS is set")
    cluster = parse_sentinels(_get(env, "REDIS_CLUSTER_NODES"), "REDIS_CLUSTER_NODES")
    if cluster and (sentinels or redis_url is not None):
        raise ConfigError(
            "REDIS_CLUSTER_NODES", "is set together with REDIS_URL or REDIS_SENTINELS; set one"
        )
    service = _get(env, "SERVICE")
    service_routes = parse_service_routes(service, _get(env, "SERVICE_ROUTES"))
    broker_url = _get(env, "BROKER_URL")
    if broker_url is not None:
        _check_url("BROKER_URL", broker_url, _AMQP_SCHEMES)
    search_url = _get(env, "SEARCH_URL")
    if search_url is not None:
        _check_url("SEARCH_URL", search_url, _HTTP_SCHEMES)
    search_index = _get(env, "SEARCH_INDEX") or Config.search_index
    if not search_index.islower() or search_index.startswith(("_", "-")) or "/" in search_index:
        raise ConfigError("SEARCH_INDEX", f"is not a valid index name: {search_index!r}")
    kafka_servers = _get(env, "KAFKA_BOOTSTRAP_SERVERS")
    parse_sentinels(kafka_servers, "KAFKA_BOOTSTRAP_SERVERS")  # host:port, like Sentinels
    secret_key = _get(env, "SECRET_KEY")
    if secret_key is not None and len(secret_key) < MIN_SECRET_KEY_LENGTH:
        raise ConfigError("SECRET_KEY", f"must be at least {MIN_SECRET_KEY_LENGTH} characters long")
    return Config(
        role=parse_role(_get(env, "ROLE")),
        port=parse_port(_get(env, "PORT")),
        database_url=database_url,
        replica_urls=replica_urls,
        database_shards=database_shards,
        redis_url=redis_url,
        redis_sentinels=sentinels,
        redis_master_name=master_name if sentinels else None,
        redis_password=_get(env, "REDIS_PASSWORD") if sentinels or cluster else None,
        redis_cluster_nodes=cluster,
        service=service,
        service_routes=service_routes,
        broker_url=broker_url,
        queue_name=_get(env, "QUEUE_NAME") or Config.queue_name,
        kafka_servers=kafka_servers,
        kafka_topic=_get(env, "KAFKA_TOPIC") or Config.kafka_topic,
        kafka_group=_get(env, "KAFKA_GROUP") or Config.kafka_group,
        kafka_partitions=parse_partitions(_get(env, "KAFKA_PARTITIONS")),
        secret_key=secret_key,
        search_url=search_url,
        search_index=search_index,
    )

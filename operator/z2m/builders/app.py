"""The app's pods: the web Deployment with its Service, HPA and PDB, and the workers.

Both run the user's image, told by `app_env` where the database, Redis (one, a
Sentinel-watched pair, or Redis Cluster at stage 6), the queue, Kafka and the search
engine are. Workers exist only beside the source of jobs they consume, one
Deployment per source: `worker` drains RabbitMQ, `stream-worker` is Kafka's consumer
group (its HPA at stage 5, never more pods than the topic has partitions). Keeping
them apart lets a stage change retire one source with its own workers once drained,
while the other's already take the new jobs. They are built here, not in `queue` or
`streaming`, because they are the app's container in another role.
"""

from __future__ import annotations

from typing import Any, Literal

from z2m import catalog, plan
from z2m.builders import meta, postgres, queue, redis, search, shards, streaming, workloads

Obj = dict[str, Any]


Source = Literal["queue", "stream"]


def app_env(p: plan.Plan, role: str, source: Source | None = None) -> list[Obj]:
    """Environment of web and worker pods: the stage's wiring, then the user's env.

    `source`: a worker's one source of jobs; web pods (None) are told every one the
    plan has, and publish to Kafka where there is Kafka.
    """
    env: list[Obj] = [
        {"name": "ROLE", "value": role},
        {"name": "PORT", "value": str(p.spec.app.port)},
        meta.secret_env(p, "SECRET_KEY", "session-secret"),
        meta.secret_env(p, "Z2M_DATABASE_PASSWORD", "database-password"),
    ]

    def pg(host: str) -> str:
        return f"postgresql://app:$(Z2M_DATABASE_PASSWORD)@{host}:{postgres.PG_PORT}/app"

    env.append({"name": "DATABASE_URL", "value": pg(postgres.database_host(p))})
    if hosts := postgres.replica_hosts(p):
        env.append({"name": "DATABASE_REPLICA_URLS", "value": ",".join(pg(h) for h in hosts)})
    if p.shards_routed:
        # Only once the shard move's cutover recorded it: the source is fenced by then.
        hosts = [shards.shard_host(p, k) for k in range(p.shards_routed)]
        env.append({"name": "DATABASE_SHARDS", "value": ",".join(pg(h) for h in hosts)})
    if p.redis_cluster is not None:
        # Any node will do to start: the client learns the slot map and follows MOVED.
        nodes = ",".join(redis.cluster_nodes(p))
        env.append({"name": "REDIS_CLUSTER_NODES", "value": nodes})
        env.append(meta.secret_env(p, "REDIS_PASSWORD", "redis-password"))
    elif p.sentinel:
        # Sentinel names the master, which moves on failover: never a fixed pod here.
        sentinels = f"{meta.child(p.name, 'redis-sentinel')}:{redis.SENTINEL_PORT}"
        env.append({"name": "REDIS_SENTINELS", "value": sentinels})
        env.append({"name": "REDIS_MASTER_NAME", "value": redis.REDIS_MASTER_NAME})
        env.append(meta.secret_env(p, "REDIS_PASSWORD", "redis-password"))
    elif p.redis:
        env.append(meta.secret_env(p, "Z2M_REDIS_PASSWORD", "redis-password"))
        primary = f"{meta.child(p.name, 'redis')}-0.{meta.child(p.name, 'redis')}"
        env.append(
            {
                "name": "REDIS_URL",
                "value": f"redis://:$(Z2M_REDIS_PASSWORD)@{primary}:{redis.REDIS_PORT}/0",
            }
        )
    if p.queue and source != "stream":
        env.append(meta.secret_env(p, "Z2M_QUEUE_PASSWORD", "queue-password"))
        broker = (
            f"amqp://z2m:$(Z2M_QUEUE_PASSWORD)@{meta.child(p.name, 'queue')}:{queue.AMQP_PORT}/%2F"
        )
        env.append({"name": "BROKER_URL", "value": broker})
        env.append({"name": "QUEUE_NAME", "value": p.spec.queue.queue_name})
    if p.event_streaming and source != "queue":
        spec = p.spec.streaming
        env.append({"name": "KAFKA_BOOTSTRAP_SERVERS", "value": streaming.bootstrap_servers(p)})
        env.append({"name": "KAFKA_TOPIC", "value": spec.topic})
        env.append({"name": "KAFKA_GROUP", "value": spec.consumer_group})
        env.append({"name": "KAFKA_PARTITIONS", "value": str(spec.partitions)})
    if p.search:
        env.append({"name": "SEARCH_URL", "value": search.search_url(p)})
    ours = {e["name"] for e in env}
    user = [e.model_dump(by_alias=True) for e in p.spec.app.env]
    # The user's value wins over ours: drop ours rather than send a duplicate key.
    overridden = {e["name"] for e in user} & ours
    return [e for e in env if e["name"] not in overridden] + user


def app_container(p: plan.Plan, role: str, source: Source | None = None) -> Obj:
    """The app's container in a role: web (the app and stage 6's services) or worker."""
    app = p.spec.app
    container: Obj = {
        "name": role if role == "worker" else "app",
        "image": app.image,
        "env": app_env(p, role, source),
        "resources": workloads.requests_and_limits(app.resources),
        "ports": [{"name": "http", "containerPort": app.port}],
    }
    if role == "worker" and app.worker_command:
        # The user's own worker program may serve no HTTP: probing it would kill it.
        container["command"] = list(app.worker_command)
        return container
    container["livenessProbe"] = {
        "httpGet": {"path": "/healthz", "port": app.port},
        "periodSeconds": 10,
    }
    container["readinessProbe"] = {
        "httpGet": {"path": "/readyz", "port": app.port},
        "periodSeconds": 5,
    }
    if role == "web":
        container["lifecycle"] = workloads.DRAIN
    return container


def web(p: plan.Plan, owner: meta.Owner) -> list[Obj]:
    """The web Deployment and its Service; an HPA and a PDB once there is more than one pod."""
    pod_spec: Obj = {
        "containers": [app_container(p, "web")],
        "topologySpreadConstraints": workloads.spread(p, "app"),
        "affinity": _beside_database(p),
    }
    objs = [
        workloads.deployment(p, owner, "app", "app", p.app_replicas, pod_spec),
        workloads.service(
            p, owner, meta.child(p.name, "app"), "app", [("http", 80, p.spec.app.port)]
        ),
    ]
    if p.app_autoscaling is not None:
        objs.append(workloads.hpa(p, owner, "app", p.app_autoscaling))
    if p.app_autoscaling is not None or (p.app_replicas or 0) > 1:
        objs.append(workloads.pdb(p, owner, "app", "app"))
    return objs


def _worker_pod(p: plan.Plan, component: str, source: Source) -> Obj:
    return {
        "containers": [app_container(p, "worker", source)],
        "topologySpreadConstraints": workloads.spread(p, component),
        # A worker gets time to finish and commit its job before it is killed.
        "terminationGracePeriodSeconds": 120,
    }


def workers(p: plan.Plan, owner: meta.Owner) -> list[Obj]:
    """RabbitMQ's workers (and their HPA where they autoscale), beside the queue only.

    Where Kafka runs too, its consumer group is the one that autoscales.
    """
    if not p.queue or not p.workers:
        return []
    scaling = None if p.event_streaming else p.worker_autoscaling
    replicas = None if scaling else p.workers
    pod = _worker_pod(p, "worker", "queue")
    objs = [workloads.deployment(p, owner, "worker", "worker", replicas, pod)]
    if scaling is not None:
        objs.append(workloads.hpa(p, owner, "worker", scaling))
    return objs


def stream_workers(p: plan.Plan, owner: meta.Owner) -> list[Obj]:
    """Kafka's consumer group: at most one worker per partition, beside Kafka only.

    A member beyond the partitions would get none and do nothing, so the replicas and
    the HPA's range are capped at `spec.streaming.partitions`.
    """
    if not p.event_streaming or not p.workers:
        return []
    cap = p.spec.streaming.partitions
    pod = _worker_pod(p, "stream-worker", "stream")
    scaling = p.worker_autoscaling
    if scaling is None:
        deployment = workloads.deployment(
            p, owner, "stream-worker", "stream-worker", min(p.workers, cap), pod
        )
        return [deployment]
    capped = catalog.Autoscaling(
        min(scaling.min_replicas, cap), min(scaling.max_replicas, cap), scaling.cpu_percent
    )
    return [
        workloads.deployment(p, owner, "stream-worker", "stream-worker", None, pod),
        workloads.hpa(p, owner, "stream-worker", capped),
    ]


def _beside_database(p: plan.Plan) -> Obj:
    """Where the app may run: on the database's node at stage 1, off it later.

    Stage 1 is one machine, so the app must share the database's node. From stage 2
    the database has a machine of its own, and the app keeps off it where it can.
    """
    term: Obj = {
        "labelSelector": {"matchLabels": meta.labels(p.name, "database")},
        "topologyKey": "kubernetes.io/hostname",
    }
    if p.colocated_database:
        return {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term}
            ]
        }
    }

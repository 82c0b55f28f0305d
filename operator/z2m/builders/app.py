"""The app's pods: the web Deployment with its Service, HPA and PDB, and the workers.

Both run the user's image, told by `app_env` where the database, Redis (one, a
Sentinel-watched pair, or Redis Cluster at stage 6), the queue and the search
engine are. The workers (a Deployment, and its HPA at stage 5) exist only beside
the queue they consume; they are built here, not in `queue`, because they are the
app's container in another role.
"""

from __future__ import annotations

from typing import Any

from z2m import plan
from z2m.builders import meta, postgres, queue, redis, search, workloads

Obj = dict[str, Any]


def app_env(p: plan.Plan, role: str) -> list[Obj]:
    """Environment of web and worker pods: the stage's wiring, then the user's env."""
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
    if p.queue:
        env.append(meta.secret_env(p, "Z2M_QUEUE_PASSWORD", "queue-password"))
        broker = (
            f"amqp://z2m:$(Z2M_QUEUE_PASSWORD)@{meta.child(p.name, 'queue')}:{queue.AMQP_PORT}/%2F"
        )
        env.append({"name": "BROKER_URL", "value": broker})
        env.append({"name": "QUEUE_NAME", "value": p.spec.queue.queue_name})
    if p.search:
        env.append({"name": "SEARCH_URL", "value": search.search_url(p)})
    ours = {e["name"] for e in env}
    user = [e.model_dump(by_alias=True) for e in p.spec.app.env]
    # The user's value wins over ours: drop ours rather than send a duplicate key.
    overridden = {e["name"] for e in user} & ours
    return [e for e in env if e["name"] not in overridden] + user


def app_container(p: plan.Plan, role: str) -> Obj:
    """The app's container in a role: web (the app and stage 6's services) or worker."""
    app = p.spec.app
    container: Obj = {
        "name": role if role == "worker" else "app",
        "image": app.image,
        "env": app_env(p, role),
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


def workers(p: plan.Plan, owner: meta.Owner) -> list[Obj]:
    """The workers' Deployment (and its HPA where they autoscale), beside the queue only."""
    if not p.queue or not p.workers:
        return []
    pod: Obj = {
        "containers": [app_container(p, "worker")],
        "topologySpreadConstraints": workloads.spread(p, "worker"),
        # A worker gets time to finish and ack its job before it is killed.
        "terminationGracePeriodSeconds": 120,
    }
    replicas = None if p.worker_autoscaling else p.workers
    objs = [workloads.deployment(p, owner, "worker", "worker", replicas, pod)]
    if p.worker_autoscaling is not None:
        objs.append(workloads.hpa(p, owner, "worker", p.worker_autoscaling))
    return objs


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

"""Builders turn a plan into the objects of its stage, with no cluster."""

import json
from typing import Any

import pytest

from z2m import api, builders, catalog, plan

OWNER = builders.Owner(name="shop", uid="uid-1")


def build(stage: int, **spec: Any) -> list[dict[str, Any]]:
    p = plan.resolve(api.ScalingStageSpec(stage=stage, **spec), name="shop", namespace="ns")
    return builders.build(p, OWNER)


def kinds(objs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objs}


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "<secret>") for e in container["env"]}


def test_stage_1_pins_the_app_to_the_database_node_and_the_database_is_its_own_statefulset() -> (
    None
):
    objs = build(1)
    app = find(objs, "Deployment", "shop-app")
    pod = app["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["app"]
    assert app["spec"]["replicas"] == 1 and app["spec"]["strategy"]["type"] == "RollingUpdate"
    (term,) = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"][builders.COMPONENT] == "database"
    assert "@shop-db:5432/app" in env(pod["containers"][0])["DATABASE_URL"]
    sts = find(objs, "StatefulSet", "shop-db")
    assert sts["spec"]["template"]["metadata"]["labels"][builders.COMPONENT] == "database"


def test_stage_1_to_2_changes_only_where_the_app_may_run() -> None:
    """No data moves at 1->2 or 2->1: the database is the same object at both stages."""
    one, two = build(1), build(2)
    assert kinds(one) == kinds(two)
    assert find(one, "StatefulSet", "shop-db") == find(two, "StatefulSet", "shop-db")
    app1 = find(one, "Deployment", "shop-app")["spec"]["template"]["spec"]
    app2 = find(two, "Deployment", "shop-app")["spec"]["template"]["spec"]
    assert app1["containers"] == app2["containers"]
    assert "podAntiAffinity" in app2["affinity"] and "podAffinity" not in app2["affinity"]


def test_the_primary_starts_through_z2ms_own_entry_point_as_an_unprivileged_user() -> None:
    sts = find(build(2), "StatefulSet", "shop-db")
    pod = sts["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] == ["/bin/sh", "/etc/z2m/postgres.sh"]
    assert pod["securityContext"]["runAsUser"] == 999
    assert pod["serviceAccountName"] == "shop-db"
    scripts = find(build(2), "ConfigMap", "shop-scripts")["data"]
    assert "initdb" in scripts["postgres.sh"] and "exec patroni" in scripts["postgres.sh"]


def test_every_postgres_pod_is_a_member_of_one_patroni_cluster() -> None:
    objs = build(5)
    members = [
        find(objs, "StatefulSet", name)
        for name in ("shop-db", "shop-db-standby", "shop-db-replica")
    ]
    for sts in members:
        template = sts["spec"]["template"]
        assert template["metadata"]["labels"][builders.POSTGRES_CLUSTER] == "shop-pg"
        assert env(template["spec"]["containers"][0])["PATRONI_SCOPE"] == "shop-pg"
    # Only the primary's StatefulSet may found the cluster; read replicas never lead.
    db, standby, replicas = (env(s["spec"]["template"]["spec"]["containers"][0]) for s in members)
    assert db.get("Z2M_BOOTSTRAP") == "1" and "Z2M_BOOTSTRAP" not in standby
    assert "Z2M_NOFAILOVER" not in standby
    assert replicas["Z2M_NOFAILOVER"] == "true" and replicas["Z2M_NOSYNC"] == "true"
    # The app's Service follows the leader lock, not a pod.
    service = find(objs, "Service", "shop-db")
    assert service["spec"]["selector"] == {builders.POSTGRES_CLUSTER: "shop-pg", "role": "master"}


def test_the_failover_standby_exists_only_at_stage_5() -> None:
    for stage in (1, 2, 3, 4):
        assert not [o for o in build(stage) if o["metadata"]["name"] == "shop-db-standby"]
    assert find(build(5), "StatefulSet", "shop-db-standby")["spec"]["replicas"] == 1


def test_patroni_keeps_a_slot_for_every_member_and_the_stage_5_choice_of_sync() -> None:
    def config(objs: list[dict[str, Any]]) -> dict[str, Any]:
        cm = find(objs, "ConfigMap", "shop-pg-config")
        loaded: dict[str, Any] = json.loads(cm["metadata"]["annotations"]["config"])
        return loaded

    three = config(build(3))
    assert set(three["slots"]) == {"shop_db_replica_0"}
    assert three["synchronous_mode"] is False
    five = config(build(5, database={"synchronous": True}))
    assert set(five["slots"]) == {"shop_db_standby_0"} | {f"shop_db_replica_{i}" for i in range(3)}
    assert five["synchronous_mode"] is True
    assert five["ttl"] + five["loop_wait"] <= 60 and five["failsafe_mode"] is True
    # Synchronous mode needs a standby: below stage 5 the choice waits for one.
    assert config(build(4, database={"synchronous": True}))["synchronous_mode"] is False
    for suffix in builders.PATRONI_DCS:
        cm = find(build(1), "ConfigMap", f"shop-pg-{suffix}")
        assert cm["metadata"]["ownerReferences"][0]["controller"] is True


def test_patroni_runs_with_a_role_that_reaches_only_pods_and_configmaps() -> None:
    objs = build(1)
    role = find(objs, "Role", "shop-db")
    assert {r for rule in role["rules"] for r in rule["resources"]} == {"pods", "configmaps"}
    binding = find(objs, "RoleBinding", "shop-db")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "shop-db", "namespace": "ns"}]


def test_app_and_workers_are_told_the_queue_the_operator_drains() -> None:
    objs = build(4, queue={"queueName": "orders"})
    for name in ("shop-app", "shop-worker"):
        container = find(objs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        assert env(container)["QUEUE_NAME"] == "orders"
    default = find(build(4), "Deployment", "shop-worker")["spec"]["template"]["spec"]
    assert env(default["containers"][0])["QUEUE_NAME"] == "z2m.jobs"


def test_every_child_is_labelled_and_owned() -> None:
    for obj in build(5):
        labels = obj["metadata"]["labels"]
        assert labels[builders.MANAGED_BY] == "z2m" and labels[builders.PART_OF] == "shop"
        assert labels[builders.COMPONENT]
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_stage_2_separates_the_database() -> None:
    objs = build(2)
    assert {("StatefulSet", "shop-db"), ("Service", "shop-db")} <= kinds(objs)
    app = find(objs, "Deployment", "shop-app")["spec"]["template"]["spec"]["containers"]
    assert len(app) == 1 and "@shop-db:5432/app" in env(app[0])["DATABASE_URL"]


def test_stage_3_wires_one_replica_url_per_read_replica_and_an_edge_cache() -> None:
    objs = build(3)
    app = find(objs, "Deployment", "shop-app")
    assert app["spec"]["replicas"] == 2
    urls = env(app["spec"]["template"]["spec"]["containers"][0])["DATABASE_REPLICA_URLS"]
    assert urls.count("postgresql://") == 1 and "shop-db-replica-0.shop-db-replica" in urls
    assert ("Deployment", "shop-edge") in kinds(objs)
    assert ("PodDisruptionBudget", "shop-app") in kinds(objs)


def test_stage_4_adds_redis_queue_and_workers() -> None:
    objs = build(4)
    app_env = env(find(objs, "Deployment", "shop-app")["spec"]["template"]["spec"]["containers"][0])
    assert {"REDIS_URL", "BROKER_URL", "DATABASE_REPLICA_URLS"} <= set(app_env)
    worker = find(objs, "Deployment", "shop-worker")
    assert env(worker["spec"]["template"]["spec"]["containers"][0])["ROLE"] == "worker"
    assert find(objs, "StatefulSet", "shop-db-replica")["spec"]["replicas"] == 2


def test_stage_5_never_sets_app_replicas_and_adds_hpas_sentinel_monitoring() -> None:
    objs = build(5)
    assert "replicas" not in find(objs, "Deployment", "shop-app")["spec"]
    hpa = find(objs, "HorizontalPodAutoscaler", "shop-app")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (4, 12)
    assert find(objs, "StatefulSet", "shop-redis")["spec"]["replicas"] == 2
    assert ("Deployment", "shop-redis-sentinel") in kinds(objs)
    assert ("ConfigMap", "shop-monitoring") in kinds(objs)


def test_stage_5_tells_the_app_the_sentinels_instead_of_a_fixed_redis_pod() -> None:
    objs = build(5)
    for name in ("shop-app", "shop-stream-worker"):
        spec = find(objs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        variables = {e["name"]: e for e in spec["env"]}
        assert variables["REDIS_SENTINELS"]["value"] == "shop-redis-sentinel:26379"
        assert variables["REDIS_MASTER_NAME"]["value"] == "z2m"
        assert "secretKeyRef" in variables["REDIS_PASSWORD"]["valueFrom"]
        assert "REDIS_URL" not in variables


def test_stage_4_keeps_one_redis_url() -> None:
    app = find(build(4), "Deployment", "shop-app")["spec"]["template"]["spec"]["containers"][0]
    variables = env(app)
    assert "@shop-redis-0.shop-redis:6379/0" in variables["REDIS_URL"]
    assert "REDIS_SENTINELS" not in variables


def test_sentinel_keeps_its_state_in_a_volume_that_outlives_container_restarts() -> None:
    pod = find(build(5), "Deployment", "shop-redis-sentinel")["spec"]["template"]["spec"]
    sentinel = pod["containers"][0]
    state = next(v for v in sentinel["volumeMounts"] if v["name"] == "state")
    assert env(sentinel)["SENTINEL_DIR"] == state["mountPath"] != "/tmp"
    assert {"name": "state", "emptyDir": {}} in pod["volumes"]
    pods = env(sentinel)["REDIS_PODS"].split()
    assert pods == ["shop-redis-0.shop-redis.ns.svc:6379", "shop-redis-1.shop-redis.ns.svc:6379"]


def test_stage_5_redis_pods_announce_their_stable_names_to_sentinel() -> None:
    redis = find(build(5), "StatefulSet", "shop-redis")["spec"]["template"]["spec"]
    assert env(redis["containers"][0])["ANNOUNCE_DOMAIN"] == "shop-redis.ns.svc"


def test_credentials_come_only_from_the_secret() -> None:
    secret_vars = 0
    for obj in build(5):
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            for var in container.get("env", []):
                if "PASSWORD" in var["name"] or var["name"] in (
                    "SECRET_KEY",
                    "RABBITMQ_DEFAULT_PASS",
                ):
                    secret_vars += 1
                    assert "value" not in var
                    assert var["valueFrom"]["secretKeyRef"]["name"] == "shop-credentials"
                else:
                    value = var.get("value", "")
                    # Only a secret or the pod's own name is ever spliced into a value.
                    assert "$(" not in value or ":$(Z2M_" in value or "//$(POD_NAME)." in value
    assert secret_vars > 10


def test_user_env_overrides_ours_without_duplicate_names() -> None:
    objs = build(2, app={"env": [{"name": "PORT", "value": "9000"}]})
    container = find(objs, "Deployment", "shop-app")["spec"]["template"]["spec"]["containers"][0]
    names = [e["name"] for e in container["env"]]
    assert names.count("PORT") == 1 and env(container)["PORT"] == "9000"


def test_stateful_sets_keep_their_claims_when_deleted_or_scaled() -> None:
    for obj in build(5):
        if obj["kind"] == "StatefulSet":
            policy = obj["spec"]["persistentVolumeClaimRetentionPolicy"]
            assert policy == {"whenDeleted": "Retain", "whenScaled": "Retain"}


def test_nothing_prunable_is_a_pvc_or_secret() -> None:
    assert not {k for _, k in builders.PRUNABLE} & {"PersistentVolumeClaim", "Secret"}


@pytest.mark.parametrize("stage", [3, 4, 5])
def test_multi_replica_workloads_spread_over_zones(stage: int) -> None:
    for obj in build(stage):
        if obj["kind"] in ("Deployment", "StatefulSet"):
            keys = [
                c["topologyKey"]
                for c in obj["spec"]["template"]["spec"]["topologySpreadConstraints"]
            ]
            assert builders.ZONE in keys


def test_build_is_deterministic() -> None:
    assert build(4) == build(4)


def pods(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in objs
        if o["kind"] in ("Deployment", "StatefulSet")
    ]


@pytest.mark.parametrize("stage", [1, 2, 3, 4, 5])
def test_every_child_pod_meets_the_restricted_pod_security_level(stage: int) -> None:
    """What the `restricted` level checks, pod by pod (the kind walk enforces it for real)."""
    for name, pod in pods(build(stage, queue={"queueName": "z2m.jobs"})):
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True, name
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert ctx.get("runAsUser", 1) != 0, name
        assert "initContainers" not in pod, f"{name}: no root init container"
        for c in pod["containers"]:
            assert c["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            }, (name, c["name"])


@pytest.mark.parametrize("stage", [1, 2, 3, 4, 5])
def test_every_container_has_requests_and_a_memory_limit(stage: int) -> None:
    for name, pod in pods(build(stage)):
        for c in pod["containers"]:
            r = c["resources"]
            assert r["requests"]["cpu"] and r["requests"]["memory"], (name, c["name"])
            assert r["limits"]["memory"], (name, c["name"])


def test_the_user_overrides_a_servers_footprint_and_the_catalog_fills_the_rest() -> None:
    big = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}
    objs = build(4, database={"resources": big})
    for sts in ("shop-db", "shop-db-replica"):
        (c,) = find(objs, "StatefulSet", sts)["spec"]["template"]["spec"]["containers"]
        assert c["resources"] == big
    (redis,) = find(objs, "StatefulSet", "shop-redis")["spec"]["template"]["spec"]["containers"]
    cache = catalog.FOOTPRINTS["cache"]
    assert redis["resources"]["requests"] == {"cpu": cache.cpu, "memory": cache.memory}


def test_web_pods_drain_before_stopping_and_user_workers_get_no_http_probes() -> None:
    objs = build(4, app={"workerCommand": ["celery", "worker"]})
    (web,) = find(objs, "Deployment", "shop-app")["spec"]["template"]["spec"]["containers"]
    assert web["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (worker,) = find(objs, "Deployment", "shop-worker")["spec"]["template"]["spec"]["containers"]
    assert worker["command"] == ["celery", "worker"]
    assert "readinessProbe" not in worker and "livenessProbe" not in worker
    (ours,) = find(build(4), "Deployment", "shop-worker")["spec"]["template"]["spec"]["containers"]
    assert ours["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_standby_must_be_in_another_zone_where_there_are_zones() -> None:
    def affinity(zones: int | None) -> dict[str, Any]:
        p = plan.resolve(api.ScalingStageSpec(stage=5), name="shop", namespace="ns", zones=zones)
        sts = find(builders.build(p, OWNER), "StatefulSet", "shop-db-standby")
        anti: dict[str, Any] = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        return anti

    required = affinity(3)["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required == [
        {
            "labelSelector": {"matchLabels": builders.labels("shop", "database")},
            "topologyKey": "topology.kubernetes.io/zone",
        }
    ]
    # One zone, or none known: a requirement would leave the standby Pending for ever.
    for zones in (1, None):
        anti = affinity(zones)
        assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti
        term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
    # The primary's template is the same whatever the zones: nothing restarts it.
    primaries = [
        find(
            builders.build(
                plan.resolve(api.ScalingStageSpec(stage=5), name="shop", namespace="ns", zones=z),
                OWNER,
            ),
            "StatefulSet",
            "shop-db",
        )
        for z in (1, 3)
    ]
    assert primaries[0] == primaries[1]

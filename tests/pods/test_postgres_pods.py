"""PostgreSQL's pods for real: postgres.sh and Patroni on loopback, the lock in a real apiserver.

Every member runs z2m's own entry point (read through `builders.script`, as the
ConfigMap holds it) as an unprivileged user, with Patroni keeping its leader lock
and members in the local control plane, exactly as in a pod: the ConfigMaps are
the ones the builders make, the member Pods are KWOK's (Patroni writes its state
on them). Only the addresses differ: every member is 127.0.0.1 with ports of its
own, and the writer finds the primary with libpq's `target_session_attrs`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from kubernetes.client import ApiClient, CoreV1Api

from tests import services
from tests.conftest import kubectl, report
from z2m import api, builders, kube, plan
from z2m.builders import shards

pytestmark = pytest.mark.services

SCOPE = builders.patroni_scope("shop")
SUPERUSER_PASSWORD = "app-password"
REPLICATION_PASSWORD = "repl-password"


@dataclass
class Member:
    """One PostgreSQL pod's process on loopback."""

    name: str
    root: Path
    pg: int = field(default_factory=services.free_port)
    rest: int = field(default_factory=services.free_port)
    proc: subprocess.Popen[bytes] | None = None

    def url(self, db: str = "app") -> str:
        return f"postgresql://app:{SUPERUSER_PASSWORD}@127.0.0.1:{self.pg}/{db}"

    def says(self, path: str) -> bool:
        """Whether its Patroni REST API answers 200 on `path` (/leader, /replica, /sync...)."""
        try:
            return httpx.get(f"http://127.0.0.1:{self.rest}{path}", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def streaming(self) -> bool:
        with psycopg.connect(self.url(), connect_timeout=2) as conn:
            row = conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
            return row is not None and row[0] == "streaming"

    def kill(self) -> None:
        """The pod dies: Patroni and PostgreSQL are SIGKILLed, nothing shuts down cleanly."""
        assert self.proc is not None
        pid_file = self.root / "data" / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if postmaster:
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGKILL)
        self.proc.wait(timeout=30)


@dataclass
class Cluster:
    """The members of one Patroni cluster, and how to start each like its pod would."""

    namespace: str
    kubeconfig: Path
    context: str
    user: str | None
    tmp: Path
    members: dict[str, Member] = field(default_factory=dict)

    def member(self, name: str) -> Member:
        if name not in self.members:
            root = services._private_dir(self.tmp, name, self.user)
            self.members[name] = Member(name, root)
        return self.members[name]

    @contextlib.contextmanager
    def run(self, name: str, leader: str, **extra: str) -> Iterator[Member]:
        me, lead = self.member(name), self.member(leader)
        env = {
            "PATH": f"{services.PG_BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(me.root),
            "KUBECONFIG": str(self.kubeconfig),
            "PGDATA": str(me.root / "data"),
            "POSTGRES_USER": "app",
            "POSTGRES_DB": "app",
            "PATRONI_SCOPE": SCOPE,
            "PATRONI_NAME": name,
            "PATRONI_KUBERNETES_NAMESPACE": self.namespace,
            "PATRONI_KUBERNETES_LABELS": json.dumps({builders.POSTGRES_CLUSTER: SCOPE}),
            "PATRONI_KUBERNETES_SCOPE_LABEL": builders.POSTGRES_CLUSTER,
            "PATRONI_KUBERNETES_CONTEXT": self.context,
            "PATRONI_SUPERUSER_PASSWORD": SUPERUSER_PASSWORD,
            "PATRONI_REPLICATION_PASSWORD": REPLICATION_PASSWORD,
            "PATRONI_RESTAPI_USERNAME": builders.PATRONI_API_USER,
            "PATRONI_RESTAPI_PASSWORD": REPLICATION_PASSWORD,
            "PATRONI_RESTAPI_LISTEN": f"127.0.0.1:{me.rest}",
            "PATRONI_POSTGRESQL_LISTEN": f"127.0.0.1:{me.pg}",
            "POD_IP": "127.0.0.1",
            "PG_PORT": str(me.pg),
            "PATRONI_PORT": str(me.rest),
            "PG_SOCKET_DIR": str(me.root),
            "Z2M_LEADER": "127.0.0.1",
            "Z2M_LEADER_PORT": str(lead.pg),
            "Z2M_LEADER_API_PORT": str(lead.rest),
            **extra,
        }
        script = services.script_file(me.root, "postgres.sh")
        argv = ["env", *[f"{k}={v}" for k, v in env.items()], "/bin/sh", str(script)]
        runner = {"PATH": env["PATH"]}
        with services.running(services._as_user(self.user, argv), runner, me.root / "log") as proc:
            me.proc = proc
            yield me

    def log(self, name: str) -> str:
        return (self.member(name).root / "log").read_text(errors="replace")


def _stage_5_objects(namespace: str, synchronous: bool) -> list[dict[str, Any]]:
    spec = api.ScalingStageSpec(stage=5, database=api.DatabaseSpec(synchronous=synchronous))
    the_plan = plan.resolve(spec, name="shop", namespace=namespace)
    return builders.build(the_plan, builders.Owner(name="shop", uid="no-owner"))


@pytest.fixture
def cluster(
    kubeconfig: str, api_client: ApiClient, namespace: str, tmp_path: Path
) -> Iterator[Cluster]:
    """Patroni's ConfigMaps as z2m makes them, and a KWOK Pod for each member to write on."""
    user = services._unprivileged_user()
    home = services._private_dir(tmp_path, "kube", user)
    flat = kubectl("config", "view", "--flatten", "--minify", kubeconfig=kubeconfig).stdout
    config = home / "kubeconfig"
    config.write_text(flat)
    config.chmod(0o644)
    context = yaml.safe_load(flat)["current-context"]
    found = Cluster(namespace, config, context, user, tmp_path)
    yield found
    for name in found.members:  # shown when the test fails
        print(f"--- {name} ---\n{found.log(name)[-4000:]}")


def _writable(member: Member) -> bool:
    """Patroni holds the lock and PostgreSQL has finished its promotion."""
    return member.says("/leader") and _one(member, "SELECT pg_is_in_recovery()") is False


def _one(member: Member, sql: str) -> Any:
    """The first column of the first row `sql` returns on `member`, or None."""
    with psycopg.connect(member.url(), connect_timeout=2) as conn:
        row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def _dcs(api_client: ApiClient, namespace: str, synchronous: bool, members: list[str]) -> None:
    k = kube.Kube.connect(api_client)
    for obj in _stage_5_objects(namespace, synchronous):
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith(SCOPE):
            del obj["metadata"]["ownerReferences"]  # no ScalingStage owns them here
            k.apply(obj)
    _pods(api_client, namespace, members)


def _pods(api_client: ApiClient, namespace: str, members: list[str]) -> None:
    """The member pods Patroni keeps its state on (KWOK runs them; nothing is in them)."""
    core = CoreV1Api(api_client)
    for name in members:
        core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": name, "labels": {builders.POSTGRES_CLUSTER: SCOPE}},
                "spec": {
                    "nodeName": "kwok-node-0",
                    "containers": [{"name": "postgres", "image": "z2m/postgres"}],
                },
            },
        )


class Writer(threading.Thread):
    """Writes numbered rows to whichever member is the primary, counting what was acknowledged."""

    def __init__(self, members: list[Member]) -> None:
        super().__init__(daemon=True)
        hosts = ",".join("127.0.0.1" for _ in members)
        ports = ",".join(str(m.pg) for m in members)
        self.dsn = (
            f"host={hosts} port={ports} user=app password={SUPERUSER_PASSWORD} dbname=app "
            "target_session_attrs=read-write connect_timeout=2"
        )
        self.acknowledged: list[int] = []
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    while not self.stop.is_set():
                        n += 1
                        conn.execute("INSERT INTO orders VALUES (%s)", (n,))
                        self.acknowledged.append(n)
            except psycopg.Error:
                self.failed += 1
                self.stop.wait(0.2)


@pytest.mark.parametrize("synchronous", [False, True], ids=["async", "sync"])
def test_the_standby_takes_over_when_the_primary_dies_and_the_old_primary_rejoins(
    cluster: Cluster, api_client: ApiClient, synchronous: bool
) -> None:
    db, standby, replica = "shop-db-0", "shop-db-standby-0", "shop-db-replica-0"
    _dcs(api_client, cluster.namespace, synchronous, [db, standby, replica])
    with contextlib.ExitStack() as stack:
        primary = stack.enter_context(cluster.run(db, db, Z2M_BOOTSTRAP="1"))
        services.wait_for(lambda: _writable(primary), 90, "the first member leads")
        with psycopg.connect(primary.url(), autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        second = stack.enter_context(cluster.run(standby, db))
        third = stack.enter_context(
            cluster.run(replica, db, Z2M_NOFAILOVER="true", Z2M_NOSYNC="true")
        )
        for m in (second, third):
            services.wait_for(m.streaming, 120, f"{m.name} streaming")
        if synchronous:
            services.wait_for(lambda: second.says("/sync"), 60, "the standby is synchronous")
        # The read replica is a replica to Patroni, and never its synchronous standby.
        services.wait_for(lambda: third.says("/replica"), 30, "Patroni sees the read replica")
        assert not third.says("/sync")

        writer = Writer([primary, second])
        writer.start()
        services.wait_for(lambda: len(writer.acknowledged) >= 200, 60, "writes before the kill")
        primary.kill()
        killed_at = time.monotonic()
        # The seed promises a promotion within 60 s; Patroni's lock lasts 30 s.
        services.wait_for(lambda: _writable(second), 60, "the standby promoted")
        promoted = time.monotonic() - killed_at
        at_promotion = len(writer.acknowledged)
        services.wait_for(
            lambda: len(writer.acknowledged) >= at_promotion + 100, 60, "writes after the failover"
        )
        writer.stop.set()
        writer.join(timeout=30)

        with psycopg.connect(second.url()) as conn:
            stored = {row[0] for row in conn.execute("SELECT id FROM orders")}
        lost = [n for n in writer.acknowledged if n not in stored]
        mode = "synchronous" if synchronous else "asynchronous"
        report(
            f"postgres failover ({mode}, loopback): standby promoted {promoted:.1f} s after "
            f"the primary was killed; {len(writer.acknowledged)} writes acknowledged, "
            f"{len(lost)} lost, {writer.failed} failed attempts during the failover"
        )
        if synchronous:
            assert lost == []
        # Every write acknowledged after the promotion is on the new primary.
        assert all(n in stored for n in writer.acknowledged[at_promotion:])
        # The read replica follows the new primary (its slot came along) ...
        with psycopg.connect(second.url(), autocommit=True) as conn:
            conn.execute("INSERT INTO orders VALUES (-1)")
        services.wait_for(
            lambda: _one(third, "SELECT 1 FROM orders WHERE id = -1"),
            60,
            "the read replica replays the new primary's writes",
        )
        # ... and the old primary comes back as a replica of it, not as a second primary.
        back = stack.enter_context(cluster.run(db, standby, Z2M_BOOTSTRAP="1"))
        services.wait_for(back.streaming, 120, "the old primary streams from the new one")
        services.wait_for(lambda: back.says("/replica"), 30, "Patroni sees the old primary follow")
        assert not back.says("/primary") and _one(back, "SELECT pg_is_in_recovery()") is True
        services.wait_for(
            lambda: _one(back, "SELECT 1 FROM orders WHERE id = -1"),
            60,
            "the old primary has the new primary's writes",
        )


def test_a_member_never_founds_the_cluster_and_a_stale_copy_is_rebuilt(
    cluster: Cluster, api_client: ApiClient
) -> None:
    db, replica = "shop-db-0", "shop-db-replica-0"
    _dcs(api_client, cluster.namespace, False, [db, replica])
    # With no leader, a member other than the primary's waits rather than run initdb.
    with cluster.run(replica, db, Z2M_NOFAILOVER="true", Z2M_NOSYNC="true"):
        services.wait_for(
            lambda: "no PostgreSQL leader answers" in cluster.log(replica), 30, "the wait"
        )
        assert not (cluster.member(replica).root / "data" / "PG_VERSION").exists()
        with cluster.run(db, db, Z2M_BOOTSTRAP="1") as primary:
            services.wait_for(lambda: _writable(primary), 90, "the first member leads")
            me = cluster.member(replica)
            services.wait_for(me.streaming, 120, "the replica clones the leader and streams")
            with psycopg.connect(primary.url(), autocommit=True) as conn:
                conn.execute("CREATE TABLE kept (v int)")
                conn.execute("INSERT INTO kept VALUES (1)")
            services.wait_for(lambda: _one(me, "SELECT v FROM kept") == 1, 60, "replayed")
    # The copy is kept while its slot keeps the WAL it lacks: a restart reuses it.
    with cluster.run(db, db, Z2M_BOOTSTRAP="1") as primary:
        services.wait_for(lambda: _writable(primary), 90, "the primary leads again")
        with cluster.run(replica, db, Z2M_NOFAILOVER="true", Z2M_NOSYNC="true") as me:
            services.wait_for(me.streaming, 120, "the kept copy streams again")
        assert "cannot catch up" not in cluster.log(replica)
        # Its pod and slot gone (a demotion removed the member): the copy cannot catch up.
        core = CoreV1Api(api_client)
        core.delete_namespaced_pod(replica, cluster.namespace, grace_period_seconds=0)
        config = _stage_5_objects(cluster.namespace, False)
        cm = next(o for o in config if o["metadata"]["name"] == f"{SCOPE}-config")
        dynamic = json.loads(cm["metadata"]["annotations"]["config"])
        dynamic["slots"] = {}
        core.patch_namespaced_config_map(
            f"{SCOPE}-config",
            cluster.namespace,
            {"metadata": {"annotations": {"config": json.dumps(dynamic)}}},
        )

        def slot_gone() -> bool:
            with psycopg.connect(primary.url()) as conn:
                rows = conn.execute(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'shop_db_replica_0'"
                ).fetchall()
            return rows == []

        services.wait_for(slot_gone, 60, "Patroni drops the slot of a member that left")
        with psycopg.connect(primary.url(), autocommit=True) as conn:
            conn.execute("INSERT INTO kept VALUES (2)")
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
        _pods(api_client, cluster.namespace, [replica])  # the pod comes back, on its claim
        with cluster.run(replica, db, Z2M_NOFAILOVER="true", Z2M_NOSYNC="true") as me:
            services.wait_for(me.streaming, 120, "the rebuilt copy streams")
            services.wait_for(
                lambda: _one(me, "SELECT count(*) FROM kept") == 2, 60, "every row on the copy"
            )
        assert "cannot catch up" in cluster.log(replica)


def test_a_stage_6_shard_founds_its_own_patroni_cluster_with_logical_wal(
    cluster: Cluster, api_client: ApiClient
) -> None:
    # Shard 1's ConfigMaps exactly as stage 6 builds them, and its one member's pod.
    spec = api.ScalingStageSpec(stage=6)
    the_plan = plan.resolve(spec, name="shop", namespace=cluster.namespace)
    scope = shards.shard_scope("shop", 1)
    k = kube.Kube.connect(api_client)
    for obj in builders.build(the_plan, builders.Owner(name="shop", uid="no-owner")):
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith(f"{scope}-"):
            del obj["metadata"]["ownerReferences"]
            k.apply(obj)
    member = "shop-db-shard-1-0"
    CoreV1Api(api_client).create_namespaced_pod(
        cluster.namespace,
        {
            "metadata": {"name": member, "labels": {builders.POSTGRES_CLUSTER: scope}},
            "spec": {
                "nodeName": "kwok-node-0",
                "containers": [{"name": "postgres", "image": "z2m/postgres"}],
            },
        },
    )
    labels = json.dumps({builders.POSTGRES_CLUSTER: scope})
    with cluster.run(
        member,
        member,
        Z2M_BOOTSTRAP="1",
        PATRONI_SCOPE=scope,
        PATRONI_KUBERNETES_LABELS=labels,
    ) as shard:
        services.wait_for(lambda: _writable(shard), 90, "the shard's one member leads")
        # What a move needs of a shard: logical WAL, room for its slots and workers.
        assert _one(shard, "SHOW wal_level") == "logical"
        assert int(_one(shard, "SHOW max_replication_slots")) >= 20
        with psycopg.connect(shard.url(), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
            conn.execute("CREATE PUBLICATION probe FOR TABLE t")
            conn.execute("SELECT pg_create_logical_replication_slot('probe', 'pgoutput')")
            conn.execute("SELECT pg_drop_replication_slot('probe')")
        # Patroni keeps the shard's lock in the shard's own ConfigMap, apart from the database's.
        leader = CoreV1Api(api_client).read_namespaced_config_map(
            f"{scope}-leader", cluster.namespace
        )
        assert (leader.metadata.annotations or {}).get("leader") == member

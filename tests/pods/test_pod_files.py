"""Every script and config file z2m mounts into pods, run against the real program.

Pods only pretend to run on the local control plane, so these tests are where
the files meet PostgreSQL, Redis, Sentinel, nginx and RabbitMQ for real. They
read the files through `builders.script`, the same call that fills the
ConfigMap the pods mount: no copies.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import psycopg
import pytest
import redis

from tests import services
from z2m import builders

pytestmark = pytest.mark.services


def _script(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.write_text(builders.script(name))
    path.chmod(0o755)
    return path


# --- PostgreSQL: the primary's init script and the replica's entry point -------------------


@contextlib.contextmanager
def _run(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)


def _pg_env(**extra: str) -> dict[str, str]:
    return {"PATH": f"{services.PG_BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", **extra}


def _wait_accepting(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Until the primary lets the app in: an open port may still say "starting up"."""
    url = f"postgresql://app:app-password@127.0.0.1:{port}/postgres"

    def up() -> bool:
        assert proc.poll() is None, f"postgres exited with {proc.returncode}"
        with psycopg.connect(url, connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    services.wait_for(up, 60, "postgres")


def _primary_argv(root: Path, port: int, replication_password: str) -> list[str]:
    """z2m's primary entry point on `root`/data, as the pod runs it, on a loopback port."""
    env = _pg_env(
        POSTGRES_USER="app",
        POSTGRES_DB="app",
        POSTGRES_PASSWORD="app-password",
        PGDATA=str(root / "data"),
        REPLICATION_PASSWORD=replication_password,
    )
    argv = ["env", *[f"{k}={v}" for k, v in env.items()], "/bin/sh"]
    argv += [str(_script(root, "postgres-primary.sh")), "-p", str(port)]
    return [*argv, "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}"]


@pytest.fixture
def pg_primary(tmp_path: Path) -> Iterator[tuple[str | None, Path, int, str]]:
    """A PostgreSQL primary started by z2m's own entry point on an empty data directory."""
    user = services._unprivileged_user()
    root = services._private_dir(tmp_path, "primary", user)
    port, password = services.free_port(), "s3cret-repl"
    argv = [*_primary_argv(root, port, password), "-c", "fsync=off"]
    with _run(services._as_user(user, argv), _pg_env(), root / "log") as proc:
        _wait_accepting(port, proc)
        yield user, root, port, password


def test_the_primary_entry_point_makes_the_app_database_and_keeps_data_across_restarts(
    tmp_path: Path,
) -> None:
    user = services._unprivileged_user()
    root = services._private_dir(tmp_path, "primary", user)
    port = services.free_port()
    argv = _primary_argv(root, port, "repl")
    url = f"postgresql://app:app-password@127.0.0.1:{port}/app"
    with _run(services._as_user(user, argv), _pg_env(), root / "log") as proc:
        _wait_accepting(port, proc)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url.replace("app-password", "wrong"), connect_timeout=5).close()
    # A second start finds the cluster and runs it as it is: no initdb over the data.
    with _run(services._as_user(user, argv), _pg_env(), root / "log") as proc:
        _wait_accepting(port, proc)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [(42,)]
            roles = conn.execute("SELECT rolreplication FROM pg_roles WHERE rolname = 'replicator'")
            assert roles.fetchall() == [(True,)]


def test_the_replica_script_clones_the_primary_and_streams_from_it(
    pg_primary: tuple[str | None, Path, int, str], tmp_path: Path
) -> None:
    user, _, primary_port, password = pg_primary
    primary = f"postgresql://app:app-password@127.0.0.1:{primary_port}/postgres"
    with psycopg.connect(primary, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        conn.execute("INSERT INTO orders VALUES (1)")

    root = services._private_dir(tmp_path, "replica", user)
    port = services.free_port()
    script = _script(root, "postgres-replica.sh")
    env = _pg_env(
        PRIMARY_HOST="127.0.0.1",
        PRIMARY_PORT=str(primary_port),
        REPLICATION_PASSWORD=password,
        PGDATA=str(root / "data"),
        REPLICA_NAME="shop-db-replica-0",
    )
    argv = services._as_user(
        user,
        [
            "env",
            *[f"{k}={v}" for k, v in env.items()],
            "/bin/sh",
            str(script),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={root}",
        ],
    )
    replica = f"postgresql://app:app-password@127.0.0.1:{port}/postgres"

    def streaming() -> bool:
        with psycopg.connect(replica, connect_timeout=2) as conn:
            row = conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
            return row is not None and row[0] == "streaming"

    with _run(argv, env, root / "first.log"):
        services.wait_for(streaming, 60, "replica streaming")
        with psycopg.connect(primary, autocommit=True) as conn:
            conn.execute("INSERT INTO orders VALUES (2)")
        services.wait_for(
            lambda: (
                psycopg.connect(replica).execute("SELECT count(*) FROM orders").fetchone() == (2,)
            ),
            30,
            "row 2 replayed",
        )
        with psycopg.connect(replica) as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO orders VALUES (3)")

    # While it is away, its slot keeps on the primary the WAL it has not had yet.
    def slot() -> list[tuple[object, ...]]:
        with psycopg.connect(primary) as conn:
            return conn.execute(
                "SELECT active, wal_status FROM pg_replication_slots"
                " WHERE slot_name = 'shop_db_replica_0'"
            ).fetchall()

    services.wait_for(lambda: slot() == [(False, "reserved")], 30, "slot kept, inactive")
    # A restart (a pod rescheduled onto its kept PVC) reuses the data: no second clone.
    with psycopg.connect(primary, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (4)")
    with _run(argv, env, root / "second.log"):
        services.wait_for(streaming, 60, "replica streaming again")
        services.wait_for(
            lambda: (
                psycopg.connect(replica).execute("SELECT count(*) FROM orders").fetchone() == (3,)
            ),
            30,
            "row 4 replayed after restart",
        )
    assert "pg_basebackup" not in (root / "second.log").read_text()

    # A copy whose slot the primary no longer keeps (dropped, or lost past
    # max_slot_wal_keep_size after a long demotion) cannot catch up: it is rebuilt.
    with psycopg.connect(primary, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot('shop_db_replica_0')")
        conn.execute("INSERT INTO orders VALUES (5)")
    with _run(argv, env, root / "third.log"):
        services.wait_for(streaming, 60, "rebuilt replica streaming")
        services.wait_for(
            lambda: (
                psycopg.connect(replica).execute("SELECT count(*) FROM orders").fetchone() == (4,)
            ),
            30,
            "row 5 on the rebuilt copy",
        )
        assert slot() == [(True, "reserved")]
    assert "cannot catch up; rebuilding" in (root / "third.log").read_text()


def test_replication_needs_the_generated_password(
    pg_primary: tuple[str | None, Path, int, str], tmp_path: Path
) -> None:
    _, _, primary_port, _ = pg_primary
    target = tmp_path / "clone"
    done = subprocess.run(
        [
            str(services.PG_BIN / "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary_port),
            "-U",
            "replicator",
            "-D",
            str(target),
            "--no-password",
        ],
        env=_pg_env(PGPASSWORD="wrong"),
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "password authentication failed" in done.stderr


# --- Redis and Sentinel ---------------------------------------------------------------------


def _redis(
    tmp: Path, pod: str, primary_port: int, port: int, password: str, sentinel: int | None
) -> list[str]:
    data = tmp / pod
    data.mkdir()
    # Tests run every pod on one host, so the primary is told apart by its port.
    env = {
        "POD_NAME": pod,
        "PRIMARY_HOST": "127.0.0.1",
        "PRIMARY_PORT": str(primary_port),
        "REDIS_PASSWORD": password,
        "REDIS_PORT": str(port),
        "REDIS_DIR": str(data),
    }
    if sentinel:
        env.update(SENTINEL_HOST="127.0.0.1", SENTINEL_PORT=str(sentinel))
    script = _script(tmp, "redis.sh")
    return [
        "env",
        *[f"{k}={v}" for k, v in env.items()],
        "/bin/sh",
        str(script),
        "--bind",
        "127.0.0.1",
    ]


def test_redis_pods_replicate_and_sentinel_fails_the_primary_over(tmp_path: Path) -> None:
    password = "r3dis"
    p0, p1, s = services.free_port(), services.free_port(), services.free_port()
    base = {"PATH": "/usr/bin:/bin"}
    with contextlib.ExitStack() as stack:
        primary = stack.enter_context(
            _run(_redis(tmp_path, "redis-0", p0, p0, password, None), base, tmp_path / "r0.log")
        )
        services.wait_for(lambda: redis.Redis(port=p0, password=password).ping(), 20, "redis-0")
        stack.enter_context(
            _run(_redis(tmp_path, "redis-1", p0, p1, password, None), base, tmp_path / "r1.log")
        )
        services.wait_for(
            lambda: (
                redis.Redis(port=p1, password=password).info("replication")["master_link_status"]
                == "up"
            ),
            30,
            "replica link",
        )
        redis.Redis(port=p0, password=password).set("cart:1", "3 items")
        services.wait_for(
            lambda: redis.Redis(port=p1, password=password).get("cart:1") == b"3 items",
            10,
            "replicated key",
        )

        sentinel_dir = tmp_path / "sentinel"
        sentinel_dir.mkdir()
        env = {
            **base,
            "PRIMARY_HOST": "127.0.0.1",
            "REDIS_PASSWORD": password,
            "REDIS_PORT": str(p0),
            "SENTINEL_PORT": str(s),
            "SENTINEL_DIR": str(sentinel_dir),
            "QUORUM": "1",
            "DOWN_AFTER_MS": "1000",
        }
        script = _script(tmp_path, "sentinel.sh")
        stack.enter_context(
            _run(
                ["env", *[f"{k}={v}" for k, v in env.items()], "/bin/sh", str(script)],
                base,
                tmp_path / "s.log",
            )
        )
        watcher = redis.Redis(port=s)
        services.wait_for(
            lambda: watcher.sentinel_master("z2m")["num-slaves"] == 1,
            30,
            "sentinel sees the replica",
        )

        os.killpg(primary.pid, 9)
        services.wait_for(
            lambda: int(watcher.sentinel_get_master_addr_by_name("z2m")[1]) == p1,
            60,
            "failover to redis-1",
        )
        promoted = redis.Redis(port=p1, password=password)
        services.wait_for(
            lambda: promoted.info("replication")["role"] == "master", 30, "redis-1 is primary"
        )
        assert promoted.get("cart:1") == b"3 items"


def _sentinel(tmp: Path, name: str, p0: int, port: int, password: str, **extra: str) -> list[str]:
    state = tmp / name
    state.mkdir(exist_ok=True)
    env = {
        "PATH": "/usr/bin:/bin",
        "PRIMARY_HOST": "127.0.0.1",
        "REDIS_PASSWORD": password,
        "REDIS_PORT": str(p0),
        "SENTINEL_PORT": str(port),
        "SENTINEL_DIR": str(state),
        "QUORUM": "1",
        "DOWN_AFTER_MS": "1000",
        **extra,
    }
    script = _script(tmp, "sentinel.sh")
    return ["env", *[f"{k}={v}" for k, v in env.items()], "/bin/sh", str(script)]


def _names(sentinel_port: int, redis_port: int) -> bool:
    with redis.Redis(port=sentinel_port, socket_timeout=2) as sentinel:
        found = sentinel.sentinel_get_master_addr_by_name("z2m")
    return found is not None and int(found[1]) == redis_port


def test_a_restarted_sentinel_keeps_the_promoted_primary_and_a_new_one_asks_who_it_is(
    tmp_path: Path,
) -> None:
    password = "r3dis"
    p0, p1 = services.free_port(), services.free_port()
    s1, s2, s3 = services.free_port(), services.free_port(), services.free_port()
    base = {"PATH": "/usr/bin:/bin"}
    with contextlib.ExitStack() as stack:
        primary = stack.enter_context(
            _run(_redis(tmp_path, "redis-0", p0, p0, password, None), base, tmp_path / "r0.log")
        )
        services.wait_for(lambda: redis.Redis(port=p0, password=password).ping(), 20, "redis-0")
        stack.enter_context(
            _run(_redis(tmp_path, "redis-1", p0, p1, password, None), base, tmp_path / "r1.log")
        )
        with _run(_sentinel(tmp_path, "s1", p0, s1, password), base, tmp_path / "s1.log"):
            services.wait_for(
                lambda: redis.Redis(port=s1).sentinel_master("z2m")["num-slaves"] == 1,
                30,
                "sentinel sees the replica",
            )
            os.killpg(primary.pid, 9)
            services.wait_for(lambda: _names(s1, p1), 60, "failover to redis-1")
        # The container restarts with the same SENTINEL_DIR (the pod's emptyDir).
        stack.enter_context(
            _run(_sentinel(tmp_path, "s1", p0, s1, password), base, tmp_path / "s1.log")
        )
        services.wait_for(lambda: redis.Redis(port=s1).ping(), 20, "restarted sentinel")
        assert _names(s1, p1), "a restarted Sentinel went back to ordinal 0"

        # A new Sentinel (an empty SENTINEL_DIR) asks the others first...
        peers = {"SENTINEL_PEERS": f"127.0.0.1:9 127.0.0.1:{s1}"}
        stack.enter_context(
            _run(_sentinel(tmp_path, "s2", p0, s2, password, **peers), base, tmp_path / "s2.log")
        )
        services.wait_for(lambda: redis.Redis(port=s2).ping(), 20, "new sentinel")
        assert _names(s2, p1)
        # ...and with no Sentinel to ask, the Redis pods: whichever says it is the master.
        pods = {"REDIS_PODS": f"127.0.0.1:{p0} 127.0.0.1:{p1}"}
        stack.enter_context(
            _run(_sentinel(tmp_path, "s3", p0, s3, password, **pods), base, tmp_path / "s3.log")
        )
        services.wait_for(lambda: redis.Redis(port=s3).ping(), 20, "lone sentinel")
        assert _names(s3, p1)


# --- nginx edge cache -------------------------------------------------------------------------


class _Upstream(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        _Upstream.hits[self.path] = _Upstream.hits.get(self.path, 0) + 1
        body = f"served {self.path}".encode()
        self.send_response(200)
        if self.path.startswith("/static/"):
            self.send_header("Cache-Control", "public, max-age=31536000, immutable")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def test_the_edge_cache_serves_static_assets_from_cache_and_passes_the_rest(tmp_path: Path) -> None:
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = services.free_port()
    # Non-root, as in the edge pod (which runs as uid 101): the cache belongs to that user.
    user = services._unprivileged_user()
    root = services._private_dir(tmp_path, "edge", user)
    conf = root / "nginx.conf"
    env = {
        "UPSTREAM": f"127.0.0.1:{upstream.server_address[1]}",
        "STATIC_PATH": "/static/",
        "LISTEN_PORT": str(port),
        "PATH": "/usr/bin:/bin:/usr/sbin",
    }
    # The same envsubst call the edge pod's command runs.
    rendered = subprocess.run(
        ["envsubst", "$UPSTREAM $STATIC_PATH $LISTEN_PORT"],
        input=builders.script("nginx-edge.conf"),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    conf.write_text(rendered.replace("/tmp/", f"{root}/"))
    try:
        with _run(
            services._as_user(user, ["nginx", "-c", str(conf), "-g", "daemon off;"]),
            env,
            tmp_path / "nginx.log",
        ):
            services.wait_for(
                lambda: httpx.get(f"http://127.0.0.1:{port}/edge-healthz").status_code == 200,
                20,
                "nginx",
            )
            first = httpx.get(f"http://127.0.0.1:{port}/static/app.css")
            second = httpx.get(f"http://127.0.0.1:{port}/static/app.css")
            httpx.get(f"http://127.0.0.1:{port}/feed")
            httpx.get(f"http://127.0.0.1:{port}/feed")
    finally:
        upstream.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    assert (first.headers["X-Cache-Status"], second.headers["X-Cache-Status"]) == ("MISS", "HIT")
    assert second.text == "served /static/app.css"
    assert _Upstream.hits["/static/app.css"] == 1
    assert _Upstream.hits["/feed"] == 2


# --- RabbitMQ ---------------------------------------------------------------------------------


def test_rabbitmq_takes_our_config_and_serves_the_management_api(tmp_path: Path) -> None:
    management = services.free_port()
    conf = builders.script("rabbitmq.conf").replace("15672", str(management))
    with services.rabbitmq(tmp_path, config=conf, plugins=("rabbitmq_management",)) as node:
        url = f"http://127.0.0.1:{management}/api/overview"
        services.wait_for(
            lambda: httpx.get(url, auth=("guest", "guest")).status_code == 200, 60, "management API"
        )
        env = subprocess.run(
            [
                str(services.RABBITMQ_BIN / "rabbitmqctl"),
                "-n",
                node.nodename,
                "eval",
                "application:get_env(rabbit, consumer_timeout).",
            ],
            env=node.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "1800000" in env.stdout

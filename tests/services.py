"""Launchers for the real backing services the tests run against.

Each launcher is a context manager that starts the Debian-packaged program on
127.0.0.1, on a free port, with all its state in a temporary directory, and
tears it down on exit.  The yielded object has a URL/DSN plus ``stop()`` and
``start()`` so a test can take a service away and bring it back on the same
port with the same data.

PostgreSQL refuses to run as root, so when the tests run as root the server
runs as an unprivileged system user (``z2m-test``, created on first use, or
``nobody`` if it can't be created).  Its data lives in a directory under the
system temp dir rather than under ``tmp`` because pytest's temp root is
private (mode 0700) and the unprivileged user could not reach it.

Nothing here mocks anything: these are the real servers.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PG_BIN = Path("/usr/lib/postgresql/15/bin")
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
UNPRIVILEGED_USER = "z2m-test"
REPLICATION_USER = "replicator"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: object, timeout: float, what: str, interval: float = 0.1) -> None:
    """Call ``check()`` until it returns truthy or ``timeout`` seconds pass."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # the service is still coming up
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s (last error: {last_error!r})")


def script_file(tmp: Path, name: str) -> Path:
    """One of the files z2m mounts into pods, written to `tmp` as the ConfigMap holds it."""
    from z2m import builders

    path = tmp / name
    path.write_text(builders.script(name))
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def running(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own session, output to `log`; its whole group is stopped afterwards."""
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


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop_group(process: subprocess.Popen[bytes], port: int, what: str, grace: float) -> None:
    """SIGTERM a server's process group (a clean shutdown), SIGKILL it after `grace`
    seconds, and wait until its port is free."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    wait_for(lambda: not _port_open(port), 15, f"{what} port released")


# --------------------------------------------------------------------------- PostgreSQL


def _unprivileged_user() -> str | None:
    """Return the user PostgreSQL should run as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(UNPRIVILEGED_USER)
        return UNPRIVILEGED_USER
    except KeyError:
        pass
    created = subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            UNPRIVILEGED_USER,
        ],
        capture_output=True,
        check=False,
    )
    if created.returncode == 0 or _user_exists(UNPRIVILEGED_USER):
        return UNPRIVILEGED_USER
    return "nobody"


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _as_user(user: str | None, argv: list[str]) -> list[str]:
    return argv if user is None else ["runuser", "-u", user, "--", *argv]


def _private_dir(tmp: Path, name: str, user: str | None) -> Path:
    """Make a directory ``user`` owns and can reach (see the module docstring)."""
    if user is None:
        path = tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix=f"z2m-{name}-"))
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


@dataclass
class Postgres:
    """A running PostgreSQL server (primary or streaming replica)."""

    root: Path
    port: int
    user: str | None
    is_replica: bool = False
    primary: Postgres | None = None

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        """Where the server logs go."""
        return self.root / "server.log"

    @property
    def dsn(self) -> str:
        """A libpq URL for the superuser on the ``postgres`` database."""
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        """A libpq URL for the superuser on ``dbname``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _pg_ctl(self, *args: str) -> None:
        argv = [str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), *args]
        subprocess.run(_as_user(self.user, argv), check=True, capture_output=True, timeout=90)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._pg_ctl("-l", str(self.log_file), "-w", "-t", "60", "start")
        wait_for(self._accepts, 30, f"postgres on {self.port}")

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are disconnected)."""
        self._pg_ctl("-m", "fast", "-w", "-t", "60", "stop")

    def _accepts(self) -> bool:
        import psycopg

        with psycopg.connect(self.dsn, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode and return its rows (if any)."""
        import psycopg

        with psycopg.connect(self.dsn_for(dbname), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(sql.encode())
            return list(cur.fetchall()) if cur.description else []

    def create_database(self, name: str) -> None:
        """Create a database (on a replica's primary, it appears on the replica too)."""
        self.execute(f'CREATE DATABASE "{name}"')

    def wait_replayed(self, timeout: float = 20.0) -> None:
        """On a replica: wait until everything the primary has written is replayed."""
        assert self.primary is not None, "only a replica replays"
        target = self.primary.execute("SELECT pg_current_wal_insert_lsn()::text")[0][0]

        def caught_up() -> bool:
            rows = self.execute(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")
            return bool(rows[0][0])

        wait_for(caught_up, timeout, f"replica on {self.port} replaying {target}")


@dataclass(frozen=True)
class ScratchDatabase:
    """A uniquely named database on a server, for one test."""

    name: str
    primary: Postgres

    @classmethod
    def create(cls, primary: Postgres) -> ScratchDatabase:
        """Create a new empty database on ``primary``."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        primary.create_database(name)
        return cls(name=name, primary=primary)

    @property
    def url(self) -> str:
        """Its libpq URL (superuser)."""
        return self.primary.dsn_for(self.name)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run one statement on the primary and return its rows."""
        return self.primary.execute(sql, self.name)


LOGICAL = """
wal_level = logical
max_replication_slots = 20
max_logical_replication_workers = 8
max_worker_processes = 16
# Start replication workers promptly (the default retry is 5 s).
wal_retrieve_retry_interval = '200ms'
"""
"""Settings of a server a shard move publishes from or subscribes on."""


def _write_conf(data_dir: Path, port: int, extra: str = "") -> None:
    settings = f"""
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{data_dir}'
max_connections = 300
wal_level = replica
max_wal_senders = 10
hot_standby = on
fsync = off
full_page_writes = off
{extra}
"""
    # Later settings win, so appending overrides whatever initdb or the base
    # backup copied in.
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write(settings)


@contextlib.contextmanager
def postgres_primary(tmp: Path, settings: str = "") -> Iterator[Postgres]:
    """Run a PostgreSQL primary with streaming replication enabled.

    ``settings`` are appended to ``postgresql.conf`` (``wal_level = logical`` for
    logical replication, say).

    Trust auth on 127.0.0.1 for every user, plus a ``replicator`` role allowed
    to connect for replication, so :func:`postgres_replica` can clone it.
    """
    user = _unprivileged_user()
    root = _private_dir(tmp, "pg-primary", user)
    server = Postgres(root=root, port=free_port(), user=user)
    try:
        initdb = [
            str(PG_BIN / "initdb"),
            "-D",
            str(server.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ]
        subprocess.run(_as_user(user, initdb), check=True, capture_output=True, timeout=120)
        _write_conf(server.data_dir, server.port, settings)
        (server.data_dir / "pg_hba.conf").write_text(
            "host all all 127.0.0.1/32 trust\n"
            f"host replication {REPLICATION_USER} 127.0.0.1/32 trust\n"
        )
        server.start()
        server.execute(f"CREATE ROLE {REPLICATION_USER} WITH REPLICATION LOGIN")
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def postgres_replica(primary: Postgres, tmp: Path) -> Iterator[Postgres]:
    """Run a hot-standby streaming replica of ``primary`` (real pg_basebackup -R)."""
    user = primary.user
    root = _private_dir(tmp, "pg-replica", user)
    server = Postgres(root=root, port=free_port(), user=user, is_replica=True, primary=primary)
    try:
        basebackup = [
            str(PG_BIN / "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            REPLICATION_USER,
            "-D",
            str(server.data_dir),
            "-R",
            "-X",
            "stream",
            "--no-sync",
            "-c",
            "fast",
        ]
        subprocess.run(_as_user(user, basebackup), check=True, capture_output=True, timeout=120)
        _write_conf(server.data_dir, server.port)
        server.start()
        wait_for(
            lambda: server.execute("SELECT status FROM pg_stat_wal_receiver")[0][0] == "streaming",
            30,
            "replica streaming",
        )
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- Redis


@dataclass
class Redis:
    """A running redis-server with persistence off."""

    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait for PONG."""
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.root),
            "--logfile",
            str(self.root / "redis.log"),
        ]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.ping, 20, f"redis on {self.port}")

    def ping(self) -> bool:
        """True if the server answers PING."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        """Kill the server and wait for it to exit (the port is freed)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[Redis]:
    """Run a throwaway redis-server on a free port."""
    root = tmp / f"redis-{free_port()}"
    root.mkdir(parents=True)
    server = Redis(root=root, port=free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _port_with_bus() -> int:
    """A free port whose Redis Cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 < 65536 and not _port_open(port + 10000):
            return port


@dataclass
class RedisClusterNodes:
    """Six Redis Cluster nodes on loopback, each run by z2m's own `redis-cluster.sh`.

    `host` is the address they listen on: moving them from 127.0.0.1 to 127.0.0.2
    is what a pod's new IP looks like to the cluster.
    """

    root: Path
    password: str
    ports: list[int]
    host: str = "127.0.0.1"
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def nodes(self) -> str:
        """The REDIS_CLUSTER_NODES value for the app."""
        return ",".join(f"{self.host}:{port}" for port in self.ports)

    def client(self, port: int) -> Any:
        """A redis-py client of one node (not cluster-aware)."""
        import redis

        return redis.Redis(host=self.host, port=port, password=self.password, socket_timeout=2)

    def info(self, port: int) -> dict[str, str]:
        """`CLUSTER INFO` of one node, as a dict of strings."""
        with self.client(port) as node:
            raw = node.execute_command("CLUSTER INFO")
        if isinstance(raw, dict):
            return {str(k): str(v) for k, v in raw.items()}
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def start(self, ordinal: int) -> None:
        """Start node `ordinal` through the script, as its pod would."""
        # Written once: sh reads a script as it runs, so rewriting it under a running
        # node would cut that node's script short.
        script = self.root / "redis-cluster.sh"
        if not script.exists():
            script_file(self.root, "redis-cluster.sh")
        data = self.root / f"node-{ordinal}"
        data.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "POD_NAME": f"redis-cl-{ordinal}",
            "REDIS_PASSWORD": self.password,
            "REDIS_PORT": str(self.ports[ordinal]),
            "REDIS_DIR": str(data),
            "CLUSTER_NODES": " ".join(f"{self.host}:{p}" for p in self.ports),
            "CLUSTER_REPLICAS": "1",
        }
        # On loopback a connection leaves from 127.0.0.1 whatever the listening address;
        # a pod's leave from its own IP, which is what the peers must see.
        argv = ["/bin/sh", str(script), "--bind", self.host, "--bind-source-addr", self.host]
        log = (self.root / f"node-{ordinal}.log").open("ab")
        self.processes[ordinal] = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def stop(self, ordinal: int) -> None:
        """Stop node `ordinal` (its script and redis-server) and wait for it."""
        process = self.processes.pop(ordinal)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        process.wait(timeout=20)

    def said(self, ordinal: int, line: str) -> int:
        """How many times node `ordinal`'s script and server logged `line`."""
        return (self.root / f"node-{ordinal}.log").read_text().count(line)

    def settled(self) -> bool:
        """Formed, and node 0's script has logged what it made of it.

        `redis-cli --cluster create` leaves the cluster formed a moment before the
        script logs it; stopping node 0 in that moment would lose the line.
        """
        return self.formed() and (
            self.said(0, "redis-cluster: formed from") + self.said(0, "not forming it again") > 0
        )

    def formed(self) -> bool:
        """Every node says the cluster is ok and has a live link to all six.

        The state alone may be stale: with no majority reachable, nobody marks a
        lost peer failed, and "ok" stays.
        """
        for port in self.ports:
            info = self.info(port)
            if (info.get("cluster_state"), info.get("cluster_known_nodes")) != ("ok", "6"):
                return False
            with self.client(port) as node:
                links = node.cluster("NODES").values()
            if len(links) != 6 or not all(n["connected"] for n in links):
                return False
        return True


@contextlib.contextmanager
def redis_cluster(tmp: Path, password: str = "cluster-test") -> Iterator[RedisClusterNodes]:
    """Run a formed 3-primary, 3-replica Redis Cluster on loopback."""
    root = tmp / f"redis-cluster-{free_port()}"
    root.mkdir(parents=True)
    group = RedisClusterNodes(root, password, [_port_with_bus() for _ in range(6)])
    try:
        for ordinal in range(6):
            group.start(ordinal)
        wait_for(group.settled, 60, "the Redis Cluster", interval=0.5)
        yield group
    finally:
        for ordinal in list(group.processes):
            group.stop(ordinal)


@dataclass
class SentinelGroup:
    """A Redis master, one replica and three Sentinels watching them as ``z2m``."""

    root: Path
    password: str
    redis_ports: list[int]
    sentinel_ports: list[int]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def sentinels(self) -> str:
        """The REDIS_SENTINELS value for the app."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def client(self, port: int) -> Any:
        """A redis-py client of one Redis of the group."""
        import redis

        return redis.Redis(port=port, password=self.password, socket_timeout=2)

    def master_port(self) -> int:
        """The master's port, as the first Sentinel names it."""
        import redis

        with redis.Redis(port=self.sentinel_ports[0], socket_timeout=2) as sentinel:
            return int(sentinel.sentinel_get_master_addr_by_name("z2m")[1])

    def kill(self, port: int) -> None:
        """SIGKILL the process on ``port``."""
        process = self.processes.pop(port)
        process.kill()
        process.wait(timeout=10)

    def _start(self, port: int, argv: list[str]) -> None:
        log = (self.root / f"{port}.log").open("ab")
        self.processes[port] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: _port_open(port), 20, f"port {port}")

    def start(self) -> None:
        """Start the master, the replica once the master answers, then the Sentinels."""
        master, replica = self.redis_ports
        auth = ["--requirepass", self.password, "--masterauth", self.password]
        for port in self.redis_ports:
            data = self.root / f"redis-{port}"
            data.mkdir()
            follow = ["--replicaof", "127.0.0.1", str(master)] if port == replica else []
            self._start(
                port,
                [
                    "redis-server",
                    *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)),
                    *("--save", "", "--appendonly", "no", *auth, *follow),
                ],
            )
        wait_for(
            lambda: self.client(replica).info("replication")["master_link_status"] == "up",
            20,
            "replica link",
        )
        for port in self.sentinel_ports:
            conf = self.root / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.root}\n"
                f"sentinel monitor z2m 127.0.0.1 {master} 2\n"
                f"sentinel auth-pass z2m {self.password}\n"
                "sentinel down-after-milliseconds z2m 1000\n"
                "sentinel failover-timeout z2m 10000\n"
            )
            self._start(port, ["redis-sentinel", str(conf)])

    def stop(self) -> None:
        """Kill every process of the group."""
        for port in list(self.processes):
            self.kill(port)


@contextlib.contextmanager
def sentinel_group(tmp: Path, password: str = "sentinel-test") -> Iterator[SentinelGroup]:
    """Run a master, a replica and three Sentinels (quorum 2) on free ports."""
    root = tmp / f"sentinels-{free_port()}"
    root.mkdir(parents=True)
    group = SentinelGroup(
        root, password, [free_port() for _ in range(2)], [free_port() for _ in range(3)]
    )
    try:
        group.start()
        yield group
    finally:
        group.stop()


# --------------------------------------------------------------------------- RabbitMQ


@dataclass
class RabbitMQ:
    """A running single RabbitMQ node, isolated from any system-wide one."""

    root: Path
    port: int
    dist_port: int
    epmd_port: int
    nodename: str
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The amqp:// URL (guest may log in over loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self) -> None:
        """Start the node and wait until it speaks AMQP (takes ~5-15 s)."""
        log = (self.root / "startup.log").open("ab")
        # A new session so stop() can signal the whole tree the script spawns.
        self.process = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            env=self.env,
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for(self._speaks_amqp, 90, f"rabbitmq on {self.port}", interval=0.3)

    def _speaks_amqp(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"rabbitmq exited with {self.process.returncode}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            # Frame type 1 (method) carrying connection.start means the broker
            # finished booting, not just that the listener is bound.
            return sock.recv(1) == b"\x01"

    def stop(self) -> None:
        """Stop the node (SIGTERM is a clean shutdown for the Erlang VM)."""
        if self.process is not None:
            stop_group(self.process, self.port, "rabbitmq", grace=30)
            self.process = None


@contextlib.contextmanager
def rabbitmq(
    tmp: Path, *, config: str | None = None, plugins: tuple[str, ...] = ()
) -> Iterator[RabbitMQ]:
    """Run a private RabbitMQ node with its own epmd, ports, cookie and data.

    ``config`` replaces the node's rabbitmq.conf (the AMQP listener is still
    set to the node's free port); ``plugins`` are enabled at boot.
    """
    port = free_port()
    root = tmp / f"rabbitmq-{port}"
    root.mkdir(parents=True)
    (root / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
    text = "disk_free_limit.absolute = 1MB\n" if config is None else config
    # The node listens on its free loopback port, whatever listener the config names.
    kept = [line for line in text.splitlines() if not line.startswith("listeners.tcp.")]
    kept.append(f"listeners.tcp.1 = 127.0.0.1:{port}")
    (root / "rabbitmq.conf").write_text("\n".join(kept) + "\n")
    (root / "rabbitmq-env.conf").write_text("")
    node = RabbitMQ(
        root=root,
        port=port,
        dist_port=free_port(),
        epmd_port=free_port(),
        nodename=f"z2m{port}@localhost",
    )
    node.env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),  # the Erlang cookie is created here
        "LANG": "C.UTF-8",
        "RABBITMQ_NODENAME": node.nodename,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(node.dist_port),
        "ERL_EPMD_PORT": str(node.epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
        "RABBITMQ_LOG_BASE": str(root / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
        "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
    }
    try:
        node.start()
        yield node
    finally:
        node.stop()
        # The node started a private epmd on its own port; stop that one only.
        subprocess.run(
            ["epmd", "-port", str(node.epmd_port), "-kill"],
            env=node.env,
            capture_output=True,
            check=False,
            timeout=10,
        )


# --------------------------------------------------------------------------- Kafka


@dataclass
class Kafka:
    """A single KRaft Kafka node (broker and controller) on loopback, from the Maven jars."""

    root: Path
    port: int
    controller_port: int
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    log_offset: int = 0
    """Where this start's output begins in the log."""

    @property
    def servers(self) -> str:
        """The bootstrap servers, host:port."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        """The broker's output."""
        return self.root / "kafka.log"

    def start(self) -> None:
        """Start the node (its storage formatted on first start only) and wait for it."""
        with self.log_file.open("ab") as out:
            self.log_offset = out.tell()
            self.process = subprocess.Popen(
                [str(KAFKA_SCRIPT)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._started, 90, f"kafka on {self.port}", interval=0.2)

    def _started(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"kafka exited with {self.process.returncode}")
        # The log line follows the broker's listeners opening and the metadata loading.
        return "Kafka Server started" in self.output()

    def output(self) -> str:
        """What the broker printed since its last start."""
        with self.log_file.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def stop(self) -> None:
        """Stop the node cleanly (SIGTERM), its data kept for a later start()."""
        if self.process is not None:
            stop_group(self.process, self.port, "kafka", grace=30)
            self.process = None

    def rss_bytes(self) -> int:
        """The broker JVM's resident memory."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise LookupError("no VmRSS")


KAFKA_SCRIPT = Path(__file__).resolve().parents[1] / "hack" / "images" / "kafka" / "kafka.sh"


def kafka_jars() -> Path:
    """The directory of Kafka's runtime jars, fetched from Maven Central once (hack/maven.sh)."""
    script = Path(__file__).resolve().parents[1] / "hack" / "maven.sh"
    out = subprocess.run([str(script), "kafka"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"hack/maven.sh kafka failed:\n{out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def kafka(tmp: Path) -> Iterator[Kafka]:
    """Run a private single-node Kafka with the image's own start script (kafka.sh)."""
    port, controller = free_port(), free_port()
    root = tmp / f"kafka-{port}"
    root.mkdir(parents=True)
    node = Kafka(root=root, port=port, controller_port=controller)
    listeners = f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}"
    node.env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "KAFKA_LIBS": str(kafka_jars()),
        "KAFKA_CONFIG_DIR": str(root / "config"),
        "KAFKA_LOG_DIRS": str(root / "data"),
        "KAFKA_LISTENERS": listeners,
        "KAFKA_ADVERTISED_LISTENERS": listeners,
        "KAFKA_CONTROLLER_QUORUM_BOOTSTRAP_SERVERS": f"127.0.0.1:{controller}",
        "KAFKA_HEAP_OPTS": "-Xmx384m -Xms384m",
    }
    try:
        node.start()
        yield node
    finally:
        node.stop()


# --------------------------------------------------------------------------- the sample app

APP_VARIABLES = (
    "DATABASE_URL",
    "DATABASE_REPLICA_URLS",
    "REDIS_URL",
    "REDIS_SENTINELS",
    "REDIS_MASTER_NAME",
    "REDIS_PASSWORD",
    "BROKER_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_TOPIC",
    "KAFKA_GROUP",
    "KAFKA_PARTITIONS",
    "ROLE",
    "PORT",
    "SECRET_KEY",
    "SEARCH_URL",
    "SEARCH_INDEX",
)
REPO_ROOT = Path(__file__).resolve().parents[1]


def app_env(**variables: str) -> dict[str, str]:
    """The current environment minus the app's own variables, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if k not in APP_VARIABLES}
    env.update(variables)
    return env


@dataclass
class SampleApp:
    """A running ``python -m sample_app`` process."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        """Base URL of the app."""
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        """A new HTTP client (own cookie jar) for this app."""
        return httpx.Client(base_url=self.url, timeout=10)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the /metrics samples called ``name`` whose labels include ``labels``."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` and wait for the process to exit."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=20)


@contextlib.contextmanager
def sample_app(tmp: Path, ready: str = "/readyz", **variables: str) -> Iterator[SampleApp]:
    """Run ``python -m sample_app`` with ``variables`` (PORT is picked unless given).

    Returns once ``ready`` answers 200; stops the process (SIGTERM) on exit.
    """
    port = int(variables.pop("PORT", 0)) or free_port()
    log = tmp / f"sample-app-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sample_app"],
            env=app_env(PORT=str(port), **variables),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
    app = SampleApp(process=process, port=port, log=log)

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"app exited {process.returncode}:\n{app.output()}")
        return httpx.get(f"{app.url}{ready}", timeout=2).status_code == 200

    try:
        try:
            wait_for(answers, 30, f"sample app on {port}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; its output:\n{app.output()[-3000:]}") from None
        yield app
    finally:
        with contextlib.suppress(Exception):
            # SIGTERM starts the web server's drain; a second signal ends it at once.
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            app.kill(signal.SIGINT)
        app.kill(signal.SIGKILL)


# --------------------------------------------------------------------------- OpenSearch

OPENSEARCH_DIR = REPO_ROOT / "hack" / "images" / "opensearch"
OPENSEARCH_HEAP = "256m"


def opensearch_jars() -> Path:
    """The directory of OpenSearch's Maven Central jars (fetched once, then cached)."""
    out = subprocess.run(
        [str(REPO_ROOT / "hack" / "maven.sh"), "opensearch"],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class OpenSearch:
    """A running single OpenSearch node, started by its real bootstrap from the jars."""

    root: Path
    port: int
    transport_port: int
    user: str | None
    process: subprocess.Popen[bytes] | None = None

    @property
    def home(self) -> Path:
        """The OpenSearch home laid out by hack/images/opensearch/layout.sh."""
        return self.root / "home"

    @property
    def url(self) -> str:
        """Its HTTP URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        """Where the node's output goes."""
        return self.root / "opensearch.log"

    def env(self) -> dict[str, str]:
        """What the image's entrypoint.sh is told: the home, where data and logs go, the heap."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "OPENSEARCH_HOME": str(self.home),
            "OPENSEARCH_DATA": str(self.root / "data"),
            "OPENSEARCH_LOGS": str(self.root / "logs"),
            "OPENSEARCH_JAVA_OPTS": f"-Xms{OPENSEARCH_HEAP} -Xmx{OPENSEARCH_HEAP}",
        }

    def argv(self) -> list[str]:
        """The image's own entrypoint.sh, on loopback ports."""
        return [
            str(OPENSEARCH_DIR / "entrypoint.sh"),
            "-Enetwork.host=127.0.0.1",
            f"-Ehttp.port={self.port}",
            f"-Etransport.port={self.transport_port}",
            "-Enode.name=z2m-test",
        ]

    def start(self) -> None:
        """Start the node and wait until it answers HTTP (the doc measured ~3 s)."""
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(
                _as_user(self.user, self.argv()),
                env=self.env(),
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._answers, 120, f"opensearch on {self.port}", interval=0.2)

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = self.log_file.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"opensearch exited with {self.process.returncode}:\n{tail}")
        return httpx.get(self.url, timeout=2).status_code == 200

    def stop(self) -> None:
        """Stop the node (SIGTERM, a clean shutdown) and wait until its port is free."""
        if self.process is not None:
            stop_group(self.process, self.port, "opensearch", grace=60)
            self.process = None

    def rss_bytes(self) -> int:
        """The node's resident memory (the java process, below runuser if any)."""
        assert self.process is not None
        pids = [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        with contextlib.suppress(OSError):
            pids += [int(p) for p in children.read_text().split()]
        total = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total


@contextlib.contextmanager
def opensearch(tmp: Path) -> Iterator[OpenSearch]:
    """Run OpenSearch on free loopback ports, from Maven Central's jars.

    The home is laid out and the node started by the image's own layout.sh and
    entrypoint.sh; as root the node runs as the unprivileged test user, because
    OpenSearch refuses to run as root.
    """
    jars = opensearch_jars()
    user = _unprivileged_user()
    root = _private_dir(tmp, "opensearch", user)
    node = OpenSearch(root=root, port=free_port(), transport_port=free_port(), user=user)
    try:
        subprocess.run(
            [str(OPENSEARCH_DIR / "layout.sh"), str(jars), str(node.home)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        if user is not None:
            subprocess.run(["chown", "-R", f"{user}:", str(root)], check=True, timeout=60)
        node.start()
        yield node
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


def seed_users(url: str, users: int, posts: int, *, notifications: bool = False) -> None:
    """Users, their posts and follows (and some notifications) in the app's schema at `url`:
    rows for a shard move to place by user."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, %s) g", (users,)
        )
        conn.execute(
            "INSERT INTO posts (author_id, body) SELECT 1 + g %% %s, 'seed-' || g"
            " FROM generate_series(1, %s) g",
            (users, posts),
        )
        conn.execute(
            "INSERT INTO follows (follower_id, followee_id)"
            " SELECT g, 1 + (g * 7) %% %s FROM generate_series(1, %s) g"
            " WHERE g <> 1 + (g * 7) %% %s",
            (users, users, users),
        )
        if notifications:
            conn.execute(
                "INSERT INTO notifications (user_id, post_id)"
                " SELECT f.follower_id, p.id FROM follows f"
                " JOIN posts p ON p.author_id = f.followee_id WHERE p.id % 10 = 0"
            )

"""Every script and config file z2m mounts into pods, run against the real program.

Pods only pretend to run on the local control plane, so these tests are where
the files meet Redis, Sentinel, nginx, RabbitMQ, Prometheus and Alertmanager for
real (PostgreSQL's are in test_postgres_pods.py). They read the files through
`builders.script`, the same call that fills the ConfigMap the pods mount: no copies.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
import redis

from tests import services
from z2m import builders

pytestmark = pytest.mark.services


_script = services.script_file
_run = services.running


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


# --- Prometheus and Alertmanager --------------------------------------------------------------


def _prometheus_pod(tmp: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Stage 5's Prometheus ConfigMap and its containers' commands, pointed at `tmp` and free
    ports: the same text and flags the pod gets."""
    from z2m import api, plan

    the_plan = plan.resolve(api.ScalingStageSpec(stage=5), name="shop", namespace="ns")
    objs = builders.build(the_plan, builders.Owner("shop", "uid"))
    (config,) = [
        o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "shop-prometheus"
    ]
    (sts,) = [
        o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "shop-prometheus"
    ]
    ports = {
        builders.PROMETHEUS_PORT: services.free_port(),
        builders.ALERTMANAGER_PORT: services.free_port(),
    }

    def local(text: str) -> str:
        text = text.replace(builders.MONITORING_DIR, str(tmp / "config"))
        text = text.replace(builders.MONITORING_DATA, str(tmp / "data"))
        text = text.replace(builders.SD_DIR, str(tmp / "sd"))
        for port, free in ports.items():
            text = text.replace(f":{port}", f":{free}")
        return text

    files = {name: local(text) for name, text in config["data"].items()}
    (tmp / "config").mkdir()
    for name, text in files.items():
        (tmp / "config" / name).write_text(text)
    commands = {
        c["name"]: [local(arg) for arg in c["command"]]
        for c in sts["spec"]["template"]["spec"]["containers"]
    }
    return files, commands


def test_promtool_and_amtool_accept_the_prometheus_pods_files(tmp_path: Path) -> None:
    _prometheus_pod(tmp_path)
    config = tmp_path / "config"
    checks = [
        ["promtool", "check", "config", str(config / "prometheus.yml")],
        ["promtool", "check", "rules", str(config / "alerts.yml")],
        ["amtool", "check-config", str(config / "alertmanager.yml")],
    ]
    for argv in checks:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
    rules = subprocess.run(checks[1], capture_output=True, text=True, timeout=60).stdout
    assert "SUCCESS: 3 rules found" in rules


def test_prometheus_and_alertmanager_start_with_the_pods_flags_and_load_the_rules(
    tmp_path: Path,
) -> None:
    _, commands = _prometheus_pod(tmp_path)
    (tmp_path / "sd").mkdir()
    env = {"PATH": os.environ["PATH"]}
    prometheus = next(a for a in commands["prometheus"] if a.startswith("--web.listen-address"))
    alertmanager = next(a for a in commands["alertmanager"] if a.startswith("--web.listen-address"))
    urls = {
        name: f"http://127.0.0.1{flag.rpartition('=')[2]}"
        for name, flag in (("prometheus", prometheus), ("alertmanager", alertmanager))
    }
    with (
        _run(commands["alertmanager"], env, tmp_path / "alertmanager.log"),
        _run(commands["prometheus"], env, tmp_path / "prometheus.log"),
    ):
        for name, url in urls.items():
            services.wait_for(lambda url=url: _answers(f"{url}/-/ready"), 30, f"{name} ready")
        groups = httpx.get(f"{urls['prometheus']}/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert sorted(r["name"] for g in groups for r in g["rules"]) == [
            "Z2MHighErrorRate",
            "Z2MHighLatency",
            "Z2MQueueBacklog",
        ]
        status = httpx.get(f"{urls['alertmanager']}/api/v2/status", timeout=5).json()
        assert status["cluster"]["status"] == "disabled"  # one Alertmanager, no gossip


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False

"""The images z2m's pods run, built by `hack/images.sh build` and started with podman.

Each test runs an image the way its pod does: the same uid, the same programs, the
files z2m mounts (read through `builders.script`, like the ConfigMap), and checks that
the program really answers. Waits poll for a condition under a deadline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from z2m import api, builders, plan

# A cold build of all eight images takes minutes; later sessions find them cached.
pytestmark = [pytest.mark.images, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
NAMES = (
    "operator",
    "sample-app",
    "postgres",
    "redis",
    "rabbitmq",
    "nginx",
    "prometheus",
    "kafka",
    "opensearch",
)
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
T = TypeVar("T")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(ROOT / "hack" / "podman" / "containers.conf"))
    env["Z2M_ENGINE"] = "podman"
    return env


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run podman with z2m's settings; on failure the assertion shows its output."""
    proc = subprocess.run(
        ["podman", *args], env=_env(), capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert proc.returncode == 0, f"podman {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def run(image: str, script: str, *opts: str) -> list[str]:
    """`podman run --rm` one `sh -c` script; its output lines."""
    return podman("run", "--rm", *opts, image, "sh", "-c", script).stdout.splitlines()


def poll(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Call `check` until it returns something other than None, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := check()) is not None:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Every image, built (or found cached) once per session: name -> reference."""
    if shutil.which("podman") is None:
        pytest.skip("needs podman")
    subprocess.run([str(ROOT / "hack" / "images.sh"), "build"], check=True, env=_env())
    refs = {name: f"docker.io/z2m/{name}:{VERSION}" for name in NAMES}
    for ref in refs.values():
        podman("image", "exists", ref)
    return refs


@pytest.fixture
def container() -> Iterator[str]:
    """A name for a detached container, removed after the test."""
    name = f"z2m-test-{uuid.uuid4().hex[:8]}"
    yield name
    podman("rm", "--force", "--time", "5", name, check=False)


def _mount(tmp: Path, name: str) -> Path:
    """One of z2m's pod files, as the ConfigMap volume gives it (mode 0555)."""
    path = tmp / name
    path.write_text(builders.script(name))
    path.chmod(0o555)
    return path


def _host_port(name: str, port: int) -> str:
    return podman("port", name, f"{port}/tcp").stdout.splitlines()[0].strip()


def _running(name: str) -> None:
    state = podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
    if state != "true":
        logs = podman("logs", name, check=False)
        raise AssertionError(f"{name} exited:\n{logs.stdout}\n{logs.stderr}")


# --- the services ------------------------------------------------------------------------


def test_postgres_initdb_start_and_query_as_999(images: dict[str, str]) -> None:
    out = run(
        images["postgres"],
        "set -e; id -u; postgres --version;"
        " for c in pg_basebackup pg_isready psql initdb; do command -v $c; done;"
        " initdb -D /tmp/x -U app --auth-local=trust >/dev/null 2>&1;"
        " pg_ctl -D /tmp/x -w -l /tmp/x/log start >/dev/null;"
        " pg_isready -h /var/run/postgresql;"
        " psql -h /var/run/postgresql -U app -d postgres -tAc 'select 1';"
        " psql -h 127.0.0.1 -U app -d postgres -tAc 'show server_version_num'",
        "--user",
        "999",
    )
    assert out[0] == "999"
    assert out[1].startswith("postgres (PostgreSQL) 15.")
    assert [Path(p).name for p in out[2:6]] == ["pg_basebackup", "pg_isready", "psql", "initdb"]
    assert all(p.startswith("/usr/lib/postgresql/15/bin/") for p in out[2:6])
    assert out[6] == "/var/run/postgresql:5432 - accepting connections"
    assert out[7] == "1"
    assert out[8].startswith("15")


def test_postgres_image_has_no_entrypoint_and_runs_as_999(images: dict[str, str]) -> None:
    config = podman(
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{.Config.Entrypoint}}",
        images["postgres"],
    ).stdout.split()
    assert config[0] == "999"
    assert config[1:] in ([], ["[]"])


def test_redis_pod_script_serves_as_999(images: dict[str, str], tmp_path: Path) -> None:
    script = _mount(tmp_path, "redis.sh")
    out = run(
        images["redis"],
        "set -e; id -u; redis-server --version;"
        " for c in redis-sentinel redis-cli; do command -v $c; done;"
        " /bin/sh /etc/z2m/redis.sh >/tmp/redis.log 2>&1 &"
        ' timeout 20 sh -c \'until [ "$(redis-cli -a pw --no-auth-warning ping)" = PONG ];'
        " do sleep 0.1; done' || { cat /tmp/redis.log; exit 1; };"
        " redis-cli -a pw --no-auth-warning set k v >/dev/null;"
        " redis-cli -a pw --no-auth-warning get k;"
        " redis-cli -a pw --no-auth-warning info replication | grep '^role:';"
        " redis-cli ping 2>&1 | head -1;"
        " ls /data",
        "--user",
        "999",
        "--env",
        "POD_NAME=demo-redis-0",
        "--env",
        "PRIMARY_HOST=demo-redis-0.demo-redis",
        "--env",
        "REDIS_PASSWORD=pw",
        "--volume",
        f"{script}:/etc/z2m/redis.sh:ro",
    )
    assert out[0] == "999"
    assert out[1].startswith("Redis server v=7.")
    assert [Path(p).name for p in out[2:4]] == ["redis-sentinel", "redis-cli"]
    assert out[4] == "v"
    assert out[5].strip() == "role:master"
    assert out[6].startswith("NOAUTH")  # the password from the pod's env is required
    assert "appendonlydir" in out[7:]  # --appendonly yes in the writable /data


def test_rabbitmq_default_user_and_management_api(
    images: dict[str, str], container: str, tmp_path: Path
) -> None:
    conf = _mount(tmp_path, "rabbitmq.conf")
    data = tmp_path / "data"  # an empty volume, as a new PersistentVolumeClaim is
    data.mkdir()
    podman(
        "run",
        "--detach",
        "--name",
        container,
        "--hostname",
        "demo-queue-0",
        "--user",
        "999",
        "--env",
        "RABBITMQ_DEFAULT_USER=z2m",
        "--env",
        "RABBITMQ_DEFAULT_PASS=s3cret",
        "--volume",
        f"{conf}:/etc/rabbitmq/conf.d/20-z2m.conf:ro",
        "--volume",
        f"{data}:/var/lib/rabbitmq:U",
        "--publish",
        "127.0.0.1::15672",
        images["rabbitmq"],
    )
    api = f"http://{_host_port(container, 15672)}/api"

    last: list[httpx.Response] = []

    def overview() -> httpx.Response | None:
        _running(container)
        try:
            answer = httpx.get(f"{api}/overview", auth=("z2m", "s3cret"), timeout=2)
        except httpx.TransportError:
            return None
        last[:] = [answer]
        # The management listener can answer before the AMQP one is up: wait for both.
        ports = {x["port"] for x in answer.json().get("listeners", [])} if answer.is_success else {}
        return answer if {5672, 15672} <= ports else None

    try:
        answer = poll(overview, 120, "the management API listing both listeners")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answer: {last and last[0].text}") from None
    body = answer.json()
    assert body["node"] == "rabbit@demo-queue-0"
    assert httpx.get(f"{api}/overview", auth=("guest", "guest"), timeout=5).status_code == 401
    users = podman("exec", container, "rabbitmqctl", "list_users", "--formatter", "json").stdout
    assert '"z2m"' in users and '"guest"' not in users
    assert podman("exec", container, "id", "-u").stdout.strip() == "999"
    # The node made its own Erlang cookie in the empty volume (HOME is /var/lib/rabbitmq).
    podman("exec", container, "test", "-s", "/var/lib/rabbitmq/.erlang.cookie")


def test_opensearch_as_1000_with_its_pods_env_searches_stops_on_sigterm_and_keeps_its_index(
    images: dict[str, str], container: str, tmp_path: Path
) -> None:
    spec = api.ScalingStageSpec(stage=5, search=api.SearchSpec(enabled=True))
    objs = builders.build(plan.resolve(spec, name="shop", namespace="ns"), builders.Owner("s", "u"))
    sts = next(
        o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "shop-search"
    )
    pod_container = sts["spec"]["template"]["spec"]["containers"][0]
    env = [arg for e in pod_container["env"] for arg in ("--env", f"{e['name']}={e['value']}")]
    data = tmp_path / "data"
    data.mkdir()
    podman(
        "run",
        "--detach",
        "--name",
        container,
        "--user",
        "1000",
        *env,
        "--volume",
        f"{data}:/usr/share/opensearch/data:U",
        "--publish",
        "127.0.0.1::9200",
        images["opensearch"],
    )
    base = f"http://{_host_port(container, 9200)}"
    ready = pod_container["readinessProbe"]["httpGet"]["path"]

    def answers() -> httpx.Response | None:
        _running(container)
        try:
            return httpx.get(f"{base}{ready}", timeout=2)
        except httpx.TransportError:
            return None

    assert poll(answers, 180, "OpenSearch's readiness path").status_code == 200
    mapping = {"mappings": {"properties": {"body": {"type": "text", "analyzer": "english"}}}}
    assert httpx.put(f"{base}/posts", json=mapping, timeout=30).status_code == 200
    doc = httpx.put(f"{base}/posts/_doc/1?refresh=true", json={"body": "Foxes jumping"}, timeout=30)
    assert doc.status_code == 201, doc.text
    hits = httpx.post(
        f"{base}/posts/_search", json={"query": {"match": {"body": "fox"}}}, timeout=30
    ).json()["hits"]["hits"]
    assert [hit["_id"] for hit in hits] == ["1"]
    assert podman("exec", container, "id", "-u").stdout.strip() == "1000"

    podman("stop", "--time", "60", container)
    # Stopped by SIGTERM itself (128 + 15), not killed at the end of the grace period.
    assert podman("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip() == "143"
    podman("start", container)
    base = f"http://{_host_port(container, 9200)}"

    def counted() -> int | None:
        _running(container)
        try:
            response = httpx.get(f"{base}/posts/_count", timeout=2)
        except httpx.TransportError:
            return None
        return int(response.json()["count"]) if response.status_code == 200 else None

    assert poll(counted, 180, "the index after a restart") == 1


def test_nginx_edge_conf_as_101(images: dict[str, str], container: str, tmp_path: Path) -> None:
    conf = _mount(tmp_path, "nginx-edge.conf")
    env = [
        "--env",
        "UPSTREAM=127.0.0.1:9",
        "--env",
        "STATIC_PATH=/static/",
        "--env",
        "LISTEN_PORT=8080",
        "--volume",
        f"{conf}:/etc/z2m/nginx-edge.conf:ro",
        "--user",
        "101",
    ]
    # What the edge pod's command does before it starts nginx (builders.edge.objects).
    render = (
        "envsubst '$UPSTREAM $STATIC_PATH $LISTEN_PORT'"
        " < /etc/z2m/nginx-edge.conf > /tmp/nginx.conf"
    )
    out = run(images["nginx"], f"set -e; id -u; {render}; nginx -t -c /tmp/nginx.conf 2>&1", *env)
    assert out[0] == "101"
    assert out[-1] == "nginx: configuration file /tmp/nginx.conf test is successful"

    podman(
        "run",
        "--detach",
        "--name",
        container,
        *env,
        "--publish",
        "127.0.0.1::8080",
        images["nginx"],
        "sh",
        "-c",
        f"{render} && exec nginx -c /tmp/nginx.conf -g 'daemon off;'",
    )
    edge = f"http://{_host_port(container, 8080)}"

    def healthz() -> httpx.Response | None:
        _running(container)
        try:
            return httpx.get(f"{edge}/edge-healthz", timeout=2)
        except httpx.TransportError:
            return None

    answer = poll(healthz, 30, "nginx's /edge-healthz")
    assert (answer.status_code, answer.text) == (200, "ok\n")
    # Nothing listens upstream: the edge proxies and says so.
    assert httpx.get(f"{edge}/static/app.css", timeout=5).status_code == 502


def test_prometheus_image_has_both_servers_and_the_discovery_tools_as_999(
    images: dict[str, str],
) -> None:
    out = run(
        images["prometheus"],
        "set -e; id -u; prometheus --version 2>&1 | head -1;"
        " prometheus-alertmanager --version 2>&1 | head -1;"
        " for c in promtool amtool curl jq; do command -v $c; done",
    )
    assert out[0] == "999"
    assert out[1].startswith("prometheus, version 2.")
    assert out[2].startswith("alertmanager, version 0.")
    assert [Path(p).name for p in out[3:7]] == ["promtool", "amtool", "curl", "jq"]
    entrypoint = podman(
        "image", "inspect", "--format", "{{.Config.Entrypoint}}", images["prometheus"]
    ).stdout.strip()
    assert entrypoint in ("[]", "")


# --- z2m's own -----------------------------------------------------------------------------


def test_sample_app_imports_as_10001(images: dict[str, str]) -> None:
    out = run(
        images["sample-app"],
        "id -u && python -c 'import sample_app.web, sys; print(sample_app.web.__name__)'",
        "--no-healthcheck",
    )
    assert out == ["10001", "sample_app.web"]
    cmd = podman("image", "inspect", "--format", "{{.Config.Cmd}}", images["sample-app"])
    assert cmd.stdout.strip() == "[python -m sample_app]"


def test_operator_cli_and_pod_files(images: dict[str, str]) -> None:
    help_ = podman("run", "--rm", images["operator"], "--help").stdout
    assert help_.startswith("usage: z2m ")
    assert "run" in help_
    out = run(
        images["operator"],
        "id -u && python -c 'from importlib import resources;"
        ' print(*sorted(p.name for p in resources.files("z2m").joinpath("files").iterdir()))\'',
        "--entrypoint",
        "",
    )
    assert out[0] == "10001"
    shipped = set(out[1].split())
    assert shipped == {p.name for p in (ROOT / "operator" / "z2m" / "files").iterdir()}

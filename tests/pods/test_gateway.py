"""Stage 6's nginx gateway for real: the configuration z2m generates, run by Debian's nginx.

Stub upstreams on loopback stand in for the app and its services: each answers with
its own name. The users stub accepts a session only with the cookie `session=ok`, as
the app's `/api/me` accepts only a signed session. The file is the one the gateway's
ConfigMap holds; only the upstream addresses, the port and the temp paths differ.
"""

from __future__ import annotations

import http.server
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from tests import services
from z2m import api, builders, plan
from z2m.builders import gateway

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(shutil.which("nginx") is None, reason="needs Debian's nginx"),
]
ROLES = ("app", "users", "feed", "notifications")


class _Stub(http.server.BaseHTTPRequestHandler):
    role: ClassVar[str] = ""
    hits: ClassVar[list[tuple[str, str]]] = []

    def do_GET(self) -> None:
        _Stub.hits.append((self.role, self.path))
        if self.path == gateway.AUTH_PATH and "session=ok" not in (self.headers["Cookie"] or ""):
            status, body = 401, b"no session"
        else:
            status, body = 200, f"{self.role} {self.path}".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def gateway_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # A slow limit, so that a short run of requests is sure to exceed it.
    monkeypatch.setattr(gateway, "RATE_PER_SECOND", 1)
    monkeypatch.setattr(gateway, "BURST", 2)
    _Stub.hits.clear()
    servers = {}
    for role in ROLES:
        handler = type(f"_Stub_{role}", (_Stub,), {"role": role})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[role] = server
    p = plan.resolve(api.ScalingStageSpec(stage=6), name="shop", namespace="ns")
    conf = next(
        o
        for o in builders.build(p, builders.Owner("shop", "u"))
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "shop-gateway"
    )["data"]["nginx.conf"]
    for role, server in servers.items():
        host = "shop-app" if role == "app" else f"shop-service-{role}"
        conf = conf.replace(f"server {host}:80;", f"server 127.0.0.1:{server.server_address[1]};")
    assert not re.search(r"server shop-", conf)
    port = services.free_port()
    user = services._unprivileged_user()
    root = services._private_dir(tmp_path, "gateway", user)
    conf = conf.replace(f"listen {gateway.GATEWAY_PORT};", f"listen 127.0.0.1:{port};")
    (root / "nginx.conf").write_text(conf.replace("/tmp/", f"{root}/"))
    argv = ["nginx", "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;"]
    env = {"PATH": "/usr/bin:/bin:/usr/sbin"}
    try:
        with services.running(services._as_user(user, argv), env, tmp_path / "nginx.log"):
            url = f"http://127.0.0.1:{port}"
            services.wait_for(
                lambda: httpx.get(f"{url}/gateway-healthz").status_code == 200, 20, "gateway"
            )
            yield url
    finally:
        for server in servers.values():
            server.shutdown()


def get(url: str, client: str, cookie: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": client}
    if cookie:
        headers["Cookie"] = cookie
    return httpx.get(url, headers=headers)


def test_the_gateway_sends_each_path_to_its_service_and_the_rest_to_the_app(
    gateway_url: str,
) -> None:
    for path, role in (
        ("/api/posts/7", "feed"),
        ("/api/users/3/posts", "users"),
        ("/api/me", "users"),
        ("/", "app"),
        ("/static/app.css", "app"),
    ):
        answer = get(gateway_url + path, client=f"10.0.0.{len(path)}", cookie="session=ok")
        assert (answer.status_code, answer.text) == (200, f"{role} {path}")


def test_notifications_need_a_session_the_users_service_accepts(gateway_url: str) -> None:
    refused = get(gateway_url + "/api/notifications", client="10.0.1.1")
    assert refused.status_code == 401
    assert ("notifications", "/api/notifications") not in _Stub.hits
    allowed = get(gateway_url + "/api/notifications", client="10.0.1.2", cookie="session=ok")
    assert (allowed.status_code, allowed.text) == (200, "notifications /api/notifications")
    assert ("users", gateway.AUTH_PATH) in _Stub.hits


def test_one_client_over_its_rate_gets_429_and_another_client_is_still_served(
    gateway_url: str,
) -> None:
    codes = [get(gateway_url + "/api/posts/1", client="10.0.2.1").status_code for _ in range(12)]
    assert codes[0] == 200 and 429 in codes
    assert get(gateway_url + "/api/posts/1", client="10.0.2.2").status_code == 200

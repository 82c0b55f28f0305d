"""The nginx edge cache, from stage 3: two pods, their Service and PDB.

It caches the app's static files (`spec.app.staticPath`) in front of the app's
Service and passes everything else through (`operator/z2m/files/nginx-edge.conf`);
at stage 6, where z2m runs its own gateway, through the gateway instead.
"""

from __future__ import annotations

from typing import Any

from z2m import api, catalog, plan
from z2m.builders import gateway, meta, workloads

Obj = dict[str, Any]

EDGE_PORT = 8080


def objects(p: plan.Plan, owner: meta.Owner, gateway_api: bool = False) -> list[Obj]:
    """The edge cache's Deployment, Service and PDB, where the plan has it."""
    if not p.edge_cache:
        return []
    upstream = "gateway" if gateway.uses_nginx(p, gateway_api) else "app"
    command = (
        f"envsubst '$UPSTREAM $STATIC_PATH $LISTEN_PORT' < {workloads.SCRIPTS_DIR}/nginx-edge.conf "
        "> /tmp/nginx.conf && exec nginx -c /tmp/nginx.conf -g 'daemon off;'"
    )
    container: Obj = {
        "name": "nginx",
        "image": api.DEFAULT_NGINX_IMAGE,
        "command": ["/bin/sh", "-c", command],
        "env": [
            {"name": "UPSTREAM", "value": f"{meta.child(p.name, upstream)}:80"},
            {"name": "STATIC_PATH", "value": p.spec.app.static_path},
            {"name": "LISTEN_PORT", "value": str(EDGE_PORT)},
        ],
        "ports": [{"name": "http", "containerPort": EDGE_PORT}],
        "readinessProbe": {"httpGet": {"path": "/edge-healthz", "port": EDGE_PORT}},
        "lifecycle": workloads.DRAIN,
        "resources": workloads.footprint("edge"),
        "volumeMounts": [workloads.scripts_mount()],
    }
    pod: Obj = {
        "containers": [container],
        "volumes": [workloads.scripts_volume(p)],
        "topologySpreadConstraints": workloads.spread(p, "edge"),
    }
    return [
        workloads.deployment(p, owner, "edge", "edge", 2, pod, run_as=catalog.SERVER_UIDS["nginx"]),
        workloads.service(p, owner, meta.child(p.name, "edge"), "edge", [("http", 80, EDGE_PORT)]),
        workloads.pdb(p, owner, "edge", "edge"),
    ]

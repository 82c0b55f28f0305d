"""OpenSearch, opt-in at the stages that offer search (5): its StatefulSet and Service.

One node (single-node discovery) with its index on a kept volume; the app copies
the posts into it again whenever the index is new, so the volume only saves the
time of that copy. The pod works with z2m's image (hack/images/opensearch) and the
official `opensearchproject/opensearch` one alike: both run as uid 1000, keep their
data in `DATA_DIR`, read `OPENSEARCH_JAVA_OPTS`, and serve HTTP on `SEARCH_PORT`.
The app is told `search_url` (`app.app_env`) only while this runs.
"""

from __future__ import annotations

from typing import Any

from z2m import catalog, plan
from z2m.builders import meta, workloads

Obj = dict[str, Any]

SEARCH_PORT = 9200
DATA_DIR = "/usr/share/opensearch/data"


def search_url(p: plan.Plan) -> str:
    """Where the app reaches OpenSearch: its Service, in the app's namespace."""
    return f"http://{meta.child(p.name, 'search')}:{SEARCH_PORT}"


def objects(p: plan.Plan, owner: meta.Owner) -> list[Obj]:
    """OpenSearch's StatefulSet and Service, where the plan has search."""
    if not p.search:
        return []
    spec = p.spec.search
    container: Obj = {
        "name": "opensearch",
        "image": spec.image,
        "env": [
            {"name": "discovery.type", "value": "single-node"},
            {"name": "OPENSEARCH_JAVA_OPTS", "value": f"-Xms{spec.heap} -Xmx{spec.heap}"},
            # For the official image: no security plugin, so no demo certificates or
            # admin password either. z2m's image has no such plugin to begin with.
            {"name": "DISABLE_SECURITY_PLUGIN", "value": "true"},
            {"name": "DISABLE_INSTALL_DEMO_CONFIG", "value": "true"},
        ],
        "ports": [{"name": "http", "containerPort": SEARCH_PORT}],
        # Ready once this node answers for itself; a red index is the app's to handle.
        "readinessProbe": {
            "httpGet": {"path": "/_cluster/health?local=true", "port": SEARCH_PORT},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "startupProbe": {
            "tcpSocket": {"port": SEARCH_PORT},
            "periodSeconds": 5,
            "failureThreshold": 60,
        },
        "resources": workloads.footprint("search", spec.resources),
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}],
    }
    return [
        workloads.statefulset(
            p,
            owner,
            "search",
            "search",
            1,
            [container],
            spec.storage,
            run_as=catalog.SERVER_UIDS["opensearch"],
        ),
        workloads.service(
            p,
            owner,
            meta.child(p.name, "search"),
            "search",
            [("http", SEARCH_PORT, SEARCH_PORT)],
        ),
    ]

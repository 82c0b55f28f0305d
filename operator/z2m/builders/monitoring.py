"""Stage 5's monitoring: z2m's own Prometheus, or the Prometheus Operator's kinds.

Stage 5 scrapes the app and worker pods (stage 6 its services too) and loads z2m's
alert rules. Where the cluster
serves the Prometheus Operator's kinds, a PodMonitor and a PrometheusRule say so to the
cluster's Prometheus; elsewhere z2m runs its own: a StatefulSet of Prometheus, its pod
discovery (a sidecar listing this namespace's pods by our labels, under a Role of its
own) and Alertmanager. The dashboard is a ConfigMap either way.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from z2m import catalog, plan
from z2m.builders import meta, workloads

Obj = dict[str, Any]

PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
MONITORING_DIR = "/etc/z2m-monitoring"
MONITORING_DATA = "/var/lib/prometheus"
SD_DIR = "/var/run/z2m-sd"
SD_FILE = f"{SD_DIR}/targets.json"
"""The target list the discovery sidecar writes and Prometheus reads (file_sd)."""
SCRAPE_INTERVAL = "15s"
SCRAPED = ("app", "worker", "stream-worker")
"""Components whose pods serve /metrics on their `http` port and are scraped (and at
stage 6 the services too: see `scraped`)."""
CONFIG_HASH = "z2m.dev/config-hash"
MONITORING_API = "monitoring.coreos.com/v1"
PROMETHEUS_OPERATOR_KINDS = ((MONITORING_API, "PodMonitor"), (MONITORING_API, "PrometheusRule"))
"""Where the cluster serves both, stage 5 writes them instead of running a Prometheus."""


def alert_rules(p: plan.Plan) -> list[Obj]:
    """The alerting rule groups, for a rules file or a PrometheusRule alike."""
    sel = f'namespace="{p.namespace}",pod=~"{meta.child(p.name, "app")}-.*"'
    return [
        {
            "name": f"z2m-{p.name}",
            "rules": [
                {
                    "alert": "Z2MHighLatency",
                    "expr": "histogram_quantile(0.95, sum by (le) (rate("
                    f"app_http_request_duration_seconds_bucket{{{sel}}}[5m]))) > 0.5",
                    "for": "10m",
                    "labels": {"severity": "warning"},
                    "annotations": {"summary": f"{p.name}: p95 latency above 500 ms"},
                },
                {
                    "alert": "Z2MHighErrorRate",
                    "expr": f'sum(rate(app_http_requests_total{{{sel},status=~"5.."}}[5m])) / '
                    f"sum(rate(app_http_requests_total{{{sel}}}[5m])) > 0.05",
                    "for": "5m",
                    "labels": {"severity": "page"},
                    "annotations": {"summary": f"{p.name}: more than 5% of requests fail"},
                },
                {
                    "alert": "Z2MQueueBacklog",
                    "expr": f'max(app_queue_depth{{namespace="{p.namespace}"}}) > 1000',
                    "for": "15m",
                    "labels": {"severity": "warning"},
                    "annotations": {"summary": f"{p.name}: job queue is backing up"},
                },
            ],
        }
    ]


def dashboard(p: plan.Plan) -> Obj:
    """A Grafana dashboard of the app's signals."""
    sel = f'namespace="{p.namespace}",pod=~"{meta.child(p.name, "app")}-.*"'
    return {
        "title": f"z2m {p.namespace}/{p.name}",
        "panels": [
            {"title": title, "type": "timeseries", "targets": [{"expr": expr}]}
            for title, expr in (
                ("Requests/s", f"sum(rate(app_http_requests_total{{{sel}}}[1m]))"),
                (
                    "p95 latency",
                    "histogram_quantile(0.95, sum by (le) (rate("
                    f"app_http_request_duration_seconds_bucket{{{sel}}}[5m])))",
                ),
                ("DB queries/s", "sum by (target) (rate(app_db_queries_total[1m]))"),
                ("Cache hits", "sum by (result) (rate(app_cache_requests_total[1m]))"),
                ("Queue depth", "max(app_queue_depth)"),
            )
        ],
    }


def scraped(p: plan.Plan) -> tuple[str, ...]:
    """Components scraped: the app and workers, and stage 6's services.

    The services serve the routes the gateway took from the app: their requests are
    the stage's traffic too, and the promotion signals count them with the app's.
    """
    return SCRAPED + tuple(f"{workloads.SERVICE_PREFIX}{m.role}" for m in p.microservices)


def scraped_selector(p: plan.Plan) -> str:
    """The label selector of the pods Prometheus scrapes: `scraped` components'."""
    return f"{meta.child_selector(p.name)},{meta.COMPONENT} in ({','.join(scraped(p))})"


def prometheus_config(p: plan.Plan) -> Obj:
    """prometheus.yml of z2m's own Prometheus.

    Its targets come from the discovery sidecar (`prometheus-sd.sh`): the app's and
    workers' pods in this namespace, found through the Kubernetes API by our labels,
    their `http` port, each labelled with `namespace` and `pod` (what the alert rules
    and the promotion queries select on) and `component`.
    """
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [f"{MONITORING_DIR}/alerts.yml"],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"localhost:{ALERTMANAGER_PORT}"]}]}]
        },
        "scrape_configs": [
            {
                "job_name": f"z2m-{p.name}",
                "metrics_path": "/metrics",
                "file_sd_configs": [{"files": [SD_FILE], "refresh_interval": "1m"}],
            }
        ],
    }


def alertmanager_config() -> Obj:
    """alertmanager.yml: alerts grouped per app and held, with no receiver to send them to.

    Alertmanager's API and UI show them; a receiver (mail, a pager) is the user's to add.
    """
    return {
        "route": {
            "receiver": "z2m",
            "group_by": ["alertname", "namespace"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
        },
        "receivers": [{"name": "z2m"}],
    }


def prometheus_url(owner_name: str, namespace: str) -> str:
    """Where z2m's own Prometheus answers inside the cluster."""
    return f"http://{meta.child(owner_name, 'prometheus')}.{namespace}.svc:{PROMETHEUS_PORT}"


def runs_prometheus(p: plan.Plan, prometheus_operator: bool) -> bool:
    """Whether z2m runs a Prometheus of its own: at a monitoring stage, without the operator's."""
    return p.monitoring and not prometheus_operator


def _dashboard(p: plan.Plan, owner: meta.Owner) -> Obj:
    metadata = meta.metadata(p, owner, meta.child(p.name, "monitoring"), "monitoring")
    metadata["labels"]["grafana_dashboard"] = "1"  # Grafana's dashboard sidecar loads it
    data = {"dashboard.json": json.dumps(dashboard(p), indent=2)}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def _prometheus_operator_objects(p: plan.Plan, owner: meta.Owner) -> list[Obj]:
    """A PodMonitor and a PrometheusRule, for the cluster's Prometheus to pick up."""
    objs = []
    for kind, spec in (
        (
            "PodMonitor",
            {
                "selector": {
                    "matchLabels": {meta.MANAGED_BY: "z2m", meta.PART_OF: p.name},
                    "matchExpressions": [
                        {"key": meta.COMPONENT, "operator": "In", "values": list(scraped(p))}
                    ],
                },
                "podMetricsEndpoints": [
                    {"port": "http", "path": "/metrics", "interval": SCRAPE_INTERVAL}
                ],
            },
        ),
        ("PrometheusRule", {"groups": alert_rules(p)}),
    ):
        metadata = meta.metadata(p, owner, meta.child(p.name, "monitoring"), "monitoring")
        metadata["labels"] = {**p.spec.monitoring.labels, **metadata["labels"]}
        objs.append(
            {"apiVersion": MONITORING_API, "kind": kind, "metadata": metadata, "spec": spec}
        )
    return objs


def _prometheus_access(p: plan.Plan, owner: meta.Owner) -> list[Obj]:
    """Prometheus' ServiceAccount, and a Role that lets it find pods in this namespace only.

    The operator grants nothing it does not hold: its own rules include these.
    """
    name = meta.child(p.name, "prometheus")
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta.metadata(p, owner, name, "prometheus"),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta.metadata(p, owner, name, "prometheus"),
            # What Prometheus' own pod discovery would need too, in an image that has it.
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta.metadata(p, owner, name, "prometheus"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": p.namespace}],
        },
    ]


def _prometheus(p: plan.Plan, owner: meta.Owner) -> list[Obj]:
    """z2m's own Prometheus, with Alertmanager and pod discovery in the same pod.

    Debian's Prometheus has no Kubernetes service discovery, so a sidecar lists the
    pods to scrape under the pod's ServiceAccount and hands Prometheus a file_sd list
    on a shared emptyDir. The TSDB and Alertmanager's silences live on a kept volume.
    """
    spec = p.spec.monitoring
    name = meta.child(p.name, "prometheus")
    files = {
        "prometheus.yml": json.dumps(prometheus_config(p), indent=2),
        "alerts.yml": json.dumps({"groups": alert_rules(p)}, indent=2),
        "alertmanager.yml": json.dumps(alertmanager_config(), indent=2),
        "prometheus-sd.sh": workloads.script("prometheus-sd.sh"),
    }
    config: Obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta.metadata(p, owner, name, "prometheus"),
        "data": files,
    }

    def mounts(*extra: Obj) -> list[Obj]:
        return [{"name": "config", "mountPath": MONITORING_DIR, "readOnly": True}, *extra]

    data = {"name": "data", "mountPath": MONITORING_DATA}
    targets = {"name": "targets", "mountPath": SD_DIR}

    def ready(port: int) -> Obj:
        return {"httpGet": {"path": "/-/ready", "port": port}, "periodSeconds": 5}

    containers: list[Obj] = [
        {
            "name": "prometheus",
            "image": spec.image,
            "command": [
                "prometheus",
                f"--config.file={MONITORING_DIR}/prometheus.yml",
                f"--storage.tsdb.path={MONITORING_DATA}/prometheus",
                f"--storage.tsdb.retention.time={spec.retention}",
                f"--web.listen-address=:{PROMETHEUS_PORT}",
            ],
            "ports": [{"name": "http", "containerPort": PROMETHEUS_PORT}],
            "readinessProbe": ready(PROMETHEUS_PORT),
            "livenessProbe": {
                "httpGet": {"path": "/-/healthy", "port": PROMETHEUS_PORT},
                "periodSeconds": 10,
                "failureThreshold": 6,
            },
            "resources": workloads.footprint("prometheus", spec.resources),
            "volumeMounts": mounts(data, targets),
        },
        {
            "name": "discovery",
            "image": spec.image,
            "command": ["/bin/sh", f"{MONITORING_DIR}/prometheus-sd.sh"],
            "env": [
                {"name": "SD_SELECTOR", "value": scraped_selector(p)},
                {"name": "SD_FILE", "value": SD_FILE},
                {"name": "SD_PORT_NAME", "value": "http"},
            ],
            "resources": workloads.footprint("prometheus-discovery"),
            "volumeMounts": mounts(targets),
        },
        {
            "name": "alertmanager",
            "image": spec.image,
            "command": [
                "prometheus-alertmanager",
                f"--config.file={MONITORING_DIR}/alertmanager.yml",
                f"--storage.path={MONITORING_DATA}/alertmanager",
                f"--web.listen-address=:{ALERTMANAGER_PORT}",
                "--cluster.listen-address=",  # one Alertmanager: no gossip with peers
            ],
            "ports": [{"name": "alertmanager", "containerPort": ALERTMANAGER_PORT}],
            "readinessProbe": ready(ALERTMANAGER_PORT),
            "resources": workloads.footprint("alertmanager"),
            "volumeMounts": mounts(data),
        },
    ]
    sts = workloads.statefulset(
        p,
        owner,
        "prometheus",
        "prometheus",
        1,
        containers,
        spec.storage,
        run_as=catalog.SERVER_UIDS["prometheus"],
    )
    template = sts["spec"]["template"]
    template["spec"]["serviceAccountName"] = name
    template["spec"]["volumes"] = [
        {"name": "config", "configMap": {"name": name, "defaultMode": 0o555}},
        {"name": "targets", "emptyDir": {}},
    ]
    # A new configuration rolls the pod: Prometheus reads its files only when it starts.
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    template["metadata"]["annotations"] = {CONFIG_HASH: digest}
    ports = [("http", PROMETHEUS_PORT, PROMETHEUS_PORT)]
    ports.append(("alertmanager", ALERTMANAGER_PORT, ALERTMANAGER_PORT))
    return [
        *_prometheus_access(p, owner),
        config,
        sts,
        workloads.service(p, owner, name, "prometheus", ports),
    ]


def objects(p: plan.Plan, owner: meta.Owner, prometheus_operator: bool) -> list[Obj]:
    """The dashboard, and z2m's Prometheus or the operator's kinds: nothing below stage 5."""
    if not p.monitoring:
        return []
    if prometheus_operator:
        return [_dashboard(p, owner), *_prometheus_operator_objects(p, owner)]
    return [_dashboard(p, owner), *_prometheus(p, owner)]

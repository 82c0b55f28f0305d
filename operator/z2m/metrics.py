"""The operator's own Prometheus metrics, defined once.

Served by `z2m run` on its metrics port. Kept apart so that the reconciler,
the decision loop and the tests refer to one set of names.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("z2m_reconciles_total", "Reconcile passes, by outcome.", ["outcome"])
RECONCILE_ERRORS = Counter(
    "z2m_reconcile_errors_total", "Reconcile passes that raised, by exception type.", ["error"]
)
RECONCILE_SECONDS = Histogram(
    "z2m_reconcile_duration_seconds",
    "Time for one reconcile pass.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WRITES = Counter(
    "z2m_writes_total", "Objects changed on the apiserver, by verb and kind.", ["verb", "kind"]
)
API_REQUESTS = Counter(
    "z2m_api_requests_total",
    "Requests sent to the apiserver through z2m.kube, by verb and kind (no-ops included).",
    ["verb", "kind"],
)
CHILD_EVENTS = Counter(
    "z2m_child_events_total",
    "Watch events received for child kinds, by resource and whether the object is ours.",
    ["resource", "ours"],
)
RELIST_DELETIONS = Counter(
    "z2m_relist_deletions_total",
    "Objects a watch's relisting (after 410 Gone) no longer held: deleted while it was away.",
    ["resource"],
)
RELIST_GONE = Counter(
    "z2m_relist_gone_total",
    "Watch requests refused with HTTP 410 Gone, each ended so that the watch lists again.",
    ["resource"],
)
STAGE = Gauge("z2m_stage", "The stage each ScalingStage is at.", ["namespace", "name"])
RECOMMENDED_STAGE = Gauge(
    "z2m_recommended_stage",
    "The stage the metrics-driven decision recommends.",
    ["namespace", "name"],
)
DECISIONS = Counter("z2m_decisions_total", "Auto-promotion verdicts, by action.", ["action"])
EVALUATION_ERRORS = Counter(
    "z2m_evaluation_errors_total", "Prometheus evaluations that failed, by reason.", ["reason"]
)
EARLY_EVALUATIONS = Counter(
    "z2m_promotion_early_evaluations_total",
    "Evaluations started before their interval: a tick's grouped reading opened or broke a window.",
)
PROMETHEUS_QUERIES = Counter(
    "z2m_prometheus_queries_total",
    "Instant queries the promotion loop sent: grouped for many objects (fleet) or for one.",
    ["scope"],
)

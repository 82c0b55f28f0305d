"""Prometheus flapping under auto mode: gaps in the metrics never change the stage.

A real Prometheus scrapes an exporter whose values sit between the promotion
and demotion thresholds' reach: nothing should change, and nothing does while
the metrics flow. Then, for three minutes, Prometheus is stopped for 10 s and
started for 10 s in turn. Each outage must show as MetricsAvailable False,
each return as True again; the stage never moves and the operator never fails.
The schedule waits on the process and on the conditions, not on sleeps alone.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes.client import ApiClient
from prometheus_client import REGISTRY

from tests import prometheus as prom
from tests.cluster import helpers as h
from tests.conftest import eventually, report

pytestmark = [pytest.mark.cluster, pytest.mark.reliability, pytest.mark.services]
NAME = "shop"
FLAPPING_SECONDS = 180
HALF_PERIOD = 10.0
PROMOTE, DEMOTE, COOLDOWN = 3, 6, 2


@pytest.fixture
def z2m(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("Z2M_PROMOTION_TICK", "0.5")
    monkeypatch.setenv("Z2M_PROMOTION_REFRESH", "5")


def metrics_available(api_client: ApiClient, namespace: str) -> str | None:
    c = h.condition(h.get(api_client, namespace, NAME), "MetricsAvailable")
    return None if c is None else f"{c['status']}/{c['reason']}"


READING_PROBLEMS = {"PrometheusUnreachable", "PrometheusError", "BadQuery", "NoData"}
"""Reasons the evaluation counter counts that are reported conditions, not failures."""


def failures() -> float:
    """Reconcile passes and promotion evaluations that raised (or timed out)."""
    return sum(
        s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name in ("z2m_reconcile_errors_total", "z2m_evaluation_errors_total")
        and not set(s.labels.values()) & READING_PROBLEMS
    )


@pytest.mark.timeout(900)
def test_prometheus_flapping_in_auto_mode_changes_no_stage(
    api_client: ApiClient,
    namespace: str,
    exporter: prom.Exporter,
    prometheus: prom.Prometheus,
    z2m: None,
    operator: Any,
) -> None:
    promotion = {
        "mode": "auto",
        "prometheus": {"url": prometheus.url, "timeoutSeconds": 1, "rateWindow": "4s"},
        "intervalSeconds": 1,
        "promoteWindowSeconds": PROMOTE,
        "demoteWindowSeconds": DEMOTE,
        "cooldownSeconds": COOLDOWN,
        "minStage": 1,
        "maxStage": 3,
    }
    # 5 RPS sits inside stage 2's band (1-10): above what demotes (0.5), below what promotes
    # (8). Only a gap misread as "no load" (or as any value) could move the stage.
    exporter.set(rps=5.0, cpu_percent=20.0)
    h.create(api_client, namespace, h.scaling_stage(NAME, 2, promotion=promotion))
    h.wait_ready(api_client, namespace, NAME, 2)
    eventually(lambda: metrics_available(api_client, namespace) == "True/SignalsRead", timeout=60)
    errors_before = failures()

    outages = 0
    seen: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < FLAPPING_SECONDS:
        prometheus.stop()
        outages += 1
        down_at = time.monotonic()
        seen.append(
            eventually(
                # One read: two could straddle a change of the condition.
                lambda: (
                    (m := metrics_available(api_client, namespace) or "").startswith("False/") and m
                ),
                timeout=30,
            )
        )
        # Stay down for the rest of the half-period: the operator keeps deciding meanwhile.
        time.sleep(max(0.0, HALF_PERIOD - (time.monotonic() - down_at)))
        prometheus.start()
        up_at = time.monotonic()
        seen.append(
            eventually(
                lambda: (
                    metrics_available(api_client, namespace) == "True/SignalsRead"
                    and "True/SignalsRead"
                ),
                timeout=30,
            )
        )
        time.sleep(max(0.0, HALF_PERIOD - (time.monotonic() - up_at)))

    obj = h.get(api_client, namespace, NAME)
    changes = len((obj.get("status") or {}).get("history") or [])
    errors = failures()
    report(
        f"Prometheus flapping {FLAPPING_SECONDS} s ({HALF_PERIOD:g} s down / up): "
        f"{outages} outages, each seen as MetricsAvailable False and back to True; "
        f"stage changes {changes}; operator errors {errors - errors_before:g}"
    )
    assert obj["spec"]["stage"] == 2 and changes == 0
    assert seen.count("True/SignalsRead") == outages
    assert all(s.startswith("False/") for s in seen[::2])
    assert errors == errors_before
    h.wait_ready(api_client, namespace, NAME, 2)

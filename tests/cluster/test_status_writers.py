"""The two status writers, reconciler and promotion loop, cannot undo each other.

Each writes with server-side apply under its own field manager and sends only
its own fields, `conditions` being a map list keyed by `type`. Here each writes
from a copy of the ScalingStage read before the other's newer write, as a slow
pass would, against the real apiserver; the other's newer fields must survive,
and managedFields must show who owns what.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from tests.conftest import eventually
from tests.services import free_port
from z2m import kube, promote, reconcile, status

pytestmark = pytest.mark.cluster
NAME = "shop"


def recommending(stage: int) -> dict[str, Any]:
    # Prometheus is unreachable: the loop still decides (hold, no data) and writes.
    url = f"http://127.0.0.1:{free_port()}"
    promotion = {"mode": "recommend", "prometheus": {"url": url, "timeoutSeconds": 1}}
    return h.scaling_stage(NAME, stage, promotion=promotion)


def evaluate(k: kube.Kube, obj: dict[str, Any]) -> None:
    """One promotion-loop evaluation of `obj`, as read by the caller."""

    async def run() -> None:
        async with httpx.AsyncClient() as http:
            loop = promote.Loop(kube=k, http=http)
            try:
                await loop.evaluate(obj)
            finally:
                loop.executor.shutdown(wait=True)

    asyncio.run(run())


def owned(obj: dict[str, Any], manager: str) -> tuple[set[str], set[str]]:
    """(status fields, condition types) that `manager` owns through a status apply."""
    for entry in obj["metadata"].get("managedFields") or []:
        if (
            entry["manager"] == manager
            and entry["operation"] == "Apply"
            and entry.get("subresource") == "status"
        ):
            fields = entry["fieldsV1"].get("f:status", {})
            types = {
                json.loads(key[2:])["type"]
                for key in fields.get("f:conditions", {})
                if key.startswith("k:")
            }
            return {key[2:] for key in fields if key.startswith("f:")}, types
    return set(), set()


def condition(api_client: ApiClient, namespace: str, ctype: str) -> dict[str, Any]:
    found = h.condition(h.get(api_client, namespace, NAME), ctype)
    assert found is not None, ctype
    return found


def test_a_promoter_write_from_a_stale_read_keeps_the_reconcilers_newer_ready(
    api_client: ApiClient, k: kube.Kube, namespace: str
) -> None:
    h.create(api_client, namespace, recommending(2))
    reconciler = reconcile.Reconciler(kube=k)
    reconciler.reconcile(namespace, NAME)
    stale = h.get(api_client, namespace, NAME)
    assert condition(api_client, namespace, "Ready")["status"] == "False"  # pods not up yet

    def ready() -> bool:
        reconciler.reconcile(namespace, NAME)
        return condition(api_client, namespace, "Ready")["status"] == "True"

    eventually(ready, timeout=60)
    evaluate(k, stale)  # the loop read the object before Ready turned True

    obj = h.get(api_client, namespace, NAME)
    assert condition(api_client, namespace, "Ready")["status"] == "True"
    assert condition(api_client, namespace, "Progressing")["reason"] == "Converged"
    assert condition(api_client, namespace, "MetricsAvailable")["status"] == "False"
    assert condition(api_client, namespace, "Recommendation")["reason"] == "NoData"
    promoter_fields, promoter_types = owned(obj, kube.PROMOTER_MANAGER)
    reconciler_fields, reconciler_types = owned(obj, kube.RECONCILER_MANAGER)
    assert promoter_types == {"MetricsAvailable", "Recommendation"}
    assert reconciler_types == {"Ready", "Progressing", "Degraded"}
    assert {"lastDecision", "recommendedStage", "history"} <= promoter_fields
    assert {"observedGeneration", "stage", "ready", "components"} <= reconciler_fields
    assert not (promoter_fields - {"conditions"}) & reconciler_fields


def test_a_reconciler_write_from_a_stale_read_keeps_the_promoters_newer_recommendation(
    api_client: ApiClient, k: kube.Kube, namespace: str
) -> None:
    h.create(api_client, namespace, recommending(2))
    reconciler = reconcile.Reconciler(kube=k)
    reconciler.reconcile(namespace, NAME)
    evaluate(k, h.get(api_client, namespace, NAME))
    assert condition(api_client, namespace, "Recommendation")["reason"] == "NoData"
    notice = {"FailoverAvailable": (False, "Testing", "a condition only the reconciler sets")}
    fresh = h.get(api_client, namespace, NAME)
    seen = status.Observation(
        fresh["metadata"]["generation"], None, k.children(namespace, NAME), notices=notice
    )
    assert reconciler.write_status(fresh, fresh["status"], seen) is not None
    assert condition(api_client, namespace, "FailoverAvailable")["reason"] == "Testing"

    stale = h.get(api_client, namespace, NAME)  # a slow pass read the object here
    h.custom(api_client).patch_namespaced_custom_object(
        "z2m.dev", "v1alpha1", namespace, "scalingstages", NAME, {"spec": {"paused": True}}
    )
    evaluate(k, h.get(api_client, namespace, NAME))
    assert condition(api_client, namespace, "Recommendation")["reason"] == "Paused"

    # The slow pass now writes what it saw: waiting, and no FailoverAvailable any more.
    seen = status.Observation(
        stale["metadata"]["generation"],
        None,
        k.children(namespace, NAME),
        waiting="a pass that began before the promoter's write",
    )
    assert reconciler.write_status(stale, stale["status"], seen) is not None

    obj = h.get(api_client, namespace, NAME)
    assert condition(api_client, namespace, "Ready")["reason"] == "Waiting"
    assert h.condition(obj, "FailoverAvailable") is None  # the reconciler's own, dropped
    assert condition(api_client, namespace, "Recommendation")["reason"] == "Paused"
    assert obj["status"]["lastDecision"]["action"] == "hold"
    assert "spec.paused" in obj["status"]["lastDecision"]["reason"]
    _, promoter_types = owned(obj, kube.PROMOTER_MANAGER)
    _, reconciler_types = owned(obj, kube.RECONCILER_MANAGER)
    assert promoter_types == {"MetricsAvailable", "Recommendation"}
    assert reconciler_types == {"Ready", "Progressing", "Degraded"}

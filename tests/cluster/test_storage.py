"""Storage edits on a live ScalingStage: growth reaches the claims, nothing wedges.

StatefulSet claim templates cannot change; shrinking and class changes are
refused at admission (tests/cluster/test_admission.py). A bigger size is made
on the claims themselves where their StorageClass allows expansion, and is
reported, not retried into a 422 forever, where it does not. KWOK binds claims
of its `kwok-volume` class, so the test that expands one lets that class expand
for its duration.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from tests.conftest import eventually

pytestmark = pytest.mark.cluster
NAME = "shop"
CLASS = "kwok-volume"


def grow(api_client: ApiClient, namespace: str, size: str) -> int:
    h.custom(api_client).patch_namespaced_custom_object(
        "z2m.dev",
        "v1alpha1",
        namespace,
        "scalingstages",
        NAME,
        {"spec": {"database": {"storage": {"size": size}}}},
    )
    return int(h.get(api_client, namespace, NAME)["metadata"]["generation"])


def reported(
    api_client: ApiClient, namespace: str, generation: int, value: str, reason: str
) -> dict[str, Any] | None:
    obj = h.get(api_client, namespace, NAME)
    cond = h.condition(obj, "StorageExpanded")
    if obj["status"].get("observedGeneration") != generation or cond is None:
        return None
    return cond if (cond["status"], cond["reason"]) == (value, reason) else None


def claim_size(api_client: ApiClient, namespace: str, name: str) -> str:
    claim = kubernetes.client.CoreV1Api(api_client).read_namespaced_persistent_volume_claim(
        name, namespace
    )
    return str(claim.spec.resources.requests["storage"])


def template_size(api_client: ApiClient, namespace: str, name: str) -> str:
    sts = kubernetes.client.AppsV1Api(api_client).read_namespaced_stateful_set(name, namespace)
    return str(sts.spec.volume_claim_templates[0].spec.resources.requests["storage"])


@pytest.fixture
def expandable(api_client: ApiClient) -> Iterator[None]:
    """KWOK's storage class allows volume expansion while the test runs."""
    storage = kubernetes.client.StorageV1Api(api_client)
    before = storage.read_storage_class(CLASS).allow_volume_expansion
    storage.patch_storage_class(CLASS, {"allowVolumeExpansion": True})
    yield
    storage.patch_storage_class(CLASS, {"allowVolumeExpansion": before})


def test_growth_a_class_cannot_expand_is_reported_and_wedges_nothing(
    api_client: ApiClient, namespace: str, operator: Any
) -> None:
    h.create(api_client, namespace, h.scaling_stage(NAME, 2))
    h.wait_ready(api_client, namespace, NAME, 2)
    generation = grow(api_client, namespace, "2Gi")
    cond = eventually(
        lambda: reported(api_client, namespace, generation, "False", "ExpansionNotAllowed")
    )
    assert "data-shop-db-0 stays at 1Gi (StorageClass kwok-volume)" in cond["message"]
    assert "allowVolumeExpansion: true" in cond["message"]
    eventually(
        lambda: any(
            e.reason == "ExpansionNotAllowed" and e.type == "Warning"
            for e in kubernetes.client.CoreV1Api(api_client).list_namespaced_event(namespace).items
        ),
        timeout=30,
    )
    assert claim_size(api_client, namespace, f"data-{NAME}-db-0") == "1Gi"
    assert template_size(api_client, namespace, f"{NAME}-db") == "1Gi"
    # The rest of the ScalingStage still converges: a stage change goes through.
    h.set_stage(api_client, namespace, NAME, 3)
    h.wait_ready(api_client, namespace, NAME, 3)


def test_growth_reaches_the_claims_where_the_class_allows_expansion(
    api_client: ApiClient, namespace: str, expandable: None, operator: Any
) -> None:
    h.create(api_client, namespace, h.scaling_stage(NAME, 3))
    h.wait_ready(api_client, namespace, NAME, 3)
    generation = grow(api_client, namespace, "2Gi")
    cond = eventually(lambda: reported(api_client, namespace, generation, "True", "ClaimsExpanded"))
    assert "claim templates keep the size they were made with" in cond["message"]
    for claim in (f"data-{NAME}-db-0", f"data-{NAME}-db-replica-0"):
        assert claim_size(api_client, namespace, claim) == "2Gi", claim
    assert template_size(api_client, namespace, f"{NAME}-db") == "1Gi"
    h.wait_ready(api_client, namespace, NAME, 3)

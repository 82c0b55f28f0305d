"""Opt-in search on a real kube-apiserver: OpenSearch comes, wires the app, and goes.

The local control plane (KWOK) fakes the pods and volumes; what is checked is what
the operator writes: the objects, the app's SEARCH_URL, the plan in status, and that
the claim of the search data outlives OpenSearch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from tests.conftest import eventually
from z2m import api, kube

pytestmark = pytest.mark.cluster
NAME = "shop"
SEARCH = ("StatefulSet", f"{NAME}-search")


def app_env(api_client: ApiClient, namespace: str) -> dict[str, str]:
    deployment = kubernetes.client.AppsV1Api(api_client).read_namespaced_deployment(
        f"{NAME}-app", namespace
    )
    (container,) = deployment.spec.template.spec.containers
    return {e.name: e.value or "" for e in container.env or []}


def set_spec(api_client: ApiClient, namespace: str, patch: dict[str, Any]) -> None:
    h.custom(api_client).patch_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.PLURAL, NAME, {"spec": patch}
    )


def test_search_switched_on_at_stage_5_runs_opensearch_and_tells_the_app_then_goes_when_off(
    api_client: ApiClient,
    k: kube.Kube,
    namespace: str,
    operator: Any,
    empty_queue: str,
) -> None:
    spec: dict[str, Any] = {"queue": {"managementUrl": empty_queue}, "search": {"enabled": True}}
    h.create(api_client, namespace, h.scaling_stage(NAME, 5, **spec))
    obj = h.wait_ready(api_client, namespace, NAME, 5, timeout=120)
    assert h.children(k, namespace, NAME) == h.expected(5, NAME, namespace, **spec)
    assert SEARCH in h.children(k, namespace, NAME)
    assert obj["status"]["plan"]["search"] is True
    assert app_env(api_client, namespace)["SEARCH_URL"] == f"http://{NAME}-search:9200"
    assert f"data-{NAME}-search-0" in eventually(lambda: h.claims(api_client, namespace))
    claim_uid = h.claims(api_client, namespace)[f"data-{NAME}-search-0"]

    set_spec(api_client, namespace, {"search": {"enabled": False}})
    spec["search"] = {"enabled": False}
    eventually(
        lambda: h.children(k, namespace, NAME) == h.expected(5, NAME, namespace, **spec),
        timeout=120,
    )
    assert SEARCH not in h.children(k, namespace, NAME)
    assert "SEARCH_URL" not in app_env(api_client, namespace)
    assert h.wait_ready(api_client, namespace, NAME, 5)["status"]["plan"]["search"] is False
    # The index's volume stays, the same claim, for the day search is switched on again.
    assert h.claims(api_client, namespace)[f"data-{NAME}-search-0"] == claim_uid


def test_leaving_stage_5_retires_opensearch_and_rewires_the_app_off_it(
    api_client: ApiClient,
    k: kube.Kube,
    namespace: str,
    operator: Any,
    empty_queue: str,
    kafka_servers: str,
    sentinel_watching: Callable[[str], str],
) -> None:
    # 5 -> 4 retires Kafka once its consumer group is shown drained: a real one on loopback.
    spec: dict[str, Any] = {
        "queue": {"managementUrl": empty_queue},
        "streaming": {"bootstrapServers": kafka_servers},
        "cache": {"sentinelAddress": sentinel_watching(f"{NAME}-redis-0.{NAME}-redis")},
        "search": {"enabled": True},
    }
    h.create(api_client, namespace, h.scaling_stage(NAME, 5, **spec))
    h.wait_ready(api_client, namespace, NAME, 5, timeout=120)
    assert SEARCH in h.children(k, namespace, NAME)

    h.set_stage(api_client, namespace, NAME, 4)
    h.wait_ready(api_client, namespace, NAME, 4, timeout=120)
    eventually(lambda: h.children(k, namespace, NAME) == h.expected(4, NAME, namespace, **spec))
    assert SEARCH not in h.children(k, namespace, NAME)
    assert "SEARCH_URL" not in app_env(api_client, namespace)
    assert f"data-{NAME}-search-0" in h.claims(api_client, namespace)

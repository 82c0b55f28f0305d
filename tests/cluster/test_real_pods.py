"""Behaviour that needs real pods: run only with --kubeconfig pointing at a kind cluster.

On the local control plane KWOK fakes pods, so these are skipped there; the
same files are exercised against the real programs in tests/pods/, which is
the evidence this project has on its own machines.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from tests.conftest import eventually, kubectl

pytestmark = [pytest.mark.cluster, pytest.mark.kind]
NAME = "shop"


def test_a_stage_3_read_replica_really_streams_from_the_primary(
    api_client: ApiClient, kubeconfig: str, namespace: str, operator: Any
) -> None:
    h.create(api_client, namespace, h.scaling_stage(NAME, 3))
    h.wait_ready(api_client, namespace, NAME, 3, timeout=600)

    def streaming() -> bool:
        out = kubectl(
            "exec",
            "-n",
            namespace,
            f"{NAME}-db-0",
            "--",
            "psql",
            "-U",
            "app",
            "-d",
            "app",
            "-tAc",
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            kubeconfig=kubeconfig,
            check=False,
        )
        return out.stdout.strip() == "1"

    eventually(streaming, timeout=300)


def test_the_edge_cache_serves_a_static_asset_from_cache(
    api_client: ApiClient, kubeconfig: str, namespace: str, operator: Any
) -> None:
    h.create(api_client, namespace, h.scaling_stage(NAME, 3))
    h.wait_ready(api_client, namespace, NAME, 3, timeout=600)
    url = f"http://{NAME}-edge.{namespace}.svc/static/app.css"
    statuses = []
    for _ in range(2):
        out = kubectl(
            "run",
            "-n",
            namespace,
            "probe",
            "--rm",
            "-i",
            "--restart=Never",
            "--image=curlimages/curl",
            "--",
            "-sI",
            url,
            kubeconfig=kubeconfig,
        )
        statuses.append("HIT" if "X-Cache-Status: HIT" in out.stdout else "MISS")
    assert statuses == ["MISS", "HIT"]

"""What must hold after every fault: the stage's children, owned once, and every claim."""

from __future__ import annotations

from typing import Any

from kubernetes.client import ApiClient

from tests.cluster import helpers as h
from z2m import api, builders, kube


def everything(k: kube.Kube, namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of a kind z2m prunes in the namespace, labelled ours or not."""
    found = {}
    for api_version, kind in sorted(builders.PRUNABLE):
        if not k.has_kind(api_version, kind):
            continue
        for item in (
            k.client.resources.get(api_version=api_version, kind=kind)
            .get(namespace=namespace)
            .to_dict()["items"]
        ):
            name = item["metadata"]["name"]
            if (kind, name) in (("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")):
                continue  # every namespace has them
            found[kind, name] = item
    return found


def problems(
    api_client: ApiClient,
    k: kube.Kube,
    namespace: str,
    name: str,
    stage: int,
    claims_seen: dict[str, str],
    **spec: Any,
) -> list[str]:
    """Why the namespace is not exactly stage `stage` of `name`, owned once, claims kept."""
    out: list[str] = []
    owner = h.get(api_client, namespace, name)["metadata"]["uid"]
    present = everything(k, namespace)
    wanted = h.expected(stage, name, namespace, **spec)
    if extra := sorted(set(present) - wanted):
        out.append(f"orphaned or duplicate objects: {extra}")
    if missing := sorted(wanted - set(present)):
        out.append(f"missing children: {missing}")
    for key, obj in present.items():
        controllers = [
            ref for ref in obj["metadata"].get("ownerReferences") or [] if ref.get("controller")
        ]
        if [(r["kind"], r["name"], r["uid"]) for r in controllers] != [(api.KIND, name, owner)]:
            out.append(f"{key} has controller references {controllers}")
    now = h.claims(api_client, namespace)
    for claim, uid in claims_seen.items():
        if now.get(claim) != uid:
            out.append(f"claim {claim} lost or recreated ({uid} -> {now.get(claim)})")
    return out

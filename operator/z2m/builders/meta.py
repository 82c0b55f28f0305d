"""Names, labels and metadata: what every child of a ScalingStage carries.

`child`, `labels` and `child_selector` are the one place children's names and labels
are made, so the operator's watches, its pruning and the tests agree with the
builders; `metadata` adds the owner reference that makes the ScalingStage each
child's controller. No object is built here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from z2m import api, plan

Obj = dict[str, Any]

MANAGED_BY = "app.kubernetes.io/managed-by"
PART_OF = "app.kubernetes.io/part-of"
COMPONENT = "app.kubernetes.io/component"
RETAINED = "z2m.dev/retained"
ZONE = "topology.kubernetes.io/zone"
REGION = "topology.kubernetes.io/region"
SECRET_KEYS = (
    "database-password",
    "replication-password",
    "redis-password",
    "queue-password",
    "session-secret",
)


@dataclass(frozen=True)
class Owner:
    """The ScalingStage that owns the children, for owner references."""

    name: str
    uid: str


def child(owner_name: str, component: str) -> str:
    """The name of a child object: `<scalingstage>-<component>`."""
    return f"{owner_name}-{component}"


def secret_name(owner_name: str) -> str:
    """The Secret with the credentials the operator generates once."""
    return child(owner_name, "credentials")


def labels(owner_name: str, component: str) -> dict[str, str]:
    """The labels every child carries; the first two find children, all three select pods."""
    return {MANAGED_BY: "z2m", PART_OF: owner_name, COMPONENT: component}


def child_selector(owner_name: str) -> str:
    """Label selector for every child of one ScalingStage."""
    return f"{MANAGED_BY}=z2m,{PART_OF}={owner_name}"


def metadata(p: plan.Plan, owner: Owner, name: str, component: str) -> Obj:
    """A child's metadata: its name, labels, and the ScalingStage as its controller."""
    return {
        "name": name,
        "namespace": p.namespace,
        "labels": labels(p.name, component),
        "ownerReferences": [
            {
                "apiVersion": f"{api.GROUP}/{api.VERSION}",
                "kind": api.KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def secret_env(p: plan.Plan, var: str, key: str) -> Obj:
    """An environment variable read from one key of the credentials Secret."""
    return {
        "name": var,
        "valueFrom": {"secretKeyRef": {"name": secret_name(p.name), "key": key}},
    }

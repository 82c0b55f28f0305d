"""Only what a ScalingStage controls is ever deleted: the owner check, without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from z2m import transition

UID = "5f0c0f3e-0000-4000-8000-000000000001"


def child(*refs: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "shop-edge", "ownerReferences": list(refs)}}


def ref(uid: str, controller: bool | None = True) -> dict[str, Any]:
    out: dict[str, Any] = {"apiVersion": "z2m.dev/v1alpha1", "kind": "ScalingStage", "uid": uid}
    if controller is not None:
        out["controller"] = controller
    return out


def test_an_object_our_scaling_stage_controls_may_be_pruned() -> None:
    assert transition.controlled_by(child(ref("other", controller=False), ref(UID)), UID)


@pytest.mark.parametrize(
    "obj",
    [
        {"metadata": {"name": "shop-edge"}},
        child(),
        child(ref("another-uid")),
        child(ref(UID, controller=False)),
        child(ref(UID, controller=None)),
    ],
    ids=["no-owner", "empty-owners", "another-controller", "owner-not-controller", "no-flag"],
)
def test_labels_alone_never_make_an_object_prunable(obj: dict[str, Any]) -> None:
    assert not transition.controlled_by(obj, UID)

"""Claim templates: a live StatefulSet keeps its own, and a bigger size becomes growth."""

from __future__ import annotations

from typing import Any

from z2m import api, builders, plan, reconcile


def built(**database: Any) -> list[dict[str, Any]]:
    spec = api.ScalingStageSpec(stage=3, database=api.DatabaseSpec(**database))
    return builders.build(
        plan.resolve(spec, name="shop", namespace="ns"), builders.Owner("shop", "uid")
    )


def statefulset(objs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] == name)


def template(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["volumeClaimTemplates"][0]["spec"]
    return spec


def live(objs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {builders.key(o): o for o in objs}


def test_a_bigger_size_keeps_the_live_template_and_asks_to_grow_the_claims() -> None:
    before = built()
    after, growth = reconcile.keep_claim_templates(
        built(storage=api.Storage(size="5Gi")), live(before)
    )
    assert template(statefulset(after, "shop-db"))["resources"]["requests"]["storage"] == "1Gi"
    assert reconcile.Growth("shop-db", "database", "data", "5Gi") in growth
    assert {g.statefulset for g in growth} == {"shop-db", "shop-db-replica"}


def test_the_same_size_spelt_otherwise_is_no_growth() -> None:
    after, growth = reconcile.keep_claim_templates(
        built(storage=api.Storage(size="1024Mi")), live(built())
    )
    assert growth == []
    assert template(statefulset(after, "shop-db"))["resources"]["requests"]["storage"] == "1Gi"


def test_the_live_class_is_kept_even_when_the_spec_names_another() -> None:
    before = built(storage=api.Storage(storage_class_name="slow"))
    after, _ = reconcile.keep_claim_templates(
        built(storage=api.Storage(storage_class_name="fast")), live(before)
    )
    assert template(statefulset(after, "shop-db"))["storageClassName"] == "slow"
    after, _ = reconcile.keep_claim_templates(built(), live(before))
    assert template(statefulset(after, "shop-db"))["storageClassName"] == "slow"
    after, _ = reconcile.keep_claim_templates(
        built(storage=api.Storage(storage_class_name="fast")), live(built())
    )
    assert "storageClassName" not in template(statefulset(after, "shop-db"))


def test_a_statefulset_that_does_not_exist_yet_is_built_as_asked() -> None:
    wanted = built(storage=api.Storage(size="5Gi"))
    after, growth = reconcile.keep_claim_templates(wanted, {})
    assert after == wanted and growth == []


def test_the_built_objects_are_not_changed_in_place() -> None:
    wanted = built(storage=api.Storage(size="5Gi"))
    reconcile.keep_claim_templates(wanted, live(built()))
    assert template(statefulset(wanted, "shop-db"))["resources"]["requests"]["storage"] == "5Gi"

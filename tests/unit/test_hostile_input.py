"""The fixes the generated specs forced, pinned without a cluster."""

from __future__ import annotations

import json

import pydantic
import pytest
import yaml

from z2m import api, builders, catalog, kube, plan


def test_the_longest_allowed_name_gives_every_child_a_valid_name() -> None:
    name = "a" * api.MAX_NAME_LENGTH
    overrides = api.Overrides(queue=True, redis=True, edge_cache=True, read_replicas=15)
    for number in range(1, catalog.MAX_IMPLEMENTED + 1):
        o = overrides if number > 1 else api.Overrides()
        p = plan.resolve(api.ScalingStageSpec(stage=number, overrides=o), name=name, namespace="n")
        for obj in builders.build(p, builders.Owner(name, "uid")):
            child = obj["metadata"]["name"]
            # Service names are DNS labels; a StatefulSet's pods carry `<name>-<hash of 10>`.
            limit = {"Service": 63, "StatefulSet": 52}.get(obj["kind"], 253)
            assert len(child) <= limit, (obj["kind"], child)


def test_an_apply_body_with_any_text_is_json_and_yaml_alike() -> None:
    obj = {"value": "emoji \U0001f600, DEL \x7f, NEL \x85, LS \u2028, C1 \x9f, tab \t, \ufffe"}
    body = kube.apply_body(obj)
    assert json.loads(body) == obj
    assert yaml.safe_load(body.decode()) == obj  # the apiserver reads apply patches as YAML


def test_stage_4_without_the_queue_drops_its_workers_instead_of_refusing() -> None:
    spec = api.ScalingStageSpec(stage=4, overrides=api.Overrides(queue=False))
    p = plan.resolve(spec, name="shop", namespace="n")
    assert not p.queue and p.workers == 0
    with pytest.raises(plan.PlanError, match="workers need the queue"):
        plan.resolve(
            api.ScalingStageSpec(stage=4, overrides=api.Overrides(queue=False, workers=2)),
            name="shop",
            namespace="n",
        )


@pytest.mark.parametrize(
    "resources",
    [
        {"limits": {"memory": "64Mi"}},  # the default request, 128Mi, is above it
        {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}},
    ],
)
def test_a_request_above_its_limit_is_refused(resources: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError, match="must not be above"):
        api.Resources.model_validate(resources)


def test_an_empty_volume_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="more than 0"):
        api.Storage(size="0")

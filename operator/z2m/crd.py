"""Generate the ScalingStage CustomResourceDefinition from the pydantic models.

Pydantic emits JSON Schema (draft 2020-12); the apiserver wants a structural
OpenAPI v3.0 schema. This module does that translation and nothing else: it
inlines `$ref`s, turns optional fields into plain optional properties, maps
exclusive bounds and `const`, and keeps CEL rules where the models put them.
"""

from __future__ import annotations

from typing import Any

import yaml

from z2m import api

_DROP = {"title", "additionalProperties", "$defs"}


def _translate(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_translate(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _translate(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        rest = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
        if len(options) == 1:
            return _translate({**options[0], **rest}, defs)
        raise ValueError(f"cannot express a union in a structural schema: {node}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "default" and (isinstance(value, dict | list) or value is None):
            continue  # nested defaults would need the whole subtree to validate; keep scalars
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: _translate(schema, defs) for name, schema in value.items()}
        else:
            out[key] = _translate(value, defs)
    if node.get("type") == "object" and "properties" not in node:
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = _translate(extra, defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def schema_of(model: type[api.Model]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    result: dict[str, Any] = _translate(raw, raw.get("$defs", {}))
    return result


def _status_schema() -> dict[str, Any]:
    schema = schema_of(api.ScalingStageStatus)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


def definition() -> dict[str, Any]:
    """The whole CustomResourceDefinition as a dict."""
    ready = '.status.conditions[?(@.type=="Ready")].status'
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "z2m", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["z2m"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Stage", "type": "integer", "jsonPath": ".status.stage"},
                        {"name": "Desired", "type": "integer", "jsonPath": ".spec.stage"},
                        {"name": "Mode", "type": "string", "jsonPath": ".spec.promotion.mode"},
                        {"name": "Ready", "type": "string", "jsonPath": ready},
                        {
                            "name": "Cost",
                            "type": "string",
                            "jsonPath": ".status.estimatedMonthlyCost",
                            "priority": 1,
                        },
                        {
                            "name": "Recommended",
                            "type": "integer",
                            "jsonPath": ".status.recommendedStage",
                            "priority": 1,
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A ScalingStage grows an application along the "
                            "zero-to-a-million-users ladder.",
                            "required": ["spec"],
                            "x-kubernetes-validations": api.NAME_RULES,
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": schema_of(api.ScalingStageSpec),
                                "status": _status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    """The CRD as the YAML committed at crds/scalingstage.yaml."""
    header = "# Generated by `z2m crd` from operator/z2m/api.py. Do not edit by hand.\n"
    return header + yaml.safe_dump(definition(), sort_keys=False, width=100)

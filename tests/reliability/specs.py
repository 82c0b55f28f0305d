"""Hypothesis strategies for ScalingStage specs, valid and not, from the CRD's own schema.

The schema is the one the apiserver enforces (`z2m.crd.schema_of`, generated from
the pydantic models in `z2m.api`), so the generator follows the models without
a second copy of their bounds. A case is a spec in which every field present is
drawn within its schema (types, bounds, patterns, lengths, enums; cross-field
rules are left to chance, so the CEL rules are tried too), and then, half the
time, one field replaced by a value that breaks its schema: the wrong type, one
past a bound, a string that misses its pattern, one item too many. The broken
field's path is kept, so a test can check the refusal names it.

Names are generated too: a ScalingStage's name becomes part of every child's.
"""

from __future__ import annotations

import copy
import string
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from z2m import api, crd

Schema = dict[str, Any]
SPEC_SCHEMA: Schema = crd.schema_of(api.ScalingStageSpec)

# Short strings are what break things; the schema's long bounds are tried by `_invalid`.
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
PRINTABLE = st.text(alphabet=string.printable, max_size=12)
NAME = st.one_of(
    st.sampled_from(["shop", "a", "app-1", "z" * 40, "n" * 63, "x" * 120]),
    st.from_regex(r"[a-z0-9]([-a-z0-9]{0,70}[a-z0-9])?", fullmatch=True),
)


@dataclass(frozen=True)
class Case:
    """One generated ScalingStage: its name, its spec, and the field broken on purpose."""

    name: str
    spec: dict[str, Any]
    broken: str | None
    """`spec.app.port` when that field was given a value its schema refuses, else None."""


def paths(node: Schema, prefix: str = "spec") -> list[tuple[str, Schema]]:
    """Every field of the schema with its sub-schema, parents before children."""
    out = [(prefix, node)]
    for key, child in (node.get("properties") or {}).items():
        out += paths(child, f"{prefix}.{key}")
    if node.get("type") == "array" and "properties" in node["items"]:
        out += paths(node["items"], f"{prefix}[0]")
    return out


FIELDS = paths(SPEC_SCHEMA)[1:]


def valid(node: Schema) -> st.SearchStrategy[Any]:
    """A value that satisfies `node` (CEL rules aside)."""
    kind = node.get("type")
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(node.get("minimum"), node.get("maximum"))
    if kind == "number":
        return st.floats(
            node.get("minimum"),
            node.get("maximum"),
            exclude_min=bool(node.get("exclusiveMinimum")),
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "string":
        low, high = node.get("minLength", 0), node.get("maxLength", 10_000)
        base = st.from_regex(node["pattern"]) if "pattern" in node else st.one_of(TEXT, PRINTABLE)
        return base.filter(lambda s: low <= len(s) <= high)
    if kind == "array":
        return st.lists(valid(node["items"]), max_size=min(node.get("maxItems", 3), 3))
    if kind == "object":
        props = node.get("properties") or {}
        required = set(node.get("required") or [])
        return st.fixed_dictionaries(
            {k: valid(v) for k, v in props.items() if k in required},
            optional={k: valid(v) for k, v in props.items() if k not in required},
        )
    raise ValueError(f"no strategy for {node}")


def invalid(node: Schema) -> st.SearchStrategy[Any]:
    """A value that `node` refuses."""
    kind = node.get("type")
    wrong_type = {
        "boolean": st.sampled_from(["yes", 1]),
        "integer": st.sampled_from(["1", 1.5, True]),
        "number": st.sampled_from(["0.5", False]),
        "string": st.sampled_from([7, True, ["x"]]),
        "array": st.sampled_from(["x", 3]),
        "object": st.sampled_from(["x", 3, []]),
    }
    options = [wrong_type[kind]]
    if "enum" in node:
        options.append(TEXT.filter(lambda s: s not in node["enum"]))
    if "minimum" in node:
        low = node["minimum"]
        options.append(st.just(low) if node.get("exclusiveMinimum") else st.just(low - 1))
    if "maximum" in node:
        options.append(st.just(node["maximum"] + 1))
    if kind == "string" and "maxLength" in node:
        options.append(st.just("7" * (node["maxLength"] + 1)))
    if kind == "string" and node.get("minLength"):
        options.append(st.just(""))
    if kind == "string" and "pattern" in node:
        import re

        pattern = re.compile(node["pattern"])
        options.append(
            st.one_of(TEXT, PRINTABLE).filter(lambda s: len(s) > 0 and not pattern.search(s))
        )
    if kind == "array" and "maxItems" in node:
        n = node["maxItems"] + 1
        item = node["items"]
        sample: Any = "x" if item.get("type") == "string" else {"name": "X", "value": ""}
        options.append(st.just([copy.deepcopy(sample) for _ in range(n)]))
    if kind == "object" and node.get("required"):
        props = node["properties"]
        options.append(
            st.fixed_dictionaries(
                {},
                optional={k: valid(v) for k, v in props.items() if k not in node["required"]},
            )
        )
    return st.one_of(options)


def _put(spec: dict[str, Any], path: str, value: Any) -> None:
    """Set `spec.a.b[0].c` in `spec`, making the objects and lists on the way."""
    keys = path.split(".")[1:]
    node: Any = spec
    for key in keys[:-1]:
        name, _, index = key.partition("[")
        if index:
            if not isinstance(node.get(name), list) or not node[name]:
                node[name] = [{"name": "X"}]
            if not isinstance(node[name][0], dict):
                node[name][0] = {"name": "X"}
            node = node[name][0]
        else:
            if not isinstance(node.get(name), dict):
                node[name] = {}
            node = node[name]
    last, _, index = keys[-1].partition("[")
    if index:
        node[last] = [value]
    else:
        node[last] = value


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A generated ScalingStage; half of them with one field broken on purpose."""
    name = draw(NAME.filter(lambda n: len(n) <= 253))
    spec = draw(valid(SPEC_SCHEMA))
    broken: str | None = None
    if draw(st.booleans()):
        path, node = draw(st.sampled_from(FIELDS))
        _put(spec, path, draw(invalid(node)))
        broken = path
    return Case(name, spec, broken)

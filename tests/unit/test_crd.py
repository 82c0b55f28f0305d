"""The CRD is generated from the pydantic models, and the committed copies match them."""

from pathlib import Path

import yaml

from z2m import crd

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crd_matches_what_the_models_generate() -> None:
    committed = (ROOT / "crds" / "scalingstage.yaml").read_text()
    assert committed == crd.render(), "run `make crd` and commit crds/scalingstage.yaml"


def test_the_install_manifest_carries_the_same_crd() -> None:
    assert (ROOT / "manifests" / "00-crd.yaml").read_text() == crd.render()


def test_schema_is_structural_without_refs_or_unions() -> None:
    text = yaml.safe_dump(crd.definition())
    for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title:", "const:"):
        assert forbidden not in text


def test_stage_is_bounded_one_to_seven() -> None:
    stage = crd.schema_of.__globals__["api"].ScalingStageSpec
    schema = crd.schema_of(stage)["properties"]["stage"]
    assert (schema["minimum"], schema["maximum"], schema["type"]) == (1, 7, "integer")


def test_cel_rules_travel_with_their_models() -> None:
    spec = crd.definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]
    messages = [r["message"] for r in spec["x-kubernetes-validations"]]
    assert any("stage 1" in m for m in messages)
    promotion = spec["properties"]["promotion"]["x-kubernetes-validations"]
    assert any("minStage" in r["message"] for r in promotion)


def test_docs_stages_md_is_generated_from_the_catalog() -> None:
    from z2m import cli

    assert (ROOT / "docs" / "stages.md").read_text() == cli.docs()

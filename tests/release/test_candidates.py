"""Candidate ids are values (mixprune.candidates.CandidateId) and every strategy.json records its
three axes (method, family, format) beside the `kind` they are derived into."""

from __future__ import annotations

import pytest

from mixprune.candidates import KINDS, Axes, CandidateId
from mixprune.exporter.quantize import RECIPES
from tests.helpers import load


@pytest.mark.parametrize("text, expected", [
    ("dense", CandidateId("dense")),
    ("mm-magnitude-late_stage", CandidateId("mixmatch", "unstructured", "magnitude", "late_stage")),
    ("base-snip-s80.12", CandidateId("baseline", "unstructured", "snip", target=0.8012)),
    ("st-product-p70", CandidateId("mixmatch", "structured", "product", "p70")),
    ("st-base-taylor-m50.00", CandidateId("baseline", "structured", "taylor", target=0.5)),
    ("st-magnitude-late_stage+int8u", CandidateId("mixmatch", "structured", "magnitude", "late_stage", variant="int8u")),
    ("dense+int8", CandidateId("dense", variant="int8")),
])
def test_an_id_parses_into_its_parts_and_formats_back(text, expected):
    parsed = CandidateId.parse(text)
    assert parsed == expected
    assert str(parsed) == text


@pytest.mark.parametrize("text", ["", "resnet18", "mm-", "mm-magnitude", "st-base-mag-50", "base-mag-m50.00",
                                  "st-base-mag-s50.00", "base-mag-sx", "dense+", "dense+int8+int8u"])
def test_what_is_not_an_id_is_refused_with_the_forms_that_exist(text):
    with pytest.raises(ValueError, match="is not a candidate id .*mm-<signal>-<strategy>"):
        CandidateId.parse(text)


def test_every_candidate_of_a_run_records_axes_that_agree_with_its_id_and_kind(quick_run):
    folders = sorted((quick_run / "candidates").iterdir())
    seen = set()
    for folder in folders:
        strategy = load(folder / "strategy.json")
        cid = CandidateId.parse(folder.name)
        assert str(cid) == folder.name == strategy["cid"]
        axes = Axes(strategy["method"], strategy["family"], strategy["format"])
        assert strategy["kind"] == axes.kind and strategy["kind"] in KINDS
        made = cid.parent or cid  # a variant keeps its parent's method and family
        assert (axes.method, axes.family) == (made.method, made.family)
        assert axes.is_int8 == cid.is_variant
        if axes.is_int8:
            assert axes.format == RECIPES.get(strategy["recipe"]).format
            assert strategy["parent"] == str(cid.parent)
        seen.add((axes.method, axes.family, axes.format))
    # the quick run makes every method and family, fp32 and INT8
    assert {("mixmatch", "unstructured", "fp32"), ("baseline", "unstructured", "fp32"),
            ("mixmatch", "structured", "fp32"), ("baseline", "structured", "fp32"),
            ("mixmatch", "unstructured", "int8-uint8"), ("mixmatch", "structured", "int8-int8"),
            ("dense", "unstructured", "int8-uint8")} <= seen


def test_records_written_before_the_axes_get_them_from_kind():
    old_int8 = {"kind": "int8", "parent_kind": "structured", "mode": "structured",
                "quantization": {"activation_type": "uint8"}}
    assert Axes.of(old_int8) == Axes("mixmatch", "structured", "int8-uint8")
    assert Axes.of({"kind": "baseline", "mode": "structured"}) == Axes("baseline", "structured", "fp32")
    assert Axes.of({"kind": "mixmatch"}) == Axes("mixmatch", "unstructured", "fp32")
    assert Axes.of({"kind": "int8", "parent_kind": "dense", "quantization": {"activation_type": "int8"}}) == \
        Axes("dense", "unstructured", "int8-int8")

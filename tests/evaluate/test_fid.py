"""training.evaluate.fid: FID on arrays, equal to pytorch-fid's CLI on the same images as PNG folders.

The CLI's 2048-d Fréchet distance is a scipy sqrtm (10-60 s on 2 CPUs), so the suite runs the
CLI at 2048-d once (which also checks our eigen path against sqrtm on real, rank-deficient
Inception statistics) and at the other sizes with ``--dims 64`` (same preprocessing and resize,
first Inception block only); everything else compares features, which is cheap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image

from infra.compat import ensure_torchvision
from training.evaluate.inception_weights import (
    FidWeights,
    FidWeightsError,
    load_fid_inception,
    sha256_file,
    weights_path,
)
from infra.object_store import ObjectStore
from infra.settings import Settings, get_settings
from training.evaluate.fid import (
    EXTRACTION_RULE,
    RESIZE_RULE,
    FidResult,
    compute_fid,
    features,
    fold_batchnorm,
    fid_weights,
    inception,
    publish_weights,
    statistics,
    weights_key,
)

REPO = Path(__file__).resolve().parents[2]
BATCH = 8  # the CLI's --batch-size; 12 and 15 images give partial last batches
# `python -m pytorch_fid` itself, preceded only by the torchvision shim it needs on this wheel.
CLI = (
    "from infra.compat import ensure_torchvision; ensure_torchvision(); import runpy; "
    "runpy.run_module('pytorch_fid', run_name='__main__', alter_sys=True)"
)


@pytest.fixture(scope="module")
def weights() -> FidWeights:
    settings = get_settings()
    try:
        return fid_weights(settings)
    except FidWeightsError as exc:
        pytest.fail(
            f"pytorch-fid weights are not provisioned in {settings.torch_home} and cannot be "
            f"converted offline ({exc}); run `make setup`",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def model(weights: FidWeights):
    return inception()


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240611)
    return {
        "gray64": rng.integers(0, 256, (12, 64, 64), dtype=np.uint8),
        "rgb40x52": rng.integers(0, 256, (15, 40, 52, 3), dtype=np.uint8),
        # More sizes (image and set), compared with the CLI at --dims 64:
        "gray299": rng.integers(0, 256, (9, 299, 299), dtype=np.uint8),  # no resize at all
        "gray17x23": rng.integers(0, 256, (30, 17, 23), dtype=np.uint8),  # upsampled 13x
        "gray128": np.clip(rng.normal(128, 40, (41, 128, 128)), 0, 255).astype(np.uint8),
    }


@pytest.fixture(scope="module")
def folders(images: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same pixels as PNG folders (mode L for grayscale, RGB otherwise)."""
    root = tmp_path_factory.mktemp("fid_png")
    out: dict[str, Path] = {}
    for name, arr in images.items():
        folder = root / name
        folder.mkdir()
        for i, img in enumerate(arr):
            Image.fromarray(img).save(folder / f"{i:04d}.png")
        out[name] = folder
    return out


@pytest.fixture(scope="module")
def ours(images: dict[str, np.ndarray], model) -> tuple[FidResult, list[tuple[int, int, float]]]:
    calls: list[tuple[int, int, float]] = []
    result = compute_fid(
        images["gray64"], images["rgb40x52"], batch_size=BATCH,
        progress=lambda *args: calls.append(args),
    )
    return result, calls


def run_cli(folder_a: Path, folder_b: Path, weights: FidWeights, dims: int = 2048) -> float:
    """``python -m pytorch_fid A B`` offline, on our weights; returns its printed FID."""
    torch_home = weights.path.parents[2]
    before = sorted(os.listdir(weights.path.parent))
    env = {
        **os.environ,
        "TORCH_HOME": str(torch_home),
        # Any download attempt fails fast instead of hanging: the file must come from TORCH_HOME.
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    proc = subprocess.run(
        [sys.executable, "-c", CLI, str(folder_a), str(folder_b),
         "--device", "cpu", "--batch-size", str(BATCH), "--dims", str(dims)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"^FID:\s+(\S+)\s*$", proc.stdout, re.MULTILINE)
    assert match, proc.stdout[-2000:]
    assert sorted(os.listdir(weights.path.parent)) == before  # nothing downloaded or added
    assert sha256_file(weights.path) == weights.sha256
    return float(match.group(1))


@pytest.fixture(scope="module")
def cli_fid(folders: dict[str, Path], weights: FidWeights) -> float:
    return run_cli(folders["gray64"], folders["rgb40x52"], weights)


# -- equality with the reference ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["gray64", "rgb40x52"])
def test_features_equal_pytorch_fid_loader(
    name: str, images: dict[str, np.ndarray], folders: dict[str, Path], model
) -> None:
    """Our array path reproduces pytorch-fid's file loader (PIL RGB + ToTensor) feature by
    feature - bit-identical on this machine; the tolerance only allows for other BLAS builds."""
    ensure_torchvision()
    from pytorch_fid.fid_score import get_activations

    files = sorted(folders[name].glob("*.png"))
    ref = get_activations(files, model, batch_size=BATCH, dims=2048, device="cpu", num_workers=0)
    got = features(images[name], model, batch_size=BATCH)
    assert got.dtype == np.float64 and got.shape == ref.shape == (len(files), 2048)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_extraction_rule_features_match_the_clis_nchw_network(
    images: dict[str, np.ndarray], folders: dict[str, Path], model, weights: FidWeights
) -> None:
    """Extraction rule 3 (channels_last, BatchNorm folded) against what the CLI itself runs:
    pytorch-fid's loader into a freshly loaded NCHW network. Not bit-identical (other oneDNN
    kernels, folded affine): measured max |diff| 7e-6–9e-6 on pool3 features of magnitude up to ~5,
    so 1e-4 absolute leaves a margin for other BLAS builds; the FID-level contract is
    test_fid_matches_cli below."""
    ensure_torchvision()
    from pytorch_fid.fid_score import get_activations

    assert "channels_last" in EXTRACTION_RULE and "BatchNorm folded" in EXTRACTION_RULE and "/3" in EXTRACTION_RULE
    first_conv = next(model.parameters())  # (32, 3, 3, 3): the two layouts differ in strides
    assert first_conv.is_contiguous(memory_format=torch.channels_last) and not first_conv.is_contiguous()
    # rule 3: no BatchNorm is left, every BasicConv2d's conv carries the folded bias
    assert not [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    folded = [m.conv for m in model.modules() if hasattr(m, "conv") and hasattr(m, "bn")]
    assert len(folded) == 94 and all(conv.bias is not None for conv in folded)
    nchw = load_fid_inception(weights.path, 2048).eval()  # the CLI's network, pytorch-fid's layout
    assert next(nchw.parameters()).is_contiguous()
    files = sorted(folders["rgb40x52"].glob("*.png"))  # RGB, 40x52: upsampled, odd aspect
    ref = get_activations(files, nchw, batch_size=BATCH, dims=2048, device="cpu", num_workers=0)
    got = features(images["rgb40x52"], model, batch_size=BATCH)
    diff = np.abs(got - ref).max()
    print(f"rule 3 vs NCHW max |diff| {diff:.3g} (max |feature| {np.abs(ref).max():.3g})")
    assert 0 <= diff <= 1e-4


class _ConvBn(torch.nn.Module):
    """The shape of pytorch-fid's BasicConv2d: conv (no bias) → BN → ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.bn = torch.nn.BatchNorm2d(4, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


def test_fold_batchnorm_keeps_the_function_and_refuses_training_mode() -> None:
    torch.manual_seed(0)
    block = _ConvBn()
    with torch.no_grad():  # non-trivial running statistics and affine, as trained weights have
        block.bn.running_mean.uniform_(-1, 1), block.bn.running_var.uniform_(0.5, 2)
        block.bn.weight.uniform_(0.5, 2), block.bn.bias.uniform_(-1, 1)
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batchnorm(block)
    block.eval()
    x = torch.randn(2, 3, 9, 9)
    with torch.inference_mode():
        before = block(x)
        folded = fold_batchnorm(block)
        assert folded is block and isinstance(block.bn, torch.nn.Identity) and block.conv.bias is not None
        torch.testing.assert_close(block(x), before, rtol=1e-5, atol=1e-6)


def test_fid_matches_cli(ours: tuple[FidResult, list], cli_fid: float) -> None:
    result, _ = ours
    diff = abs(result.fid - cli_fid)
    print(f"ours={result.fid!r} cli={cli_fid!r} |diff|={diff:.3g}")
    assert math.isfinite(cli_fid) and cli_fid > 0
    assert diff <= 1e-4 * abs(cli_fid)


@pytest.mark.parametrize(
    ("real", "fake"), [("gray299", "gray17x23"), ("gray128", "rgb40x52"), ("gray17x23", "gray128")]
)
def test_fid_matches_cli_at_several_sizes(
    real: str, fake: str, images: dict[str, np.ndarray], folders: dict[str, Path], weights: FidWeights
) -> None:
    """Image sizes 17x23 to 299x299 (up- and no resize), gray and RGB, 9 to 41 images per set;
    64-d features keep the CLI's sqrtm cheap while exercising the same loader and resize."""
    cli = run_cli(folders[real], folders[fake], weights, dims=64)
    ours = compute_fid(images[real], images[fake], batch_size=BATCH, dims=64)
    print(f"{real} vs {fake}: ours={ours.fid!r} cli={cli!r}")
    assert math.isfinite(cli) and cli > 0
    assert abs(ours.fid - cli) <= 1e-4 * abs(cli)


def test_fid_of_a_set_against_itself_is_zero(images: dict[str, np.ndarray], model) -> None:
    """2048-d, 12 images (rank 11 of 2048): only the √(round-off) floor of the 2037 null
    eigenvalues is left, ~1e-6 of 2 tr Σ (measured -1.47e-5 of 45; pytorch-fid's sqrtm: -1.50e-5)."""
    result = compute_fid(images["gray64"], images["gray64"].copy(), batch_size=BATCH)
    _, sigma = statistics(features(images["gray64"], model, batch_size=BATCH))
    assert abs(result.fid) <= 1e-6 * 2 * np.trace(sigma)


def test_result_fields(ours: tuple[FidResult, list], weights: FidWeights) -> None:
    result, _ = ours
    assert (result.n_real, result.n_fake, result.dims) == (12, 15, 2048)
    assert result.weights_sha256 == sha256_file(weights_path(get_settings().torch_home))
    assert result.weights_uri is None  # no store given
    assert result.resize_rule == RESIZE_RULE and "bilinear 299x299" in RESIZE_RULE
    assert result.extraction_rule == EXTRACTION_RULE
    assert result.method == "eigh" and result.reference_key is None and result.bootstrap == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.fid = 0.0  # type: ignore[misc]


def test_progress_reports_every_batch(ours: tuple[FidResult, list]) -> None:
    _, calls = ours
    assert [c[:2] for c in calls] == [(8, 27), (12, 27), (20, 27), (27, 27)]
    assert all(rate > 0 and math.isfinite(rate) for *_, rate in calls)


# -- the rule itself ----------------------------------------------------------------------------


@hsettings(max_examples=4, deadline=None, derandomize=True)
@given(
    n=st.integers(2, 12),
    height=st.integers(8, 48),
    width=st.integers(8, 48),
    rgb=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_batch_size_does_not_change_features(
    model, n: int, height: int, width: int, rgb: bool, seed: int
) -> None:
    shape = (n, height, width, 3) if rgb else (n, height, width)
    imgs = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    one, sixty_four = features(imgs, model, batch_size=1), features(imgs, model, batch_size=64)
    np.testing.assert_allclose(one, sixty_four, rtol=1e-5, atol=1e-5)


def test_grayscale_is_replicated_to_rgb(images: dict[str, np.ndarray], model) -> None:
    gray = images["gray64"][:3]
    as_rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_array_equal(features(gray, model), features(as_rgb, model))
    np.testing.assert_array_equal(features(gray[..., None], model), features(gray, model))


def test_rejects_inputs_the_reference_cannot_see(model) -> None:
    with pytest.raises(TypeError, match="uint8"):
        features(np.zeros((2, 8, 8), np.float32), model)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        features(np.zeros((2, 8, 8, 4), np.uint8), model)
    with pytest.raises(ValueError, match="batch_size"):
        features(np.zeros((2, 8, 8), np.uint8), model, batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        compute_fid(np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8), np.uint8), batch_size=0)
    with pytest.raises(ValueError, match=">= 2 images"):
        compute_fid(np.zeros((1, 8, 8), np.uint8), np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="dims must be one of"):
        inception(dims=100)


# -- weights in the object store ----------------------------------------------------------------


@pytest.mark.stack
def test_publish_weights_is_idempotent(
    store: ObjectStore, stack: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = fid_weights(stack).sha256
    key = weights_key(sha)
    assert key == f"fid/weights/{sha}.pth"
    store.delete_prefix(key)
    uploads: list[str] = []
    real_upload = store.upload_file

    def counting_upload(path: Path, key: str, **kwargs: object) -> None:
        uploads.append(key)
        real_upload(path, key, **kwargs)

    monkeypatch.setattr(store, "upload_file", counting_upload)
    uri = publish_weights(store)
    assert uri == f"s3://{stack.bucket}/{key}" and uploads == [key]
    assert hashlib.sha256(store.get_bytes(key)).hexdigest() == sha
    assert store.head(key)["Metadata"]["sha256"] == sha
    assert publish_weights(store) == uri
    assert uploads == [key]  # second call found the object and uploaded nothing


@pytest.mark.stack
def test_compute_fid_names_published_weights(
    store: ObjectStore, stack: Settings, images: dict[str, np.ndarray]
) -> None:
    """64-d features keep this cheap (first Inception block, 64x64 sqrtm)."""
    result = compute_fid(
        images["gray64"][:4], images["rgb40x52"][:5], settings=stack, store=store, dims=64
    )
    assert (result.n_real, result.n_fake, result.dims) == (4, 5, 64)
    assert result.weights_sha256 == sha256_file(weights_path(stack.torch_home))
    assert result.weights_uri == store.uri(weights_key(result.weights_sha256))
    assert store.exists(weights_key(result.weights_sha256))
    assert math.isfinite(result.fid)

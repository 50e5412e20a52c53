"""Fréchet Inception Distance on in-memory images, equal to pytorch-fid's CLI on PNG folders.

Why arrays and not folders
--------------------------
``python -m pytorch_fid DIR_A DIR_B`` is the reference, but it reads files; GAN samples live in
memory. This module feeds arrays through the *same* pytorch-fid network, weights and preprocessing,
so a number from :func:`compute_fid` means the same as one from the CLI on the same images saved
losslessly (PNG).

The Fréchet distance itself
---------------------------
``d² = |μ1-μ2|² + tr Σ1 + tr Σ2 - 2 tr √(Σ1 Σ2)``. pytorch-fid takes ``scipy.linalg.sqrtm`` of
the non-symmetric product Σ1Σ2 (Schur decomposition, 10-60 s at 2048-d on 2 CPUs) only to read its
trace. The trace needs just the eigenvalues: Σ1Σ2 is similar to the symmetric PSD matrix
``A Σ2 A`` with ``A = √Σ1`` (``A⁻¹ (A² Σ2) A = A Σ2 A``), so ``tr √(Σ1Σ2) = Σ √λᵢ(A Σ2 A)``, two
``eigh`` calls (~2 s), and ``A`` can be kept with a cached reference so each later FID needs
one. Both methods share one accuracy floor: with n < dims images the product is singular and
the square roots of its round-off-sized eigenvalues add ~1e-8 relative to the trace, for
sqrtm as for eigh (measured against a closed form). Agreement with pytorch-fid's
``calculate_frechet_distance`` is tested (``tests/test_metrics_frechet.py``) as
``|FID_eigh - FID_sqrtm| <= 1e-6 (tr Σ1 + tr Σ2)`` at full and deficient rank, and at 2048-d
on real Inception statistics against the CLI; ``method="sqrtm"`` still calls pytorch-fid's
own function.

The preprocessing rule (pytorch-fid 0.3.0, folder path)
-------------------------------------------------------
pytorch-fid does, per file: ``Image.open(path).convert("RGB")`` (a grayscale image has its one
channel replicated to three), ``torchvision.transforms.ToTensor()`` (uint8 HWC -> float32 CHW,
``/255`` -> [0, 1]), batches with the default collate, and then ``InceptionV3`` itself
(``resize_input=True``, ``normalize_input=True``) resizes to 299x299 with
``F.interpolate(mode="bilinear", align_corners=False)`` and maps to [-1, 1] by ``2x - 1``.

Here, on uint8 arrays ``(N, H, W)`` (grayscale), ``(N, H, W, 1)`` or ``(N, H, W, 3)`` (RGB): the
gray channel is replicated to 3, each batch becomes a contiguous float32 NCHW tensor divided by
255 (the exact ops of ``ToTensor``), and the resize/normalisation is left to ``InceptionV3`` as in
the CLI. Features are pool3 (2048-d), float64, as in ``get_activations``. With the same batch
size they are bit-identical to pytorch-fid's loader on PNGs of the same pixels (tested).

The extraction rule (how the network runs; versioned)
-----------------------------------------------------
:data:`EXTRACTION_RULE` names the memory layout the network runs in. Rule 2 (2026-11-30, issue
30): the cached model's 4-D weights and every input batch are **channels_last** (NHWC). On this
2-CPU VM the 64² → 299² forward runs at 78 % of the fp32 matmul limit that way, against 51 %
in pytorch-fid's NCHW (``benchmarks/inception_forward.py``, ``docs/benchmarks.md``). Another
layout runs other oneDNN kernels, so features differ from the NCHW ones by float round-off
(max 9e-6 absolute on features of magnitude ~5, measured) and the FID from the CLI's by far less
than the 1e-4 relative contract (pinned in ``tests/evaluate/test_fid.py``). Because the numbers
are not bit-identical, the rule string is part of every cached reference's key
(:func:`training.evaluate.reference.reference_spec`) and of every :class:`FidResult`: statistics
extracted under rule 1 (NCHW, every cache written before) are never mixed with rule-2 ones.
Rule 3 (2026-12-01, issue 30) keeps rule 2 and folds each BatchNorm into the convolution before
it (:func:`fold_batchnorm`, torch's ``fuse_conv_bn_eval``): the same affine map computed in one
pass instead of two: 11.7 → 13.3 img/s here, 69.7 % → 78.9 % of the matmul limit in one run of
``benchmarks/inception_forward.py``. Features move by float round-off again (max 8e-6 from the
CLI's network), so it is a new rule and a new cache key.

Only uint8 is accepted: the reference sees 8-bit files, so quantising generator output
(e.g. ``[-1, 1]`` floats) to uint8 is part of the caller's rule, not something to guess here.

Weights: pytorch-fid's Inception file provisioned offline in ``settings.torch_home``
(:mod:`training.evaluate.inception_weights`); :func:`publish_weights` puts a content-addressed copy in the object
store so a result can name exactly which weights produced it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn.functional import adaptive_avg_pool2d

from infra.compat import ensure_torchvision
from infra.cpus import available_cpus
from training.evaluate.inception_weights import (
    STORE_PREFIX,
    FidWeights,
    load_fid_inception,
    provision,
    publish_to_store,
    store_key,
    weights_path,
)
from infra.object_store import ObjectStore
from infra.settings import Settings, get_settings
from infra.errors import BadInput
from infra.progress import CountProgress, bar

if TYPE_CHECKING:
    from pytorch_fid.inception import InceptionV3

__all__ = [
    "EXTRACTION_RULE",
    "FID_DIMS",
    "RESIZE_RULE",
    "WEIGHTS_PREFIX",
    "FidResult",
    "bootstrap_fid",
    "compute_fid",
    "features",
    "fid_from_features",
    "fid_weights",
    "fold_batchnorm",
    "frechet_distance",
    "inception",
    "publish_weights",
    "sqrt_psd",
    "statistics",
    "trace_sqrt_product",
    "weights_key",
]

log = logging.getLogger(__name__)

RESIZE_RULE = (
    "pytorch-fid-0.3.0-folder: uint8 gray->RGB replicate, ToTensor /255 float32, "
    "InceptionV3 bilinear 299x299 align_corners=False, 2x-1"
)
#: Version and text of how Inception runs (module docstring, "The extraction rule"). 1 was
#: pytorch-fid's NCHW; 2 channels_last; 3 also folds each BatchNorm into its convolution.
#: Change the text whenever the numbers may change.
EXTRACTION_RULE = ("synthray-fid-extract/3: channels_last weights and batches, BatchNorm folded into its conv "
                   "(torch fuse_conv_bn_eval), float32, inference_mode")
WEIGHTS_PREFIX = STORE_PREFIX
FID_DIMS = (64, 192, 768, 2048)  # pytorch-fid's InceptionV3 output blocks; 2048 = FID

#: ``progress(done, total, images_per_second)``, called after every batch.


@dataclass(frozen=True)
class FidResult:
    """One FID with what it takes to interpret it: FID is biased in n, so n always travels
    with the value, and the weights hash / reference key say exactly what it was measured on."""

    fid: float
    n_real: int
    n_fake: int
    dims: int
    weights_sha256: str
    weights_uri: str | None  # s3:// URI of the weights object, when a store was given
    resize_rule: str
    reference_key: str | None = None  # object-store key of the cached real statistics, if any
    method: str = "eigh"  # how tr sqrt(S1 S2) was computed: "eigh" or pytorch-fid's "sqrtm"
    ci_low: float | None = None  # percentile bootstrap interval (both sets resampled)
    ci_high: float | None = None
    confidence: float | None = None
    bootstrap: int = 0  # number of bootstrap draws behind the interval; 0 = none
    extraction_rule: str = EXTRACTION_RULE  # how Inception ran (layout); see the module docstring

    def as_dict(self) -> dict:
        return asdict(self)


# -- weights and model ------------------------------------------------------------------------

_lock = threading.Lock()
_weights_cache: dict[tuple[str, int, int], FidWeights] = {}
_model_cache: dict[tuple[str, int, str], InceptionV3] = {}


def _stat_key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def fid_weights(settings: Settings | None = None) -> FidWeights:
    """The provisioned weights (converted offline on first use if missing), with their sha256.

    Cached per file identity (path, size, mtime) so the 95 MB hash is computed once per process.
    Raises :class:`training.evaluate.inception_weights.FidWeightsError` with the fix when they cannot be provisioned.
    """
    home = (settings or get_settings()).torch_home
    path = weights_path(home)
    with _lock:
        key = _stat_key(path)
        if key is not None and key in _weights_cache:
            return _weights_cache[key]
        weights = provision(home)  # hashes the file; converts it first if missing
        key = _stat_key(path)
        if key is not None:
            _weights_cache[key] = weights
        return weights


def inception(
    settings: Settings | None = None, dims: int = 2048, device: str | torch.device = "cpu"
) -> InceptionV3:
    """pytorch-fid's ``InceptionV3`` for ``dims`` features, with the provisioned weights, in eval
    mode and channels_last (:data:`EXTRACTION_RULE`); one instance per (weights sha256, dims,
    device) per process.

    Built through :func:`training.evaluate.inception_weights.load_fid_inception` (strict load of that exact file),
    so no process-wide TORCH_HOME change is needed and nothing is ever downloaded.
    """
    if dims not in FID_DIMS:
        raise BadInput(f"dims must be one of {FID_DIMS} (pytorch-fid's InceptionV3 blocks), got {dims}")
    weights = fid_weights(settings)
    key = (weights.sha256, dims, str(torch.device(device)))
    with _lock:
        model = _model_cache.get(key)
        if model is None:
            model = fold_batchnorm(load_fid_inception(weights.path, dims).to(device).eval())  # EXTRACTION_RULE 3
            model = model.to(memory_format=torch.channels_last)  # EXTRACTION_RULE 2
            _model_cache[key] = model
        return model


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every eval-mode ``BatchNorm2d`` of a ``BasicConv2d`` (conv → BN → ReLU) into its conv,
    in place (:data:`EXTRACTION_RULE` 3): ``W' = W·γ/√(σ²+ε)``, ``b' = β − μ·γ/√(σ²+ε)``, by
    torch's own ``torch.nn.utils.fusion.fuse_conv_bn_eval``; the BN becomes an ``Identity``.

    Same function up to float round-off (pool3 features within 1e-5 of rule 2's), one pass over
    every activation fewer: +16 % img/s at 64² → 299² on this VM (``docs/benchmarks.md``).

    Raises:
        ValueError: the model is in training mode (batch statistics cannot be folded).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model")
    for block in model.modules():
        conv, bn = getattr(block, "conv", None), getattr(block, "bn", None)
        if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
            block.conv, block.bn = fuse_conv_bn_eval(conv, bn), torch.nn.Identity()
    return model


# -- features -----------------------------------------------------------------------------------


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with at most the usable CPUs as intra-op threads (torch may count host cores in a
    container), then restore. ``set_num_threads`` is process-wide: don't extract concurrently."""
    before = torch.get_num_threads()
    want = threads or min(before, available_cpus())
    if want != before:
        torch.set_num_threads(want)
    try:
        yield
    finally:
        if want != before:
            torch.set_num_threads(before)


def _check_images(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise TypeError(
            f"FID images must be uint8 (pytorch-fid reads 8-bit files), got {arr.dtype}; "
            "quantise generator output to uint8 first"
        )
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] == 3)):
        raise BadInput(f"expected (N, H, W), (N, H, W, 1) or (N, H, W, 3), got {arr.shape}")
    if arr.shape[0] == 0:
        raise BadInput("no images")
    return arr


def _to_batch(chunk: np.ndarray) -> torch.Tensor:
    """uint8 (B,H,W) or (B,H,W,3) -> float32 (B,3,H,W) in [0,1]: ``convert("RGB")`` + ToTensor,
    in channels_last memory (:data:`EXTRACTION_RULE`; the values are those of ToTensor)."""
    x = torch.from_numpy(np.ascontiguousarray(chunk))
    x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.to(torch.float32).div(255).contiguous(memory_format=torch.channels_last)


def _counter(total: int, progress: CountProgress | None) -> Callable[[int], None]:
    """Per-batch callback turning batch sizes into ``progress(done, total, img/s)``."""
    done, t0 = 0, time.perf_counter()

    def on_batch(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total, done / max(time.perf_counter() - t0, 1e-9))

    return on_batch


def _extract(
    arr: np.ndarray, model: InceptionV3, batch_size: int, on_batch: Callable[[int], None]
) -> np.ndarray:
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, arr.shape[0], batch_size):
            pred = model(_to_batch(arr[start : start + batch_size]).to(device))[0]
            if pred.shape[2:] != (1, 1):  # dims < 2048: pytorch-fid pools spatially
                pred = adaptive_avg_pool2d(pred, output_size=(1, 1))
            out.append(pred.flatten(1).cpu().numpy().astype(np.float64))
            on_batch(pred.shape[0])
    return np.concatenate(out)


def features(
    images: np.ndarray,
    model: InceptionV3,
    batch_size: int = 50,
    *,
    progress: CountProgress | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Inception features ``(N, dims)`` float64 of uint8 images, by the module's rule.

    Batch size does not change the numbers beyond float noise; it only trades memory for speed.
    Without ``progress`` the pass draws an :func:`infra.progress.bar` (``fid: Inception features``).
    """
    if batch_size < 1:
        raise BadInput(f"batch_size must be >= 1, got {batch_size}")
    arr = _check_images(images)
    with _torch_threads(threads), bar("fid: Inception features", total=arr.shape[0], unit="img") as shown:
        return _extract(arr, model, batch_size, _counter(arr.shape[0], progress or shown.count))


# -- statistics and distance ------------------------------------------------------------------


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance, as ``pytorch_fid.fid_score.calculate_activation_statistics``."""
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise BadInput(f"need at least 2 feature rows for a covariance, got {feats.shape}")
    return np.mean(feats, axis=0), np.cov(feats, rowvar=False)


def sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance by ``eigh``; round-off negative eigenvalues -> 0."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(
    sigma1: np.ndarray, sigma2: np.ndarray, sqrt_sigma1: np.ndarray | None = None
) -> float:
    """``tr √(Σ1 Σ2)`` as ``Σ √λ(A Σ2 A)``, ``A = √Σ1`` (pass ``sqrt_sigma1`` to reuse it)."""
    a = sqrt_psd(sigma1) if sqrt_sigma1 is None else sqrt_sigma1
    m = a @ sigma2 @ a
    eig = np.linalg.eigvalsh((m + m.T) / 2)  # symmetrise away matmul round-off
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def _check_stats(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> None:
    d = mu1.shape[0]
    if mu1.shape != mu2.shape or s1.shape != (d, d) or s2.shape != (d, d):
        raise BadInput(
            f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}"
        )


def frechet_distance(
    mu1: np.ndarray,
    s1: np.ndarray,
    mu2: np.ndarray,
    s2: np.ndarray,
    *,
    method: str = "eigh",
    sqrt_s1: np.ndarray | None = None,
) -> float:
    """Fréchet distance between two Gaussians (see the module docstring for the two methods).

    ``method="sqrtm"`` is pytorch-fid's ``calculate_frechet_distance`` itself (slow, kept as the
    reference); ``sqrt_s1`` lets a cached reference skip one of the two ``eigh`` calls.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    s1, s2 = np.atleast_2d(s1), np.atleast_2d(s2)
    _check_stats(mu1, s1, mu2, s2)
    if method == "sqrtm":
        ensure_torchvision()
        from pytorch_fid.fid_score import calculate_frechet_distance

        return float(calculate_frechet_distance(mu1, s1, mu2, s2))
    if method != "eigh":
        raise BadInput(f"method must be 'eigh' or 'sqrtm', got {method!r}")
    diff = mu1 - mu2
    tr_covmean = trace_sqrt_product(s1, s2, sqrt_s1)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def bootstrap_fid(
    feats_real: np.ndarray,
    feats_fake: np.ndarray,
    draws: int,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of FID, resampling both feature sets with replacement.

    Small n is where FID is least trustworthy, so the interval shows how much of a difference
    between two models is sampling noise. Each draw is a full Fréchet distance (two ``eigh``
    of dims x dims: ~2 s at 2048-d on 2 CPUs), so budget draws accordingly.
    """
    if draws < 2:
        raise BadInput(f"bootstrap draws must be >= 2, got {draws}")
    if not 0 < confidence < 1:
        raise BadInput(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    values = np.empty(draws)
    for i in range(draws):
        real = feats_real[rng.integers(0, len(feats_real), len(feats_real))]
        fake = feats_fake[rng.integers(0, len(feats_fake), len(feats_fake))]
        values[i] = frechet_distance(*statistics(real), *statistics(fake))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


# -- object store -----------------------------------------------------------------------------


def weights_key(sha256: str) -> str:
    return store_key(sha256)


def publish_weights(store: ObjectStore, settings: Settings | None = None) -> str:
    """Upload the provisioned weights to ``fid/weights/<sha256>.pth`` unless already there; the URI.

    ``settings`` default to the store's. See :func:`training.evaluate.inception_weights.publish_to_store`.
    """
    return publish_to_store(store, fid_weights(settings or store.settings))


# -- FID --------------------------------------------------------------------------------------


def fid_from_features(
    feats_real: np.ndarray,
    feats_fake: np.ndarray,
    *,
    method: str = "eigh",
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, tuple[float, float] | None]:
    """FID of two feature sets and, with ``bootstrap`` draws, its percentile interval."""
    fid = frechet_distance(*statistics(feats_real), *statistics(feats_fake), method=method)
    ci = bootstrap_fid(feats_real, feats_fake, bootstrap, confidence, seed) if bootstrap else None
    return fid, ci


def compute_fid(
    real: np.ndarray,
    fake: np.ndarray,
    settings: Settings | None = None,
    batch_size: int = 50,
    progress: CountProgress | None = None,
    *,
    store: ObjectStore | None = None,
    dims: int = 2048,
    device: str | torch.device = "cpu",
    method: str = "eigh",
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> FidResult:
    """FID between two uint8 image sets, equal to pytorch-fid's CLI on the same images as PNGs.

    ``progress(done, total, img/s)`` counts real then fake images (total = both). With ``store``
    the weights are published (see :func:`publish_weights`) and ``weights_uri`` is filled.
    For a real set used more than once, :func:`training.evaluate.reference_statistics` caches
    its statistics instead.
    """
    settings = settings or get_settings()
    if batch_size < 1:
        raise BadInput(f"batch_size must be >= 1, got {batch_size}")
    real, fake = _check_images(real), _check_images(fake)
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise BadInput(f"FID needs >= 2 images per set, got {real.shape[0]} and {fake.shape[0]}")
    weights = fid_weights(settings)
    weights_uri = publish_weights(store, settings) if store is not None else None
    model = inception(settings, dims=dims, device=device)

    total, t0 = real.shape[0] + fake.shape[0], time.perf_counter()
    on_batch = _counter(total, progress)
    with _torch_threads(None):
        feats_real = _extract(real, model, batch_size, on_batch)
        feats_fake = _extract(fake, model, batch_size, on_batch)
    t1 = time.perf_counter()
    fid, ci = fid_from_features(
        feats_real, feats_fake, method=method, bootstrap=bootstrap, confidence=confidence, seed=seed
    )
    log.info(
        "FID %.4f: %d+%d images, features %.1f img/s, Frechet distance (%s) %.1f s",
        fid, real.shape[0], fake.shape[0], total / (t1 - t0), method, time.perf_counter() - t1,
    )
    return FidResult(
        fid=fid,
        n_real=real.shape[0],
        n_fake=fake.shape[0],
        dims=dims,
        weights_sha256=weights.sha256,
        weights_uri=weights_uri,
        resize_rule=RESIZE_RULE,
        method=method,
        ci_low=ci[0] if ci else None,
        ci_high=ci[1] if ci else None,
        confidence=confidence if ci else None,
        bootstrap=bootstrap,
    )

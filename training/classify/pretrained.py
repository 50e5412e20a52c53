"""Pretrained backbone weights from a verified file (ImageNet weights cannot be downloaded here).

A checkpoint is named by its location and its sha256, so a run records exactly which weights it
started from. Loading is by name and shape: a torchvision ImageNet checkpoint fills a preset's
torchvision layers while a new head (another shape or name) keeps its fresh initialisation.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from infra.settings import Settings, get_settings
from infra.errors import BadInput
from training.registry import tags as tag

__all__ = ["FROM_SCRATCH_TAGS", "PretrainedReport", "load_pretrained", "read_verified"]

FROM_SCRATCH_TAGS: dict[str, str] = {tag.PRETRAINED: "none (trained from scratch)"}


@dataclass(frozen=True)
class PretrainedReport:
    """What a checkpoint contributed to a module.

    Args:
        source: where the weights came from (local path or s3:// URI), for the run's tags.
        sha256: the verified digest of the checkpoint file.
        loaded: module keys filled from the checkpoint.
        skipped: checkpoint keys the module lacks or holds in another shape (e.g. an ImageNet head).
        notes: adaptations made while loading (e.g. RGB filters summed for a gray stem).
    """

    source: str
    sha256: str
    loaded: list[str]
    skipped: list[str]
    notes: list[str] = field(default_factory=list)

    def tags(self) -> dict[str, str]:
        """MLflow tags recording the starting weights."""
        tags = {
            tag.PRETRAINED: self.source,
            tag.PRETRAINED_SHA256: self.sha256,
            tag.PRETRAINED_LOADED: str(len(self.loaded)),
            tag.PRETRAINED_SKIPPED: str(len(self.skipped)),
        }
        if self.notes:
            tags[tag.PRETRAINED_NOTES] = "; ".join(self.notes)
        return tags


def _read(source: str, settings: Settings | None) -> bytes:
    if source.startswith("s3://"):
        from infra.object_store import ObjectNotFoundError, ObjectStore

        settings = settings or get_settings()
        bucket, _, key = source.removeprefix("s3://").partition("/")
        if bucket != settings.bucket:
            raise BadInput(f"--pretrained {source}: bucket {bucket!r} is not the configured bucket "
                             f"{settings.bucket!r}")
        try:
            return ObjectStore(settings).get_bytes(key)
        except ObjectNotFoundError:
            raise BadInput(f"--pretrained {source}: no such object") from None
    try:
        return Path(source).expanduser().read_bytes()
    except OSError as exc:
        raise BadInput(f"--pretrained {source}: cannot read the file ({exc.strerror or exc})") from None


def read_verified(source: str, sha256: str, settings: Settings | None = None) -> bytes:
    """Bytes of ``source`` (a local path or s3://bucket/key), checked against ``sha256``.

    Args:
        source: the checkpoint; an s3 URI must be in the configured bucket, the only one we hold keys for.
        sha256: the expected hex digest; a mismatch raises, so a run never starts from unknown weights.
        settings: object-store settings for s3 sources; defaults to the process settings.
    """
    data = _read(source, settings)
    got = hashlib.sha256(data).hexdigest()
    if got != sha256.strip().lower():
        raise BadInput(f"--pretrained {source}: sha256 {got} does not match the expected {sha256}")
    return data


def _gray_stem(src: torch.Tensor, dst: torch.Tensor) -> bool:
    """Whether ``src`` is an RGB conv kernel that sums into the gray kernel ``dst``."""
    return src.ndim == 4 and dst.ndim == 4 and src.shape[1] == 3 and dst.shape[1] == 1 \
        and src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:]


_last: tuple[tuple[str, str], dict] | None = None  # the last checkpoint read, keyed by (source, sha256)


def _checkpoint(source: str, sha256: str, settings: Settings | None) -> dict:
    """The verified, parsed state dict; kept for the next call because every run of an
    experiment (cells × seeds, one worker process) starts from the same weights."""
    global _last
    if _last is not None and _last[0] == (source, sha256):
        return _last[1]
    data = read_verified(source, sha256, settings)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise BadInput(f"--pretrained {source}: not a torch state dict ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BadInput(f"--pretrained {source}: expected a state dict, got {type(state).__name__}")
    _last = ((source, sha256), state)
    return state


def load_pretrained(module: nn.Module, source: str, sha256: str, settings: Settings | None = None) -> PretrainedReport:
    """Load every checkpoint tensor whose name and shape match ``module``; report what was used.

    Args:
        module: the freshly built backbone; unmatched parameters (e.g. a new head) stay as initialised.
        source: a state dict file, plain or as ``{"state_dict": ...}`` (``module.`` prefixes are stripped).
        sha256: expected digest of the file (see :func:`read_verified`).
        settings: object-store settings for s3 sources.

    An RGB conv kernel meeting a 1-channel one of otherwise equal shape (ImageNet conv1 into
    resnet18-small) is summed over its input channels, the usual gray adaptation. Raises
    ValueError when no parameter matches: the checkpoint is for another architecture.
    """
    state = _checkpoint(source, sha256, settings)
    target = module.state_dict()
    matched: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    notes: list[str] = []
    for name, tensor in state.items():
        key = name.removeprefix("module.")
        dst = target.get(key)
        if not isinstance(tensor, torch.Tensor) or dst is None:
            skipped.append(key)
        elif tensor.shape == dst.shape:
            matched[key] = tensor
        elif _gray_stem(tensor, dst):
            matched[key] = tensor.sum(dim=1, keepdim=True)
            notes.append(f"{key}: RGB {tuple(tensor.shape)} summed over input channels to {tuple(dst.shape)}")
        else:
            skipped.append(key)
    if not matched.keys() & dict(module.named_parameters()).keys():
        raise BadInput(f"--pretrained {source}: no parameter matches the module by name and shape "
                         "(a checkpoint of another architecture?)")
    module.load_state_dict(matched, strict=False)
    return PretrainedReport(source=source, sha256=sha256.strip().lower(), loaded=list(matched), skipped=skipped,
                            notes=notes)

"""Make the registry's torchvision 0.28.0 importable on the CPU build of torch 2.13.0.

Why this exists
---------------
The only torchvision 0.28.0 wheel the package registry serves is a CUDA build: its compiled
extension ``torchvision/_C.so`` links ``libc10_cuda.so``/``libcudart``, which the CPU torch
wheel does not ship. torchvision swallows that ``OSError`` (``extension._has_ops()`` becomes
False), but ``torchvision/_meta_registrations.py`` then calls
``torch.library.register_fake("torchvision::nms")`` unconditionally, so ``import torchvision``
dies with ``RuntimeError: operator torchvision::nms does not exist``. pytorch-fid imports
torchvision, so FID is unusable too.

What :func:`ensure_torchvision` does, and only when the real extension cannot be loaded:

1. Defines every ``torchvision::*`` operator the compiled extension would have defined, with the
   extension's own schemas (read from ``_C.so`` and matched against the signatures used in
   ``_meta_registrations.py`` / ``_autograd_registrations.py``), through one
   ``torch.library.Library("torchvision", "DEF")``. CPU kernels: ``nms`` (and ``qnms``) are a
   real greedy NMS written with torch ops; ``_cuda_version`` returns -1 (no CUDA); every other
   op (RoI align/pool, PS-RoI, deform_conv2d, box_iou_rotated, their backwards) raises
   ``NotImplementedError`` with a message naming the cause - synthray never calls them.
2. Makes ``torchvision.extension._has_ops()`` report True, so torchvision behaves exactly as
   with a loaded extension: its meta/fake, autograd and autocast registrations run against our
   schemas and ``torchvision.ops.nms`` dispatches to our kernel instead of raising
   "Couldn't load custom C++ ops". This is done by a one-shot import hook on
   ``torchvision.extension`` that patches the module right after it executes; the hook removes
   itself on first use and matches no other module.

Detection must not import torchvision: a failed ``import torchvision`` leaves
``torchvision.extension`` (with ``_has_ops() == False``) cached in ``sys.modules``. So we locate
``_C`` with ``importlib.util.find_spec`` + the same ``FileFinder`` lookup torchvision uses and
call ``torch.ops.load_library`` on it, catching the same ``OSError``/``ImportError`` torchvision
catches. When that load succeeds (a CUDA machine, or a CPU torchvision build) nothing is shimmed;
loading early is harmless because torchvision's own later load of the same path is a no-op.

Usage: ``from infra.compat import ensure_torchvision; ensure_torchvision()`` before importing
torchvision or pytorch_fid, in every process that imports them (Ray workers, subprocesses): the
registrations live in the interpreter. Idempotent; returns whether the shim was applied.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

__all__ = ["SHIMMED_OPS", "ensure_torchvision", "nms_reference"]

# Schemas of torchvision 0.28.0's compiled ops (strings in _C.so).
_SCHEMAS: dict[str, str] = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align": (
        "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor"
    ),
    "_roi_align_backward": (
        "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
        "int sampling_ratio, bool aligned) -> Tensor"
    ),
    "qroi_align": (
        "qroi_align(Tensor input, Tensor rois, float input_scale, int input_zero_point, "
        "float rois_scale, int rois_zero_point, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor"
    ),
    "ps_roi_align": (
        "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)"
    ),
    "_ps_roi_align_backward": (
        "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
        "float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
        "SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor"
    ),
    "roi_pool": (
        "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width) -> (Tensor, Tensor)"
    ),
    "_roi_pool_backward": (
        "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
        "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
        "SymInt height, SymInt width) -> Tensor"
    ),
    "ps_roi_pool": (
        "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width) -> (Tensor, Tensor)"
    ),
    "_ps_roi_pool_backward": (
        "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
        "float spatial_scale, SymInt pooled_height, SymInt pooled_width, SymInt batch_size, "
        "SymInt channels, SymInt height, SymInt width) -> Tensor"
    ),
    "deform_conv2d": (
        "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
        "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
        "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> Tensor"
    ),
    "_deform_conv2d_backward": (
        "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, "
        "Tensor mask, Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, "
        "SymInt dilation_h, SymInt dilation_w, SymInt groups, SymInt offset_groups, "
        "bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
    "box_iou_rotated": "box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor",
    "_cuda_version": "_cuda_version() -> int",
}
SHIMMED_OPS: tuple[str, ...] = tuple(f"torchvision::{name}" for name in _SCHEMAS)

_lock = threading.Lock()
_applied: bool | None = None  # None: not decided yet in this process
_library: torch.library.Library | None = None  # kept alive: a collected Library drops its ops


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with torchvision's CPU semantics (keep boxes by descending score; drop a box
    whose IoU with a kept one is ``> iou_threshold``). Returns int64 indices into ``boxes``."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    x1, y1, x2, y2 = boxes[order].unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    suppressed = torch.zeros(order.numel(), dtype=torch.bool, device=boxes.device)
    keep: list[int] = []
    for i in range(order.numel()):
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2[i + 1 :]) - torch.maximum(x1[i], x1[i + 1 :])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[i + 1 :]) - torch.maximum(y1[i], y1[i + 1 :])).clamp(min=0)
        inter = w * h
        suppressed[i + 1 :] |= inter / (areas[i] + areas[i + 1 :] - inter) > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def _qnms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Quantized NMS: torchvision passes ``int_repr()`` tensors; IoU is scale-invariant."""
    return nms_reference(dets.double(), scores.double(), iou_threshold)


def _cuda_version() -> int:
    return -1  # what the real extension reports without CUDA


def _unsupported(name: str) -> Callable[..., Any]:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"torchvision::{name} is not available: the installed torchvision wheel is a CUDA "
            "build whose C++ extension cannot load on CPU torch, and infra.compat only provides "
            "CPU kernels for nms/qnms."
        )

    return kernel


def _extension_path() -> Path | None:
    """Path of torchvision's ``_C`` extension, found without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg_dir = next(iter(spec.submodule_search_locations))
    finder = importlib.machinery.FileFinder(
        pkg_dir,
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
    )
    ext = finder.find_spec("_C")
    return Path(ext.origin) if ext is not None and ext.origin else None


def _extension_loads() -> bool:
    """Whether torchvision's own extension loads here (the check torchvision itself makes)."""
    path = _extension_path()
    if path is None:
        return False
    try:
        torch.ops.load_library(str(path))
    except (OSError, ImportError):
        return False
    return True


def _register_ops() -> torch.library.Library:
    lib = torch.library.Library("torchvision", "DEF")
    for name, schema in _SCHEMAS.items():
        lib.define(schema)
    lib.impl("nms", nms_reference, "CPU")
    lib.impl("qnms", _qnms, "CPU")
    # No tensor arguments, so no backend key to dispatch on: register for every key.
    lib.impl("_cuda_version", _cuda_version, "CompositeExplicitAutograd")
    for name in _SCHEMAS:
        if name not in {"nms", "qnms", "_cuda_version"}:
            lib.impl(name, _unsupported(name), "CPU")
    return lib


def _has_ops() -> bool:
    """Replacement for ``torchvision.extension._has_ops``: the shim provides the ops."""
    return True


def _patch_extension(module: ModuleType) -> None:
    module._has_ops = _has_ops  # type: ignore[attr-defined]


class _PatchingLoader(importlib.abc.Loader):
    """Delegates to the real loader, then patches the freshly executed module."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        _patch_extension(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... for tracebacks
        return getattr(self._inner, name)


class _ExtensionHook(importlib.abc.MetaPathFinder):
    """One-shot finder that only intercepts ``torchvision.extension``."""

    target = "torchvision.extension"

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.target:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader)  # type: ignore[arg-type]
                return spec
        return None


def ensure_torchvision() -> bool:
    """Register CPU stand-ins for torchvision's C++ ops if (and only if) its extension can't load.

    Call before importing torchvision or pytorch_fid. Returns True when the shim is in effect,
    False when torchvision is absent or its real extension works; later calls return the same
    answer without doing anything.
    """
    global _applied, _library
    with _lock:
        if _applied is not None:
            return _applied
        if importlib.util.find_spec("torchvision") is None or _extension_loads():
            _applied = False
            return False
        if hasattr(torch.ops.torchvision, "nms"):  # someone already provides the ops
            _applied = False
            return False
        _library = _register_ops()
        loaded = sys.modules.get(_ExtensionHook.target)
        if loaded is not None:  # a failed earlier import left the module cached
            _patch_extension(loaded)
        else:
            sys.meta_path.insert(0, _ExtensionHook())
        _applied = True
        return True

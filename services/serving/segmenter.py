"""The ``Segmenter`` deployment of the Serve app: registered segmenters over HTTP (``POST /v1/segment``).

It is the :class:`~services.serving.classifier.Classifier` deployment for another registry kind:
the same fresh resolution of ``NAME@alias`` / ``NAME/VERSION`` on every request, the same
refusal of versions of another kind (a classifier or a generator is a 422 naming ``model``),
the same ``@serve.multiplexed`` cache keyed by the concrete ``models:/NAME/V``, the same image
checks (a 422 naming ``images[i]``). Only the loader and the answer differ: a uint8 label map
per image, at the image's own size, returned as a PNG (values = class indices, see
``classes``) with per-class pixel counts.

Uploaded images are segmented in memory only and never persisted.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import serve

from infra.errors import SynthrayError
from services.serving.classifier import Classifier, ClassifierRef
from training.registry.tags import SEGMENTER_KIND

if TYPE_CHECKING:
    from training.nets.segmenter import ImageSegmenter

__all__ = ["Segmenter", "label_map_png"]


def label_map_png(labels: np.ndarray) -> bytes:
    """Deterministic PNG of a uint8 label map (8-bit grayscale; pixel value = class index)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8)).save(buf, format="PNG", optimize=False,
                                                                       compress_level=6)
    return buf.getvalue()


@serve.deployment
class Segmenter(Classifier.func_or_class):
    """Registry lookups, segmenter cache and segmentation; see the module docstring.

    Args: as :class:`~services.serving.classifier.Classifier`.
    """

    kind = SEGMENTER_KIND
    classify = None  # a segmenter answers ``segment`` only

    def _load(self, uri: str) -> ImageSegmenter:
        from training.registry.segmenters import load_segmenter

        return load_segmenter(uri, self._settings)

    async def segment(self, model: str | ClassifierRef, images: Sequence[np.ndarray]
                      ) -> list[dict[str, Any]] | SynthrayError:
        """Label maps of uint8 images under ``model``.

        Args:
            model: ``NAME@alias`` / ``NAME/VERSION``, or a resolved ref (then call with
                ``.options(multiplexed_model_id=ref.uri)``).
            images: uint8 ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` images of any size.

        Returns:
            One ``{"height", "width", "counts": {class: pixels}, "mask_png": base64 PNG, "model",
            "version"}`` per image, in order, or the error that says why not.
        """
        return await self._answer(model, images, self._segment)

    @staticmethod
    def _segment(segmenter: ImageSegmenter, ref: ClassifierRef, images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        names = segmenter.class_names
        out = []
        for labels in segmenter.predict(list(images)):
            counts = np.bincount(labels.ravel(), minlength=len(names))
            out.append({"height": int(labels.shape[0]), "width": int(labels.shape[1]),
                        "counts": {c: int(n) for c, n in zip(names, counts)},
                        "mask_png": base64.b64encode(label_map_png(labels)).decode(),
                        "model": ref.name, "version": ref.version})
        return out

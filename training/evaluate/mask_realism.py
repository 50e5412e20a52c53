"""Mask realism of an image + mask generator: does each generated mask match its generated image?

A paired generator draws the image and its label map together (issue 26). Nothing in FID or
KID looks at the mask, so a generator can draw a plausible knee beside a mask of somewhere
else. Mask realism asks a registered segmenter (trained on real pairs) to read each generated
image and scores its prediction against the generated mask with the project's segmentation
metrics (:func:`training.evaluate.segmentation.segmentation_metrics`: MONAI ``DiceMetric``
per image and foreground class, empty-class convention
:data:`~training.evaluate.segmentation.EMPTY_CLASS_CONVENTION`, 95 % bootstrap CIs over images).
Per-class Dice is symmetric in prediction and truth, so which side is called "truth" (here the
generated mask) changes nothing but the empty-class convention's direction.

A low score means the mask does not match its image, or the segmenter fails on synthetic
images; the segmenter's own test Dice on real images (shown beside it on the card) tells the
two apart. Samples: ``n`` pairs of ``generate_pairs(n, seed)`` (default 64, the registration's
evaluation seed), the same arguments giving the same number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from infra.errors import BadInput
from training.evaluate.segmentation import segmentation_metrics

if TYPE_CHECKING:
    from training.nets.sampler import GeneratorSampler
    from training.nets.segmenter import ImageSegmenter

__all__ = ["DEFAULT_N", "MaskRealism", "mask_realism"]

DEFAULT_N = 64  # pairs scored: a 95 % CI of a few hundredths on the phantom, a second of U-Net inference on CPU


@dataclass(frozen=True)
class MaskRealism:
    """Dice of generated masks against a segmenter's reading of the generated images.

    Attributes:
        metrics: :func:`segmentation_metrics`'s flat dict (``dice``, ``dice/{class}``, CIs, IoU, ``n_images``).
        images, masks, predictions: the uint8 ``(n, H, W)`` arrays scored (for overlays and hand checks).
        seed: the sampling seed.
    """

    metrics: dict
    images: np.ndarray
    masks: np.ndarray
    predictions: np.ndarray
    seed: int

    @property
    def dice(self) -> float:
        return self.metrics["dice"]


def mask_realism(sampler: GeneratorSampler, segmenter: ImageSegmenter, n: int = DEFAULT_N, seed: int = 0
                 ) -> MaskRealism:
    """Score ``n`` generated pairs (see the module docstring).

    Args:
        sampler: a paired generator (``sampler.paired``); a conditional one cycles its classes.
        segmenter: labels exactly ``sampler.mask_classes``, in the same order.
        n: pairs to generate (at least 1).
        seed: sampling seed (the bootstrap is seeded with it too).

    Raises:
        BadInput: the generator emits no masks (field ``model``), the classes differ (field
            ``segmenter``), or ``n`` < 1 (field ``n``).
    """
    if not sampler.paired:
        raise BadInput("mask realism needs an image + mask generator; this one emits images only", field="model")
    if list(segmenter.class_names) != list(sampler.mask_classes):
        raise BadInput(f"the segmenter labels {segmenter.class_names}, the generator's masks "
                       f"{sampler.mask_classes}: they must be the same classes in the same order", field="segmenter")
    if n < 1:
        raise BadInput(f"n must be at least 1, got {n}", field="n")
    images, masks = sampler.generate_pairs(n, seed=seed)
    predictions = np.stack(segmenter.predict(list(images)))
    metrics = segmentation_metrics(predictions, masks, sampler.mask_classes, seed=seed)
    return MaskRealism(metrics, images, masks, predictions, seed)

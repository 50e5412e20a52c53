"""Radiograph classifiers in one self-contained, servable wrapper.

:class:`ImageClassifier` is what gets registered in MLflow and served: it carries its class
names, input size and preprocessing, so ``predict_proba(uint8 images)`` needs nothing but
the pickled object (no config, no dataset). Any backbone mapping ``(N, C, S, S)`` in
``[-1, 1]`` to ``(N, K)`` logits fits, so a later ResNet/DenseNet is wrapped the same way as
the :class:`SmallCNN` served until real classifiers are trained.

Preprocessing (fixed, so a version classifies the same pixels the same way everywhere):
uint8 grayscale ``(H, W)`` or RGB ``(H, W, 3)`` → grayscale by ITU-R 601-2 luma (PIL's
``convert("L")`` weights) → float ``[0, 255]`` → ``F.interpolate(bilinear, antialias=True)``
to ``image_size × image_size`` (aspect ratio is not kept: radiographs in the catalog are
square) → ``x / 127.5 - 1`` → gray replicated to ``in_channels``. Matching the GANs' output
range ``[-1, 1]`` lets the same network score real and synthetic images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from infra.errors import BadInput

__all__ = ["HEADS", "ImageClassifier", "SmallCNN", "to_grayscale"]

HEADS = ("softmax", "sigmoid", "multilabel")

# PIL's convert("L") weights (ITU-R 601-2 luma), so RGB uploads and RGB arrays agree.
_LUMA = (0.299, 0.587, 0.114)
_CHUNK = 64  # images per forward pass in predict_proba (bounded memory)


class SmallCNN(nn.Module):
    """(Conv3×3 → BatchNorm → ReLU → MaxPool2) stages, global average pool, dropout, linear.

    A few tens of thousands of parameters: enough to serve and test the classification path
    on CPU; real classifiers replace it as the backbone of :class:`ImageClassifier`.

    Args:
        in_channels: input channels (1 for grayscale radiographs).
        num_classes: number of output logits.
        channels: output channels of each stage; every stage halves the spatial size.
        dropout: dropout probability before the linear head.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (16, 32, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise BadInput(f"num_classes must be >= 1, got {num_classes}")
        if not channels:
            raise BadInput("channels must name at least one stage")
        stages: list[nn.Module] = []
        in_ch = in_channels
        for out_ch in channels:
            stages += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_ch = out_ch
        self.features = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_ch, num_classes))
        self.in_channels, self.num_classes = in_channels, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """float32 ``(H, W)`` in [0, 255] of a uint8 ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` image."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {arr.dtype}")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3))):
        raise BadInput(f"an image must be (H, W), (H, W, 1) or (H, W, 3), got {arr.shape}")
    if 0 in arr.shape[:2]:
        raise BadInput(f"an image must not be empty, got {arr.shape}")
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return arr.astype(np.float32) @ np.asarray(_LUMA, dtype=np.float32)
    return arr.reshape(arr.shape[:2]).astype(np.float32)


class ImageClassifier(nn.Module):
    """A backbone with its classes and preprocessing; ``predict_proba`` takes raw uint8 images.

    Args:
        backbone: maps ``(N, in_channels, image_size, image_size)`` in [-1, 1] to ``(N, K)`` logits.
        class_names: the K class names, in logit order.
        image_size: side of the square input the backbone was trained on.
        in_channels: channels the backbone expects (gray is replicated; 3 for ImageNet-style nets).
        head: ``softmax`` (K logits), ``sigmoid`` (binary, one logit: the knee paper's VGG16) or
            ``multilabel`` (K independent sigmoids: DenseNet's multi-label head).
    """

    def __init__(self, backbone: nn.Module, class_names: Sequence[str], image_size: int = 64,
                 in_channels: int = 1, head: str = "softmax") -> None:
        super().__init__()
        if len(class_names) < 1 or len(set(class_names)) != len(class_names):
            raise BadInput(f"class_names must be non-empty and unique, got {list(class_names)}")
        if image_size < 1 or in_channels < 1:
            raise BadInput(f"image_size and in_channels must be >= 1, got {image_size}, {in_channels}")
        self.backbone = backbone.eval()
        self.class_names = [str(c) for c in class_names]
        self.image_size = int(image_size)
        self.in_channels = int(in_channels)
        if head not in HEADS:
            raise BadInput(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        if head == "sigmoid" and len(self.class_names) != 2:
            raise BadInput(f"a sigmoid head is binary (one logit, two classes), got {len(self.class_names)} classes")
        self.head = head

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_outputs(self) -> int:
        """Logits the backbone produces: one for a binary sigmoid head, else one per class."""
        return 1 if self._head == "sigmoid" else self.num_classes

    @property
    def _head(self) -> str:
        return getattr(self, "head", "softmax")  # versions pickled before heads existed are softmax

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` probabilities of logits: softmax; ``[1 - p, p]`` for a binary sigmoid;
        independent per-class sigmoids for a multi-label head (rows need not sum to 1)."""
        if self._head == "softmax":
            return torch.softmax(logits.double(), dim=1)
        p = torch.sigmoid(logits.double())
        return torch.cat([1 - p, p], dim=1) if self._head == "sigmoid" else p

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The head's training loss: cross-entropy (softmax) or binary cross-entropy (sigmoid heads).

        A multi-label head trains on multi-hot targets ``(N, K)`` (1 / 0, and -1 for a finding
        masked out of the loss: CheXpert's uncertain labels under ``--uncertain ignore``): the
        per-image loss is the sum over the known findings of BCE-with-logits. Class indices
        ``(N,)`` on a multi-label head are single-label data, one finding per image.
        """
        if self._head == "softmax":
            return F.cross_entropy(logits, labels, reduction=reduction)
        if self._head == "sigmoid":
            return F.binary_cross_entropy_with_logits(logits[:, 0], labels.float(), reduction=reduction)
        if labels.ndim == 2:
            known = (labels >= 0).to(logits.dtype)
            targets = labels.clamp(min=0).to(logits.dtype)
        else:
            targets, known = F.one_hot(labels, self.num_classes).to(logits.dtype), torch.ones_like(logits)
        per_image = (F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * known).sum(1)
        return {"mean": per_image.mean, "sum": per_image.sum}.get(reduction, lambda: per_image)()

    def preprocess(self, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """float32 ``(N, in_channels, S, S)`` in [-1, 1] of uint8 images (see the module docstring).

        ``images`` is a stacked ``(N, H, W)`` / ``(N, H, W, 3)`` array or a sequence of single
        images, which may differ in size (each is resized on its own).
        """
        if isinstance(images, np.ndarray) and images.ndim not in (3, 4):
            raise BadInput(f"a stacked array must be (N, H, W) or (N, H, W, 3), got {images.shape}; "
                             "pass a single image as [image]")
        items = list(images)
        if not items:
            raise BadInput("no images")
        size = (self.image_size, self.image_size)
        out = []
        for item in items:
            x = torch.from_numpy(to_grayscale(item))[None, None]
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            out.append(x)
        batch = torch.cat(out).clamp_(0, 255).div_(127.5).sub_(1)
        return batch.expand(-1, self.in_channels, -1, -1).contiguous() if self.in_channels != 1 else batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of preprocessed input (what MLflow's pyfunc signature describes)."""
        return self.backbone(x)

    @torch.inference_mode()
    def predict_proba(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities ``(N, K)`` float64 of uint8 images (see :meth:`probabilities`)."""
        self.eval()
        x = self.preprocess(images)
        logits = torch.cat([self.backbone(x[i : i + _CHUNK]) for i in range(0, len(x), _CHUNK)])
        if logits.shape != (len(x), self.num_outputs):
            raise RuntimeError(f"backbone returned {tuple(logits.shape)}, expected ({len(x)}, {self.num_outputs})")
        return self.probabilities(logits).numpy()

    def predict(self, images: np.ndarray | Sequence[np.ndarray]) -> list[str]:
        """The most probable class name of each image."""
        return [self.class_names[i] for i in self.predict_proba(images).argmax(axis=1)]

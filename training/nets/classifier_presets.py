"""Classifier backbones of the reference papers, built from torchvision's model definitions.

A :class:`ClassifierPreset` fixes what a paper fixes (architecture, input size, head, frozen
layers) and records our choices where the paper is silent (optimizer settings, marked
"[choice]" in the description). ``build`` returns a plain torchvision/torch module mapping
``(N, in_channels, S, S)`` in ``[-1, 1]`` to ``(N, num_outputs)`` logits, so it pickles without
synthray classes and fits :class:`training.nets.classifier.ImageClassifier` as its backbone.

Heads: ``head_for`` decides per task. ``"sigmoid"`` is a single logit for a binary task (BCE),
``"softmax"`` is K logits (cross-entropy), ``"multilabel"`` is K independent sigmoid logits.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Literal

from torch import nn

from training.nets.classifier import SmallCNN
from infra.errors import BadInput

__all__ = ["CLASSIFIER_PRESETS", "ClassifierPreset", "get_classifier_preset", "parameter_counts"]

Head = Literal["sigmoid", "softmax", "multilabel"]

# torchvision vgg16().features: block 5 is the last three convs (24, 26, 28) and its pool (30).
_VGG16_BLOCK5_START = 24
_VGG16_FLAT = 512 * 6 * 6  # 210 → 105 → 52 → 26 → 13 → 6 (floor-mode pools, as Keras' "valid")


def _torchvision_models() -> ModuleType:
    """torchvision.models, imported lazily behind the CPU op shim (see infra.compat)."""
    from infra.compat import ensure_torchvision

    ensure_torchvision()
    from torchvision import models

    return models


def _vgg16_knee(outputs: int) -> nn.Module:
    """VGG16 without its top, Flatten, Dense 256 + ELU, Dense ``outputs``; blocks 1–4 frozen."""
    features = _torchvision_models().vgg16().features
    for layer in features[:_VGG16_BLOCK5_START]:
        layer.requires_grad_(False)
    head = nn.Sequential(nn.Flatten(), nn.Linear(_VGG16_FLAT, 256), nn.ELU(), nn.Linear(256, outputs))
    # "features.*" keys match torchvision's ImageNet checkpoint, so training.classify.pretrained loads it as is.
    return nn.Sequential(OrderedDict(features=features, head=head))


def _resnet18_small(outputs: int) -> nn.Module:
    """ResNet18 on 1×64×64: gray stem, last stage at stride 1 (4×4 map before average pooling)."""
    net = _torchvision_models().resnet18(num_classes=outputs)
    old = net.conv1
    net.conv1 = nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's ResNet init
    block = net.layer4[0]
    block.conv1.stride = (1, 1)
    block.downsample[0].stride = (1, 1)
    return net


def _densenet(name: str) -> Callable[[int], nn.Module]:
    def build(outputs: int) -> nn.Module:
        return getattr(_torchvision_models(), name)(num_classes=outputs)

    return build


def _small_cnn(outputs: int) -> nn.Module:
    return SmallCNN(in_channels=1, num_classes=outputs)


@dataclass(frozen=True)
class ClassifierPreset:
    """One backbone with its input, head and training settings.

    Args:
        name: registry key (the ``--classifier`` value).
        image_size: side of the square input the net is trained on; preprocessing resizes to it.
        in_channels: 1 for gray nets; 3 for ImageNet-shaped nets, which get the gray image replicated.
        head: the paper's head. "sigmoid" presets use one BCE logit when binary and fall back to
            softmax for K > 2 classes; "softmax" presets always emit K logits.
        lr, batch_size, epochs, weight_decay: Adam settings; see ``description`` for which are choices.
        paper: the paper and table the architecture follows, for the model card.
        description: what is built and which settings are ours rather than the paper's.
        factory: builds the module for a number of output logits.
        supports_multilabel: whether a multi-label (K sigmoid logits) head is meaningful for the preset.
    """

    name: str
    image_size: int
    in_channels: int
    head: Literal["sigmoid", "softmax"]
    lr: float
    batch_size: int
    epochs: int
    weight_decay: float
    paper: str
    description: str
    factory: Callable[[int], nn.Module] = field(repr=False, compare=False)
    supports_multilabel: bool = False

    def head_for(self, num_classes: int, multilabel: bool = False) -> Head:
        """The head for a task: "sigmoid" (one logit), "softmax" (K logits) or "multilabel" (K logits)."""
        if num_classes < 2:
            raise BadInput(f"{self.name}: num_classes must be >= 2, got {num_classes}")
        if multilabel:
            if not self.supports_multilabel:
                raise BadInput(f"{self.name} has no multi-label head; use a densenet preset")
            return "multilabel"
        if self.head == "sigmoid" and num_classes == 2:
            return "sigmoid"
        return "softmax"

    def num_outputs(self, num_classes: int, multilabel: bool = False) -> int:
        """Logits the backbone emits: 1 for a binary sigmoid head, else ``num_classes``."""
        return 1 if self.head_for(num_classes, multilabel) == "sigmoid" else num_classes

    def build(self, num_classes: int, multilabel: bool = False) -> nn.Module:
        """The backbone, randomly initialised, with its frozen parameters at ``requires_grad=False``."""
        return self.factory(self.num_outputs(num_classes, multilabel))


def parameter_counts(module: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts of ``module``."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


_PRESETS = (
    ClassifierPreset(
        name="vgg16-knee", image_size=210, in_channels=3, head="sigmoid",
        lr=1e-4, batch_size=32, epochs=22, weight_decay=0.0,
        paper="000 knee OA (Table 6)",
        description="torchvision VGG16 features (no top) → Flatten 18,432 → Dense 256 ELU → sigmoid logit "
                    "(softmax for K > 2); blocks 1–4 frozen; 22 epochs (paper). "
                    "[choice] Adam lr 1e-4, batch 32: the paper gives no optimizer settings.",
        factory=_vgg16_knee,
    ),
    ClassifierPreset(
        name="resnet18-small", image_size=64, in_channels=1, head="softmax",
        lr=1e-3, batch_size=32, epochs=20, weight_decay=0.0,
        paper="002 spine (ResNet18 adapted to 64×64)",
        description="torchvision ResNet18 with a 1-channel conv1, no downsampling in layer4 (4×4 map), "
                    "global average pooling, softmax; Adam. [choice] the 7×7 stride-2 stem and max-pool are "
                    "kept; lr 1e-3, batch 32, 20 epochs (the paper sweeps batch and lr without listing them).",
        factory=_resnet18_small,
    ),
    ClassifierPreset(
        name="densenet121", image_size=224, in_channels=3, head="sigmoid",
        lr=1e-4, batch_size=16, epochs=10, weight_decay=0.0,
        paper="003 chest radiographs (DenseNet-121, sigmoid BCE)",
        description="torchvision DenseNet-121; sigmoid BCE (binary: one logit; multi-label: K logits). "
                    "[choice] Adam lr 1e-4, batch 16, 10 epochs (the paper uses early stopping).",
        factory=_densenet("densenet121"), supports_multilabel=True,
    ),
    ClassifierPreset(
        name="densenet169", image_size=224, in_channels=3, head="sigmoid",
        lr=1e-4, batch_size=16, epochs=10, weight_decay=0.0,
        paper="004 fracture thesis (DenseNet-169, 224 input)",
        description="torchvision DenseNet-169 at 224; sigmoid (binary: one logit; multi-label: K logits). "
                    "[choice] Adam lr 1e-4, batch 16, 10 epochs (not given).",
        factory=_densenet("densenet169"), supports_multilabel=True,
    ),
    ClassifierPreset(
        name="small-cnn", image_size=64, in_channels=1, head="softmax",
        lr=1e-3, batch_size=32, epochs=5, weight_decay=0.0,
        paper="none (CPU-sized)",
        description="synthray's SmallCNN at 64×64 gray, softmax (multi-label: K sigmoid logits): a CPU-sized "
                    "preset for tests and demos.",
        factory=_small_cnn, supports_multilabel=True,
    ),
)
CLASSIFIER_PRESETS: dict[str, ClassifierPreset] = {p.name: p for p in _PRESETS}


def get_classifier_preset(name: str) -> ClassifierPreset:
    """The preset called ``name``; a ValueError lists the known ones."""
    try:
        return CLASSIFIER_PRESETS[name]
    except KeyError:
        raise BadInput(f"unknown classifier preset {name!r}; known: {', '.join(CLASSIFIER_PRESETS)}") from None

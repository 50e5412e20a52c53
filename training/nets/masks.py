"""Image + mask stacks of the paired generators (the knee-MRI paper's 2-channel GANs, seed 001).

A paired generator emits ``1 + K`` channels: the image, then one channel per mask class
(``K = len(mask_classes)``, background included, value ``i`` ↔ ``mask_classes[i]``).

Choice (the issue allows a one-hot mask or a single label channel): **one-hot mask channels
in the generator's own output range**. A real label map becomes ``2·onehot − 1`` (−1/+1 per
class channel, the same [−1, 1] range as the image), so every preset keeps its output layer
unchanged (tanh for DCGAN/WGAN-GP/AC-GAN, linear for the progressive nets) and the critic
sees the image and its mask as one stack. A sample's label map is the argmax over the K
class channels. Why not a single label channel: its values would be ordinal (femur < tibia),
and the halfway colour between two classes would read as a third class; why not a softmax
layer: it would change every preset's head, while argmax of tanh outputs gives the same map.
The knee-MRI paper's stack is 2 channels (image + one cartilage mask); here a binary mask is
K = 2 one-hot channels (background, cartilage), 3 in all: the background channel is the
complement of the other, so it adds no information, but one rule then covers every K.

Functions here are pure tensor/array code; the catalog side (reading masks) is
:func:`training.catalog.selection.load_tensors` with ``masks=True``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from infra.errors import BadInput

# Overlay colours of mask values 1, 2, … (value 0, background, is not drawn): tab10-like.
PALETTE = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)], dtype=np.uint8)


def encode_masks(label_maps: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) integer label maps → (N, K, H, W) float32 one-hot in {−1, +1}.

    Raises:
        BadInput: a value outside 0..K−1.
    """
    if num_classes < 2:
        raise BadInput(f"a mask needs at least 2 classes (background and one more), got {num_classes}")
    maps = label_maps.long()
    if maps.numel() and (int(maps.min()) < 0 or int(maps.max()) >= num_classes):
        raise BadInput(f"mask values must be in 0..{num_classes - 1}, found {int(maps.min())}..{int(maps.max())}")
    return F.one_hot(maps, num_classes).permute(0, 3, 1, 2).float() * 2 - 1


def stack_pairs(images: torch.Tensor, label_maps: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, 1, H, W) images in [−1, 1] and (N, H, W) label maps → (N, 1 + K, H, W) training stacks."""
    if label_maps.shape != (images.shape[0], *images.shape[-2:]):
        raise BadInput(f"masks {tuple(label_maps.shape)} do not match images {tuple(images.shape)}")
    return torch.cat([images, encode_masks(label_maps, num_classes).to(images.dtype)], 1)


def split_pairs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1 + K, H, W) generator output → image (N, 1, H, W) and argmax label map (N, H, W) int64."""
    if x.shape[1] < 3:
        raise BadInput(f"a paired stack has 1 + K >= 3 channels, got {x.shape[1]}")
    return x[:, :1], x[:, 1:].argmax(1)


def overlay(images: np.ndarray, masks: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 (N, H, W) images with their (N, H, W) label maps blended in colour → (N, H, W, 3) uint8.

    Value ``i ≥ 1`` gets ``PALETTE[(i − 1) % 9]`` at opacity ``alpha``; background stays grey.
    """
    rgb = np.repeat(images[..., None].astype(np.float32), 3, axis=-1)
    fg = masks > 0
    colours = PALETTE[(np.maximum(masks.astype(np.int64), 1) - 1) % len(PALETTE)].astype(np.float32)
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colours[fg]
    return np.round(rgb).clip(0, 255).astype(np.uint8)


def pair_panels(x: torch.Tensor) -> torch.Tensor:
    """(N, 1 + K, H, W) stacks in [−1, 1] → (2N, 3, H, W) panels in [−1, 1]: each image, then its overlay.

    What sample grids show for a paired generator (an image beside its mask in colour).
    """
    image, labels = split_pairs(x.float().cpu())
    grey = ((image[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    over = torch.from_numpy(overlay(grey, labels.numpy().astype(np.uint8))).permute(0, 3, 1, 2).float() / 127.5 - 1
    panels = torch.stack([image.clamp(-1, 1).expand(-1, 3, -1, -1), over], 1)
    return panels.reshape(-1, 3, *x.shape[-2:])

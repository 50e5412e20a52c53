"""GAN architectures and their named presets."""

from training.models.registry import PRESETS, GanPreset, build_gan, get_preset

__all__ = ["PRESETS", "GanPreset", "build_gan", "get_preset"]

"""What a segmenter training run is: one validated config for the driver, the workers and the CLI."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from training.nets.segmenter import SegmenterPreset, get_segmenter_preset


class SegmenterTrainConfig(BaseModel):
    """Architecture and optimisation of a segmenter; unset values come from the preset.

    Selection: the epoch with the highest mean validation Dice (foreground classes, MONAI's
    ``DiceMetric``) is the model; its test metrics are the reported ones.
    """

    arch: str = Field("unet-small", description="segmenter preset (training.nets.segmenter)")
    epochs: int | None = Field(None, ge=1, le=100_000)
    batch_size: int | None = Field(None, ge=1, description="global batch size")
    lr: float | None = Field(None, gt=0, description="Adam learning rate")
    workers: int = Field(1, ge=1, description="Ray Train workers (DDP), one CPU or GPU each")
    use_gpu: bool = False
    max_failures: int = Field(1, ge=0, description="worker-group restarts; finished runs are not repeated")
    experiment: str = "synthray-segmenter"

    @model_validator(mode="after")
    def _known_arch(self) -> SegmenterTrainConfig:
        get_segmenter_preset(self.arch)  # unknown arch: the message names the known ones
        return self

    def preset(self) -> SegmenterPreset:
        return get_segmenter_preset(self.arch)

    def hyperparameters(self) -> dict:
        """Effective values: the preset's, overridden by the fields that are set."""
        preset = self.preset()
        hp = {"epochs": preset.epochs, "batch_size": preset.batch_size, "lr": preset.lr, "optimizer": "adam",
              "loss": "DiceCE (MONAI)", "image_size": preset.image_size, "selection": "max val Dice"}
        for key in ("epochs", "batch_size", "lr"):
            if getattr(self, key) is not None:
                hp[key] = getattr(self, key)
        return hp

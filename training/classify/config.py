"""What a classifier training run is: one validated config for the driver, the workers and the CLI."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from training.nets.classifier_presets import ClassifierPreset, get_classifier_preset
from infra.errors import BadInput


class ClassifierTrainConfig(BaseModel):
    """Architecture and optimisation of a classifier; unset values come from the preset.

    Selection follows the knee paper: the epoch with the lowest validation loss is the model
    (its test metrics are the reported ones), whatever the epoch count.
    """

    arch: str = Field("resnet18-small", description="classifier preset (training.nets.classifier_presets)")
    epochs: int | None = Field(None, ge=1, le=100_000)
    batch_size: int | None = Field(None, ge=1, description="global batch size")
    lr: float | None = Field(None, gt=0, description="Adam learning rate")
    weight_decay: float | None = Field(None, ge=0)
    multilabel: bool = Field(False, description="independent sigmoid per class (DenseNet multi-label head)")
    pretrained: str | None = Field(None, description="state dict to start from: a path or s3://bucket/key")
    pretrained_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="its expected sha256")
    workers: int = Field(1, ge=1, description="Ray Train workers (DDP), one CPU or GPU each")
    use_gpu: bool = False
    max_failures: int = Field(1, ge=0, description="worker-group restarts; finished runs are not repeated")
    experiment: str = "synthray-classifier"

    @model_validator(mode="after")
    def _pretrained_needs_hash(self) -> ClassifierTrainConfig:
        get_classifier_preset(self.arch)  # unknown arch: the preset's message names the known ones
        if (self.pretrained is None) != (self.pretrained_sha256 is None):
            raise BadInput("pretrained and pretrained_sha256 go together: weights load only after a sha256 check")
        return self

    def preset(self) -> ClassifierPreset:
        return get_classifier_preset(self.arch)

    def hyperparameters(self) -> dict:
        """Effective values: the preset's, overridden by the fields that are set."""
        preset = self.preset()
        hp = {"epochs": preset.epochs, "batch_size": preset.batch_size, "lr": preset.lr,
              "weight_decay": preset.weight_decay, "optimizer": "adam", "image_size": preset.image_size,
              "in_channels": preset.in_channels, "selection": "min val loss"}
        for key in ("epochs", "batch_size", "lr", "weight_decay"):
            if getattr(self, key) is not None:
                hp[key] = getattr(self, key)
        return hp

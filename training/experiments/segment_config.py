"""Segmentation experiment configs: the knee-MRI paper's U-Net comparison (seed paper 001).

The paper trains a U-Net on real (image, mask) pairs only, on real + PGGAN pairs (1:1) and on
real + Enhanced-GAN pairs (1:1), and compares segmentation Dice. A config names a dataset with
masks (its fixed, real-only val/test splits), the image + mask generators (one per set) and a
grid of cells. A cell is "this fraction of the real training pairs plus this many synthetic
pairs per real training pair, from this generator set". Built-in grid:

- ``knee-segment``: ``Real``, then ``Real + {set} 1:1`` for every generator set (``ratio``
  synthetic pairs per real one; the paper's 1:1 is ``ratio: 1``) and, with ``tstr``, a
  ``Synthetic only ({set})`` cell (as many synthetic pairs as real ones, no real pair).

A generator set is a paired generator (``synthray train gan --masks``): a registered one
(``NAME@alias``, ``NAME/VERSION`` or ``models:/…``) or, before registration, the checkpoint of
its training run (``s3://…``, the run's ``synthray.checkpoint`` tag). Its mask classes must be
the dataset's, in the same order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from infra.errors import BadInput
from infra.names import safe_name
from infra.seeds import TRAIN_MAX_SEED
from training.experiments.config import BASELINE, RealSelection, _Strict, load_config
from training.segment.config import SegmenterTrainConfig

CHECKPOINT_SCHEME = "s3://"


class SegmentRealSelection(RealSelection):
    """:class:`RealSelection` with ``balanced`` off: the task is the masks, not the image classes."""

    balanced: bool = False


class SegmentCell(_Strict):
    """One row of the segmentation table."""

    name: str
    real: float = Field(1.0, ge=0, le=1, description="fraction of the real training pairs (the first ones, "
                        "in class-then-manifest order)")
    synthetic: float = Field(0.0, ge=0, le=100, description="synthetic pairs per real training pair of the pool")
    generators: str | None = Field(None, description="generator set of the synthetic pairs")

    @property
    def is_baseline(self) -> bool:
        return self.real == 1 and not self.synthetic

    def counts(self, n_real: int) -> tuple[int, int]:
        """(real pairs, synthetic pairs) of this cell for a real training pool of ``n_real`` pairs."""
        return round(self.real * n_real), round(self.synthetic * n_real)


class SegmentExperimentConfig(_Strict):
    """``synthray experiment segment --config FILE``; see the module docstring for the grid."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)
    dataset: str = Field(description="catalog dataset with masks, name@version or name (latest)")
    real: SegmentRealSelection = Field(default_factory=SegmentRealSelection)
    generators: dict[str, str] = Field(default_factory=dict,
                                       description="set name → paired generator (NAME@alias, NAME/VERSION, s3://checkpoint)")
    grid: Literal["knee-segment", "custom"] = "knee-segment"
    ratio: float = Field(1.0, gt=0, le=100, description="knee-segment: synthetic pairs per real pair (paper: 1:1)")
    cells: list[SegmentCell] = Field(default_factory=list, description="grid: custom")
    tstr: bool = Field(True, description="add a synthetic-only cell per generator set")
    segmenter: SegmenterTrainConfig = Field(default_factory=SegmenterTrainConfig)
    repeats: int = Field(3, ge=1, le=1000, description="seeds per cell")
    seed: int = Field(0, ge=0, le=TRAIN_MAX_SEED, description="repeat r trains with seed + r")
    permutations: int = Field(1000, ge=10, description="paired permutation test resamples")
    bootstrap: int = Field(10_000, ge=100, description="bootstrap resamples of the over-seeds CI")
    confidence: float = Field(0.95, gt=0, lt=1)
    register_best: bool = Field(True, description="register the highest-validation-Dice segmenter as champion")
    register_name: str | None = Field(None, description="default segmenter-{dataset}-{arch}")
    experiment: str = "synthray-segment"

    @field_validator("name", "register_name")
    @classmethod
    def _one_component(cls, value: str | None, info) -> str | None:
        return value if value is None else safe_name(value, info.field_name)

    @field_validator("generators")
    @classmethod
    def _set_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, spec in value.items():
            safe_name(name, f"generators.{name}")
            if not spec.strip():
                raise BadInput(f"generators.{name}: empty model reference", field=f"generators.{name}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SegmentExperimentConfig:
        if self.seed + self.repeats - 1 > TRAIN_MAX_SEED:
            raise BadInput(f"seed {self.seed} + repeats {self.repeats} - 1 exceeds {TRAIN_MAX_SEED}", field="seed")
        if self.grid == "custom" and not self.cells:
            raise BadInput("grid custom needs cells", field="cells")
        if self.grid != "custom" and self.cells:
            raise BadInput(f"cells are only for grid custom (grid is {self.grid})", field="cells")
        if self.grid != "custom" and not self.generators:
            raise BadInput(f"grid {self.grid} needs at least one generator set under generators", field="generators")
        for cell in self.cells:
            if cell.synthetic and cell.generators not in self.generators:
                raise BadInput(f"cell {cell.name!r}: generators {cell.generators!r} is not a generator set "
                               f"({', '.join(self.generators) or 'none defined'})", field="cells")
        return self

    @classmethod
    def load(cls, path: str | Path, overrides: dict | None = None) -> SegmentExperimentConfig:
        """Read a YAML config; errors name the file and the field."""
        return load_config(cls, path, overrides)


def _ratio(ratio: float) -> str:
    return f"1:{ratio:g}" if ratio != 1 else "1:1"


def expand_segment_cells(cfg: SegmentExperimentConfig) -> list[SegmentCell]:
    """The cells of ``cfg``'s grid, real-only baseline first; names must be unique.

    Raises:
        BadInput: no real-only cell, a cell with no training pairs, or duplicate names.
    """
    if cfg.grid == "knee-segment":
        cells = [SegmentCell(name=BASELINE)] + [
            SegmentCell(name=f"Real + {name} {_ratio(cfg.ratio)}", synthetic=cfg.ratio, generators=name)
            for name in cfg.generators]
    else:
        cells = list(cfg.cells)
    if cfg.tstr:
        covered = {c.generators for c in cells if c.real == 0}
        cells += [SegmentCell(name=f"Synthetic only ({name})", real=0, synthetic=1.0, generators=name)
                  for name in cfg.generators if name not in covered and any(c.generators == name for c in cells)]
    baselines = [c for c in cells if c.is_baseline]
    if not baselines:
        raise BadInput("cells: one cell must be real-only (real: 1, synthetic: 0): the baseline", field="cells")
    for cell in cells:
        if not cell.real and not cell.synthetic:
            raise BadInput(f"cell {cell.name!r} has no training pairs (real 0 and synthetic 0)", field="cells")
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise BadInput(f"cell names must be unique, got {names}", field="cells")
    return [baselines[0]] + [c for c in cells if c is not baselines[0]]

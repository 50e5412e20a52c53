"""Augmentation experiment configs and the papers' built-in grids.

A config names a real dataset (its fixed, real-only val/test splits), sets of registered
generators and a grid of cells. A cell is "this much of each class's real training images plus
these many synthetic images per class from this generator set". Built-in grids:

- ``knee-table5`` (knee paper Tables 4/5): Real, +50/+100/+150/+200 % synthetic (of the real
  count, per class, nested: each set is the previous one plus more fakes), Replace real 100 %.
- ``fracture-table4`` (fracture thesis Table 4): +0/10/50/100 % of one class (``augment_class``)
  added as synthetic images of that class only.
- ``spine-methods`` (spine paper, Methods I–IV): Original, then one cell per generator set,
  each adding ``per_class`` (200) synthetic images of every class.

Nesting holds because every cell takes a *prefix* of one fixed synthetic pool per
(generator set, class), generated once per experiment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from training.classify.config import ClassifierTrainConfig
from infra.errors import BadInput
from infra.names import safe_name
from infra.seeds import TRAIN_MAX_SEED

GRIDS = ("knee-table5", "fracture-table4", "spine-methods", "custom")
BASELINE = "Real"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RealSelection(_Strict):
    """The real images: which splits, how many, from which subset.

    Counts are totals over classes; with ``balanced`` each class gets ``count // K`` (its first
    images in manifest order), as in the knee paper's balanced 200 / 132 / 132.
    """

    train: int | None = Field(None, ge=1, description="real training images (None = the whole split)")
    val: int | None = Field(None, ge=1)
    test: int | None = Field(None, ge=1)
    balanced: bool = True
    subset: str | None = Field(None, description="catalog subset of the real pool (knee paper: the rejected images)")
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"


class GeneratorSet(_Strict):
    """Registered generators that make one synthetic pool: one per class, or one conditional."""

    per_class: dict[str, str] | None = Field(None, description="class name → NAME@alias or NAME/VERSION")
    conditional: str | None = Field(None, description="one conditional generator for every class")

    @model_validator(mode="after")
    def _one_kind(self) -> GeneratorSet:
        if (self.per_class is None) == (self.conditional is None):
            raise BadInput("a generator set has exactly one of per_class or conditional")
        if self.per_class is not None and not self.per_class:
            raise BadInput("per_class must name at least one class")
        return self

    def model_for(self, class_name: str) -> str | None:
        return self.conditional if self.conditional else (self.per_class or {}).get(class_name)


class Cell(_Strict):
    """One row of the results table."""

    name: str
    real: float = Field(1.0, ge=0, le=1, description="fraction of each class's real training images")
    synthetic: dict[str, int] = Field(default_factory=dict, description="class name → synthetic images")
    generators: str | None = Field(None, description="generator set of the synthetic images")

    @property
    def n_synthetic(self) -> int:
        return sum(self.synthetic.values())

    @property
    def is_baseline(self) -> bool:
        return self.real == 1 and not self.n_synthetic


class ExperimentConfig(_Strict):
    """``synthray experiment augment --config FILE``; see the module docstring for the grids."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)
    dataset: str = Field(description="catalog dataset, name@version or name (latest)")
    real: RealSelection = Field(default_factory=RealSelection)
    generators: dict[str, GeneratorSet] = Field(default_factory=dict)
    grid: Literal["knee-table5", "fracture-table4", "spine-methods", "custom"] = "knee-table5"
    fractions: list[float] | None = Field(None, description="override the grid's synthetic fractions")
    augment_class: str | None = Field(None, description="fracture-table4: the class that gets synthetic images")
    per_class: int = Field(200, ge=1, description="spine-methods: synthetic images per class and method")
    cells: list[Cell] = Field(default_factory=list, description="grid: custom")
    classifier: ClassifierTrainConfig = Field(default_factory=ClassifierTrainConfig)
    repeats: int = Field(5, ge=1, le=1000, description="seeds per cell")
    seed: int = Field(0, ge=0, le=TRAIN_MAX_SEED, description="repeat r trains with seed + r")
    metric: str = Field("accuracy", description="headline metric: plot, paired test, best-classifier tie-break")
    permutations: int = Field(1000, ge=10, description="paired permutation test resamples")
    bootstrap: int = Field(10_000, ge=100, description="bootstrap resamples of each CI")
    confidence: float = Field(0.95, gt=0, lt=1)
    tstr: bool = Field(True, description="add train-on-synthetic and train-on-real/test-on-synthetic scores")
    register_best: bool = Field(True, description="register the lowest-validation-loss classifier as champion")
    register_name: str | None = Field(None, description="default classifier-{dataset}-{arch}")
    experiment: str = "synthray-augment"

    @model_validator(mode="after")
    def _seeds_in_range(self) -> ExperimentConfig:
        if self.seed + self.repeats - 1 > TRAIN_MAX_SEED:
            raise BadInput(f"seed {self.seed} + repeats {self.repeats} - 1 exceeds {TRAIN_MAX_SEED}: training "
                           "seeds seed torch's 32-bit generator", field="seed")
        return self

    @field_validator("name", "register_name")
    @classmethod
    def _one_component(cls, value: str | None, info) -> str | None:
        return value if value is None else safe_name(value, info.field_name)

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        from training.evaluate.classification import CLASSIFICATION_METRICS

        if self.metric not in CLASSIFICATION_METRICS:
            raise BadInput(f"metric {self.metric!r} is not one of {', '.join(sorted(CLASSIFICATION_METRICS))}")
        if self.grid == "custom" and not self.cells:
            raise BadInput("grid custom needs cells")
        if self.grid != "custom" and self.cells:
            raise BadInput(f"cells are only for grid custom (grid is {self.grid})")
        if self.grid != "custom" and not self.generators:
            raise BadInput(f"grid {self.grid} needs at least one generator set under generators")
        if self.grid in ("knee-table5", "fracture-table4") and len(self.generators) != 1:
            raise BadInput(f"grid {self.grid} uses one generator set; generators has {len(self.generators)}")
        for cell in self.cells:
            if cell.n_synthetic and cell.generators not in self.generators:
                raise BadInput(f"cell {cell.name!r}: generators {cell.generators!r} is not a generator set "
                                 f"({', '.join(self.generators) or 'none defined'})")
        if self.fractions is not None and (not self.fractions or any(f <= 0 for f in self.fractions)):
            raise BadInput("fractions must be positive")
        return self

    @classmethod
    def load(cls, path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
        """Read a YAML config; errors name the file and the field."""
        return load_config(cls, path, overrides)


def load_config(cls: type[BaseModel], path: str | Path, overrides: dict | None = None):
    """Read a YAML experiment config into ``cls``; errors name the file and the field.

    Args:
        cls: the config model (:class:`ExperimentConfig`, ``SegmentExperimentConfig``).
        path: the YAML file.
        overrides: dotted field paths (``classifier.epochs``) → values, set before validation.

    Raises:
        BadInput: unreadable file, invalid YAML, or a field that fails validation.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise BadInput(f"--config {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise BadInput(f"--config {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise BadInput(f"--config {path}: expected a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        message = first["msg"].removeprefix("Value error, ")  # cross-field checks name their fields
        where = ".".join(str(p) for p in first["loc"])
        raise BadInput(f"{path}: {where}: {message}" if where else f"{path}: {message}") from None


# -- grids -----------------------------------------------------------------------------------
def _pct(fraction: float) -> str:
    return f"{100 * fraction:g} %"


def expand_cells(cfg: ExperimentConfig, real_counts: dict[str, int]) -> list[Cell]:
    """The cells of ``cfg``'s grid for a real training pool with ``real_counts`` per class.

    The first cell is always the real-only baseline. With ``tstr`` every generator set also
    gets a train-on-synthetic cell (as many synthetic images per class as real ones) unless
    the grid already has one.
    """
    classes = list(real_counts)
    sets = list(cfg.generators)
    base = Cell(name=BASELINE)
    if cfg.grid == "knee-table5":
        (gen,) = sets
        cells = [base] + [Cell(name=f"+{_pct(f)}", generators=gen,
                               synthetic={c: round(f * real_counts[c]) for c in classes})
                          for f in (cfg.fractions or [0.5, 1.0, 1.5, 2.0])]
        cells.append(Cell(name="Replace real 100 %", real=0, generators=gen, synthetic=dict(real_counts)))
    elif cfg.grid == "fracture-table4":
        (gen,) = sets
        target = cfg.augment_class or "normal"  # the fracture thesis augments its normal class
        if target not in classes:
            raise BadInput(f"augment_class {target!r} is not a class of the real pool ({', '.join(classes)})")
        cells = [Cell(name="+0 %")] + [Cell(name=f"+{_pct(f)} {target}", generators=gen,
                                            synthetic={target: round(f * real_counts[target])})
                                       for f in (cfg.fractions or [0.1, 0.5, 1.0])]
    elif cfg.grid == "spine-methods":
        cells = [Cell(name="Original")] + [Cell(name=name, generators=name, synthetic=dict.fromkeys(classes, cfg.per_class))
                                           for name in sets]
    else:
        cells = list(cfg.cells)
    baselines = [c for c in cells if c.is_baseline]
    if not baselines:
        raise BadInput("cells: one cell must be real-only (real: 1, no synthetic images): the baseline")
    for cell in cells:
        unknown = set(cell.synthetic) - set(classes)
        if unknown:
            raise BadInput(f"cell {cell.name!r}: {sorted(unknown)} are not classes of the real pool ({', '.join(classes)})")
        if not cell.real and not cell.n_synthetic:
            raise BadInput(f"cell {cell.name!r} has no training images (real 0 and no synthetic)")
    if cfg.tstr:
        covered = {c.generators for c in cells if c.real == 0}
        cells += [Cell(name=f"TSTR ({name})", real=0, generators=name, synthetic=dict(real_counts))
                  for name in sets if name not in covered and any(c.generators == name for c in cells)]
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise BadInput(f"cell names must be unique, got {names}")
    baseline = baselines[0]
    return [baseline] + [c for c in cells if c is not baseline]

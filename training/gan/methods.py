"""The spine paper's four generation methods (Röglin et al. 2022) as training plans.

A plan is an ordered list of training runs; a step may warm-start from an earlier step's
checkpoint. Building the plan touches only the manifest, so it can be shown (and tested)
before anything trains.

- **I**: one conditional model on every class, imbalanced as the data is.
- **II**: one conditional model on every class undersampled to the smallest
  (the paper keeps the first N; ``balance="random"`` draws a seeded sample instead).
- **III**: one model per class.
- **IV**: pretrain on the majority class, then fine-tune one generator per minority class
  from it (the discriminator starts fresh unless ``transfer_critic``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from training.catalog.store import Manifest
from training.gan.config import GanTrainConfig
from infra.errors import BadInput

Method = Literal["I", "II", "III", "IV"]


@dataclass(frozen=True)
class PlanStep:
    """One training run of a plan.

    Args:
        name: step name (``all``, ``balanced``, ``class2``, ``pretrain``…).
        config: the run's config.
        init_from: name of an earlier step whose checkpoint warm-starts this one.
        n_images: images the step trains on.
    """

    name: str
    config: GanTrainConfig
    init_from: str | None = None
    n_images: int = 0

    def describe(self) -> str:
        what = "all classes" if self.config.class_label is None else f"class {self.config.class_label}"
        warm = f", warm start from {self.init_from}" + (" (G and D)" if self.config.transfer_critic else " (G)") \
            if self.init_from else ""
        balance = f", balanced ({self.config.balance})" if self.config.balance != "none" else ""
        return f"{self.name}: {what}{balance}, {self.n_images} images, {self.config.epochs} epochs{warm}"


def plan_method(
    manifest: Manifest,
    method: Method,
    base: GanTrainConfig,
    *,
    balance: Literal["first", "random"] = "first",
    finetune_epochs: int | None = None,
    transfer_critic: bool = False,
) -> list[PlanStep]:
    """The training runs of ``method`` on the ``base`` config's split/subset of ``manifest``.

    Args:
        manifest: the dataset version (its records give the class counts).
        method: I, II, III or IV.
        base: dataset, architecture, epochs and the rest; class and balance are set per step.
        balance: Method II's undersampling (first-N as in the paper, or seeded random).
        finetune_epochs: Method IV's epochs per minority class (default: ``base.epochs``).
        transfer_critic: Method IV: warm-start the discriminator too.
    """
    records = manifest.select(split=base.split, subset=base.subset)
    counts = Counter(r.label for r in records)
    if not counts:
        raise BadInput(f"dataset {manifest.ref} has no images in split={base.split!r} subset={base.subset!r}")
    ref = str(manifest.ref)

    def step(name: str, n: int, **update) -> PlanStep:
        init = update.pop("init_from", None)
        return PlanStep(name, base.model_copy(update={"dataset": ref, **update}), init, n)

    if method == "I":
        return [step("all", len(records), class_label=None, balance="none")]
    if method == "II":
        return [step("balanced", min(counts.values()) * len(counts), class_label=None, balance=balance)]
    if method == "III":
        return [step(f"class{c}", counts[c], class_label=c, balance="none") for c in sorted(counts)]
    if method == "IV":
        majority = max(sorted(counts), key=lambda c: counts[c])
        plan = [step("pretrain", counts[majority], class_label=majority, balance="none")]
        for c in sorted(counts):
            if c != majority:
                plan.append(step(f"class{c}", counts[c], class_label=c, balance="none", init_from="pretrain",
                                 transfer_critic=transfer_critic, epochs=finetune_epochs or base.epochs))
        return plan
    raise BadInput(f"unknown method {method!r}; choose I, II, III or IV")


def run_plan(plan: list[PlanStep], settings=None, progress: Callable[[str], None] = print) -> dict:
    """Train the steps in order; a warm-started step gets its source step's selected checkpoint."""
    from training.gan.preflight import check_plan
    from training.gan.trainer import train_gan

    names = [item.name for item in plan]
    for i, item in enumerate(plan):
        if item.init_from and item.init_from not in names[:i]:
            raise BadInput(f"plan step {item.name!r} warm-starts from {item.init_from!r}, which is not an earlier step")
    # every run's inputs, before the first run starts (a bad step 3 must not cost steps 1-2)
    check_plan([(item.name, item.config, bool(item.init_from)) for item in plan], settings)
    results: dict = {}
    for item in plan:
        cfg = item.config
        if item.init_from:
            cfg = cfg.model_copy(update={"init_from": results[item.init_from].checkpoint_path})
        progress(f"plan: training {item.describe()}")
        results[item.name] = train_gan(cfg, settings=settings, progress=progress)
    return results

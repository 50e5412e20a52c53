"""Federated experiment configs: the chest paper's federated-vs-centralised comparison (seed paper 003).

Han et al. 2020 (Science Advances, Fig. 4) train one WGAN-GP three ways on CheXpert: federated
over 20 sites × 1,000 images (FedAvg of G and D, C = 0.1, E = 10, b = 32, λ = 10, 5 critic
steps), centralised on the pooled 20,000, and centralised on one site's 1,000; the federated
model comes close to the 20k one and clearly beats the 1k one (figures only, no table).

A config names a catalog version split into sites (``synthray catalog split REF --sites K``),
the federation's knobs (the fields of :class:`training.federated.config.FederatedConfig`), the
GAN every arm trains (``gan``: a :class:`~training.gan.config.GanTrainConfig` without the fields
the experiment owns) and the arms:

- ``federated``: K sites × n images, R rounds, m = max(int(K·C), min_fit_clients) sites per
  round, E local iterations each (``training.federated.server.train_federated``);
- ``centralised``: one model on the pooled K·n images (the sites' union, the train split);
- ``single-site``: one model on site ``single_site``'s n images.

**Equal local work** (the paper does not say how its arms were matched): every arm makes its
generator updates with the same step (``training.gan.loop.train_step``), batch b and critic
steps. ``equal_work: updates`` (default) gives each centralised arm R "round-equivalents" of
m·E generator updates, so every arm makes R·m·E updates and sees R·m·E·b real images; the
federated arm spreads them over m sites in parallel. ``equal_work: rounds`` gives the
centralised arms E updates per round-equivalent (R·E in all: as many *sequential* updates as
one site makes). FID is taken after each round-equivalent, so the curves share their x axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from infra.errors import BadInput
from infra.names import safe_name
from infra.seeds import TRAIN_MAX_SEED
from training.experiments.config import _Strict, load_config
from training.gan.config import GanTrainConfig

Arm = Literal["federated", "centralised", "single-site"]
ARMS: tuple[str, ...] = ("federated", "centralised", "single-site")
# GanTrainConfig fields the experiment sets itself (per arm, per seed), so a config may not.
OWNED_GAN_FIELDS = {
    "dataset": "set dataset at the top level",
    "split": "the arms train on the sites' train split",
    "subset": "the arms' selections are the sites (single_site picks one)",
    "class_label": "every arm trains on all classes",
    "limit": "the sites set the image counts",
    "seed": "use seed and repeats at the top level",
    "epochs": "rounds sets the length of every arm",
    "steps_per_epoch": "local_iters, the sites per round and equal_work set it",
    "kimg": "rounds sets the length of every arm",
    "workers": "a centralised arm trains on one worker, so its batch is the sites' b",
    "fid_every": "use fid_every at the top level (rounds)",
    "fid_n": "FID compares as many samples as the pooled reference holds",
    "fid_quick_n": "FID is the experiment's, against the pooled reference",
    "ema_kimg": "no arm averages its generator over time (the federated G is the FedAvg average)",
    "init_from": "every arm starts from the same seeded weights",
    "masks": "federated training takes images without masks",
    "experiment": "every run goes to the synthray-federated MLflow experiment",
}


class FederatedExperimentConfig(_Strict):
    """``synthray experiment federated --config FILE``; see the module docstring."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)
    dataset: str = Field(description="catalog version with site-0 … site-{K-1} subsets (synthray catalog split)")
    sites: int = Field(ge=1, description="K: the dataset's site subsets")
    fraction: float = Field(0.1, gt=0, le=1, description="C: fraction of the sites sampled per round")
    rounds: int = Field(ge=1, le=100_000, description="R: communication rounds (round-equivalents for the "
                        "centralised arms)")
    local_iters: int = Field(10, ge=1, description="E: generator updates per site per round")
    average: Literal["g", "g+d"] = Field("g+d", description="networks FedAvg averages (the paper: g+d); the "
                                         "generator must be one, it is what FID scores")
    min_fit_clients: int = Field(1, ge=1, description="Flower samples at least this many sites per round")
    client_cpus: float = Field(1.0, gt=0, description="Ray CPUs per simulated site")
    gan: GanTrainConfig = Field(description="the GAN every arm trains (arch, batch_size, critic_steps, "
                                "gp_lambda, lr, …); dataset is filled in from the top level")
    arms: list[Arm] = Field(default_factory=lambda: list(ARMS), min_length=1)
    single_site: int = Field(0, ge=0, description="the site whose n images the single-site arm trains on")
    equal_work: Literal["updates", "rounds"] = Field(
        "updates", description="updates: centralised arms make R·m·E generator updates (as many as the "
        "federation in all); rounds: R·E (as many as one site, sequentially)")
    repeats: int = Field(1, ge=1, le=1000, description="seeds per arm")
    seed: int = Field(0, ge=0, le=TRAIN_MAX_SEED, description="repeat r trains with seed + r")
    fid_every: int = Field(1, ge=1, description="FID every k rounds (and at the last)")
    fid_dims: Literal[64, 192, 768, 2048] = Field(2048, description="pytorch-fid feature dims (2048 = FID)")
    bootstrap: int = Field(200, ge=0, description="bootstrap draws of the last round's FID CI over images "
                           "(each draw is one Fréchet distance: ~2 s at 2048-d on 2 CPUs); 0 = none")
    confidence: float = Field(0.95, gt=0, lt=1)
    output: str | None = Field(None, description="folder for the table and plot (default out/experiments/NAME)")

    @model_validator(mode="before")
    @classmethod
    def _fill_gan(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or not isinstance(raw.get("gan", {}), dict):
            return raw
        gan = dict(raw.get("gan") or {})
        for key, why in OWNED_GAN_FIELDS.items():
            if key in gan:
                raise BadInput(f"gan.{key} is the experiment's: {why}", field=f"gan.{key}")
        return {**raw, "gan": {**gan, "dataset": raw.get("dataset", ""), "fid_every": 0, "ema_kimg": 0.0}}

    @field_validator("name")
    @classmethod
    def _one_component(cls, value: str) -> str:
        return safe_name(value, "name")

    @model_validator(mode="after")
    def _consistent(self) -> FederatedExperimentConfig:
        if len(set(self.arms)) != len(self.arms):
            raise BadInput(f"arms must not repeat, got {self.arms}", field="arms")
        if self.single_site >= self.sites:
            raise BadInput(f"single_site {self.single_site} is not one of the {self.sites} sites "
                           f"(0 … {self.sites - 1})", field="single_site")
        if self.min_fit_clients > self.sites:
            raise BadInput(f"min_fit_clients {self.min_fit_clients} exceeds sites {self.sites}",
                           field="min_fit_clients")
        if self.seed + self.repeats - 1 > TRAIN_MAX_SEED:
            raise BadInput(f"seed {self.seed} + repeats {self.repeats} - 1 exceeds {TRAIN_MAX_SEED}", field="seed")
        self.federated(self.seed)  # the federation's own checks (arch, augment), before any work
        return self

    @classmethod
    def load(cls, path: str | Path, overrides: dict | None = None) -> FederatedExperimentConfig:
        """Read a YAML config; errors name the file and the field."""
        return load_config(cls, path, overrides)

    # -- what each arm runs ---------------------------------------------------------------------
    def sampled_per_round(self) -> int:
        """m: Flower's FedAvg sample size, max(int(K·C), min_fit_clients)."""
        return max(int(self.sites * self.fraction), self.min_fit_clients)

    def updates_per_round(self, arm: str) -> int:
        """Generator updates per round (or round-equivalent) of ``arm``, over all its sites."""
        if arm == "federated" or self.equal_work == "updates":
            return self.sampled_per_round() * self.local_iters
        return self.local_iters

    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path("out") / "experiments" / self.name

    def seeds(self) -> list[int]:
        return [self.seed + r for r in range(self.repeats)]

    def eval_rounds(self) -> list[int]:
        """Rounds after which every arm's generator is scored: every ``fid_every`` and the last."""
        return sorted({r for r in range(1, self.rounds + 1) if r % self.fid_every == 0} | {self.rounds})

    def federated(self, seed: int):
        """The federated arm's :class:`FederatedConfig` for one seed (FID is the experiment's, not the server's)."""
        from training.federated.config import FederatedConfig

        return FederatedConfig(gan=self.gan.model_copy(update={"seed": seed}), sites=self.sites,
                               fraction=self.fraction, rounds=self.rounds, local_iters=self.local_iters,
                               average=self.average, min_fit_clients=self.min_fit_clients, fid_every=0,
                               fid_dims=self.fid_dims, client_cpus=self.client_cpus)

    def centralised(self, arm: str, dataset: str, seed: int) -> GanTrainConfig:
        """A centralised arm's :class:`GanTrainConfig`: R epochs of ``updates_per_round`` steps, one
        worker (batch b), a checkpoint after every evaluated epoch, no EMA and no in-run FID."""
        from training.federated.server import EXPERIMENT
        from training.federated.sites import site_name

        return self.gan.model_copy(update={
            "dataset": dataset, "split": "train", "subset": site_name(self.single_site) if arm == "single-site" else None,
            "seed": seed, "epochs": self.rounds, "steps_per_epoch": self.updates_per_round(arm), "workers": 1,
            "fid_every": 0, "ema_kimg": 0.0, "ema_bn_batches": 0, "checkpoint_every": self.fid_every,
            "checkpoint_minutes": None, "keep_checkpoints": len(self.eval_rounds()), "experiment": EXPERIMENT})

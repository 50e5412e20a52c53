"""What a federated GAN run is: the GAN config every site trains with, plus the federation's knobs.

The chest paper's federated conditional WGAN-GP (Han et al. 2020, seed 003): 20 sites × 1,000
images, fraction C = 0.1 of the sites per round, E = 10 local iterations, batch b = 32,
λ = 10, 5 critic steps; G and D averaged, weighted by data size. Where the paper is silent
the choices are written on the fields (local iteration = one generator update after
``critic_steps`` critic updates; fresh Adam state at every site each round).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from infra.errors import BadInput
from training.gan.config import GanTrainConfig

Average = Literal["g", "d", "g+d"]
_DRILL = re.compile(r"^(\d+|any)@(\d+)$")


class FederatedConfig(BaseModel):
    """A federated run; ``gan`` holds dataset, architecture and the GAN hyperparameters."""

    gan: GanTrainConfig
    sites: int = Field(ge=1, description="K: the dataset version's site-0 … site-{K-1} subsets")
    fraction: float = Field(0.1, gt=0, le=1, description="C: fraction of the sites sampled per round")
    rounds: int = Field(ge=1, description="communication rounds (FedAvg aggregations)")
    local_iters: int = Field(10, ge=1, description="E: generator updates per site per round, each after "
                             "critic_steps critic updates on fresh noise (the paper's 'local iterations')")
    average: Average = Field("g+d", description="networks FedAvg averages; a network not averaged stays "
                             "at its site (in the node's state) between rounds")
    min_fit_clients: int = Field(1, ge=1, description="a round counts when at least this many sampled sites "
                                 "return; Flower also samples at least this many")
    fid_every: int = Field(1, ge=0, description="global FID every k rounds (and at the last); 0 disables")
    fid_dims: Literal[64, 192, 768, 2048] = Field(2048, description="pytorch-fid feature dims (2048 = FID)")
    client_cpus: float = Field(1.0, gt=0, description="Ray CPUs per simulated site (Flower's client_resources)")
    drill_fail: str | None = Field(None, description="failure drill: 'SITE@ROUND' kills that site's client "
                                   "process mid-round (SIGKILL of its Ray actor) when it is sampled in that round; "
                                   "SITE 'any' = the lowest-numbered site sampled (tests, rehearsals)")

    @model_validator(mode="after")
    def _check(self) -> FederatedConfig:
        if self.gan.preset().progressive:
            raise BadInput(f"--arch {self.gan.arch} is progressive; federated training runs the fixed-size "
                           "GAN step (training.gan.loop.train_step)", field="arch")
        if self.gan.hyperparameters()["augment"] == "ada":
            raise BadInput("--augment ada keeps per-run controller state; use none or diffaugment", field="augment")
        if self.gan.subset is not None:
            raise BadInput("--subset: a site's subset is its selection (site-i)", field="subset")
        if self.min_fit_clients > self.sites:
            raise BadInput(f"--min-fit-clients {self.min_fit_clients} exceeds --sites {self.sites}",
                           field="min_fit_clients")
        if self.drill_fail is not None and not _DRILL.match(self.drill_fail):
            raise BadInput(f"drill_fail must be SITE@ROUND (SITE an index or 'any'), got {self.drill_fail!r}",
                           field="drill_fail")
        return self

    def sampled_per_round(self) -> int:
        """Flower's FedAvg sample size: max(int(K·C), min_fit_clients)."""
        return max(int(self.sites * self.fraction), self.min_fit_clients)

    def drill(self) -> tuple[int | None, int] | None:
        """(site or None for 'any', round) of the failure drill, or None."""
        if self.drill_fail is None:
            return None
        site, rnd = _DRILL.match(self.drill_fail).groups()
        return None if site == "any" else int(site), int(rnd)

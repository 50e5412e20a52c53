"""Checkpoint cadence by cost (training.gan.cadence), --kimg schedules, and their CLI validation (no stack)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from training.gan.cadence import Cadence
from training.gan.config import GanTrainConfig


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _schedule(cadence: Cadence, clock: Clock, epochs: int, epoch_s: float, fid_every: int = 0) -> list[int]:
    """The epochs a loop checkpoints, with epochs of ``epoch_s`` seconds (the loop's use of Cadence)."""
    written = []
    for epoch in range(1, epochs + 1):
        clock.t += epoch_s
        fid = bool(fid_every) and (epoch % fid_every == 0 or epoch == epochs)
        if cadence.due(epoch, forced=fid or epoch == epochs):
            written.append(epoch)
            cadence.done()
    return written


def test_every_n_epochs_plus_fid_epochs_and_the_last() -> None:
    clock = Clock()
    assert _schedule(Cadence(4, None, clock), clock, 10, 1.0) == [4, 8, 10]
    assert _schedule(Cadence(4, None, clock), clock, 10, 1.0, fid_every=3) == [3, 4, 6, 8, 9, 10]
    assert _schedule(Cadence(1, None, clock), clock, 3, 1.0) == [1, 2, 3]  # the old per-epoch behaviour


def test_minutes_come_first_on_slow_epochs() -> None:
    clock = Clock()
    # 50 s epochs, every 100 epochs or 2 minutes: the clock decides (every 3rd epoch = 150 s ≥ 120 s).
    assert _schedule(Cadence(100, 2.0, clock), clock, 10, 50.0) == [3, 6, 9, 10]
    # 0.3 s epochs: 2 minutes are 400 epochs, so the epoch interval comes first.
    clock = Clock()
    assert _schedule(Cadence(100, 2.0, clock), clock, 250, 0.3) == [100, 200, 250]


def test_the_agreed_time_rule_overrides_the_local_clock() -> None:
    clock = Clock()
    cadence = Cadence(100, 1.0, clock)
    clock.t = 61.0
    assert cadence.by_time() and not cadence.due(7, timed=False)  # rank 0 said no: every worker says no
    assert cadence.due(7, timed=True) and not Cadence(100, None, clock).due(7)
    with pytest.raises(ValueError, match="checkpoint_every"):
        Cadence(0, None)


def test_defaults_keep_resume_loss_bounded() -> None:
    cfg = GanTrainConfig(dataset="x")
    assert (cfg.checkpoint_every, cfg.checkpoint_minutes) == (100, 2.0)


def test_kimg_sets_epochs_as_ticks_of_whole_steps() -> None:
    cfg = GanTrainConfig(dataset="x", arch="dcgan-fracture-small", kimg=10, batch_size=32)
    # ticks of 4 kimg = ⌈4000 / 32⌉ = 125 steps; ⌈10 / 4⌉ = 3 ticks ≥ 10 kimg
    assert (cfg.epochs, cfg.steps_per_epoch) == (3, 125)
    assert GanTrainConfig(**cfg.model_dump()).model_dump() == cfg.model_dump()  # the worker's re-validation
    small = GanTrainConfig(dataset="x", arch="wgan-gp-knee-small", kimg=1, tick_kimg=0.5)  # preset batch 32
    assert (small.epochs, small.steps_per_epoch) == (2, 16)
    assert GanTrainConfig(dataset="x", kimg=8, tick_kimg=4).epochs == 2  # exact multiples: no extra tick
    with pytest.raises(ValidationError, match="progressive presets"):
        GanTrainConfig(dataset="x", arch="pggan-knee-mri-small", kimg=1)


@pytest.mark.parametrize("extra", [["--epochs", "3"], ["--steps-per-epoch", "7"]])
def test_cli_kimg_conflicts_with_an_explicit_length(extra: list[str]) -> None:
    from services.cli.main import main

    result = CliRunner().invoke(main, ["train", "gan", "--dataset", "x", "--kimg", "2", *extra])
    assert result.exit_code == 1, result.output
    assert f"--kimg sets the run's length in images shown; drop {extra[0]}" in result.output
    assert "Traceback" not in result.output

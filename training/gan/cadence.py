"""When a GAN training epoch ends in a checkpoint: cadence by cost, not by epoch.

On a tiny dataset an epoch is a few steps (100 images at batch 32: 3 steps, ~0.3 s on 2 CPU
workers), while a checkpoint (both networks and optimizers to S3 through Ray Train), its sample
grid (EMA BatchNorm recalibration, render, PNG upload to MLflow) and Ray Train's report cost
~1 s together. Doing them every epoch spent ~80 % of the wall time on bookkeeping (profile in
``docs/benchmarks.md``). So an epoch ends in a checkpoint, a sample grid and a Ray Train report
only when one of these holds:

- its number is a multiple of ``checkpoint_every`` (epochs, counted from the run's start, so a
  resumed run keeps the same schedule);
- ``checkpoint_minutes`` have passed since this worker group's last checkpoint (or its start);
- it computes the selection FID (``fid_every``): every FID epoch is checkpointed, so the
  best-by-FID generator always exists as a checkpoint (Ray Train keeps the top-k by FID plus
  the latest);
- it is the run's last epoch (or, progressive, a stage's last).

A failure therefore loses at most one interval: the epochs since the last checkpoint, at most
``checkpoint_every`` epochs or ``checkpoint_minutes`` minutes of training (the restarted group
replays them exactly). Defaults (100 epochs, 2 minutes): < 10 % overhead on a 100-image set,
measured by ``benchmarks/train_overhead.py``.

Every worker must call ``ray.train.report`` the same number of times, so the time rule is
decided by rank 0's clock and shared (:func:`agree`).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Cadence:
    """Checkpoint schedule of one worker: ``due(epoch, forced=...)``, then ``done()`` after checkpointing.

    Args:
        every: checkpoint every this many epochs (epoch numbers are 1-based, counted from the run's start).
        minutes: … or when this many minutes have passed since the last checkpoint (``None``: never by time).
        clock: seconds, monotonic (injectable for tests).
    """

    def __init__(self, every: int, minutes: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        if every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {every}")
        self.every, self.seconds, self.clock = every, None if minutes is None else minutes * 60.0, clock
        self.last = clock()

    def by_time(self) -> bool:
        """This worker's clock says a checkpoint is due (share it with :func:`agree`)."""
        return self.seconds is not None and self.clock() - self.last >= self.seconds

    def due(self, epoch: int, *, forced: bool = False, timed: bool | None = None) -> bool:
        """Whether completed epoch ``epoch`` (1-based) ends in a checkpoint.

        ``forced``: an FID epoch, the last epoch or a stage end. ``timed``: the group's agreed
        time rule (default: this worker's own clock).
        """
        return forced or epoch % self.every == 0 or (self.by_time() if timed is None else timed)

    def done(self) -> None:
        """A checkpoint was written: the time rule counts from now."""
        self.last = self.clock()


def agree(flag: bool, world: int, device=None) -> bool:
    """Rank 0's ``flag`` on every worker (one 1-element broadcast on ``device``; no-op for one worker)."""
    import torch
    import torch.distributed as dist

    if world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())

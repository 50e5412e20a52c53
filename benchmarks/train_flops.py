"""FLOPs of one GAN training step, counted by ``torch.utils.flop_counter`` (shared by
``time_to_quality.py`` and ``train_limit.py``)."""

from __future__ import annotations

from training.gan.loop import train_step


class _GlobalOnly:
    """A stand-in for FlopCounterMode's ModuleTracker: no hooks, every FLOP counted as "Global"."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def step_flops(pair, loss, real, y, hp, augment) -> float:
    """FLOPs of one ``train_step`` (all critic steps, the gradient penalty, the G step), counted,
    not estimated; a multiply-add = 2 FLOPs. It runs (and so updates) ``pair`` once."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # Totals only: FlopCounterMode's per-module breakdown (its ModuleTracker's backward hooks)
    # fails inside WGAN-GP's autograd.grad ("A leaf node was passed to _will_engine_execute_node"),
    # so the tracker is replaced by one that files every FLOP under "Global".
    counter.mod_tracker = _GlobalOnly()
    with counter:
        train_step(pair, loss, real, y, hp, augment=augment)
    return float(counter.get_total_flops())

"""Learning-rate schedules: linear warmup, then constant or cosine decay."""

from __future__ import annotations

import math

import torch

from mario_cli.errors import ConfigError

SCHEDULES = ("constant", "cosine")


def linear(start: float, end: float, fraction: float) -> float:
    """Interpolate from ``start`` to ``end``; ``fraction`` is clamped to [0, 1]."""
    fraction = min(1.0, max(0.0, fraction))
    return start + (end - start) * fraction


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, schedule: str, final_fraction: float
) -> float:
    """The multiplier of the peak learning rate at ``step`` (0-based).

    Warmup rises linearly as (step + 1) / warmup_steps, so the first step already
    learns. After it, "constant" stays at 1 and "cosine" falls from 1 to
    ``final_fraction`` at ``total_steps``, staying there afterwards.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown lr schedule {schedule!r}; use one of: {', '.join(SCHEDULES)}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - max(0, warmup_steps))
    progress = min(1.0, max(0.0, (step - max(0, warmup_steps)) / span))
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    total_updates: int,
    warmup_updates: int,
    schedule: str,
    final_fraction: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over optimizer updates following :func:`lr_factor`.

    Its state_dict holds only plain data (a closure's state is not saved), so it can go
    into a checkpoint; rebuild the scheduler with the same arguments, then load it.
    """
    lr_factor(0, total_updates, warmup_updates, schedule, final_fraction)  # fail early

    def factor(step: int) -> float:
        return lr_factor(step, total_updates, warmup_updates, schedule, final_fraction)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

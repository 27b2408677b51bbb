"""Built-in replay strategies, registered through the public ``register_replay`` hook.

Factories import torch only when a run builds them.
"""

from __future__ import annotations

from typing import Any

from mario_cli.api import Register, ReplayFactory, hookimpl


def make_uniform(cfg: Any, obs_shape: tuple[int, ...], seed: int = 0) -> Any:
    from mario_replay.strategies import UniformReplay

    return UniformReplay(cfg, obs_shape, seed)


def make_prioritized(cfg: Any, obs_shape: tuple[int, ...], seed: int = 0) -> Any:
    from mario_replay.strategies import PrioritizedReplay

    return PrioritizedReplay(cfg, obs_shape, seed)


@hookimpl
def register_replay(register: Register[ReplayFactory]) -> None:
    register("uniform", make_uniform)
    register("prioritized", make_prioritized)

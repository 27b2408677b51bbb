"""What every built-in algorithm holds: the policy, its optimiser, the config and replay."""

from __future__ import annotations

from typing import Any

import torch

from mario_cli.api import MarioConfig, Optimiser


class Algorithm:
    """Subclasses implement ``update(batch) -> metrics``; the optimiser state is saved by
    the trainer, so an algorithm without extra state needs no ``state_dict`` of its own."""

    asynchronous = False  # True: the trainer collects the next rollout during update

    def __init__(
        self, policy: torch.nn.Module, cfg: MarioConfig, optimiser: Optimiser, replay: Any = None
    ) -> None:
        self.policy = policy
        self.cfg = cfg.algo
        self.replay_cfg = cfg.replay
        self.optimiser = optimiser
        self.replay = replay

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing beyond the optimiser to restore."""

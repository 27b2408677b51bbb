"""What every built-in algorithm holds: the policy, its optimiser, the config and replay."""

from __future__ import annotations

from typing import Any

import torch

from mario_algos.offpolicy import store_and_replay
from mario_cli.api import GradientStepper, MarioConfig, RolloutBatch
from mario_cli.api import metric_names as names


def actor_critic_terms(mb: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain actor-critic (A2C, IMPALA): policy-gradient, value and entropy terms."""
    pg_loss = -(mb.advantages * mb.log_probs).mean()
    value_loss = (mb.returns - mb.values).pow(2).mean()
    return pg_loss, value_loss, mb.entropy.mean()


class Algorithm:
    """Subclasses implement ``update(batch) -> metrics``; the optimiser state is saved by
    the trainer, so an algorithm without extra state needs no ``state_dict`` of its own."""

    asynchronous = False  # True: the trainer collects the next rollout during update

    def __init__(
        self,
        policy: torch.nn.Module,
        cfg: MarioConfig,
        optimiser: GradientStepper,
        replay: Any = None,
    ) -> None:
        self.policy = policy
        self.cfg = cfg.algo
        self.replay_cfg = cfg.replay
        self.total_timesteps = cfg.train.total_timesteps
        self.optimiser = optimiser
        self.replay = replay

    def entropy_coef(self, batch: RolloutBatch) -> float:
        """``ent_coef``, or its linear decay to ``ent_coef_final`` over ``ent_decay_steps``
        agent steps (explore early, then let the policy sharpen)."""
        cfg = self.cfg
        if cfg.ent_coef_final is None:
            return cfg.ent_coef
        done = batch.progress * self.total_timesteps / max(1, cfg.ent_decay_steps)
        return cfg.ent_coef + (cfg.ent_coef_final - cfg.ent_coef) * min(1.0, done)

    def total_loss(
        self,
        pg_loss: torch.Tensor,
        value_loss: torch.Tensor,
        entropy: torch.Tensor,
        batch: RolloutBatch,
    ) -> torch.Tensor:
        return pg_loss + self.cfg.vf_coef * value_loss - self.entropy_coef(batch) * entropy

    def finish_update(
        self,
        batch: RolloutBatch,
        returns: torch.Tensor,
        advantages: torch.Tensor,
        explained_variance: float,
        means: dict[str, float],
    ) -> dict[str, float]:
        """Replay (if any), advance the lr schedule, and the metrics every algorithm logs.

        ``means`` holds the update's mean ``pg``, ``value``, ``entropy`` and its ``loss``.
        """
        metrics = store_and_replay(self, batch, returns, advantages)
        learning_rate = self.optimiser.learning_rate
        self.optimiser.end_update()
        return metrics | {
            names.TRAIN_ENTROPY_LOSS: -means["entropy"],
            names.TRAIN_ENT_COEF: self.entropy_coef(batch),
            names.TRAIN_EXPLAINED_VARIANCE: explained_variance,
            names.TRAIN_LEARNING_RATE: learning_rate,
            names.TRAIN_LOSS: means["loss"],
            names.TRAIN_POLICY_GRADIENT_LOSS: means["pg"],
            names.TRAIN_VALUE_LOSS: means["value"],
            names.TRAIN_GRAD_NORM: self.optimiser.last_grad_norm,
        }

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing beyond the optimiser to restore."""

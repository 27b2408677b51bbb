"""Replay strategies: keep recent transitions and hand back weighted samples of them.

Samples carry the behaviour policy's log-probabilities, so the algorithm can correct
the off-policy update with clipped importance ratios (or V-trace). A strategy with
``self_imitation = True`` asks for the self-imitation update instead (imitate what
beat the critic; see ``SelfImitationReplay``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mario_cli.api import ReplaySample
from mario_replay.sumtree import SumTree


class UniformReplay:
    """A ring buffer of transitions sampled uniformly."""

    prioritized = False
    self_imitation = False

    def __init__(self, cfg: Any, obs_shape: tuple[int, ...], seed: int = 0) -> None:
        self.capacity = cfg.replay_capacity
        self.obs = torch.zeros((self.capacity, *obs_shape), dtype=torch.uint8)
        self.actions = torch.zeros(self.capacity, dtype=torch.long)
        self.log_probs = torch.zeros(self.capacity)
        self.returns = torch.zeros(self.capacity)
        self.advantages = torch.zeros(self.capacity)
        self.cursor = 0
        self.count = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.count

    def add(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        log_probs: torch.Tensor,
        returns: torch.Tensor,
        advantages: torch.Tensor,
    ) -> np.ndarray:
        """Store flat transitions (oldest overwritten); returns the slots used."""
        n = obs.shape[0]
        slots = (self.cursor + np.arange(n)) % self.capacity
        index = torch.from_numpy(slots)
        self.obs[index] = obs.cpu()
        self.actions[index] = actions.cpu()
        self.log_probs[index] = log_probs.float().cpu()
        self.returns[index] = returns.float().cpu()
        self.advantages[index] = advantages.float().cpu()
        self.cursor = int((self.cursor + n) % self.capacity)
        self.count = min(self.capacity, self.count + n)
        return slots

    def _gather(self, slots: np.ndarray, weights: np.ndarray, device: torch.device) -> ReplaySample:
        index = torch.from_numpy(slots)
        return ReplaySample(
            obs=self.obs[index].to(device),
            actions=self.actions[index].to(device),
            behaviour_log_probs=self.log_probs[index].to(device),
            returns=self.returns[index].to(device),
            advantages=self.advantages[index].to(device),
            weights=torch.as_tensor(weights, dtype=torch.float32, device=device),
            indices=slots,
        )

    def sample(self, batch_size: int, progress: float, device: torch.device) -> ReplaySample:
        slots = self.rng.integers(0, self.count, size=batch_size)
        return self._gather(slots, np.ones(batch_size), device)

    def update_priorities(self, indices: np.ndarray, errors: np.ndarray) -> None:
        """Uniform replay has no priorities."""


class PrioritizedReplay(UniformReplay):
    """Proportional prioritized replay (Schaul et al. 2016) on a sum tree.

    Priority = (|advantage| + eps) ** alpha; the importance weight of a sample is
    (N * P(i)) ** -beta, normalised by the largest weight in the batch, with beta
    annealed linearly from ``per_beta`` to 1 over training.
    """

    prioritized = True
    EPSILON = 1e-3

    def __init__(self, cfg: Any, obs_shape: tuple[int, ...], seed: int = 0) -> None:
        super().__init__(cfg, obs_shape, seed)
        self.alpha = cfg.per_alpha
        self.beta0 = cfg.per_beta
        self.tree = SumTree(self.capacity)

    def priority(self, errors: np.ndarray) -> np.ndarray:
        return (np.abs(errors) + self.EPSILON) ** self.alpha

    def add(self, obs, actions, log_probs, returns, advantages) -> np.ndarray:  # type: ignore[override]
        slots = super().add(obs, actions, log_probs, returns, advantages)
        self.tree.update(slots, self.priority(advantages.float().cpu().numpy()))
        return slots

    def beta(self, progress: float) -> float:
        return self.beta0 + (1.0 - self.beta0) * min(max(progress, 0.0), 1.0)

    def importance_weights(self, slots: np.ndarray, progress: float) -> np.ndarray:
        probabilities = self.tree[slots] / self.tree.total
        weights = (self.count * probabilities) ** -self.beta(progress)
        return weights / weights.max()

    def sample(self, batch_size: int, progress: float, device: torch.device) -> ReplaySample:
        slots = self.tree.sample(batch_size, self.rng)
        return self._gather(slots, self.importance_weights(slots, progress), device)

    def update_priorities(self, indices: np.ndarray, errors: np.ndarray) -> None:
        self.tree.update(indices, self.priority(errors))


class SelfImitationReplay(PrioritizedReplay):
    """Self-imitation (Oh et al. 2018): replay what turned out better than expected.

    The priority is the clipped gap ``(return - value)+``; the algorithm's update for
    such a strategy imitates the stored action with that gap as its weight and pulls
    the value up to the return, never down. A rare action that paid off (a jump
    delayed by one step before a pit, taken with probability 0.03) is thus learned
    from every time it is replayed, where the on-policy gradient for it scales with
    its small probability and PPO's clip bounds each update.
    """

    self_imitation = True

    def priority(self, errors: np.ndarray) -> np.ndarray:
        return (np.clip(errors, 0.0, None) + self.EPSILON) ** self.alpha

"""Preallocated rollout storage, time-major ``(T, N, ...)``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RolloutBatch:
    """One rollout: what algorithms learn from.

    ``dones[t]`` is 1 when the step at ``t`` ended its episode (terminated or
    truncated); for a truncated step the reward already includes
    ``gamma * V(final_obs)``, so no algorithm bootstraps across an episode end.
    ``last_value`` is the value of the observation after the last step.
    """

    obs: torch.Tensor  # (T, N, *obs_shape) uint8
    actions: torch.Tensor  # (T, N) long
    log_probs: torch.Tensor  # (T, N)
    values: torch.Tensor  # (T, N)
    rewards: torch.Tensor  # (T, N)
    dones: torch.Tensor  # (T, N) float
    last_value: torch.Tensor  # (N,)
    last_obs: torch.Tensor  # (N, *obs_shape)
    initial_state: Any = None  # recurrent state at t=0 (recurrent cores)
    starts: torch.Tensor | None = None  # (T, N): 1 where an episode starts at t
    progress: float = 0.0  # share of total_timesteps done (schedules such as PER's beta)
    policy_version: int = 0  # the learner update count of the weights that collected it
    policy_lag: int = 0  # learner updates made since those weights (0 when synchronous)
    episodes: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        return self.obs.shape[0]

    @property
    def num_envs(self) -> int:
        return self.obs.shape[1]


class RolloutStorage:
    """Fixed buffers written step by step, reused for every rollout."""

    def __init__(
        self, num_steps: int, num_envs: int, obs_shape: tuple[int, ...], device: torch.device
    ) -> None:
        self.num_steps = num_steps
        self.num_envs = num_envs
        self.device = device
        shape = (num_steps, num_envs)
        self.obs = torch.zeros((*shape, *obs_shape), dtype=torch.uint8, device=device)
        self.actions = torch.zeros(shape, dtype=torch.long, device=device)
        self.log_probs = torch.zeros(shape, device=device)
        self.values = torch.zeros(shape, device=device)
        self.rewards = torch.zeros(shape, device=device)
        self.dones = torch.zeros(shape, device=device)
        self.starts = torch.zeros(shape, device=device)
        self.step = 0

    def add(self, *step: torch.Tensor) -> None:
        """Write step ``self.step`` of every env (the tensors ``put`` takes) and move on."""
        self.put(self.step, slice(None), *step)
        self.step += 1

    def put(
        self,
        t: int,
        envs: slice,
        obs: torch.Tensor,
        actions: torch.Tensor,
        log_probs: torch.Tensor,
        values: torch.Tensor,
        rewards: torch.Tensor,
        dones: torch.Tensor,
        starts: torch.Tensor,
    ) -> None:
        """Write step ``t`` of the envs in ``envs`` (a group stepped on its own)."""
        self.obs[t, envs].copy_(obs)
        self.actions[t, envs].copy_(actions)
        self.log_probs[t, envs].copy_(log_probs)
        self.values[t, envs].copy_(values)
        self.rewards[t, envs].copy_(rewards)
        self.dones[t, envs].copy_(dones)
        self.starts[t, envs].copy_(starts)

    @property
    def full(self) -> bool:
        return self.step >= self.num_steps

    def batch(
        self, last_value: torch.Tensor, last_obs: torch.Tensor, initial_state: Any = None
    ) -> RolloutBatch:
        self.step = 0
        return RolloutBatch(
            obs=self.obs,
            actions=self.actions,
            log_probs=self.log_probs,
            values=self.values,
            rewards=self.rewards,
            dones=self.dones,
            last_value=last_value,
            last_obs=last_obs,
            initial_state=initial_state,
            starts=self.starts,
        )

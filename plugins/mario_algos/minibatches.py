"""Minibatches of a rollout, evaluated by the current policy.

Feed-forward policies get shuffled single steps. Recurrent policies get whole env
sequences (columns of the ``(T, N)`` rollout) replayed from their stored initial
state with resets at episode starts, since a shuffled step has no hidden state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mario_cli.api import RolloutBatch


@dataclass
class Minibatch:
    log_probs: Tensor  # under the current policy, with gradients
    entropy: Tensor
    values: Tensor
    old_log_probs: Tensor  # of the behaviour policy that collected the data
    old_values: Tensor
    advantages: Tensor
    returns: Tensor
    actions: Tensor
    obs: Tensor

    @property
    def size(self) -> int:
        return int(self.log_probs.numel())


def iterate_minibatches(
    policy: torch.nn.Module,
    batch: RolloutBatch,
    advantages: Tensor,
    returns: Tensor,
    batch_size: int,
    shuffle: bool = True,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> Iterator[Minibatch]:
    """Minibatches covering the rollout once (``advantages``/``returns`` are ``(T, N)``)."""
    steps, envs = batch.num_steps, batch.num_envs
    device = batch.obs.device
    if getattr(policy, "recurrent", False):
        per_batch = max(1, batch_size // steps)
        order = (
            torch.randperm(envs, device=device) if shuffle else torch.arange(envs, device=device)
        )
        for start in range(0, envs, per_batch):
            cols = order[start : start + per_batch]
            state = policy.select_state(batch.initial_state, cols)
            with autocast():
                log_probs, entropy, values = policy.evaluate_sequence(
                    batch.obs[:, cols], batch.actions[:, cols], state, batch.starts[:, cols]
                )
            yield Minibatch(
                log_probs.reshape(-1).float(),
                entropy.reshape(-1).float(),
                values.reshape(-1).float(),
                batch.log_probs[:, cols].reshape(-1),
                batch.values[:, cols].reshape(-1),
                advantages[:, cols].reshape(-1),
                returns[:, cols].reshape(-1),
                batch.actions[:, cols].reshape(-1),
                batch.obs[:, cols].reshape(-1, *batch.obs.shape[2:]),
            )
        return
    n = steps * envs
    obs = batch.obs.reshape(n, *batch.obs.shape[2:])
    actions = batch.actions.reshape(n)
    flat = {
        "old_log_probs": batch.log_probs.reshape(n),
        "old_values": batch.values.reshape(n),
        "advantages": advantages.reshape(n),
        "returns": returns.reshape(n),
    }
    order = torch.randperm(n, device=device) if shuffle else torch.arange(n, device=device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        # index_select copies whole rows; obs[idx] runs the general gather, ~30x slower
        # for a minibatch of frames.
        mb_obs, mb_actions = obs.index_select(0, idx), actions.index_select(0, idx)
        with autocast():
            log_probs, entropy, values = policy.evaluate_actions(mb_obs, mb_actions)
        yield Minibatch(
            log_probs.float(),
            entropy.float(),
            values.float(),
            flat["old_log_probs"].index_select(0, idx),
            flat["old_values"].index_select(0, idx),
            flat["advantages"].index_select(0, idx),
            flat["returns"].index_select(0, idx),
            mb_actions,
            mb_obs,
        )

"""Minibatches of a rollout, evaluated by the current policy.

Feed-forward policies get shuffled single steps. Recurrent policies get whole env
sequences (columns of the ``(T, N)`` rollout) replayed from their stored initial
state with resets at episode starts, since a shuffled step has no hidden state.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

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


def frames_as_policy_reads(batch: RolloutBatch, policy: nn.Module) -> RolloutBatch:
    """The rollout with its frames copied once into the layout the policy's first
    convolution reads: channels-last on CPU (``build_policy``).

    For an algorithm that reads every frame several times (PPO's epochs): otherwise
    each minibatch's frames are transposed again on every read, ~4% of a PPO update.
    Feed-forward policies only; the values are the same, only the strides change.
    """
    first_conv = next((m for m in policy.modules() if isinstance(m, nn.Conv2d)), None)
    if (
        batch.obs.dim() != 5
        or first_conv is None
        or getattr(policy, "recurrent", False)
        or not first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    ):
        return batch
    frames = batch.obs.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    return dataclasses.replace(batch, obs=frames)


def _rows(obs: Tensor, idx: Tensor) -> Tensor:
    """``obs[idx]`` along the first dim, in ``obs``'s own layout, channels-last included."""
    strided = obs.dim() == 4 and not obs.is_contiguous()
    if strided and obs.is_contiguous(memory_format=torch.channels_last):
        # index_select would return NCHW: gather the NHWC rows and view them back
        return obs.permute(0, 2, 3, 1).index_select(0, idx).permute(0, 3, 1, 2)
    # index_select copies whole rows; obs[idx] runs the general gather, ~30x slower
    # for a minibatch of frames.
    return obs.index_select(0, idx)


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
        mb_obs, mb_actions = _rows(obs, idx), actions.index_select(0, idx)
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

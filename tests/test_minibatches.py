"""PPO / A2C minibatches: every sample once per epoch, each field from the same sample."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mario_algos.minibatches import iterate_minibatches
from mario_cli.training.rollout import RolloutBatch

STEPS, ENVS, BATCH = 6, 4, 5  # 24 samples: four minibatches of 5 and one of 4


class Recorder(nn.Module):
    """A feed-forward "policy" whose outputs echo what it was given."""

    recurrent = False

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Tensor] = []

    def evaluate_actions(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self.seen.append(obs)
        sample = obs[:, 0, 0, 0].float()  # the sample's index, painted into its frames
        return sample, torch.zeros_like(sample), actions.float()


def numbered_batch() -> tuple[RolloutBatch, Tensor, Tensor]:
    """A rollout whose sample i (row-major over steps x envs) carries i in every field."""
    index = torch.arange(STEPS * ENVS).reshape(STEPS, ENVS)
    obs = index.to(torch.uint8)[..., None, None, None].expand(STEPS, ENVS, 4, 3, 3).clone()
    batch = RolloutBatch(
        obs=obs,
        actions=index.clone(),
        log_probs=-index.float(),
        values=index.float() / 10,
        rewards=torch.zeros(STEPS, ENVS),
        dones=torch.zeros(STEPS, ENVS),
        last_value=torch.zeros(ENVS),
        last_obs=obs[0],
    )
    return batch, index.float() * 2, index.float() * 3


def test_each_minibatch_field_comes_from_the_same_samples() -> None:
    batch, advantages, returns = numbered_batch()
    policy = Recorder()
    torch.manual_seed(0)
    seen: list[int] = []
    sizes = []
    for mb in iterate_minibatches(policy, batch, advantages, returns, BATCH):
        sample = mb.log_probs  # the policy's echo of the frames it was given
        sizes.append(mb.size)
        assert torch.equal(mb.values, mb.actions.float())
        assert torch.equal(mb.actions.float(), sample)
        assert torch.equal(mb.old_log_probs, -sample)
        assert torch.equal(mb.old_values, sample / 10)
        assert torch.equal(mb.advantages, sample * 2)
        assert torch.equal(mb.returns, sample * 3)
        assert torch.equal(mb.obs, policy.seen[-1])
        assert mb.obs.shape == (mb.size, 4, 3, 3) and mb.obs.dtype == torch.uint8
        seen.extend(int(i) for i in sample)
    assert sizes == [5, 5, 5, 5, 4]
    assert sorted(seen) == list(range(STEPS * ENVS))  # every sample once
    assert seen != sorted(seen)  # shuffled


def test_unshuffled_minibatches_run_in_rollout_order() -> None:
    batch, advantages, returns = numbered_batch()
    order = [
        int(i)
        for mb in iterate_minibatches(Recorder(), batch, advantages, returns, BATCH, shuffle=False)
        for i in mb.actions
    ]
    assert order == list(range(STEPS * ENVS))

"""PPO / A2C minibatches: every sample once per epoch, each field from the same sample."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mario_algos.minibatches import frames_as_policy_reads, iterate_minibatches
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


class ChannelsLastRecorder(Recorder):
    """A Recorder whose first convolution is channels-last, as on CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 2, 3).to(memory_format=torch.channels_last)


def test_frames_laid_out_once_give_the_same_minibatches_in_the_first_convs_layout() -> None:
    batch, advantages, returns = numbered_batch()
    batch.obs = torch.randint(0, 256, batch.obs.shape, dtype=torch.uint8)
    policy = ChannelsLastRecorder()
    laid_out = frames_as_policy_reads(batch, policy)
    assert torch.equal(laid_out.obs, batch.obs)
    torch.manual_seed(0)
    plain = list(iterate_minibatches(policy, batch, advantages, returns, BATCH))
    torch.manual_seed(0)
    once = list(iterate_minibatches(policy, laid_out, advantages, returns, BATCH))
    assert len(once) == len(plain) == 5
    for a, b in zip(plain, once, strict=True):
        assert torch.equal(a.actions, b.actions)
        assert torch.equal(a.obs, b.obs)
        assert b.obs.is_contiguous(memory_format=torch.channels_last)
    # an NCHW model and a recurrent one read the rollout as it is
    assert frames_as_policy_reads(batch, Recorder()) is batch
    policy.recurrent = True
    assert frames_as_policy_reads(batch, policy) is batch


def test_a_ppo_update_on_frames_laid_out_once_learns_the_same_weights(monkeypatch) -> None:
    import mario_algos.ppo as ppo_module
    from mario_cli.config import MarioConfig
    from mario_cli.training.builders import build_algorithm, build_policy
    from mario_cli.training.device import amp_settings
    from mario_cli.training.optim import GradientStepper

    cfg = MarioConfig()
    cfg.algo.n_steps, cfg.algo.batch_size, cfg.algo.n_epochs = 8, 16, 2
    cfg.env.n_envs = 4
    obs_shape, device = (4, 84, 84), torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    batch = RolloutBatch(
        obs=torch.randint(0, 256, (8, 4, *obs_shape), dtype=torch.uint8, generator=generator),
        actions=torch.randint(0, 7, (8, 4), generator=generator),
        log_probs=torch.full((8, 4), -1.9),
        values=torch.zeros(8, 4),
        rewards=torch.randn(8, 4, generator=generator),
        dones=torch.zeros(8, 4),
        last_value=torch.zeros(4),
        last_obs=torch.zeros((4, *obs_shape), dtype=torch.uint8),
    )

    def weights_after_update(updates: int = 1) -> list[Tensor]:
        torch.manual_seed(0)
        policy, _ = build_policy(cfg, obs_shape, 7, device)
        _, amp_dtype, use_scaler = amp_settings(device, cfg.train.amp)
        stepper = GradientStepper(policy.parameters(), cfg.algo, 10, device, amp_dtype, use_scaler)
        algo = build_algorithm(cfg, policy, stepper, obs_shape)
        for _ in range(updates):
            algo.update(batch)
        return [p.detach().clone() for p in policy.parameters()]

    laid_out = weights_after_update()
    monkeypatch.setattr(ppo_module, "frames_as_policy_reads", lambda batch, policy: batch)
    as_stored = weights_after_update()
    assert all(torch.equal(a, b) for a, b in zip(laid_out, as_stored, strict=True))
    untrained = weights_after_update(updates=0)
    assert not all(torch.equal(a, b) for a, b in zip(laid_out, untrained, strict=True))

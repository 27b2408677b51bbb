"""NoisyLinear layers and the noisy actor-critic heads."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mario_cli.config import load_config
from mario_cli.noisy import NoisyLinear
from mario_cli.policy import ActorCritic
from mario_models.backbones import NatureCNN

OBS_SHAPE = (4, 84, 84)


def _layer(in_features: int = 8, out_features: int = 5, sigma0: float = 0.5) -> NoisyLinear:
    torch.manual_seed(0)
    return NoisyLinear(in_features, out_features, sigma0=sigma0)


def _x(batch: int = 3, features: int = 8) -> torch.Tensor:
    return torch.randn(batch, features, generator=torch.Generator().manual_seed(1))


def _obs(batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, *OBS_SHAPE), dtype=torch.uint8, generator=gen)


def _noisy_policy(n_actions: int = 5, sigma0: float = 0.5) -> ActorCritic:
    torch.manual_seed(0)
    return ActorCritic(NatureCNN(OBS_SHAPE, 32), n_actions, noisy=True, sigma0=sigma0)


def test_initialisation_follows_the_paper() -> None:
    layer = _layer(in_features=16, sigma0=0.3)
    bound = 1 / math.sqrt(16)
    assert (layer.weight_mu.abs() <= bound).all() and (layer.bias_mu.abs() <= bound).all()
    torch.testing.assert_close(layer.weight_sigma, torch.full((5, 16), 0.3 * bound))
    torch.testing.assert_close(layer.bias_sigma, torch.full((5,), 0.3 * bound))
    assert {name for name, _ in layer.named_parameters()} == {
        "weight_mu",
        "weight_sigma",
        "bias_mu",
        "bias_sigma",
    }
    # Noise is resampled, not saved.
    assert set(layer.state_dict()) == {"weight_mu", "weight_sigma", "bias_mu", "bias_sigma"}


def test_noise_is_factorised() -> None:
    layer = _layer()
    eps_out = layer.bias_epsilon
    # W_eps = f(eps_out) f(eps_in)^T is rank one, and its column scale is the bias noise.
    assert torch.linalg.matrix_rank(layer.weight_epsilon).item() == 1
    eps_in = layer.weight_epsilon[0] / eps_out[0]
    torch.testing.assert_close(layer.weight_epsilon, torch.outer(eps_out, eps_in))
    assert (layer.weight_epsilon != 0).all()


def test_train_output_uses_mu_plus_sigma_eps() -> None:
    layer = _layer()
    x = _x()
    weight = layer.weight_mu + layer.weight_sigma * layer.weight_epsilon
    bias = layer.bias_mu + layer.bias_sigma * layer.bias_epsilon
    torch.testing.assert_close(layer(x), F.linear(x, weight, bias))
    assert not torch.allclose(layer(x), F.linear(x, layer.weight_mu, layer.bias_mu))


def test_reset_noise_changes_training_output_only() -> None:
    layer = _layer()
    x = _x()
    first = layer(x)
    torch.testing.assert_close(layer(x), first)  # noise is fixed between resets
    layer.reset_noise()
    second = layer(x)
    assert not torch.allclose(first, second)


def test_eval_and_disabled_noise_use_mu_only() -> None:
    layer = _layer()
    x = _x()
    mu_only = F.linear(x, layer.weight_mu, layer.bias_mu)
    layer.eval()
    first = layer(x)
    layer.reset_noise()
    torch.testing.assert_close(layer(x), first, rtol=0, atol=0)
    torch.testing.assert_close(first, mu_only)
    layer.train()
    layer.noise_enabled = False
    layer.reset_noise()
    torch.testing.assert_close(layer(x), mu_only)
    assert not layer.noisy


def test_gradients_reach_mu_and_sigma() -> None:
    layer = _layer()
    layer(_x()).pow(2).sum().backward()
    for param in layer.parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_noisy_policy_heads() -> None:
    policy = _noisy_policy(n_actions=7, sigma0=0.2)
    assert isinstance(policy.actor, NoisyLinear) and isinstance(policy.critic, NoisyLinear)
    assert policy.actor.sigma0 == policy.critic.sigma0 == 0.2
    w = policy.actor.weight_mu  # orthogonal rows scaled by the actor gain 0.01
    torch.testing.assert_close(w @ w.T, 1e-4 * torch.eye(7), atol=1e-7, rtol=1e-4)
    assert (policy.actor.bias_mu == 0).all() and (policy.critic.bias_mu == 0).all()
    plain = ActorCritic(NatureCNN(OBS_SHAPE, 32), 7)
    assert isinstance(plain.actor, nn.Linear) and not plain.noisy
    assert set(policy.state_dict()) - set(plain.state_dict()) == {
        f"{head}.{name}"
        for head in ("actor", "critic")
        for name in ("weight_mu", "weight_sigma", "bias_mu", "bias_sigma")
    }


def test_policy_reset_noise() -> None:
    policy = _noisy_policy()
    obs = _obs(4)
    with torch.no_grad():
        first = policy(obs)
        policy.reset_noise()
        second = policy(obs)
        assert not torch.allclose(first.value, second.value)
        assert not torch.allclose(first.logits, second.logits)
        policy.eval()
        deterministic = policy(obs)
        policy.reset_noise()
        torch.testing.assert_close(policy(obs).logits, deterministic.logits, rtol=0, atol=0)
        features = policy.backbone(obs)
        torch.testing.assert_close(
            deterministic.value,
            F.linear(features, policy.critic.weight_mu, policy.critic.bias_mu).squeeze(-1),
        )


def test_reset_noise_is_a_no_op_without_noisy_heads() -> None:
    torch.manual_seed(0)
    policy = ActorCritic(NatureCNN(OBS_SHAPE, 32), 5)
    obs = _obs()
    with torch.no_grad():
        before = policy(obs).logits
        policy.reset_noise()
        torch.testing.assert_close(policy(obs).logits, before, rtol=0, atol=0)


def test_noisy_policy_adam_step_changes_sigma() -> None:
    policy = _noisy_policy()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3, eps=1e-5)
    before = {k: v.detach().clone() for k, v in policy.named_parameters()}
    obs = _obs(4)
    actions = torch.tensor([0, 1, 2, 3])
    policy.reset_noise()
    log_probs, entropy, values = policy.evaluate_actions(obs, actions)
    advantages = torch.tensor([1.0, -1.0, 0.5, 2.0])
    loss = -(log_probs * advantages).mean() + (values - 5.0).pow(2).mean() - 0.01 * entropy.mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = {k for k, v in policy.named_parameters() if not torch.equal(v, before[k])}
    assert changed == set(before)
    for name in ("actor.weight_sigma", "actor.bias_sigma", "critic.weight_sigma"):
        assert name in changed


@pytest.mark.parametrize("noisy", [False, True])
def test_build_policy_honours_noisy(noisy: bool) -> None:
    from mario_cli.training.builders import build_policy

    cfg = load_config(
        cli_overrides={
            "model": {"backbone": "nature", "hidden_size": 32, "noisy": noisy, "noisy_sigma0": 0.3}
        },
        environ={},
    )
    policy, name = build_policy(cfg, OBS_SHAPE, 7, torch.device("cpu"))
    assert name == "nature"
    assert policy.noisy is noisy
    assert isinstance(policy.actor, NoisyLinear) is noisy
    if noisy:
        assert policy.critic.sigma0 == 0.3


def test_the_trainer_collects_rollouts_with_the_noise_on(tmp_path) -> None:
    from mario_cli.training.trainer import Trainer

    cfg = load_config(
        cli_overrides={
            "env": {"n_envs": 2, "vector_mode": "sync"},
            "model": {"noisy": True},
            "algo": {"n_steps": 8, "batch_size": 16},
            # float32: the check below recomputes the log-probs without autocast
            "train": {"total_timesteps": 16, "amp": False, "artifacts_dir": str(tmp_path)},
        },
        environ={},
    )
    trainer = Trainer(cfg)
    try:
        trainer._setup()
        trainer.collector.reset(0, trainer.policy, 0)
        batch = trainer._collect_sync()
        obs, actions = batch.obs.flatten(0, 1), batch.actions.flatten()
        with torch.no_grad():
            noisy_log_probs, _, _ = trainer.policy.evaluate_actions(obs, actions)
            trainer.policy.eval()
            _, _, mean_values = trainer.policy.evaluate_actions(obs, actions)
    finally:
        trainer._close()
    # The rollout was acted with this rollout's noise (what the update will see) ...
    assert torch.allclose(batch.log_probs.flatten(), noisy_log_probs, atol=1e-5)
    # ... not with the noise-free mean weights that eval uses.
    assert not torch.allclose(batch.values.flatten(), mean_values, atol=1e-4)

"""PPO learns, on a tiny fake env (pure logic: no emulator)."""

from __future__ import annotations

import torch
from torch import nn

from mario_algos.ppo import PPO
from mario_cli.config import MarioConfig
from mario_cli.policy import ActorCritic
from mario_cli.training.optim import GradientStepper
from mario_cli.training.rollout import RolloutStorage


class TinyBackbone(nn.Module):
    out_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.ReLU())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.float() / 255.0)


def test_ppo_learns_the_rewarded_action_for_each_observation() -> None:
    """Two observations; each pays 1 for a different one of 4 actions, 0 otherwise."""
    torch.manual_seed(0)
    cfg = MarioConfig()
    cfg.algo.n_steps, cfg.algo.batch_size, cfg.algo.n_epochs = 32, 64, 4
    cfg.algo.learning_rate, cfg.algo.ent_coef, cfg.algo.target_kl = 3e-3, 0.0, None
    n_envs, device = 8, torch.device("cpu")
    policy = ActorCritic(TinyBackbone(), n_actions=4)
    optimiser = GradientStepper(policy.parameters(), cfg.algo, total_updates=40, device=device)
    ppo = PPO(policy, cfg, optimiser)
    storage = RolloutStorage(cfg.algo.n_steps, n_envs, (1, 4), device)
    observations = torch.tensor([[[0, 0, 0, 0]], [[255, 255, 255, 255]]], dtype=torch.uint8)
    correct = torch.tensor([1, 3])

    def accuracy() -> float:
        with torch.no_grad():
            return (policy(observations).logits.softmax(-1)[[0, 1], correct]).mean().item()

    before = accuracy()
    for _ in range(40):
        for _ in range(cfg.algo.n_steps):
            kind = torch.randint(0, 2, (n_envs,))
            obs = observations[kind]
            with torch.no_grad():
                actions, log_probs, values, _ = policy.act(obs)
            rewards = (actions == correct[kind]).float()
            dones = torch.ones(n_envs)  # one-step episodes
            storage.add(obs, actions, log_probs, values, rewards, dones, dones)
        metrics = ppo.update(storage.batch(torch.zeros(n_envs), obs))
    after = accuracy()
    assert before < 0.4
    assert after > 0.9, f"probability of the right action only {after:.2f}"
    with torch.no_grad():
        values = policy(observations).value
    assert torch.allclose(values, torch.full((2,), after), atol=0.15)  # V ~ expected reward
    assert 0 <= metrics["train/clip_fraction"] <= 1 and metrics["train/learning_rate"] > 0

"""PPO: clipped surrogate objective over minibatches x epochs, with GAE returns."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mario_algos.offpolicy import add_to_replay, replay_update
from mario_algos.returns import explained_variance, gae
from mario_cli.config import MarioConfig
from mario_cli.training.optim import Optimiser
from mario_cli.training.rollout import RolloutBatch


class PPO:
    """Proximal Policy Optimization (Schulman et al. 2017), Stable-Baselines3's metrics.

    ``target_kl`` is a loose fuse, as in Stable-Baselines3: the epoch loop stops
    once a minibatch's approximate KL exceeds 1.5 x target_kl.
    """

    def __init__(
        self, policy: torch.nn.Module, cfg: MarioConfig, optimiser: Optimiser, replay: Any = None
    ) -> None:
        self.policy = policy
        self.cfg = cfg.algo
        self.replay_cfg = cfg.replay
        self.optimiser = optimiser
        self.replay = replay

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        cfg = self.cfg
        advantages, returns = gae(
            batch.rewards, batch.values, batch.dones, batch.last_value, cfg.gamma, cfg.gae_lambda
        )
        n = batch.num_steps * batch.num_envs
        obs = batch.obs.reshape(n, *batch.obs.shape[2:])
        actions = batch.actions.reshape(n)
        old_log_probs = batch.log_probs.reshape(n)
        old_values = batch.values.reshape(n)
        advantages = advantages.reshape(n)
        returns = returns.reshape(n)
        batch_size = min(cfg.batch_size, n)

        pg_losses, value_losses, entropies, kls, clip_fractions = [], [], [], [], []
        loss = torch.zeros(())
        stopped_early = False
        for _ in range(cfg.n_epochs):
            order = torch.randperm(n, device=obs.device)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                with self.optimiser.autocast():
                    log_probs, entropy, values = self.policy.evaluate_actions(
                        obs[idx], actions[idx]
                    )
                log_probs, entropy, values = log_probs.float(), entropy.float(), values.float()
                adv = advantages[idx]
                if cfg.normalize_advantage and len(idx) > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                log_ratio = log_probs - old_log_probs[idx]
                ratio = log_ratio.exp()
                pg_loss = -torch.min(
                    adv * ratio, adv * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)
                ).mean()
                if cfg.clip_range_vf is None:
                    predicted = values
                else:
                    old = old_values[idx]
                    predicted = old + (values - old).clamp(-cfg.clip_range_vf, cfg.clip_range_vf)
                value_loss = (returns[idx] - predicted).pow(2).mean()
                entropy_mean = entropy.mean()
                loss = pg_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy_mean

                with torch.no_grad():
                    approx_kl = ((ratio - 1) - log_ratio).mean().item()
                    clip_fractions.append(
                        ((ratio - 1).abs() > cfg.clip_range).float().mean().item()
                    )
                kls.append(approx_kl)
                pg_losses.append(pg_loss.item())
                value_losses.append(value_loss.item())
                entropies.append(entropy_mean.item())
                if cfg.target_kl is not None and approx_kl > 1.5 * cfg.target_kl:
                    stopped_early = True
                    break
                self.optimiser.backward(loss)
            if stopped_early:
                break
        metrics: dict[str, float] = {}
        if self.replay is not None:
            add_to_replay(self.replay, obs, actions, old_log_probs, returns, advantages)
            metrics = replay_update(
                self.policy,
                self.optimiser,
                self.replay,
                cfg,
                self.replay_cfg.replay_batch_size,
                batch.progress,
                obs.device,
            )
        learning_rate = self.optimiser.learning_rate
        self.optimiser.end_update()
        return metrics | {
            "train/approx_kl": float(np.mean(kls)),
            "train/clip_fraction": float(np.mean(clip_fractions)),
            "train/clip_range": cfg.clip_range,
            "train/entropy_loss": -float(np.mean(entropies)),
            "train/explained_variance": explained_variance(old_values, returns),
            "train/learning_rate": learning_rate,
            "train/loss": float(loss.item()),
            "train/policy_gradient_loss": float(np.mean(pg_losses)),
            "train/value_loss": float(np.mean(value_losses)),
            "train/grad_norm": self.optimiser.last_grad_norm,
            "train/stopped_early": float(stopped_early),
        }

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

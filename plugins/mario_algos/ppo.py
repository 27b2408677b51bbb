"""PPO: clipped surrogate objective over minibatches x epochs, with GAE returns."""

from __future__ import annotations

import numpy as np
import torch

from mario_algos.base import Algorithm
from mario_algos.minibatches import frames_as_policy_reads, iterate_minibatches
from mario_algos.returns import explained_variance, gae
from mario_cli.api import RolloutBatch
from mario_cli.api import metric_names as names


class PPO(Algorithm):
    """Proximal Policy Optimization (Schulman et al. 2017), Stable-Baselines3's metrics.

    ``target_kl`` is a loose fuse, as in Stable-Baselines3: the epoch loop stops
    once a minibatch's approximate KL exceeds 1.5 x target_kl.
    """

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        cfg = self.cfg
        advantages, returns = gae(
            batch.rewards, batch.values, batch.dones, batch.last_value, cfg.gamma, cfg.gae_lambda
        )
        frames = frames_as_policy_reads(batch, self.policy)  # read n_epochs times
        pg_losses, value_losses, entropies, kls, clip_fractions = [], [], [], [], []
        loss = torch.zeros(())
        stopped_early = False
        for _ in range(cfg.n_epochs):
            for mb in iterate_minibatches(
                self.policy,
                frames,
                advantages,
                returns,
                cfg.batch_size,
                True,
                self.optimiser.autocast,
            ):
                adv = mb.advantages
                if cfg.normalize_advantage and mb.size > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                log_ratio = mb.log_probs - mb.old_log_probs
                ratio = log_ratio.exp()
                pg_loss = -torch.min(
                    adv * ratio, adv * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)
                ).mean()
                predicted = mb.values
                if cfg.clip_range_vf is not None:
                    delta = (mb.values - mb.old_values).clamp(-cfg.clip_range_vf, cfg.clip_range_vf)
                    predicted = mb.old_values + delta
                value_loss = (mb.returns - predicted).pow(2).mean()
                entropy_mean = mb.entropy.mean()
                loss = self.total_loss(pg_loss, value_loss, entropy_mean, batch)

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
        means = {
            "pg": float(np.mean(pg_losses)),
            "value": float(np.mean(value_losses)),
            "entropy": float(np.mean(entropies)),
            "loss": float(loss.item()),
        }
        explained = explained_variance(batch.values, returns)
        return self.finish_update(batch, returns, advantages, explained, means) | {
            names.TRAIN_APPROX_KL: float(np.mean(kls)),
            names.TRAIN_CLIP_FRACTION: float(np.mean(clip_fractions)),
            names.TRAIN_CLIP_RANGE: cfg.clip_range,
            names.TRAIN_STOPPED_EARLY: float(stopped_early),
        }

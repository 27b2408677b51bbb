"""IMPALA: an actor thread collects with stale weights while the learner updates;
V-trace corrects the policy lag (Espeholt et al. 2018).

The V-trace targets are computed once per rollout under the current learner (they
need the whole sequence), then one pass of minibatch SGD uses them.
"""

from __future__ import annotations

import numpy as np
import torch

from mario_algos.base import Algorithm
from mario_algos.minibatches import iterate_minibatches
from mario_algos.offpolicy import store_and_replay
from mario_algos.returns import explained_variance, vtrace
from mario_cli.api import RolloutBatch


class Impala(Algorithm):
    # The trainer runs collection in a background actor thread for this algorithm.
    asynchronous = True

    @torch.no_grad()
    def _targets(self, batch: RolloutBatch) -> tuple[torch.Tensor, ...]:
        """Learner log-probs and values of the whole rollout, then V-trace."""
        steps, envs = batch.num_steps, batch.num_envs
        with self.optimiser.autocast():
            if getattr(self.policy, "recurrent", False):
                log_probs, _, values = self.policy.evaluate_sequence(
                    batch.obs, batch.actions, batch.initial_state, batch.starts
                )
                bootstrap = batch.last_value  # the actor's: the final recurrent state is not kept
            else:
                obs = batch.obs.reshape(steps * envs, *batch.obs.shape[2:])
                log_probs, _, values = self.policy.evaluate_actions(obs, batch.actions.reshape(-1))
                bootstrap = self.policy(batch.last_obs).value
        log_probs = log_probs.float().reshape(steps, envs)
        values = values.float().reshape(steps, envs)
        discounts = self.cfg.gamma * (1.0 - batch.dones)
        vs, pg_advantages = vtrace(
            batch.log_probs, log_probs, batch.rewards, values, bootstrap.float(), discounts
        )
        rho = (log_probs - batch.log_probs).exp().clamp(max=1.0)
        return vs, pg_advantages, values, rho

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        cfg = self.cfg
        vs, pg_advantages, learner_values, rho = self._targets(batch)
        pg_losses, value_losses, entropies = [], [], []
        loss = torch.zeros(())
        for mb in iterate_minibatches(
            self.policy, batch, pg_advantages, vs, cfg.batch_size, True, self.optimiser.autocast
        ):
            pg_loss = -(mb.advantages * mb.log_probs).mean()
            value_loss = (mb.returns - mb.values).pow(2).mean()
            entropy_mean = mb.entropy.mean()
            loss = pg_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy_mean
            self.optimiser.backward(loss)
            pg_losses.append(pg_loss.item())
            value_losses.append(value_loss.item())
            entropies.append(entropy_mean.item())
        metrics = store_and_replay(self, batch, vs, pg_advantages)
        learning_rate = self.optimiser.learning_rate
        self.optimiser.end_update()
        return metrics | {
            "train/policy_lag": float(batch.policy_lag),
            "train/mean_rho": float(rho.mean().item()),
            "train/entropy_loss": -float(np.mean(entropies)),
            "train/explained_variance": explained_variance(learner_values, vs),
            "train/learning_rate": learning_rate,
            "train/loss": float(loss.item()),
            "train/policy_gradient_loss": float(np.mean(pg_losses)),
            "train/value_loss": float(np.mean(value_losses)),
            "train/grad_norm": self.optimiser.last_grad_norm,
        }

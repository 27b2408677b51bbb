"""IMPALA: an actor thread collects with stale weights while the learner updates;
V-trace corrects the policy lag (Espeholt et al. 2018).

The V-trace targets are computed once per rollout under the current learner (they
need the whole sequence), then one pass of minibatch SGD uses them.
"""

from __future__ import annotations

import numpy as np
import torch

from mario_algos.base import Algorithm, actor_critic_terms
from mario_algos.minibatches import frames_as_policy_reads, iterate_minibatches
from mario_algos.returns import explained_variance, vtrace
from mario_cli.api import RolloutBatch
from mario_cli.api import metric_names as names


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
        own = self.cfg.settings_of("impala")
        vs, pg_advantages = vtrace(
            batch.log_probs,
            log_probs,
            batch.rewards,
            values,
            bootstrap.float(),
            discounts,
            clip_rho=own.clip_rho,
            clip_c=own.clip_c,
            clip_pg_rho=own.clip_pg_rho,
        )
        rho = (log_probs - batch.log_probs).exp().clamp(max=own.clip_rho)
        return vs, pg_advantages, values, rho

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        cfg = self.cfg
        batch = frames_as_policy_reads(batch, self.policy)  # read twice: targets, minibatches
        vs, pg_advantages, learner_values, rho = self._targets(batch)
        pg_losses, value_losses, entropies = [], [], []
        loss = torch.zeros(())
        for mb in iterate_minibatches(
            self.policy, batch, pg_advantages, vs, cfg.batch_size, True, self.optimiser.autocast
        ):
            pg_loss, value_loss, entropy_mean = actor_critic_terms(mb)
            loss = self.total_loss(pg_loss, value_loss, entropy_mean, batch)
            self.optimiser.backward(loss)
            pg_losses.append(pg_loss.item())
            value_losses.append(value_loss.item())
            entropies.append(entropy_mean.item())
        means = {
            "pg": float(np.mean(pg_losses)),
            "value": float(np.mean(value_losses)),
            "entropy": float(np.mean(entropies)),
            "loss": float(loss.item()),
        }
        explained = explained_variance(learner_values, vs)
        return self.finish_update(batch, vs, pg_advantages, explained, means) | {
            names.TRAIN_POLICY_LAG: float(batch.policy_lag),
            names.TRAIN_MEAN_RHO: float(rho.mean().item()),
        }

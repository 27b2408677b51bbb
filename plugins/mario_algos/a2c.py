"""A2C: synchronous advantage actor-critic (the batched member of the A3C family).

One gradient step per rollout on the whole batch, with GAE(lambda) returns
(lambda = 1 gives the classic n-step returns of A3C).
"""

from __future__ import annotations

from mario_algos.base import Algorithm
from mario_algos.minibatches import iterate_minibatches
from mario_algos.offpolicy import store_and_replay
from mario_algos.returns import explained_variance, gae
from mario_cli.api import RolloutBatch


class A2C(Algorithm):
    def update(self, batch: RolloutBatch) -> dict[str, float]:
        cfg = self.cfg
        advantages, returns = gae(
            batch.rewards, batch.values, batch.dones, batch.last_value, cfg.gamma, cfg.gae_lambda
        )
        n = batch.num_steps * batch.num_envs
        totals = {"pg": 0.0, "value": 0.0, "entropy": 0.0, "loss": 0.0}
        # Chunks only bound memory: their losses add up to one full-batch gradient step.
        for mb in iterate_minibatches(
            self.policy,
            batch,
            advantages,
            returns,
            cfg.batch_size,
            False,
            self.optimiser.autocast,
        ):
            share = mb.size / n
            pg_loss = -(mb.advantages * mb.log_probs).mean()
            value_loss = (mb.returns - mb.values).pow(2).mean()
            entropy_mean = mb.entropy.mean()
            loss = pg_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy_mean
            self.optimiser.accumulate(loss * share)
            for key, value in (
                ("pg", pg_loss),
                ("value", value_loss),
                ("entropy", entropy_mean),
                ("loss", loss),
            ):
                totals[key] += float(value.item()) * share
        self.optimiser.step()
        metrics = store_and_replay(self, batch, returns, advantages)
        learning_rate = self.optimiser.learning_rate
        self.optimiser.end_update()
        metrics.update(
            {
                "train/entropy_loss": -totals["entropy"],
                "train/explained_variance": explained_variance(batch.values, returns),
                "train/learning_rate": learning_rate,
                "train/loss": totals["loss"],
                "train/policy_gradient_loss": totals["pg"],
                "train/value_loss": totals["value"],
                "train/grad_norm": self.optimiser.last_grad_norm,
            }
        )
        return metrics

"""A2C: synchronous advantage actor-critic (the batched member of the A3C family).

One gradient step per rollout on the whole batch, with GAE(lambda) returns
(lambda = 1 gives the classic n-step returns of A3C).
"""

from __future__ import annotations

from mario_algos.base import Algorithm, actor_critic_terms
from mario_algos.minibatches import iterate_minibatches
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
            pg_loss, value_loss, entropy_mean = actor_critic_terms(mb)
            loss = self.total_loss(pg_loss, value_loss, entropy_mean, batch)
            self.optimiser.accumulate(loss * share)
            for key, value in (
                ("pg", pg_loss),
                ("value", value_loss),
                ("entropy", entropy_mean),
                ("loss", loss),
            ):
                totals[key] += float(value.item()) * share
        self.optimiser.step()
        explained = explained_variance(batch.values, returns)
        return self.finish_update(batch, returns, advantages, explained, totals)

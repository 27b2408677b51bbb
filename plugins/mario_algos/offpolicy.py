"""The extra update from a replay strategy, corrected for being off-policy.

Replayed transitions were collected by older policies: the policy-gradient term
is weighted by the clipped importance ratio min(rho_clip, pi/mu) (detached, as in
V-trace's truncated ratios) and by the replay's importance weights (prioritized
sampling bias); the value term regresses the stored return targets. A self-imitation strategy gets
its own update: imitate the stored action weighted by ``(return - value)+``, and pull
the value up to such returns only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mario_cli.api import GradientStepper
from mario_cli.api import metric_names as names

RHO_CLIP = 1.0


def store_and_replay(
    algorithm: Any,
    batch: Any,
    returns: torch.Tensor,
    advantages: torch.Tensor,
) -> dict[str, float]:
    """Add the rollout (with its return and advantage targets) to the algorithm's
    replay, then make the extra weighted update; {} without replay."""
    replay = algorithm.replay
    if replay is None:
        return {}
    n = batch.num_steps * batch.num_envs
    replay.add(
        batch.obs.reshape(n, *batch.obs.shape[2:]),
        batch.actions.reshape(n),
        batch.log_probs.reshape(n),
        returns.reshape(n),
        advantages.reshape(n),
    )
    return replay_update(
        algorithm.policy,
        algorithm.optimiser,
        replay,
        algorithm.cfg,
        algorithm.replay_cfg.replay_batch_size,
        batch.progress,
        batch.obs.device,
        algorithm.entropy_coef(batch),
    )


def replay_update(
    policy: torch.nn.Module,
    optimiser: GradientStepper,
    replay: Any,
    cfg: Any,
    batch_size: int,
    progress: float,
    device: torch.device,
    ent_coef: float | None = None,
) -> dict[str, float]:
    """One weighted update on a replay sample; returns replay/* metrics."""
    if len(replay) < batch_size:
        return {}
    optimiser.flush()  # the main update's leftover gradients are not the replay's
    sample = replay.sample(batch_size, progress, device)
    with optimiser.autocast():
        log_probs, entropy, values = policy.evaluate_actions(sample.obs, sample.actions)
    log_probs, entropy, values = log_probs.float(), entropy.float(), values.float()
    with torch.no_grad():
        ratio = (log_probs - sample.behaviour_log_probs).exp()
        clipped = ratio.clamp(max=RHO_CLIP)
    weights = sample.weights
    ent_coef = cfg.ent_coef if ent_coef is None else ent_coef
    if getattr(replay, "self_imitation", False):
        # Imitate what beat the current critic; the value only rises to such returns.
        gap = (sample.returns - values).clamp(min=0)
        pg_loss = -(weights * gap.detach() * log_probs).mean()
        value_loss = (weights * gap.pow(2)).mean()
        loss = pg_loss + cfg.vf_coef * value_loss
    else:
        pg_loss = -(weights * clipped * sample.advantages * log_probs).mean()
        value_loss = (weights * (sample.returns - values).pow(2)).mean()
        loss = pg_loss + cfg.vf_coef * value_loss - ent_coef * entropy.mean()
    optimiser.accumulate(loss)
    optimiser.step()
    errors = (sample.returns - values).detach().cpu().numpy()
    replay.update_priorities(sample.indices, errors)
    return {
        names.REPLAY_POLICY_LOSS: float(pg_loss.item()),
        names.REPLAY_VALUE_LOSS: float(value_loss.item()),
        names.REPLAY_MEAN_RATIO: float(clipped.mean().item()),
        names.REPLAY_MEAN_WEIGHT: float(weights.mean().item()),
        names.REPLAY_SIZE: float(len(replay)),
        names.REPLAY_PRIORITY_SPREAD: float(np.ptp(np.abs(errors))) if len(errors) else 0.0,
    }

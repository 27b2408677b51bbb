"""Return and advantage estimators over time-major ``[T, N]`` tensors."""

from __future__ import annotations

import math

import torch
from torch import Tensor


@torch.no_grad()
def gae(
    rewards: Tensor,
    values: Tensor,
    dones: Tensor,
    last_value: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016).

    ``dones[t]`` is 1 when step ``t`` ended its episode, so nothing is bootstrapped
    across it; ``last_value`` ``[N]`` is the value after the last step.
    Returns ``(advantages, returns)`` with ``returns = advantages + values``.
    """
    not_done = 1.0 - dones.to(rewards.dtype)
    advantages = torch.empty_like(rewards)
    next_value = last_value.to(rewards.dtype)
    running = torch.zeros_like(next_value)
    for t in range(rewards.shape[0] - 1, -1, -1):
        delta = rewards[t] + gamma * not_done[t] * next_value - values[t]
        running = delta + gamma * lam * not_done[t] * running
        advantages[t] = running
        next_value = values[t]
    return advantages, advantages + values


def _clip(x: Tensor, limit: float | None) -> Tensor:
    return x if limit is None else x.clamp(max=limit)


@torch.no_grad()
def vtrace(
    behaviour_logp: Tensor,
    target_logp: Tensor,
    rewards: Tensor,
    values: Tensor,
    bootstrap_value: Tensor,
    discounts: Tensor,
    clip_rho: float | None = 1.0,
    clip_c: float | None = 1.0,
    clip_pg_rho: float | None = 1.0,
) -> tuple[Tensor, Tensor]:
    """V-trace targets (Espeholt et al. 2018); returns ``(vs, pg_advantages)``.

    ``discounts[t]`` is ``gamma * (1 - done[t])``; ``bootstrap_value`` ``[N]`` is
    ``V(x_T)``. A clip of ``None`` disables that truncation.
    """
    ratios = torch.exp(target_logp - behaviour_logp)
    rhos = _clip(ratios, clip_rho)
    cs = _clip(ratios, clip_c)
    values_next = torch.cat([values[1:], bootstrap_value.unsqueeze(0)], dim=0)
    deltas = rhos * (rewards + discounts * values_next - values)

    vs_minus_v = torch.empty_like(values)
    running = torch.zeros_like(bootstrap_value)
    for t in range(values.shape[0] - 1, -1, -1):
        running = deltas[t] + discounts[t] * cs[t] * running
        vs_minus_v[t] = running
    vs = vs_minus_v + values

    vs_next = torch.cat([vs[1:], bootstrap_value.unsqueeze(0)], dim=0)
    pg_advantages = _clip(ratios, clip_pg_rho) * (rewards + discounts * vs_next - values)
    return vs, pg_advantages


def explained_variance(y_pred: Tensor, y_true: Tensor) -> float:
    """``1 - Var[y - ŷ] / Var[y]``; nan when ``y`` is constant."""
    y_true = y_true.detach().flatten().double()
    y_pred = y_pred.detach().flatten().double()
    if y_true.numel() == 0:
        return math.nan
    var_y = torch.var(y_true, correction=0)
    if var_y.item() == 0.0:
        return math.nan
    return float(1.0 - torch.var(y_true - y_pred, correction=0) / var_y)

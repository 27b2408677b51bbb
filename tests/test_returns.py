"""GAE, V-trace and explained variance against slow references from the papers."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from mario_algos.returns import explained_variance, gae, vtrace

T, N = 7, 3


def _episode_data(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    dones = torch.zeros(T, N, dtype=torch.float64)
    dones[2, 0] = dones[5, 0] = 1.0  # two episode ends inside column 0
    dones[0, 1] = 1.0  # an end right at the start of column 1
    dones[T - 1, 2] = 1.0  # an end on the final step of column 2
    return {
        "rewards": torch.randn(T, N, generator=gen, dtype=torch.float64),
        "values": torch.randn(T, N, generator=gen, dtype=torch.float64),
        "last_value": torch.randn(N, generator=gen, dtype=torch.float64),
        "dones": dones,
        "behaviour_logp": -torch.rand(T, N, generator=gen, dtype=torch.float64) * 2,
        "target_logp": -torch.rand(T, N, generator=gen, dtype=torch.float64) * 2,
    }


def _gae_reference(rewards, values, dones, last_value, gamma, lam):
    """A_t = sum_l (gamma*lam)^l delta_{t+l}, truncated at the episode end."""
    adv = torch.zeros_like(rewards)
    for n in range(rewards.shape[1]):
        v = [float(x) for x in values[:, n]] + [float(last_value[n])]
        for t in range(rewards.shape[0]):
            total, weight = 0.0, 1.0
            for k in range(t, rewards.shape[0]):
                alive = 1.0 - float(dones[k, n])
                delta = float(rewards[k, n]) + gamma * alive * v[k + 1] - v[k]
                total += weight * delta
                if alive == 0.0:
                    break
                weight *= gamma * lam
            adv[t, n] = total
    return adv


def _vtrace_reference(blp, tlp, rewards, values, bootstrap, discounts, rho_bar, c_bar, pg_bar):
    """Paper eq. 1: v_s = V(x_s) + sum_{t>=s} (prod_{i<t} disc_i c_i) delta_t."""
    steps, cols = rewards.shape
    vs = torch.zeros_like(values)
    pg = torch.zeros_like(values)

    def clip(x, bar):
        return x if bar is None else min(bar, x)

    for n in range(cols):
        v = [float(x) for x in values[:, n]] + [float(bootstrap[n])]
        ratio = [math.exp(float(tlp[t, n]) - float(blp[t, n])) for t in range(steps)]
        delta = [
            clip(ratio[t], rho_bar)
            * (float(rewards[t, n]) + float(discounts[t, n]) * v[t + 1] - v[t])
            for t in range(steps)
        ]
        for s in range(steps):
            total = v[s]
            for t in range(s, steps):
                coef = 1.0
                for i in range(s, t):
                    coef *= float(discounts[i, n]) * clip(ratio[i], c_bar)
                total += coef * delta[t]
            vs[s, n] = total
        for s in range(steps):
            v_next = float(vs[s + 1, n]) if s + 1 < steps else v[steps]
            q = float(rewards[s, n]) + float(discounts[s, n]) * v_next
            pg[s, n] = clip(ratio[s], pg_bar) * (q - v[s])
    return vs, pg


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("gamma", "lam"), [(0.99, 0.95), (0.9, 0.0), (0.8, 1.0)])
def test_gae_matches_reference(seed: int, gamma: float, lam: float) -> None:
    d = _episode_data(seed)
    adv, ret = gae(d["rewards"], d["values"], d["dones"], d["last_value"], gamma, lam)
    expected = _gae_reference(d["rewards"], d["values"], d["dones"], d["last_value"], gamma, lam)
    assert_close(adv, expected)
    assert_close(ret, expected + d["values"])


def test_gae_accepts_bool_dones_and_float32() -> None:
    d = _episode_data(3)
    args = (d["rewards"].float(), d["values"].float())
    adv, _ = gae(*args, d["dones"].bool(), d["last_value"].float(), 0.99, 0.95)
    expected, _ = gae(d["rewards"], d["values"], d["dones"], d["last_value"], 0.99, 0.95)
    assert adv.dtype == torch.float32
    assert_close(adv, expected.float())


def test_gae_lambda_one_is_monte_carlo_minus_values() -> None:
    gamma = 0.9
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    values = torch.tensor([[0.5], [-1.0], [2.0], [0.0], [1.5]])
    dones = torch.tensor([[0.0], [1.0], [0.0], [0.0], [0.0]])
    last_value = torch.tensor([10.0])
    adv, ret = gae(rewards, values, dones, last_value, gamma, 1.0)
    # Episode 1 is steps 0-1 (terminal), episode 2 runs 2-4 and is cut off, so bootstrap.
    mc = [
        1.0 + gamma * 2.0,
        2.0,
        3.0 + gamma * 4.0 + gamma**2 * 5.0 + gamma**3 * 10.0,
        4.0 + gamma * 5.0 + gamma**2 * 10.0,
        5.0 + gamma * 10.0,
    ]
    assert_close(ret, torch.tensor(mc).unsqueeze(1))
    assert_close(adv, torch.tensor(mc).unsqueeze(1) - values)


def test_gae_hand_computed_three_steps() -> None:
    rewards = torch.tensor([[1.0], [0.0], [2.0]], dtype=torch.float64)
    values = torch.tensor([[0.5], [0.4], [0.3]], dtype=torch.float64)
    dones = torch.tensor([[0.0], [1.0], [0.0]], dtype=torch.float64)
    adv, ret = gae(rewards, values, dones, torch.tensor([1.0], dtype=torch.float64), 0.9, 0.8)
    # delta = [1 + .9*.4 - .5, 0 - .4, 2 + .9*1 - .3] = [.86, -.4, 2.6]
    # A_0 = .86 + .9*.8*(-.4) = .572; A_1 = -.4 (episode ended); A_2 = 2.6
    assert_close(adv, torch.tensor([[0.572], [-0.4], [2.6]], dtype=torch.float64))
    assert_close(ret, torch.tensor([[1.072], [0.0], [2.9]], dtype=torch.float64))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("rho_bar", "c_bar", "pg_bar"), [(1.0, 1.0, 1.0), (2.0, 0.5, 1.5), (None, None, None)]
)
def test_vtrace_matches_paper_equation(seed, rho_bar, c_bar, pg_bar) -> None:
    d = _episode_data(seed)
    discounts = 0.95 * (1.0 - d["dones"])
    args = (d["behaviour_logp"], d["target_logp"], d["rewards"], d["values"], d["last_value"])
    vs, pg = vtrace(*args, discounts, clip_rho=rho_bar, clip_c=c_bar, clip_pg_rho=pg_bar)
    ref_vs, ref_pg = _vtrace_reference(*args, discounts, rho_bar, c_bar, pg_bar)
    assert_close(vs, ref_vs)
    assert_close(pg, ref_pg)


def test_vtrace_clipping_is_active_on_random_data() -> None:
    d = _episode_data(0)
    discounts = 0.95 * (1.0 - d["dones"])
    args = (d["behaviour_logp"], d["target_logp"], d["rewards"], d["values"], d["last_value"])
    clipped, _ = vtrace(*args, discounts)
    unclipped, _ = vtrace(*args, discounts, clip_rho=None, clip_c=None, clip_pg_rho=None)
    assert (d["target_logp"] > d["behaviour_logp"]).any()
    assert not torch.allclose(clipped, unclipped)


def test_vtrace_on_policy_is_n_step_bellman_target() -> None:
    d = _episode_data(4)
    discounts = 0.9 * (1.0 - d["dones"])
    logp = d["behaviour_logp"]
    vs, pg = vtrace(logp, logp.clone(), d["rewards"], d["values"], d["last_value"], discounts)
    # On-policy: v_s = sum_{t>=s} (prod_{i<t} disc_i) r_t + (prod_i disc_i) V(x_T).
    target = torch.zeros(T, N, dtype=torch.float64)
    for n in range(N):
        for s in range(T):
            total, scale = 0.0, 1.0
            for t in range(s, T):
                total += scale * float(d["rewards"][t, n])
                scale *= float(discounts[t, n])
            target[s, n] = total + scale * float(d["last_value"][n])
    assert_close(vs, target)
    next_vs = torch.cat([target[1:], d["last_value"][None]])
    assert_close(pg, d["rewards"] + discounts * next_vs - d["values"])


def test_vtrace_hand_computed_three_steps() -> None:
    f64 = {"dtype": torch.float64}
    behaviour = torch.log(torch.tensor([[0.5], [0.5], [0.5]], **f64))
    target = torch.log(torch.tensor([[1.0], [0.25], [0.5]], **f64))  # ratios 2, 0.5, 1
    rewards = torch.tensor([[1.0], [0.0], [2.0]], **f64)
    values = torch.tensor([[0.5], [0.4], [0.3]], **f64)
    discounts = torch.tensor([[0.9], [0.0], [0.9]], **f64)
    vs, pg = vtrace(behaviour, target, rewards, values, torch.tensor([1.0], **f64), discounts)
    # rho = c = [1, .5, 1]; delta = [1*(1+.9*.4-.5), .5*(0-.4), 1*(2+.9*1-.3)] = [.86, -.2, 2.6]
    # vs - V = [.86 + .9*1*(-.2), -.2, 2.6] = [.68, -.2, 2.6]
    assert_close(vs, torch.tensor([[1.18], [0.2], [2.9]], **f64))
    # pg = rho_pg * (r + disc*vs_next - V) = [1.18 - .5, .5*(-.4), 2.9 - .3]
    assert_close(pg, torch.tensor([[0.68], [-0.2], [2.6]], **f64))


def test_vtrace_has_no_grad() -> None:
    d = _episode_data(0)
    values = d["values"].clone().requires_grad_(True)
    target_logp = d["target_logp"].clone().requires_grad_(True)
    vs, pg = vtrace(
        d["behaviour_logp"], target_logp, d["rewards"], values, d["last_value"], d["dones"] * 0
    )
    assert not vs.requires_grad and not pg.requires_grad


def test_explained_variance() -> None:
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(y, y) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(y, 2.5), y) == pytest.approx(0.0)
    # residual [1, -1, 1, -1] has variance 1; Var[y] = 1.25
    residual = torch.tensor([1.0, -1.0, 1.0, -1.0])
    assert explained_variance(y - residual, y) == pytest.approx(1.0 - 1.0 / 1.25)
    assert explained_variance(-y, y) == pytest.approx(1.0 - 4.0)  # residual 2y
    assert math.isnan(explained_variance(y, torch.ones(4)))
    assert isinstance(explained_variance(y, y), float)

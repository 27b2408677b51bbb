"""Sum tree and replay strategies (pure logic)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mario_replay.strategies import PrioritizedReplay, UniformReplay
from mario_replay.sumtree import SumTree


def test_sum_tree_totals_and_updates() -> None:
    tree = SumTree(5)
    tree.update(np.arange(5), np.array([1.0, 2.0, 3.0, 4.0, 0.0]))
    assert tree.total == 10.0
    tree.update(np.array([1]), np.array([7.0]))
    assert tree.total == 15.0
    assert list(tree[np.arange(5)]) == [1.0, 7.0, 3.0, 4.0, 0.0]
    assert list(tree.find(np.array([0.0, 0.99, 1.0, 7.99, 8.0, 11.0, 14.99]))) == [
        0,
        0,
        1,
        1,
        2,
        3,
        3,
    ]


def test_sum_tree_samples_in_proportion_to_priority() -> None:
    priorities = np.array([1.0, 2.0, 3.0, 4.0, 0.0, 10.0])
    tree = SumTree(len(priorities))
    tree.update(np.arange(len(priorities)), priorities)
    rng = np.random.default_rng(0)
    draws = np.concatenate([tree.sample(64, rng) for _ in range(500)])
    counts = np.bincount(draws, minlength=len(priorities))
    expected = priorities / priorities.sum() * len(draws)
    assert counts[4] == 0  # zero priority is never drawn
    chi2 = (((counts - expected) ** 2)[expected > 0] / expected[expected > 0]).sum()
    assert chi2 < 15.1  # 99% quantile of chi-square with 5 degrees of freedom


def config(**overrides: float) -> SimpleNamespace:
    values = {"replay_capacity": 8, "per_alpha": 0.6, "per_beta": 0.4}
    values.update(overrides)
    return SimpleNamespace(**values)


def test_prioritized_importance_weights_match_the_formula() -> None:
    replay = PrioritizedReplay(config(), (1, 2), seed=1)
    advantages = torch.tensor([0.5, -2.0, 1.0, 0.0])
    replay.add(
        torch.zeros(4, 1, 2, dtype=torch.uint8),
        torch.arange(4),
        torch.zeros(4),
        torch.zeros(4),
        advantages,
    )
    priorities = (advantages.abs().numpy() + replay.EPSILON) ** 0.6
    probabilities = priorities / priorities.sum()
    sample = replay.sample(4, progress=0.5, device=torch.device("cpu"))
    beta = 0.4 + 0.6 * 0.5
    raw = (4 * probabilities[sample.indices]) ** -beta
    assert np.allclose(sample.weights.numpy(), raw / raw.max(), atol=1e-6)
    assert replay.beta(1.0) == 1.0 and replay.beta(2.0) == 1.0
    replay.update_priorities(np.array([3]), np.array([5.0]))
    assert replay.tree[3] == pytest.approx((5.0 + replay.EPSILON) ** 0.6)


def test_ring_buffer_overwrites_the_oldest() -> None:
    replay = UniformReplay(config(replay_capacity=4), (1,), seed=0)
    for start in (0, 3):
        obs = torch.arange(start, start + 3, dtype=torch.uint8).reshape(3, 1)
        replay.add(
            obs, torch.zeros(3, dtype=torch.long), torch.zeros(3), torch.zeros(3), torch.zeros(3)
        )
    assert len(replay) == 4
    assert sorted(replay.obs[:, 0].tolist()) == [2, 3, 4, 5]
    sample = replay.sample(16, 0.0, torch.device("cpu"))
    assert torch.equal(sample.weights, torch.ones(16))


class Table(torch.nn.Module):
    """A policy with one state: action logits and a value (pure logic of the update)."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.log(torch.tensor([0.9, 0.07, 0.03])))
        self.value = torch.nn.Parameter(torch.tensor(5.0))

    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits.detach(), -1)

    def evaluate_actions(self, obs, actions, state=None, done=None):
        logits = self.logits.expand(len(actions), -1)
        dist = torch.distributions.Categorical(logits=logits)
        return dist.log_prob(actions), dist.entropy(), self.value.expand(len(actions))


def sil_update(returns: float) -> Table:
    """One self-imitation update on transitions that took the rare action 2."""
    from mario_algos.offpolicy import replay_update
    from mario_cli.config import AlgoConfig
    from mario_cli.training.optim import GradientStepper
    from mario_replay.strategies import SelfImitationReplay

    table = Table()
    cfg = AlgoConfig(learning_rate=0.5, warmup_fraction=0.0)
    stepper = GradientStepper(table.parameters(), cfg, 10, torch.device("cpu"))
    replay = SelfImitationReplay(config(), (1,), seed=0)
    n = 8
    log_prob = torch.log(table.probs()[2]).expand(n)
    replay.add(
        torch.zeros(n, 1, dtype=torch.uint8),
        torch.full((n,), 2),
        log_prob,
        torch.full((n,), returns),
        torch.full((n,), returns - 5.0),
    )
    metrics = replay_update(table, stepper, replay, cfg, 8, 0.0, torch.device("cpu"))
    assert "replay/size" in metrics
    return table


def test_self_imitation_learns_a_rare_action_that_beat_the_critic() -> None:
    better = sil_update(returns=8.0)  # the action 2 paid 3 more than the value said
    assert better.probs()[2] > 0.06  # Adam moves each logit by ~lr: 0.03 -> ~0.08
    assert float(better.value.detach()) > 5.0  # the value rises towards the return
    worse = sil_update(returns=2.0)  # it paid less: nothing to imitate, value not lowered
    assert torch.allclose(worse.probs(), torch.tensor([0.9, 0.07, 0.03]), atol=1e-6)
    assert float(worse.value.detach()) == pytest.approx(5.0)


def test_self_imitation_priorities_are_the_positive_gap() -> None:
    from mario_replay.strategies import SelfImitationReplay

    replay = SelfImitationReplay(config(), (1,), seed=0)
    gaps = torch.tensor([2.0, -3.0, 0.5, 0.0])
    replay.add(torch.zeros(4, 1, dtype=torch.uint8), torch.arange(4), torch.zeros(4), gaps, gaps)
    expected = (np.clip(gaps.numpy(), 0, None) + replay.EPSILON) ** 0.6
    assert np.allclose(replay.tree[np.arange(4)], expected)
    assert replay.tree[1] < 0.02 * replay.tree[0]  # a return below the value is rarely drawn

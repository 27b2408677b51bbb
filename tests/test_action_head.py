"""The factored action head: a direction choice and an A choice, summed per action."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mario_cli.config import load_config
from mario_cli.envs.stages import action_names, jump_factors
from mario_cli.errors import ConfigError
from mario_cli.evaluation import evaluate
from mario_cli.policy import ActorCritic
from mario_cli.training.builders import build_policy
from mario_cli.training.trainer import Trainer

FEATURES = 16


class Identity(nn.Module):
    out_features = FEATURES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _policy(movement: str, factored: bool, seed: int = 0) -> ActorCritic:
    torch.manual_seed(seed)
    n_actions = len(action_names(movement))
    factors = jump_factors(movement) if factored else None
    return ActorCritic(Identity(), n_actions, jump_factors=factors)


@pytest.mark.parametrize("movement", ["right_only", "simple", "complex"])
def test_each_action_is_its_direction_with_or_without_a(movement: str) -> None:
    names = action_names(movement)
    direction_of, holds_a = jump_factors(movement)
    assert holds_a == [int("A" in name.split("+")) for name in names]
    by_direction: dict[int, set[str]] = {}
    for name, direction in zip(names, direction_of, strict=True):
        rest = "+".join(b for b in name.split("+") if b not in ("A", "NOOP")) or "none"
        by_direction.setdefault(direction, set()).add(rest)
    # one direction index per button combination other than A, and no two sharing one
    assert all(len(rests) == 1 for rests in by_direction.values())
    assert len({next(iter(r)) for r in by_direction.values()}) == len(by_direction)
    if movement == "simple":
        assert direction_of[names.index("right+A+B")] == direction_of[names.index("right+B")]
        assert direction_of[names.index("A")] == direction_of[names.index("NOOP")]


def test_unknown_movement_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        jump_factors("diagonal")


def test_logits_are_direction_plus_a_and_the_head_is_smaller() -> None:
    policy = _policy("simple", factored=True)
    assert policy.actor.out_features == 4 + 2  # none, right, right+B, left; A off, on
    features = torch.randn(5, FEATURES)
    raw = policy.actor(features)
    direction_of, holds_a = jump_factors("simple")
    expected = torch.stack(
        [raw[:, d] + raw[:, 4 + a] for d, a in zip(direction_of, holds_a, strict=True)], dim=1
    )
    assert torch.allclose(policy(features).logits, expected)
    # the index tensors follow from the movement, so checkpoints hold weights only
    assert set(policy.state_dict()) == {
        "actor.weight",
        "actor.bias",
        "critic.weight",
        "critic.bias",
    }


def test_argmax_is_the_best_direction_with_the_better_a_choice() -> None:
    policy = _policy("simple", factored=True)
    names = action_names("simple")
    with torch.no_grad():
        policy.actor.weight.zero_()
        policy.actor.bias.copy_(torch.tensor([0.0, 0.5, 2.0, 0.1, 1.0, -1.0]))  # right+B, A off
        actions, _, _, _ = policy.act(torch.zeros(1, FEATURES), deterministic=True)
    assert names[int(actions)] == "right+B"


def _probs_after_punishing(policy: ActorCritic, action: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Action probabilities before and after one policy-gradient step with advantage -1."""
    features = torch.randn(1, FEATURES)
    optimiser = torch.optim.SGD(policy.parameters(), lr=0.1)
    before = torch.softmax(policy(features).logits, -1).detach()
    log_probs, _, _ = policy.evaluate_actions(features, torch.tensor([action]))
    log_probs.sum().backward()  # minimising +log p lowers it: advantage -1
    optimiser.step()
    after = torch.softmax(policy(features).logits, -1).detach()
    return before[0], after[0]


def test_punishing_right_a_b_lowers_holding_a_not_just_that_action() -> None:
    """Why the head exists: under jump press the A actions are one move in the hop rhythm,
    so a loss for ``right+A+B`` should lower holding A, not hand its mass to look-alikes."""
    names = action_names("simple")
    punished = names.index("right+A+B")
    holds_a = [names.index(n) for n in ("right+A", "right+A+B", "A")]
    look_alikes = [names.index(n) for n in ("right+A", "A")]

    before, after = _probs_after_punishing(_policy("simple", factored=True), punished)
    assert (after[look_alikes] < before[look_alikes]).all()
    released = before[holds_a].sum() - after[holds_a].sum()
    assert released > 1.5 * (before[punished] - after[punished])

    # the joint head hands part of the punished action's mass to the look-alikes
    before, after = _probs_after_punishing(_policy("simple", factored=False), punished)
    assert (after[look_alikes] > before[look_alikes]).all()
    released = before[holds_a].sum() - after[holds_a].sum()
    assert released < 0.8 * (before[punished] - after[punished])


def test_a_factored_run_trains_and_evaluates_on_the_real_emulator(tmp_path: Path) -> None:
    cfg = load_config(
        cli_overrides={
            "env": {"n_envs": 2, "vector_mode": "sync", "reward": {"no_progress_cut_steps": 20}},
            "model": {"backbone": "nature", "hidden_size": 32, "action_head": "factored"},
            "algo": {"n_steps": 8, "batch_size": 16, "n_epochs": 1},
            "train": {"total_timesteps": 16, "artifacts_dir": str(tmp_path), "run_name": "f"},
        },
        environ={},
    )
    Trainer(cfg).train()
    checkpoint = tmp_path / "runs" / "f" / "checkpoints" / "final.pt"
    result = evaluate(checkpoint, episodes=2, policy="greedy", max_steps=40, noop_max=0)
    assert result["episodes"] == 2 and all(e["length"] >= 1 for e in result["per_episode"])
    policy, _ = build_policy(cfg, (4, 84, 84), 7, torch.device("cpu"))
    assert policy.factored and policy.actor.out_features == 6

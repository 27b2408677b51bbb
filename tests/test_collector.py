"""Collection in env groups (double buffering) gives the rollout of one synchronous group."""

from __future__ import annotations

import contextlib

import torch

from mario_cli.config import MarioConfig
from mario_cli.envs import VectorEnv
from mario_cli.training.builders import build_policy
from mario_cli.training.collector import Collector
from mario_cli.training.rollout import RolloutStorage

N_ENVS, N_STEPS = 4, 24


class Greedy(torch.nn.Module):
    """The policy with argmax actions: both collections then take the same actions."""

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def act(self, obs, state=None, done=None):
        return self.policy.act(obs, state, done, deterministic=True)

    def forward(self, obs, state=None, done=None):
        return self.policy(obs, state, done)

    def select_state(self, state, index):
        return self.policy.select_state(state, index)


def collect(policy: torch.nn.Module, cfg: MarioConfig, n_groups: int) -> tuple:
    cpu = torch.device("cpu")
    with VectorEnv(cfg.env, seed=3, mode="process", n_workers=2, n_groups=n_groups) as venv:
        collector = Collector(venv, N_STEPS, 0.9, cpu)
        collector.reset(3, policy, 0)
        storage = RolloutStorage(N_STEPS, N_ENVS, (4, 84, 84), cpu)
        batch = collector.collect(policy, storage, lambda: False)
        storage2 = RolloutStorage(N_STEPS, N_ENVS, (4, 84, 84), cpu)
        second = collector.collect(policy, storage2, lambda: False)  # carries on from the first
        return batch, second, venv.groups


def test_grouped_collection_matches_one_group_step_for_step() -> None:
    cfg = MarioConfig(env={"restarts": {"share": 0.0}})  # every env from the stage start
    cfg.env.n_envs = N_ENVS
    cfg.env.reward.no_progress_cut_steps = 15  # cuts: truncation bootstrap and autoreset
    cfg.model.backbone = "nature"
    cfg.model.hidden_size = 32
    torch.manual_seed(0)
    policy = Greedy(build_policy(cfg, (4, 84, 84), 7, torch.device("cpu"))[0])
    one, one_next, one_groups = collect(policy, cfg, 1)
    two, two_next, two_groups = collect(policy, cfg, 2)
    assert one_groups == [(0, 4)] and two_groups == [(0, 2), (2, 4)]
    for a, b in ((one, two), (one_next, two_next)):
        assert torch.equal(a.obs, b.obs) and torch.equal(a.actions, b.actions)
        assert torch.equal(a.dones, b.dones) and torch.equal(a.starts, b.starts)
        assert torch.allclose(a.rewards, b.rewards, atol=1e-5)  # bootstraps: batch-size numerics
        assert torch.allclose(a.values, b.values, atol=1e-5)
        assert torch.allclose(a.log_probs, b.log_probs, atol=1e-5)
        assert torch.equal(a.last_obs, b.last_obs)
        assert torch.allclose(a.last_value, b.last_value, atol=1e-5)
        assert [(s, i) for s, i, _ in a.episodes] == [(s, i) for s, i, _ in b.episodes]
    assert one.dones.sum() >= 2  # episodes ended inside the rollout
    assert not torch.equal(one.obs[0], one_next.obs[0])  # the second rollout went on


class Spy(torch.nn.Module):
    """The real policy; records, per act call, which rows were asked for argmax."""

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.masks: list[torch.Tensor] = []

    def act(self, obs, state=None, done=None, deterministic=False):
        mask = deterministic if isinstance(deterministic, torch.Tensor) else None
        self.masks.append(torch.zeros(len(obs), dtype=torch.bool) if mask is None else mask.clone())
        out = self.policy.act(obs, state, done, deterministic=deterministic)
        if mask is not None:  # the asked-for rows are the argmax
            logits = self.policy(obs, state, done).logits
            assert torch.equal(out[0][mask], logits.argmax(-1)[mask])
        return out

    def forward(self, obs, state=None, done=None):
        return self.policy(obs, state, done)

    def select_state(self, state, index):
        return self.policy.select_state(state, index)


def test_greedy_probe_episodes_act_by_argmax_from_their_first_step_to_their_last() -> None:
    cfg = MarioConfig()
    cfg.env.n_envs = N_ENVS
    cfg.env.reward.no_progress_cut_steps = 6  # many short episodes
    cfg.env.restarts.share = 0.2
    cfg.env.restarts.greedy_share = 0.5
    cfg.model.backbone = "nature"
    cfg.model.hidden_size = 32
    torch.manual_seed(0)
    spy = Spy(build_policy(cfg, (4, 84, 84), 7, torch.device("cpu"))[0])
    cpu = torch.device("cpu")
    with VectorEnv(cfg.env, seed=5, mode="sync", n_groups=1) as venv:
        collector = Collector(venv, 48, 0.9, cpu)
        collector.reset(5, spy, 0)
        batch = collector.collect(spy, RolloutStorage(48, N_ENVS, (4, 84, 84), cpu), lambda: False)
    asked = torch.stack(spy.masks)  # (step, env): rows acted by argmax
    assert asked.shape == (48, N_ENVS)
    checked = {True: 0, False: 0}
    for step, env, episode in batch.episodes:
        last = step // N_ENVS - 1  # the rollout step of the episode's last action
        first = last - episode.length + 1
        if first < 0:
            continue  # began before this rollout
        assert bool(asked[first : last + 1, env].all()) == episode.greedy
        assert bool(asked[first : last + 1, env].any()) == episode.greedy
        checked[episode.greedy] += 1
    assert checked[True] >= 1 and checked[False] >= 1, checked


def test_one_autocast_region_around_a_rollout_changes_nothing_it_collects() -> None:
    """The trainer holds one bf16 autocast region around a synchronous rollout, so each
    weight is cast once per rollout instead of once per call: the same rollout."""
    cfg = MarioConfig(env={"restarts": {"share": 0.0}})
    cfg.env.n_envs = 2
    cfg.model.backbone = "nature"
    cfg.model.hidden_size = 32
    torch.manual_seed(0)
    policy = build_policy(cfg, (4, 84, 84), 7, torch.device("cpu"))[0]
    cpu = torch.device("cpu")

    def bf16() -> torch.autocast:
        return torch.autocast("cpu", torch.bfloat16)

    batches = []
    for region in (contextlib.nullcontext, bf16):
        torch.manual_seed(1)  # the same sampled actions, if the probabilities are the same
        with VectorEnv(cfg.env, seed=5, mode="sync") as venv:
            collector = Collector(venv, 16, 0.9, cpu, autocast=bf16)
            collector.reset(5, policy, 0)
            with region():
                storage = RolloutStorage(16, 2, (4, 84, 84), cpu)
                batches.append(collector.collect(policy, storage, lambda: False))
    per_call, one_region = batches
    assert torch.equal(per_call.actions, one_region.actions)
    assert torch.equal(per_call.log_probs, one_region.log_probs)
    assert torch.equal(per_call.values, one_region.values)
    assert torch.equal(per_call.obs, one_region.obs)

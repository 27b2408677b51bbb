"""Env workers that act with a copy of the policy collect the trainer's own rollout."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mario_cli.config import MarioConfig
from mario_cli.envs import VectorEnv
from mario_cli.errors import ConfigError, EnvWorkerError
from mario_cli.plugins import PluginHost, set_host
from mario_cli.training import trainer as trainer_module
from mario_cli.training.builders import build_algorithm, build_policy
from mario_cli.training.optim import GradientStepper
from mario_cli.training.rollout import RolloutStorage
from mario_cli.training.trainer import acting_in_workers
from mario_cli.training.worker_acting import WorkerCollector, shared_bytes

N_ENVS, N_STEPS, OBS = 4, 24, (4, 84, 84)
CPU = torch.device("cpu")


def small_config(**model: object) -> MarioConfig:
    cfg = MarioConfig(env={"restarts": {"share": 0.0}}, model={"backbone": "nature", **model})
    cfg.env.n_envs = N_ENVS
    cfg.env.reward.no_progress_cut_steps = 4  # many cuts: truncation bootstrap, autoreset
    cfg.model.hidden_size = 32
    return cfg


def worker_rollouts(
    cfg: MarioConfig, policy: torch.nn.Module, draws: int = 0, n_steps: int = N_STEPS
) -> list:
    """Two rollouts in a row, played by two workers' policy copies; ``draws`` seeds the
    trainer's generator, which seeds each rollout's draws in the workers."""
    with VectorEnv(cfg.env, seed=3, mode="process", n_workers=2, n_groups=2) as venv:
        collector = WorkerCollector(venv, cfg.to_dict(), policy, n_steps, 0.9, None)
        try:
            collector.reset(3, policy, 0)
            torch.manual_seed(draws)
            storages = [RolloutStorage(n_steps, N_ENVS, OBS, CPU) for _ in range(2)]
            return [collector.collect(policy, storage, lambda: False) for storage in storages]
        finally:
            venv.close()
            collector.close()


def test_the_workers_rollouts_are_what_the_envs_give_for_their_actions() -> None:
    """Replaying the recorded actions in one process, from the same seeds, gives every
    field the workers wrote: frames, rewards with the truncation bootstrap, episode
    ends and starts, the last value, and the episodes in the trainer's order."""
    cfg = small_config()
    torch.manual_seed(0)
    policy = build_policy(cfg, OBS, 7, CPU)[0]
    rollouts = worker_rollouts(cfg, policy)
    step = bootstrapped = 0
    with VectorEnv(cfg.env, seed=3, mode="sync") as venv, torch.no_grad():
        obs, _ = venv.reset(seed=3)
        starts = torch.ones(N_ENVS)
        for batch in rollouts:
            episodes = []
            for t in range(N_STEPS):
                assert np.array_equal(batch.obs[t].numpy(), obs)
                assert torch.equal(batch.starts[t], starts)
                out = policy(torch.from_numpy(obs))
                assert torch.allclose(batch.values[t], out.value, atol=1e-4)
                obs, rewards, terminated, truncated, infos = venv.step(batch.actions[t].numpy())
                expected = torch.from_numpy(rewards)
                for i in np.flatnonzero(truncated & ~terminated):
                    bootstrapped += 1
                    final = torch.from_numpy(infos[i]["final_obs"][None])
                    expected[i] += 0.9 * policy(final).value[0]
                assert torch.allclose(batch.rewards[t], expected, atol=1e-4)
                starts = torch.from_numpy(terminated | truncated).float()
                assert torch.equal(batch.dones[t], starts)
                step += N_ENVS
                episodes += [(step, i) for i, info in enumerate(infos) if "episode" in info]
            assert np.array_equal(batch.last_obs.numpy(), obs)
            last = policy(torch.from_numpy(obs)).value
            assert torch.allclose(batch.last_value, last, atol=1e-4)
            assert [(s, i) for s, i, _ in batch.episodes] == episodes
    first, second = rollouts
    assert len(first.episodes + second.episodes) >= 2 and bootstrapped >= 1  # episodes ended
    assert len(set(first.actions.flatten().tolist())) >= 3  # sampled, not one action
    assert not torch.equal(first.obs[0], second.obs[0])  # the second rollout went on


def test_sampled_actions_come_from_the_published_weights_and_noise() -> None:
    """Noisy heads: each rollout's log-probs and values are the trainer's current
    weights and noise evaluated on what the workers saw."""
    cfg = small_config(noisy=True)
    torch.manual_seed(0)
    policy = build_policy(cfg, OBS, 7, CPU)[0]
    policy.train()
    with VectorEnv(cfg.env, seed=3, mode="process", n_workers=2, n_groups=2) as venv:
        collector = WorkerCollector(venv, cfg.to_dict(), policy, N_STEPS, 0.9, None)
        try:
            collector.reset(3, policy, 0)
            checked = []
            for change in (0.0, 0.05):
                with torch.no_grad():
                    for parameter in policy.parameters():
                        parameter.add_(change * torch.randn_like(parameter))
                storage = RolloutStorage(N_STEPS, N_ENVS, OBS, CPU)
                batch = collector.collect(policy, storage, lambda: False)
                with torch.no_grad():
                    log_probs, _, values = policy.evaluate_actions(
                        batch.obs.flatten(0, 1), batch.actions.flatten()
                    )
                assert torch.allclose(log_probs, batch.log_probs.flatten(), atol=1e-4)
                assert torch.allclose(values, batch.values.flatten(), atol=1e-4)
                checked.append(batch.actions.clone())
        finally:
            venv.close()
            collector.close()
    assert not torch.equal(*checked)  # sampled, and the second from other weights


def test_the_trainers_generator_fixes_the_workers_draws() -> None:
    """So a seed gives one run, and a resumed run (its generator restored) draws on."""
    cfg = small_config()
    torch.manual_seed(0)
    policy = build_policy(cfg, OBS, 7, CPU)[0]
    runs = [worker_rollouts(cfg, policy, draws) for draws in (11, 11, 12)]
    assert all(torch.equal(a.actions, b.actions) for a, b in zip(runs[0], runs[1], strict=True))
    assert not torch.equal(runs[0][0].actions, runs[2][0].actions)
    assert not torch.equal(runs[0][0].actions[:4], runs[0][1].actions[:4])  # a seed a rollout


def test_a_stop_request_ends_the_rollout_and_the_envs_stay_usable() -> None:
    cfg = small_config()
    torch.manual_seed(0)
    policy = build_policy(cfg, OBS, 7, CPU)[0]
    long = 1500  # ~10 s of play: far longer than the stop takes to arrive
    with VectorEnv(cfg.env, seed=3, mode="process", n_workers=2) as venv:
        collector = WorkerCollector(venv, cfg.to_dict(), policy, long, 0.9, None)
        try:
            collector.reset(3, policy, 0)
            storage = RolloutStorage(long, N_ENVS, OBS, CPU)
            began = time.monotonic()
            stopped = collector.collect(policy, storage, lambda: time.monotonic() > began + 0.5)
            assert stopped is None and storage.step == 0
            written = collector._rollout.arrays["obs"]
            assert written[0].any() and not written[long - 1].any()  # the workers stopped early
            obs, rewards, *_ = venv.step(torch.zeros(N_ENVS, dtype=torch.long).numpy())
            assert obs.shape == (N_ENVS, *OBS) and rewards.shape == (N_ENVS,)
            assert collector.steps_collected == 0  # nothing counted of a stopped rollout
        finally:
            venv.close()
            collector.close()


def choice(cfg: MarioConfig, device: str = "cpu", notes: list | None = None) -> bool:
    policy = build_policy(cfg, OBS, 7, CPU)[0]
    stepper = GradientStepper(policy.parameters(), cfg.algo, 1, CPU, None, False)
    algorithm = build_algorithm(cfg, policy, stepper, OBS)
    note = (notes if notes is not None else []).append
    return acting_in_workers(cfg, torch.device(device), policy, algorithm, OBS, note)


def test_auto_acts_in_the_workers_only_where_they_can_and_gain() -> None:
    assert choice(small_config()) is True  # the CPU default: PPO, feed-forward, processes
    assert choice(small_config(), "cuda") is False  # the GPU batches acting better
    assert choice(small_config(recurrent="gru")) is False
    sync = small_config()
    sync.env.vector_mode = "sync"
    assert choice(sync) is False
    impala = small_config()
    impala.algo.algo = "impala"
    assert choice(impala) is False  # asynchronous: an actor thread collects
    trainer = small_config()
    trainer.train.acting = "trainer"
    assert choice(trainer) is False


def test_the_cost_model_times_the_batch_training_acts_on() -> None:
    from mario_cli.costs import training_acting_batch

    def batch(acting: str, algo: str = "ppo") -> int:
        cfg = small_config()
        cfg.env.n_envs, cfg.env.n_workers, cfg.env.step_groups = 16, 8, 2
        cfg.train.acting, cfg.algo.algo = acting, algo
        cfg.train.device = "cpu"  # on a GPU host "auto" trains on CUDA, where the trainer acts
        cfg.algo.n_steps = 16  # a small rollout: shared memory is short on some hosts
        policy = build_policy(cfg, OBS, 7, CPU)[0]
        stepper = GradientStepper(policy.parameters(), cfg.algo, 1, CPU, None, False)
        return training_acting_batch(cfg, policy, stepper, OBS)

    assert batch("auto") == 2  # the workers act: one worker's 2 of the 16 envs
    assert batch("trainer") == 8  # the trainer acts on one group: half of them
    assert batch("auto", "impala") == 8  # asynchronous collection: the trainer acts


def test_asking_for_worker_acting_where_it_cannot_run_is_one_clear_error() -> None:
    cfg = small_config(recurrent="gru")
    cfg.train.acting = "workers"
    with pytest.raises(ConfigError, match=r"--acting workers needs a feed-forward policy"):
        choice(cfg)
    cfg = small_config()
    cfg.train.acting = "workers"
    assert choice(cfg) is True


def test_greedy_probe_episodes_are_played_by_argmax_in_the_workers() -> None:
    cfg = small_config()
    cfg.env.reward.no_progress_cut_steps = 6  # many short episodes
    cfg.env.restarts.share = 0.2
    cfg.env.restarts.greedy_share = 0.5
    torch.manual_seed(0)
    policy = build_policy(cfg, OBS, 7, CPU)[0]
    steps = 64
    batch = worker_rollouts(cfg, policy, n_steps=steps)[0]
    with torch.no_grad():
        argmax = policy(batch.obs.flatten(0, 1)).logits.argmax(-1).view(steps, N_ENVS)
    checked = {True: 0, False: 0}
    for step, env, episode in batch.episodes:
        last = step // N_ENVS - 1  # the rollout step of the episode's last action
        first = last - episode.length + 1
        by_argmax = bool(
            (batch.actions[first : last + 1, env] == argmax[first : last + 1, env]).all()
        )
        assert by_argmax == episode.greedy
        checked[episode.greedy] += 1
    assert checked[True] >= 1 and checked[False] >= 1, checked


def test_auto_leaves_acting_to_the_trainer_where_workers_lack_plugins_or_shared_memory(
    monkeypatch,
) -> None:
    set_host(PluginHost(extra_plugins=[object()]))  # as a test or notebook registers one
    try:
        assert choice(small_config()) is False
    finally:
        set_host(None)
    notes: list[str] = []
    needed = shared_bytes(build_policy(small_config(), OBS, 7, CPU)[0], 256, N_ENVS, OBS)
    monkeypatch.setattr(trainer_module, "shared_memory_free", lambda: needed)  # no headroom
    assert choice(small_config(), notes=notes) is False
    assert len(notes) == 1 and "MiB of shared memory" in notes[0] and "--shm-size" in notes[0]
    cfg = small_config()
    cfg.train.acting = "workers"
    with pytest.raises(ConfigError, match="MiB of shared memory"):
        choice(cfg)


def test_a_policy_copy_that_fails_in_a_worker_is_one_error_naming_the_way_out() -> None:
    cfg = small_config()
    policy = build_policy(cfg, OBS, 7, CPU)[0]
    broken = cfg.to_dict()
    broken["model"]["hidden_size"] = 16  # the copy's shapes no longer fit the weights
    with VectorEnv(cfg.env, seed=3, mode="process", n_workers=2) as venv:
        collector = WorkerCollector(venv, broken, policy, N_STEPS, 0.9, None)
        try:
            collector.reset(3, policy, 0)
            storage = RolloutStorage(N_STEPS, N_ENVS, OBS, CPU)
            with pytest.raises(EnvWorkerError) as caught:
                collector.collect(policy, storage, lambda: False)
        finally:
            collector.close()
    message = str(caught.value)
    assert "policy copy failed" in message and "--acting trainer" in message
    assert "\n" not in message

"""The vector env: workers match sync mode step for step; crashes are errors, not hangs."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from mario_cli.config import EnvConfig
from mario_cli.envs import VectorEnv
from mario_cli.errors import ConfigError, EnvWorkerError


def scripted_actions(steps: int, n_envs: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    # Mostly right so that episodes end (goomba) and autoreset is exercised.
    return np.where(rng.random((steps, n_envs)) < 0.8, 1, rng.integers(0, 7, (steps, n_envs)))


def grouped_step(venv: VectorEnv, batch: np.ndarray) -> tuple:
    """One step of every env, group by group, with each group's results awaited late."""
    for low, high in venv.groups:
        venv.step_async((low, high), batch[low:high])
    parts = [venv.step_wait(span) for span in venv.groups]
    obs, rewards, terminated, truncated = (np.concatenate([p[k] for p in parts]) for k in range(4))
    return obs, rewards, terminated, truncated, [info for p in parts for info in p[4]]


def test_two_workers_match_sync_mode_step_for_step() -> None:
    cfg = EnvConfig(n_envs=4, reward={"no_progress_cut_steps": 0})
    actions = scripted_actions(70, 4)
    runs = {}
    # "grouped": two groups of two envs, each spread over both workers (env 0 and 2 in
    # worker 0), stepped in turn; every other step a plain step() of all four.
    for mode, n_groups in (("sync", 1), ("process", 1), ("grouped", 2)):
        vector_mode = "sync" if mode == "sync" else "process"
        with VectorEnv(cfg, seed=7, mode=vector_mode, n_workers=2, n_groups=n_groups) as venv:
            obs, _ = venv.reset()
            trace = [obs]
            ends = 0
            for t, batch in enumerate(actions):
                grouped = mode == "grouped" and t % 2 == 0
                step = grouped_step(venv, batch) if grouped else venv.step(batch)
                obs, rewards, terminated, truncated, infos = step
                ends += int(terminated.sum() + truncated.sum())
                trace.append((obs, rewards, terminated, truncated, [i["x_pos"] for i in infos]))
            runs[mode] = (trace, ends, venv.n_workers, venv.groups)
    assert runs["grouped"][3] == [(0, 2), (2, 4)] and runs["process"][3] == [(0, 4)]
    sync_trace, sync_ends, _, _ = runs["sync"]
    for mode in ("process", "grouped"):
        trace, ends, workers, _ = runs[mode]
        assert workers == 2
        assert sync_ends == ends > 0  # episodes ended and were reset automatically
        assert np.array_equal(sync_trace[0], trace[0])
        for a, b in zip(sync_trace[1:], trace[1:], strict=True):
            assert np.array_equal(a[0], b[0])
            assert np.array_equal(a[1], b[1])
            assert np.array_equal(a[2], b[2]) and np.array_equal(a[3], b[3])
            assert a[4] == b[4]


def test_group_results_are_awaited_in_the_order_sent() -> None:
    cfg = EnvConfig(n_envs=2, reward={"no_progress_cut_steps": 0})
    with VectorEnv(cfg, seed=0, mode="process", n_workers=1, n_groups=2) as venv:
        venv.reset()
        with pytest.raises(RuntimeError, match="without step_async"):
            venv.step_wait((0, 1))
        venv.step_async((0, 1), np.array([1]))
        venv.step_async((1, 2), np.array([1]))
        with pytest.raises(RuntimeError, match="sent earlier"):
            venv.step_wait((1, 2))
        obs, rewards, *_ = venv.step_wait((0, 1))
        assert obs.shape == (1, 4, 84, 84) and rewards.shape == (1,)
        with pytest.raises(ValueError, match="got 2 actions"):
            venv.step_async((0, 1), np.array([1, 1]))


def test_autoreset_keeps_final_observation_and_episode_stats() -> None:
    cfg = EnvConfig(n_envs=1, reward={"no_progress_cut_steps": 0})
    with VectorEnv(cfg, seed=0, mode="sync") as venv:
        venv.reset()
        for _ in range(200):
            obs, _, terminated, _, infos = venv.step(np.array([1]))
            if terminated[0]:
                break
        info = infos[0]
        assert info["final_obs"].shape == (4, 84, 84)
        assert not np.array_equal(info["final_obs"], obs[0])  # obs is the new episode's
        assert info["episode"].length > 10
        assert info["x_pos"] > 250


def test_several_envs_per_worker() -> None:
    cfg = EnvConfig(n_envs=5, reward={"no_progress_cut_steps": 0}, restarts={"share": 0.0})
    with VectorEnv(cfg, seed=1, mode="process", n_workers=2) as venv:
        obs, infos = venv.reset()
        assert obs.shape == (5, 4, 84, 84)
        assert len(infos) == 5
        total = np.zeros(5)
        for _ in range(5):
            obs, rewards, *_ = venv.step(np.ones(5, dtype=int))
            total += rewards
        assert rewards.shape == (5,)
        assert (total > 0).all()  # everyone walked right and was paid for it
        assert np.array_equal(obs[0], obs[4])  # same seed-free emulator, same actions


def test_killed_worker_is_an_error_naming_worker_and_env() -> None:
    cfg = EnvConfig(n_envs=2)
    venv = VectorEnv(cfg, seed=0, mode="process", n_workers=2)
    venv.reset()
    victim = venv._workers[1][0]
    os.kill(victim.pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(EnvWorkerError, match=r"env worker 1 \(envs 1-1, SuperMarioBros-1-1-v0\)"):
        venv.step(np.zeros(2, dtype=int))
    assert time.monotonic() - start < 10
    venv.close()


def test_a_worker_that_died_between_steps_is_the_same_error() -> None:
    cfg = EnvConfig(n_envs=2)
    venv = VectorEnv(cfg, seed=0, mode="process", n_workers=2)
    venv.reset()
    victim = venv._workers[1][0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)  # dead before the next step is sent: its pipe is broken
    with pytest.raises(EnvWorkerError, match=r"env worker 1 \(envs 1-1, .*exited with code -9"):
        venv.step(np.zeros(2, dtype=int))
    venv.close()


def test_env_error_in_worker_names_the_env() -> None:
    cfg = EnvConfig(n_envs=2)
    with VectorEnv(cfg, seed=0, mode="process", n_workers=2) as venv:
        venv.reset()
        with pytest.raises(EnvWorkerError, match=r"env worker \d \(env \d, .*IndexError"):
            venv.step(np.array([0, 99]))  # no action 99


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"env_id": "SuperMarioBros-9-9-v0"}, "unknown env id"),
        ({"wrappers": ["frame_skip", "blur"]}, "unknown wrapper 'blur'"),
    ],
)
def test_config_mistakes_are_config_errors_before_any_worker_starts(
    change: dict, expected: str
) -> None:
    cfg = EnvConfig(n_envs=2).model_copy(update=change)
    with pytest.raises(ConfigError, match=expected):
        VectorEnv(cfg, seed=0, mode="process", n_workers=2)


def test_a_worker_waiting_for_commands_gets_each_once_in_order() -> None:
    import threading
    from multiprocessing import Pipe

    from mario_cli.envs.vector import _next_command

    parent, child = Pipe()
    parent.send(("step", 1))
    parent.send(("step", 2))
    # queued commands come at once, in the order sent
    assert _next_command(child, 0.001) == ("step", 1)
    assert _next_command(child, 0.001) == ("step", 2)
    # one sent after the worker stopped polling is still received: it blocks, not drops
    late = threading.Timer(0.05, parent.send, args=(("close", None),))
    late.start()
    assert _next_command(child, 0.001) == ("close", None)
    late.join()
    assert not child.poll(0)


def test_workers_poll_before_blocking_only_while_each_has_a_core() -> None:
    from mario_cli.envs.vector import worker_spin_seconds

    assert worker_spin_seconds(2, cores=2) == worker_spin_seconds(1, cores=16) > 0
    # oversubscribed: a polling worker would take the core a stepping one needs
    assert worker_spin_seconds(3, cores=2) == 0.0


def test_workers_poll_only_after_a_lockstep_step() -> None:
    """A lockstep caller sends the next step at once; after a group step the next
    group's command is usually queued, and a polling worker would take the core the
    parent needs to choose actions."""
    from mario_cli.envs.vector import poll_seconds_after

    assert poll_seconds_after("step", 0.001) == 0.001
    for command in ("step_group", "reset", None):
        assert poll_seconds_after(command, 0.001) == 0.0
    assert poll_seconds_after("step", 0.0) == 0.0  # oversubscribed workers never poll


def test_the_collector_acts_on_one_group_of_envs_at_a_time() -> None:
    from mario_cli.envs.vector import acting_batch, group_spans, worker_envs

    assert group_spans(8, 2, 2) == [(0, 4), (4, 8)]
    assert group_spans(5, 2, 2) == [(0, 2), (2, 5)]
    assert group_spans(8, 8, 2) == [(0, 8)]  # a group needs an env in every worker
    cfg = EnvConfig(n_envs=8, n_workers=2, step_groups=2)
    assert acting_batch(cfg, recurrent=False) == 4
    assert acting_batch(cfg, recurrent=True) == 8  # a recurrent policy acts on all at once
    assert acting_batch(cfg.model_copy(update={"vector_mode": "sync"}), recurrent=False) == 8
    assert acting_batch(cfg.model_copy(update={"n_envs": 5}), recurrent=False) == 3
    # the workers acting: each acts on its own envs, a share of every group
    assert worker_envs(8, 2, 2) == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert worker_envs(5, 2, 2) == [[0, 2, 3], [1, 4]]
    assert acting_batch(cfg, recurrent=False, workers_act=True) == 4
    wide = cfg.model_copy(update={"n_envs": 16, "n_workers": 8})
    assert acting_batch(wide, recurrent=False) == 8  # a group: half the envs
    assert acting_batch(wide, recurrent=False, workers_act=True) == 2  # one worker's envs

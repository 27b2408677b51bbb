"""Stable-Baselines3 PPO with the classic Mario settings, logged like a mario run.

Classic settings: CnnPolicy, frame skip 4, grayscale 84x84, stack 4, the env's own
reward, n_steps 512, batch 64, 10 epochs, one process per env (SubprocVecEnv). The
run folder gets a metrics.jsonl in mario's format, so `mario plot` overlays it with
mario runs.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

import gymnasium as gym

from mario_cli import metric_names as names
from mario_cli.config import EnvConfig, MarioConfig
from mario_cli.errors import MarioError
from mario_cli.events import Episode, EpisodeEnd, IterationStats, RunFinished, RunStarted
from mario_cli.runs import create_run
from mario_cli.sinks.jsonl import JsonlSink

CLASSIC = {"n_steps": 512, "batch_size": 64, "n_epochs": 10}
# What SB3's PPO uses when nothing else is given (stable_baselines3.PPO's defaults).
SB3_PPO_DEFAULTS = {
    "learning_rate": 3e-4,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "clip_range": 0.2,
    "ent_coef": 0.0,
    "vf_coef": 0.5,
    "max_grad_norm": 0.5,
    "normalize_advantage": True,
    "target_kl": None,
}


class _EpisodeInfoForSB3(gym.Wrapper):
    """SB3's Monitor owns info["episode"]; keep mario's episode stats under another key."""

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "episode" in info:
            info["mario_episode"] = info.pop("episode")
        return obs, reward, terminated, truncated, info


def classic_env_config(env_id: str) -> EnvConfig:
    # The env as the classic recipes had it: the env's own reward, no cut, A held as is,
    # every episode from the stage start.
    return EnvConfig(
        env_id=env_id,
        reward_mode="raw",
        reward={"no_progress_cut_steps": 0},
        jump_press=False,
        restarts={"share": 0.0},
    )


def same_settings_config(cfg: MarioConfig) -> MarioConfig:
    """``cfg`` with everything SB3 classic PPO does differently set as SB3 does it.

    Same env (the classic env config, same n_envs), Nature-CNN with a 512 layer,
    SB3's PPO hyperparameters and a constant lr, float32, no compile: what is left
    to compare is the engineering.
    """
    same = cfg.model_copy(deep=True)
    n_envs = same.env.n_envs
    same.env = classic_env_config(cfg.env.env_id).model_copy(update={"n_envs": n_envs})
    same.model.backbone = "nature"
    same.model.hidden_size = 512
    same.model.recurrent = "none"
    same.model.noisy = False
    for key, value in {**CLASSIC, **SB3_PPO_DEFAULTS}.items():
        setattr(same.algo, key, value)
    same.algo.algo = "ppo"
    same.algo.ent_coef_final = None  # SB3's entropy coefficient is constant
    same.repair.repair_every = 0
    same.algo.lr_schedule = "constant"
    same.algo.warmup_fraction = 0.0
    same.algo.clip_range_vf = None
    same.algo.overlap_collection = False
    same.replay.replay = "none"
    same.replay.per = False
    same.train.amp = False
    same.train.compile = False
    return same


def _make_env(cfg: EnvConfig, seed: int) -> gym.Env:
    from stable_baselines3.common.monitor import Monitor

    from mario_cli.envs import make_env

    env = _EpisodeInfoForSB3(make_env(cfg))
    env.reset(seed=seed)
    return Monitor(env)


def require_sb3() -> None:
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        raise MarioError(
            "Stable-Baselines3 is not installed; install the bench extra: pip install -e '.[bench]'"
        ) from None


def run_sb3_ppo(
    env_id: str,
    n_envs: int,
    total_timesteps: int,
    artifacts: Path,
    minutes: float | None = None,
    seed: int = 0,
    run_name: str | None = None,
) -> dict[str, float]:
    """Train SB3 PPO until ``total_timesteps`` or ``minutes``; return the final summary.

    ``sps`` counts the learning loop only (``learn_seconds``); spawning the env
    processes and building the model (``setup_seconds``) are outside it, as they are
    outside mario's training loop, so the two steps/s compare like for like.
    """
    require_sb3()
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import SubprocVecEnv

    from mario_cli.training.trainer import EPISODE_WINDOW, rollout_metrics

    cfg = classic_env_config(env_id)
    run = create_run(artifacts, run_name or f"sb3-ppo-{time.strftime('%Y%m%d-%H%M%S')}")
    sink = JsonlSink()
    sink(
        RunStarted(
            run_name=run.name,
            run_dir=str(run.root),
            algo="sb3-ppo",
            backbone="CnnPolicy",
            device="cpu",
            env_id=env_id,
            n_envs=n_envs,
            total_timesteps=total_timesteps,
            start_step=0,
            n_parameters=0,
        )
    )
    episodes: deque[Episode] = deque(maxlen=EPISODE_WINDOW)
    deadline: float | None = None  # set when learning starts: setup is not in the budget
    collecting = {"since": 0.0, "seconds": 0.0}  # rollouts' wall time; the rest is updates

    class MarioLog(BaseCallback):
        def _on_step(self) -> bool:
            for index, info in enumerate(self.locals["infos"]):
                episode = info.get("mario_episode")
                if episode is not None:
                    episodes.append(episode)
                    sink(EpisodeEnd.of(self.num_timesteps, index, episode))
            return deadline is None or time.monotonic() < deadline

        def _on_rollout_start(self) -> None:
            collecting["since"] = time.perf_counter()

        def _on_rollout_end(self) -> None:
            collecting["seconds"] += time.perf_counter() - collecting["since"]
            elapsed = time.perf_counter() - start
            metrics = {
                names.TIME_TOTAL_TIMESTEPS: float(self.num_timesteps),
                names.TIME_TIME_ELAPSED: elapsed,
                names.TIME_FPS: self.num_timesteps / max(elapsed, 1e-9),
            }
            metrics.update(rollout_metrics(list(episodes)))
            sink(IterationStats(self.num_timesteps, self.n_calls, total_timesteps, metrics))

    torch.manual_seed(seed)
    setup_start = time.perf_counter()
    venv = SubprocVecEnv(
        [lambda i=i: _make_env(cfg, seed + i) for i in range(n_envs)], start_method="forkserver"
    )
    try:
        model = PPO(
            "CnnPolicy", venv, seed=seed, verbose=0, device="cpu", **CLASSIC, **SB3_PPO_DEFAULTS
        )
        # Timed as mario's training loop is: from the envs' first reset to the last
        # update, without spawning the env processes, building the model or closing.
        start = time.perf_counter()
        setup = start - setup_start
        deadline = time.monotonic() + minutes * 60 if minutes else None
        model.learn(total_timesteps=total_timesteps, callback=MarioLog())
        elapsed = time.perf_counter() - start
        steps = model.num_timesteps
    finally:
        venv.close()
    summary = {
        "global_step": float(steps),
        "sps": steps / elapsed,
        "learn_seconds": elapsed,
        "setup_seconds": setup,
        "collect_seconds": collecting["seconds"],
    }
    summary.update(rollout_metrics(list(episodes)))
    sink(RunFinished(steps, "finished", "budget reached", None, None, summary))
    sink.close()
    return summary

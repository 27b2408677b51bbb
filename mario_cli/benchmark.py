"""Throughput measurements of the env pipeline (used by ``mario bench env``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from mario_cli.config import EnvConfig
from mario_cli.envs import VectorEnv, make_env
from mario_cli.envs.factory import stage_specs
from mario_cli.envs.stages import action_bytes


@dataclass
class EnvBenchResult:
    raw_fps: float
    single_env_sps: float
    vector_env_sps: float
    n_envs: int
    n_workers: int
    frame_skip: int
    efficiency: float
    scaling: float
    cpu_count: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def measure_raw_fps(cfg: EnvConfig, frames: int, seed: int = 0) -> float:
    """Frames/s of one bare gym-super-mario-bros env (its own ``step``, no wrappers)."""
    from gym_super_mario_bros import SuperMarioBrosEnv

    spec = stage_specs(cfg)[0]
    env = SuperMarioBrosEnv(lost_levels=spec.lost_levels, target=spec.target)
    buttons = action_bytes(cfg.movement)
    rng = np.random.default_rng(seed)
    choices = rng.integers(len(buttons), size=frames)
    env.reset()
    start = time.perf_counter()
    for action in choices:
        _, _, terminated, truncated, _ = env.step(buttons[action])
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return frames / elapsed


def measure_single_env_sps(cfg: EnvConfig, steps: int, seed: int = 0) -> float:
    """Agent steps/s of one env through the whole configured pipeline."""
    env = make_env(cfg)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    choices = rng.integers(env.action_space.n, size=steps)
    start = time.perf_counter()
    for action in choices:
        _, _, terminated, truncated, _ = env.step(int(action))
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def measure_vector_env_sps(
    cfg: EnvConfig, n_envs: int, steps: int, n_workers: int | None = None, seed: int = 0
) -> tuple[float, int]:
    """Agent steps/s summed over ``n_envs`` envs in worker processes, and the worker count."""
    with VectorEnv(cfg, n_envs=n_envs, seed=seed, mode="process", n_workers=n_workers) as venv:
        venv.reset()
        rng = np.random.default_rng(seed)
        n_actions = venv.single_action_space.n
        batches = max(1, steps // n_envs)
        actions = rng.integers(n_actions, size=(batches, n_envs))
        start = time.perf_counter()
        for batch in actions:
            venv.step(batch)
        elapsed = time.perf_counter() - start
        return batches * n_envs / elapsed, venv.n_workers


def bench_env(
    cfg: EnvConfig,
    n_envs: int,
    steps: int,
    n_workers: int | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> EnvBenchResult:
    """Raw emulator, one full env and the vector env, measured one after another."""
    progress("bare emulator")
    raw_fps = measure_raw_fps(cfg, frames=steps * cfg.frame_skip)
    progress("one env, full pipeline")
    single = measure_single_env_sps(cfg, steps)
    progress(f"{n_envs} envs in worker processes")
    vector, workers = measure_vector_env_sps(cfg, n_envs, steps * max(1, n_envs // 2), n_workers)
    return EnvBenchResult(
        raw_fps=round(raw_fps, 1),
        single_env_sps=round(single, 1),
        vector_env_sps=round(vector, 1),
        n_envs=n_envs,
        n_workers=workers,
        frame_skip=cfg.frame_skip,
        efficiency=round(single / (raw_fps / cfg.frame_skip), 3),
        scaling=round(vector / single, 3),
        cpu_count=os.cpu_count() or 1,
    )

"""Load a trained agent and play episodes with it (``mario eval`` and ``mario record``)."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from mario_cli.config import EnvConfig, MarioConfig
from mario_cli.errors import ConfigError, MarioError
from mario_cli.runs import resolve_run
from mario_cli.training.checkpoint import CheckpointManager, load_checkpoint, load_weights


@dataclass
class Agent:
    """A policy restored from a checkpoint, with the config it was trained with."""

    policy: torch.nn.Module
    cfg: MarioConfig
    checkpoint: Path

    def act(
        self, obs: np.ndarray, state: Any, episode_start: bool, greedy: bool
    ) -> tuple[int, float, Any]:
        """One decision: (action, value estimate, next recurrent state)."""
        with torch.inference_mode():
            batch = torch.from_numpy(obs).unsqueeze(0)
            done = torch.tensor([float(episode_start)])
            actions, _, values, state = self.policy.act(batch, state, done, deterministic=greedy)
        return int(actions[0]), float(values[0]), state


def find_model(reference: str | None, artifacts: Path) -> Path:
    """A checkpoint file, or a run's best.pt, else final.pt, else its newest checkpoint."""
    if reference is not None and Path(reference).is_file():
        return Path(reference)
    if reference is not None and reference.endswith(".pt"):
        raise MarioError(f"checkpoint {reference} not found; list runs with `mario runs`")
    run = resolve_run(reference, artifacts)
    manager = CheckpointManager(run.root, keep=1_000_000)
    for candidate in (manager.best_path, manager.final_path):
        if candidate.is_file():
            return candidate
    latest = manager.latest()
    if latest is None:
        raise MarioError(f"run {run.name} has no checkpoint yet")
    return latest


def load_agent(checkpoint: Path, env_overrides: dict[str, Any] | None = None) -> Agent:
    """Rebuild the policy exactly as trained; ``env_overrides`` adjust only the env."""
    from mario_cli.training.builders import build_policy

    state = load_checkpoint(checkpoint)
    saved = state["config"]
    movement = (env_overrides or {}).get("movement")
    if movement not in (None, "auto") and movement != saved["env"]["movement"]:
        raise ConfigError(
            f"--movement {movement} disagrees with the checkpoint, trained with "
            f"{saved['env']['movement']}; use --movement auto"
        )
    env_section = dict(saved["env"])
    env_section.update({k: v for k, v in (env_overrides or {}).items() if k != "movement"})
    saved = {**saved, "env": env_section}
    saved["model"] = {
        **saved["model"],
        "backbone": state.get("backbone", saved["model"]["backbone"]),
    }
    try:
        cfg = MarioConfig.model_validate(saved)
    except Exception as exc:
        raise MarioError(f"{checkpoint}: its saved config does not load ({exc})") from None
    policy, _ = build_policy(
        cfg, tuple(state["obs_shape"]), len(state["actions"]), torch.device("cpu")
    )
    load_weights(policy, state["model"], allow_partial=False, source=checkpoint)
    policy.eval()
    return Agent(policy, cfg, checkpoint)


def play_episode(
    agent: Agent,
    env: Any,
    greedy: bool,
    max_steps: int,
    seed: int,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """One episode; returns {return, length, max_x_pos, cleared, stage}."""
    torch.manual_seed(seed)
    obs, info = env.reset(seed=seed)
    state, start, total, length = None, True, 0.0, 0
    while True:
        action, value, state = agent.act(obs, state, start, greedy)
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        length += 1
        start = False
        if on_step is not None:
            on_step({"action": action, "value": value, "info": info, "return": total})
        if terminated or truncated or length >= max_steps:
            break
    return {
        "return": round(total, 4),
        "length": length,
        "max_x_pos": int(info["max_x_pos"]),
        "cleared": bool(info["flag_get"]),
        "stage": info["stage_name"],
    }


@dataclass(frozen=True)
class EpisodeJob:
    checkpoint: str
    env_overrides: dict[str, Any]
    greedy: bool
    max_steps: int
    seed: int


def _run_jobs(jobs: list[EpisodeJob]) -> list[dict[str, Any]]:
    from mario_cli.envs import make_env

    torch.set_num_threads(1)
    results, cache = [], {}
    for job in jobs:
        key = (job.checkpoint, tuple(sorted(job.env_overrides.items())))
        if key not in cache:
            agent = load_agent(Path(job.checkpoint), job.env_overrides)
            cache[key] = (agent, make_env(agent.cfg.env))
        agent, env = cache[key]
        results.append(play_episode(agent, env, job.greedy, job.max_steps, job.seed))
    for _, env in cache.values():
        env.close()
    return results


def run_episodes(jobs: list[EpisodeJob], workers: int) -> list[dict[str, Any]]:
    """Play the jobs, spread over ``workers`` processes; results keep the jobs' order."""
    if workers <= 1 or len(jobs) <= 1:
        return _run_jobs(jobs)
    chunks = [jobs[i::workers] for i in range(workers)]
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(len(chunks)) as pool:
        chunk_results = pool.map(_run_jobs, chunks)
    results: list[dict[str, Any]] = [{}] * len(jobs)
    for offset, chunk in enumerate(chunk_results):
        for k, result in enumerate(chunk):
            results[offset + k * workers] = result
    return results


def summarise(episodes: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "episodes": len(episodes),
        "avg_reward": float(np.mean([e["return"] for e in episodes])),
        "avg_max_x_pos": float(np.mean([e["max_x_pos"] for e in episodes])),
        "clear_rate": float(np.mean([e["cleared"] for e in episodes])),
        "avg_length": float(np.mean([e["length"] for e in episodes])),
    }


def parse_stages(text: str) -> list[str]:
    if text.strip().lower() == "all":
        return list(EnvConfig().stages)
    stages = [s.strip() for s in text.split(",") if s.strip()]
    try:
        EnvConfig(stages=stages)  # validates the W-S form
    except ValidationError as exc:
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(f"--stages {text!r}: {message}; e.g. --stages 1-1,1-2 or all") from None
    return stages


def evaluate(
    checkpoint: Path,
    episodes: int,
    greedy: bool = True,
    max_steps: int = 5000,
    seed: int = 0,
    env_overrides: dict[str, Any] | None = None,
    stages: list[str] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Evaluate a checkpoint; with ``stages``, ``episodes`` per stage."""
    overrides = dict(env_overrides or {})
    agent = load_agent(checkpoint, overrides)  # fail fast, in this process
    jobs = []
    for stage in stages or [None]:
        stage_overrides = dict(overrides)
        if stage is not None:
            lost = agent.cfg.env.env_id.startswith("SuperMarioBros2")
            world, _, level = stage.partition("-")
            prefix = "SuperMarioBros2" if lost else "SuperMarioBros"
            stage_overrides["env_id"] = f"{prefix}-{world}-{level}-v0"
            stage_overrides["random_stage"] = False
        jobs += [
            EpisodeJob(str(checkpoint), stage_overrides, greedy, max_steps, seed + i)
            for i in range(episodes)
        ]
    per_episode = run_episodes(jobs, workers)
    result: dict[str, Any] = {"model": str(checkpoint), **summarise(per_episode)}
    result["per_episode"] = per_episode
    result["per_stage"] = {}
    if stages:
        for stage in stages:
            chosen = [e for e in per_episode if e["stage"].upper() == stage.upper()]
            result["per_stage"][stage] = summarise(chosen)
    return result

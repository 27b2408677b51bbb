"""Load a trained agent and play episodes with it (``mario eval`` and ``mario record``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from mario_cli.config import EnvConfig, MarioConfig, deep_merge, upgrade_keys
from mario_cli.envs.vector import worker_context
from mario_cli.errors import ConfigError, MarioError
from mario_cli.eval_protocol import (
    DEFAULT_NOOP_MAX,
    check_noop_max,
    check_policy,
    cuts_without_progress,
    episode_noops,
    start_protocol,
    without_training_aids,
)
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
    saved = upgrade_keys(saved)
    env_section = dict(saved["env"])
    # Trained before jump press existed: its policy knows the held-A game only.
    env_section.setdefault("jump_press", False)
    overrides = {k: v for k, v in (env_overrides or {}).items() if k != "movement"}
    # Before the overrides: a caller may still set a cut (or restarts) explicitly.
    env_section = without_training_aids(env_section)
    env_section = deep_merge(env_section, upgrade_keys({"env": overrides})["env"])
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
    noop_frames: int = 0,
) -> dict[str, Any]:
    """One episode from the stage start; returns {return, length, max_x_pos, cleared, ...}.

    The episode first waits ``noop_frames`` frames (see ``episode_noops``): the NES is
    deterministic, so without a wait every greedy episode is the same episode.
    """
    torch.manual_seed(seed)
    obs, info = env.reset(seed=seed, options={"noop_frames": noop_frames})
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
        "policy": "greedy" if greedy else "stochastic",
        "seed": seed,
        "noop_frames": noop_frames,
    }


@dataclass(frozen=True)
class EpisodeJob:
    checkpoint: str
    env_overrides: dict[str, Any]
    greedy: bool
    max_steps: int
    seed: int
    noop_frames: int = 0


# Per worker process: the agents and envs of the checkpoints it played last.
_worker_cache: dict[tuple[Any, ...], tuple[Agent, Any]] = {}
_WORKER_CACHE_SIZE = 2


def _agent_and_env(job: EpisodeJob) -> tuple[Agent, Any]:
    from mario_cli.envs import make_env

    # Overrides may nest tables ({"reward": {...}}): keyed by their JSON, not hashed.
    key = (job.checkpoint, json.dumps(job.env_overrides, sort_keys=True, default=str))
    if key not in _worker_cache:
        while len(_worker_cache) >= _WORKER_CACHE_SIZE:  # drop the oldest
            _, old_env = _worker_cache.pop(next(iter(_worker_cache)))
            old_env.close()
        agent = load_agent(Path(job.checkpoint), job.env_overrides)
        _worker_cache[key] = (agent, make_env(agent.cfg.env))
    return _worker_cache[key]


def _play_jobs(indexed: list[tuple[int, EpisodeJob]]) -> list[tuple[int, dict[str, Any]]]:
    torch.set_num_threads(1)
    results = []
    for index, job in indexed:
        agent, env = _agent_and_env(job)
        episode = play_episode(
            agent, env, job.greedy, job.max_steps, job.seed, None, job.noop_frames
        )
        results.append((index, episode))
    return results


def run_episodes(
    jobs: list[EpisodeJob],
    workers: int,
    on_episode: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Play the jobs over ``workers`` processes; results keep the jobs' order.

    ``on_episode(done)`` is called as episodes finish (in small batches).
    """
    indexed = list(enumerate(jobs))
    results: list[dict[str, Any]] = [{}] * len(jobs)
    done = 0
    if workers <= 1 or len(jobs) <= 1:
        for item in indexed:
            for index, episode in _play_jobs([item]):
                results[index] = episode
                done += 1
                if on_episode is not None:
                    on_episode(done)
        _close_worker_cache()
        return results
    # Small tasks (up to 4 episodes): the pool balances them and progress shows.
    size = max(1, min(4, len(jobs) // (workers * 4)))
    tasks = [indexed[i : i + size] for i in range(0, len(indexed), size)]
    with worker_context().Pool(min(workers, len(tasks))) as pool:
        for finished in pool.imap_unordered(_play_jobs, tasks):
            for index, episode in finished:
                results[index] = episode
            done += len(finished)
            if on_episode is not None:
                on_episode(done)
    return results


def _close_worker_cache() -> None:
    while _worker_cache:
        _, (_, env) = _worker_cache.popitem()
        env.close()


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


def episode_jobs(
    checkpoint: Path,
    episodes: int,
    policies: list[str],
    max_steps: int,
    seed: int,
    noop_max: int,
    overrides: dict[str, Any],
) -> list[EpisodeJob]:
    """Episode i of each policy uses seed + i and ``episode_noops(seed, i, noop_max)``:
    the same start for greedy and stochastic, distinct starts while they last."""
    waits = [episode_noops(seed, i, noop_max) for i in range(episodes)]
    return [
        EpisodeJob(str(checkpoint), overrides, policy == "greedy", max_steps, seed + i, waits[i])
        for policy in policies
        for i in range(episodes)
    ]


def evaluate(
    checkpoint: Path,
    episodes: int,
    policy: str = "greedy",
    max_steps: int = 5000,
    seed: int = 0,
    env_overrides: dict[str, Any] | None = None,
    stages: list[str] | None = None,
    workers: int = 1,
    noop_max: int = DEFAULT_NOOP_MAX,
    on_episode: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint from the stage start; with ``stages``, ``episodes`` per stage.

    ``policy`` is greedy, stochastic or both. The result has one summary per policy
    under ``by_policy`` (and, for a single policy, its summary at the top level too).
    """
    policies = check_policy(policy)
    check_noop_max(noop_max)
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
        jobs += episode_jobs(
            checkpoint, episodes, policies, max_steps, seed, noop_max, stage_overrides
        )
    per_episode = run_episodes(jobs, workers, on_episode)
    result: dict[str, Any] = {
        "model": str(checkpoint),
        "policy": policy,
        "start": start_protocol(noop_max, seed, cuts_without_progress(agent.cfg.env)),
        "by_policy": {},
    }
    for name in policies:
        chosen = [e for e in per_episode if e["policy"] == name]
        summary: dict[str, Any] = summarise(chosen)
        summary["per_stage"] = {}
        for stage in stages or []:
            in_stage = [e for e in chosen if e["stage"].upper() == stage.upper()]
            summary["per_stage"][stage] = summarise(in_stage)
        result["by_policy"][name] = summary
    if len(policies) == 1:
        result.update(result["by_policy"][policies[0]])
    result["per_episode"] = per_episode
    return result

"""How evaluation episodes start and which policy plays them (no torch: the CLI imports it).

The NES is deterministic: from the same start, greedy play is the same episode every
time. As in the Atari protocol, each episode first waits a number of no-op frames.
The waits 0..noop_max are dealt in a seeded order, each once before any comes again,
so an eval's episodes start from distinct states while the starts last (drawing them
independently would replay some starts and skip others), and episode *i* under seed
*s* is reproducible.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mario_cli.errors import ConfigError

POLICIES = ("greedy", "stochastic", "both")
DEFAULT_NOOP_MAX = 30
START_PROTOCOL = "stage start, then 0..noop_max no-op frames, each once in a seeded order"
# What results written before the waits were dealt once each say: each episode drew its
# wait independently, so some starts were played twice and others not at all.
DRAWN_START_PROTOCOL = "stage start, then a seeded random 0..noop_max no-op frames"


def check_policy(policy: str) -> list[str]:
    """The policies that ``--policy`` names: one of them, or both in a fixed order."""
    if policy not in POLICIES:
        raise ConfigError(f"--policy {policy!r}: choose greedy, stochastic or both")
    return ["greedy", "stochastic"] if policy == "both" else [policy]


def check_noop_max(noop_max: int) -> int:
    if noop_max < 0:
        raise ConfigError(f"--noop-max {noop_max}: must be 0 or more (30 is the Atari protocol)")
    return noop_max


def episode_noops(seed: int, episode: int, noop_max: int) -> int:
    """The no-op frames episode ``episode`` (from 0) of an eval under ``seed`` waits.

    Episodes 0..noop_max get every wait in 0..noop_max once, in an order drawn from
    ``seed``; later episodes go round again in a new order.
    """
    if noop_max <= 0:
        return 0
    starts = noop_max + 1
    round_, place = divmod(episode, starts)
    return int(np.random.default_rng([seed, round_]).permutation(starts)[place])


def without_training_aids(env: dict[str, Any]) -> dict[str, Any]:
    """An ``[env]`` section as evaluation plays it: from the stage start (no restarts) and
    on until the episode really ends (no no-progress cut), so a stuck agent plays on, as
    in a game, and a late escape counts. The caller's dict is left as it was."""
    from mario_cli.config import components_of

    env = {**env, "restarts": {**env.get("restarts", {}), "share": 0.0}}
    reward = components_of("env").get("reward")
    if reward is not None and "no_progress_cut_steps" in reward.model_fields:
        env["reward"] = {**env.get("reward", {}), "no_progress_cut_steps": 0}
    return env


def start_protocol(noop_max: int, seed: int, no_progress_cut: bool = False) -> dict[str, Any]:
    """How evaluation episodes start (and whether they were cut), as written into every
    result. ``no_progress_cut`` is on only where a caller's overrides turned it back on."""
    # no_progress_cut: results written before 2026-12-05 lack it; their episodes were
    # cut where training cut them (see without_training_aids).
    return {
        "protocol": START_PROTOCOL,
        "noop_max": noop_max,
        "seed": seed,
        "no_progress_cut": no_progress_cut,
    }


def cuts_without_progress(env: Any) -> bool:
    """Whether an env config (``EnvConfig``) ends episodes that stop making progress."""
    try:
        reward = env.settings_of("reward")
    except ConfigError:  # a reward component with no settings: no cut
        return False
    return getattr(reward, "no_progress_cut_steps", 0) > 0


def describe_start(start: dict[str, Any]) -> str:
    cut = start.get("no_progress_cut", True)
    ending = ", episodes cut after no progress as in training" if cut else ""
    if start["noop_max"] == 0:
        return "from the stage start, no no-op frames" + ending
    if start.get("protocol") == DRAWN_START_PROTOCOL:
        return (
            f"from the stage start after a seeded random 0..{start['noop_max']} no-op frames "
            f"(episode i seeded {start['seed']} + i, drawn independently)" + ending
        )
    return (
        f"from the stage start after 0..{start['noop_max']} no-op frames, "
        f"each once in an order seeded {start['seed']}" + ending
    )

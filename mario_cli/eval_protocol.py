"""How evaluation episodes start and which policy plays them (no torch: the CLI imports it).

The NES is deterministic: from the same start, greedy play is the same episode every
time. As in the Atari protocol, each episode first waits a seeded random number of
no-op frames, so episode *i* under seed *s* is reproducible and episodes differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mario_cli.errors import ConfigError

POLICIES = ("greedy", "stochastic", "both")
DEFAULT_NOOP_MAX = 30
START_PROTOCOL = "stage start, then a seeded random 0..noop_max no-op frames"


def check_policy(policy: str) -> list[str]:
    """The policies that ``--policy`` names: one of them, or both in a fixed order."""
    if policy not in POLICIES:
        raise ConfigError(f"--policy {policy!r}: choose greedy, stochastic or both")
    return ["greedy", "stochastic"] if policy == "both" else [policy]


def check_noop_max(noop_max: int) -> int:
    if noop_max < 0:
        raise ConfigError(f"--noop-max {noop_max}: must be 0 or more (30 is the Atari protocol)")
    return noop_max


def noop_frames(seed: int, noop_max: int) -> int:
    """The no-op frames the episode with ``seed`` waits at the stage start (0..noop_max)."""
    if noop_max <= 0:
        return 0
    return int(np.random.default_rng(seed).integers(0, noop_max + 1))


def start_protocol(noop_max: int, seed: int) -> dict[str, Any]:
    """How evaluation episodes start, as written into every result."""
    return {"protocol": START_PROTOCOL, "noop_max": noop_max, "seed": seed}


def describe_start(start: dict[str, Any]) -> str:
    if start["noop_max"] == 0:
        return "from the stage start, no no-op frames"
    return (
        f"from the stage start after 0..{start['noop_max']} no-op frames "
        f"(episode i seeded {start['seed']} + i)"
    )

"""The env wrappers' own options: ``[env.reward]`` and ``[env.restarts]``.

Pydantic only, so the config loads them without importing the emulator. Which reward
the env produces (``env.reward_mode``) stays a key of ``[env]``: the core env reads it
too. The keys were flat ``[env]`` keys before; ``legacy_keys`` still reads those.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from mario_cli.api import ComponentSettings, SettingsConflict


class RewardSettings(ComponentSettings):
    """The reward wrapper: progress and score shaping, and the no-progress cut."""

    # The old flat keys had the same names, but for the no-progress cut's.
    legacy_keys: ClassVar[dict[str, str]] = {
        **{
            key: key
            for key in (
                "progress_scale",
                "death_penalty",
                "flag_bonus",
                "stall_penalty",
                "stall_steps",
                "backward_penalty_scale",
                "milestone_bonus",
                "milestone_every",
                "score_scale",
                "score_divisor",
            )
        },
        "no_progress_terminate_steps": "no_progress_cut_steps",
        "no_progress_terminate_penalty": "no_progress_cut_penalty",
    }

    progress_scale: float = Field(0.1, ge=0, description="Reward per pixel of new best x.")
    death_penalty: float = Field(2.5, ge=0, description="Subtracted when Mario loses a life.")
    flag_bonus: float = Field(5.0, ge=0, description="Added when Mario reaches the flag.")
    stall_penalty: float = Field(
        0.01, ge=0, description="Subtracted each step once x has not improved for stall_steps."
    )
    stall_steps: int = Field(50, ge=1, description="Steps without a new best x before stalling.")
    backward_penalty_scale: float = Field(0.0, ge=0, description="Penalty per pixel moved left.")
    milestone_bonus: float = Field(0.0, ge=0, description="Bonus at every milestone_every px.")
    milestone_every: int = Field(500, ge=1, description="Pixels of new best x between milestones.")
    no_progress_cut_steps: int = Field(
        300, ge=0, description="Truncate after this many steps without a new best x (0: never)."
    )
    no_progress_cut_penalty: float = Field(
        0.0, ge=0, description="progress mode: subtracted when an episode is cut for no progress."
    )
    score_scale: float = Field(0.1, ge=0, description="score mode: overall reward scale.")
    score_divisor: float = Field(40.0, gt=0, description="score mode: in-game score per reward.")


class RestartsSettings(ComponentSettings):
    """Frontier restarts: a share of training resets from saved states near where episodes end."""

    # The old flat keys were these with a restart_ prefix.
    legacy_keys: ClassVar[dict[str, str]] = {
        f"restart_{key}": key
        for key in (
            "share",
            "bucket_px",
            "runup_buckets",
            "runup_max_buckets",
            "states_per_bucket",
            "max_states",
        )
    }

    share: float = Field(
        0.5,
        ge=0,
        le=0.9,
        description="Share of training resets from a saved state near the frontier (0: off).",
    )
    bucket_px: int = Field(
        32, ge=8, le=1024, description="Width in px of the saved-state x buckets."
    )
    runup_buckets: int = Field(
        3, ge=0, le=64, description="Start this many buckets before the death x."
    )
    runup_max_buckets: int = Field(
        12,
        ge=0,
        le=64,
        description="If above runup_buckets, the run-up is drawn uniformly between the two "
        "(0: always runup_buckets).",
    )
    states_per_bucket: int = Field(
        2, ge=1, le=64, description="States kept per bucket (the newest)."
    )
    max_states: int = Field(
        64, ge=1, le=4096, description="States kept per env (each ~256 KB of memory)."
    )

    greedy_share: float = Field(
        0.2,
        ge=0,
        le=0.5,
        description="Share of stage-start training resets played by argmax (greedy probes).",
    )
    greedy_restarts: float = Field(
        0.7,
        ge=0,
        le=1,
        description="Share of restarts from the last greedy probe's path, before its death.",
    )

    def check_section(self, section: Any) -> None:
        if self.share > 0 and "restarts" not in section.wrappers:
            raise SettingsConflict(
                "share",
                'frontier restarts need "restarts" in env.wrappers (last, after frame_stack); '
                "add it, or set --restarts-share 0",
            )

"""Each built-in hint rule's own thresholds: ``[hints.<rule>]`` tables.

The thresholds the diagnostics panel shows too (``kl_bad``, ``entropy_bad``, ...) are
keys of ``[hints]`` itself, so a panel reading and the hint about it agree. These keys
were ``[ui]`` keys before; ``legacy_keys`` still reads those.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from mario_cli.api import ComponentSettings


def from_ui(**keys: str) -> dict[str, str]:
    """``legacy_keys`` for thresholds that were ``[ui]`` keys: old name -> own key."""
    return {f"ui.{old}": new for old, new in keys.items()}


class UpdatesStalledSettings(ComponentSettings):
    """updates-stalled: the policy has stopped changing."""

    legacy_keys: ClassVar[dict[str, str]] = from_ui(
        stall_iterations="iterations", stall_kl="kl", stall_policy_loss="policy_loss"
    )

    iterations: int = Field(5, ge=1, description="Iterations of ~zero updates before a hint.")
    kl: float = Field(1e-5, ge=0, description="approx_kl below this counts as no update.")
    policy_loss: float = Field(
        1e-4, ge=0, description="|policy_gradient_loss| below this counts as no update."
    )


class EntropyCollapsedSettings(ComponentSettings):
    """entropy-collapsed: entropy below [hints] entropy_bad, the policy no longer explores."""

    legacy_keys: ClassVar[dict[str, str]] = from_ui(entropy_iterations="iterations")

    iterations: int = Field(
        3, ge=1, description="Iterations below hints.entropy_bad before a hint."
    )
    clearing: float = Field(
        0.5,
        ge=0,
        le=1,
        description="No hint while a clear rate (rollout, greedy probes, best check) is this high.",
    )


class KlTooLargeSettings(ComponentSettings):
    """kl-too-large: approx_kl above [hints] kl_bad, each update overshoots."""

    legacy_keys: ClassVar[dict[str, str]] = from_ui(kl_iterations="iterations")

    iterations: int = Field(3, ge=1, description="Iterations above hints.kl_bad before a hint.")


class ValueNotLearningSettings(ComponentSettings):
    """value-not-learning: explained_variance stays near 0."""

    legacy_keys: ClassVar[dict[str, str]] = from_ui(
        explained_variance_zero="near_zero", explained_variance_iterations="iterations"
    )

    near_zero: float = Field(
        0.05, ge=0, description="|explained_variance| below this counts as near 0."
    )
    iterations: int = Field(
        30, ge=1, description="Iterations of near-0 explained_variance before a hint."
    )


class ProgressPlateauSettings(ComponentSettings):
    """progress-plateau: episode after episode ends at the same x."""

    legacy_keys: ClassVar[dict[str, str]] = from_ui(
        plateau_episodes="episodes", plateau_tolerance="tolerance", plateau_share="share"
    )

    episodes: int = Field(50, ge=2, description="Episodes at the same max x before a hint.")
    tolerance: int = Field(
        16,
        ge=0,
        description="Pixels within which episodes' max x count as the same (progress-stalled "
        "groups where episodes end with it too).",
    )
    share: float = Field(
        0.8, gt=0, le=1, description="Share of those episodes that must end at that x."
    )


class ProgressStalledSettings(ComponentSettings):
    """progress-stalled: the best rolling avg_max_x_pos no longer rises."""

    legacy_keys: ClassVar[dict[str, str]] = from_ui(
        stall_progress_steps="steps", stall_progress_margin="margin"
    )

    steps: int = Field(
        100_000,
        ge=1,
        description="Agent steps without avg_max_x_pos progress before a hint.",
    )
    margin: int = Field(
        50,
        ge=0,
        description="Pixels the best rolling avg_max_x_pos must rise by to count as progress.",
    )

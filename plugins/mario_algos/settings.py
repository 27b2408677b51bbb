"""The algorithms' own options and defaults (pydantic only: the config loads them).

PPO's knobs are the ``[algo]`` keys themselves. A2C makes one gradient step per
rollout, so it wants short rollouts: the defaults below are those measured in the
README's "each algorithm for 15 minutes" table. IMPALA owns V-trace's truncation
levels.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from mario_cli.api import ComponentSettings


class A2CSettings(ComponentSettings):
    """A2C: one full-batch step per rollout."""

    section_defaults: ClassVar[dict[str, Any]] = {"n_steps": 32, "learning_rate": 5e-4}


class ImpalaSettings(ComponentSettings):
    """IMPALA: V-trace's importance-weight truncation levels (Espeholt et al. 2018)."""

    clip_rho: float = Field(
        1.0, gt=0, description="rho-bar: truncates the weights of the value targets."
    )
    clip_c: float = Field(1.0, gt=0, description="c-bar: truncates the trace (how far back).")
    clip_pg_rho: float = Field(
        1.0, gt=0, description="Truncates the weights of the policy-gradient advantages."
    )

"""Env ids, stages and action sets of gym-super-mario-bros 9.x (SMB1 and Lost Levels)."""

from __future__ import annotations

from dataclasses import dataclass

from gym_super_mario_bros.actions import COMPLEX_MOVEMENT, RIGHT_ONLY, SIMPLE_MOVEMENT

from mario_cli.errors import ConfigError

ACTION_SETS: dict[str, list[list[str]]] = {
    "right_only": RIGHT_ONLY,
    "simple": SIMPLE_MOVEMENT,
    "complex": COMPLEX_MOVEMENT,
}

# Bit of each NES controller button in the byte the emulator reads.
BUTTON_BITS = {
    "right": 0b10000000,
    "left": 0b01000000,
    "down": 0b00100000,
    "up": 0b00010000,
    "start": 0b00001000,
    "select": 0b00000100,
    "B": 0b00000010,
    "A": 0b00000001,
    "NOOP": 0,
}


def action_bytes(movement: str) -> list[int]:
    """Controller bytes for each discrete action of an action set."""
    try:
        combos = ACTION_SETS[movement]
    except KeyError:
        raise ConfigError(
            f"unknown movement {movement!r}; choose one of: {', '.join(ACTION_SETS)}"
        ) from None
    return [sum(BUTTON_BITS[button] for button in combo) for combo in combos]


def action_names(movement: str) -> list[str]:
    return ["+".join(combo) for combo in ACTION_SETS[movement]]


def jump_factors(movement: str) -> tuple[list[int], list[int]]:
    """Each action's direction (its buttons other than A, numbered in order of first use)
    and whether it holds A: ``simple``'s ``right+A+B`` is direction ``right+B`` with A."""
    action_bytes(movement)  # a clear error for an unknown action set
    directions: dict[frozenset[str], int] = {}
    direction_of, holds_a = [], []
    for combo in ACTION_SETS[movement]:
        rest = frozenset(button for button in combo if button not in ("A", "NOOP"))
        direction_of.append(directions.setdefault(rest, len(directions)))
        holds_a.append(int("A" in combo))
    if len(set(holds_a)) < 2:
        raise ConfigError(f"movement {movement!r} has no A choice to factor out; use a joint head")
    return direction_of, holds_a


@dataclass(frozen=True)
class StageSpec:
    """One playable target: which ROM and which (world, stage), or the whole game."""

    env_id: str
    lost_levels: bool
    target: tuple[int, int] | None

    @property
    def label(self) -> str:
        if self.target is None:
            return "game"
        world, stage = self.target
        world_label = str(world) if world <= 9 else chr(ord("A") + world - 10)
        return f"{world_label}-{stage}"


def parse_env_id(env_id: str) -> StageSpec:
    """Resolve a registered SMB1 / Lost Levels env id, or explain the accepted ids."""
    import gym_super_mario_bros  # noqa: F401  (registers the ids)
    import gymnasium as gym

    try:
        spec = gym.spec(env_id)
    except gym.error.Error:
        spec = None
    if spec is None or spec.entry_point != "gym_super_mario_bros:SuperMarioBrosEnv":
        raise ConfigError(
            f"unknown env id {env_id!r}; use SuperMarioBros-W-S-v0 (W 1-8, S 1-4), "
            "SuperMarioBros-v0, or a Lost Levels id like SuperMarioBros2-1-1-v0"
        )
    kwargs = spec.kwargs
    target = kwargs.get("target")
    lost_levels = bool(kwargs.get("lost_levels", False))
    return StageSpec(env_id, lost_levels, tuple(target) if target else None)


def stage_spec(stage: str, lost_levels: bool = False) -> StageSpec:
    """A W-S label as a stage of SMB1 (or of the Lost Levels)."""
    world, _, level = stage.partition("-")
    prefix = "SuperMarioBros2" if lost_levels else "SuperMarioBros"
    return parse_env_id(f"{prefix}-{world.upper()}-{level}-v0")

"""Layered configuration: built-in defaults < mario.toml < MARIO_* env vars < CLI flags.

Each layer is read into a plain nested dict, the layers are merged, and the merge
is validated once. When validation fails, the error names the key, the value and
the layer that supplied it (a file, an env var or a flag).
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError

from mario_cli.errors import ConfigError

ENV_PREFIX = "MARIO_"
ENV_NESTED_DELIMITER = "__"
DEFAULT_CONFIG_NAME = "mario.toml"

SMB_STAGES = [f"{world}-{stage}" for world in range(1, 9) for stage in range(1, 5)]


class ComponentSettings(BaseModel):
    """A plugin component's own options, shown as ``[<section>.<name>]`` in mario.toml.

    A plugin passes its subclass to ``register(name, factory, settings=...)``; the keys
    then validate, show in ``mario config show``, and become ``--<name>-<key>`` flags
    and ``MARIO_<SECTION>__<NAME>__<KEY>`` variables. A name with dashes
    (``progress-plateau``) has its table under underscores (``[hints.progress_plateau]``),
    so that it is a variable name too.

    - ``section_defaults``: defaults the component wants for keys of its section while
      it is the one in use (an algorithm's own rollout length); any layer that sets
      the key wins.
    - ``legacy_keys``: old keys that now live here (old name -> own key), still read for
      one release with a notice: a flat key of the section (``impala_channels``) or,
      dotted, a key of another section (``ui.stall_iterations``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    section_defaults: ClassVar[dict[str, Any]] = {}
    legacy_keys: ClassVar[dict[str, str]] = {}

    def check_section(self, section: BaseModel) -> None:
        """Checks that need the other keys of the section (a wrapper's option that only
        works while the wrapper is listed): raise :class:`SettingsConflict` naming the
        own key at fault. Runs whenever the section is validated."""


class SettingsConflict(ValueError):
    """A component's key whose value the rest of its section rules out."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.table = ""  # filled in by the section that ran the check


# Section -> component table -> its settings model, as the plugin host installed them.
_COMPONENTS: dict[str, dict[str, type[ComponentSettings]]] = {}

# Keys the host itself moved or renamed: old "section.key" -> "section.key" now. Read for
# one release with a notice, like the components' legacy_keys.
HOST_MOVED_KEYS: dict[str, str] = {
    "ui.ui": "ui.mode",
    "ui.hint_cooldown": "hints.cooldown",
    **{
        f"ui.{key}": f"hints.{key}"
        for key in (
            "kl_warn",
            "kl_bad",
            "clip_fraction_warn",
            "clip_fraction_bad",
            "entropy_warn",
            "entropy_bad",
            "explained_variance_warn",
            "explained_variance_bad",
            "value_loss_warn",
            "value_loss_bad",
        )
    },
}

# (section, old key) -> where its value lives now: (section, key) or (section, table, key).
_MOVED: dict[tuple[str, str], tuple[str, ...]] = {}


def table_name(component: str) -> str:
    """The ``[<section>.<table>]`` name of a component: its name, dashes as underscores."""
    return component.replace("-", "_")


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def __init__(self, **data: Any) -> None:
        ensure_components()  # a section built directly knows its component tables too
        super().__init__(**data)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:
        ensure_components()
        return super().model_validate(obj, **kwargs)

    @model_validator(mode="before")
    @classmethod
    def _route_legacy_keys(cls, data: Any) -> Any:
        """Old keys of this section that moved within it go to their new place."""
        if not isinstance(data, dict):
            return data
        section = section_name(cls)
        routes = {
            old: new[1:]
            for (where, old), new in _MOVED.items()
            if where == section and new[0] == section and old in data
        }
        return _move_keys(data, routes) if routes else data

    @model_validator(mode="after")
    def _check_tables(self) -> Any:
        for name in tables_of(section_name(type(self))):
            table = self.__dict__.get(name)
            if isinstance(table, ComponentSettings):
                try:
                    table.check_section(self)
                except SettingsConflict as exc:
                    exc.table = name
                    raise
        return self

    def _moved(self, name: str) -> tuple[str, ...] | None:
        """Where an old attribute of this section lives now, within it (for one release)."""
        section = section_name(type(self))
        path = _MOVED.get((section, name))
        if path is None:
            return None
        new = ".".join(path)
        if path[0] != section:
            raise AttributeError(f"{section}.{name} is now {new}")
        notify(f"{section}.{name} is now {new}; the old name still works in this release")
        return path[1:]

    def __getattr__(self, name: str) -> Any:
        path = None if name.startswith("_") else self._moved(name)
        if path is None:
            return super().__getattr__(name)
        value: Any = self
        for part in path:
            value = getattr(value, part)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        path = None if name.startswith("_") else self._moved(name)
        if path is None:
            super().__setattr__(name, value)
        elif len(path) == 1:
            super().__setattr__(path[0], value)
        else:
            table = getattr(self, path[0]).model_copy()
            setattr(table, path[1], value)
            super().__setattr__(path[0], table)

    def settings_of(self, name: str) -> ComponentSettings:
        """The settings of component ``name`` of this section (its defaults if unset)."""
        table = table_name(name)
        value = self.__dict__.get(table)
        if isinstance(value, ComponentSettings):
            return value
        model = components_of(section_name(type(self))).get(table)
        if model is None:
            raise ConfigError(f"component {name!r} has no settings in [{section_name(type(self))}]")
        return model()


def _place(data: dict[str, Any], path: tuple[str, ...], value: Any) -> bool:
    """Put ``value`` at ``path`` of ``data`` unless a value is there already, copying the
    nested dicts on the way (the caller's stay as they were); False where a built model
    stands in the way."""
    node = data
    for part in path[:-1]:
        child = node.get(part, {})
        if not isinstance(child, dict):
            return False
        child = dict(child)
        node[part] = child
        node = child
    node.setdefault(path[-1], value)
    return True


def _move_keys(data: dict[str, Any], routes: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """A copy of ``data`` with each old key's value at its new path (within ``data``)."""
    data = dict(data)
    for old, path in routes.items():
        if old in data and _place(data, path, data[old]):
            del data[old]
    return data


def upgrade_keys(data: dict[str, Any]) -> dict[str, Any]:
    """A section-keyed config dict with every old key (``legacy_keys``, the host's moves)
    at its new path; where both are given, the new one wins."""
    ensure_components()
    upgraded = dict(data)
    for (section, old), path in _MOVED.items():
        values = upgraded.get(section)
        if not (isinstance(values, dict) and old in values):
            continue
        rest = dict(values)
        value = rest.pop(old)
        upgraded[section] = rest
        if not _place(upgraded, path, value):
            upgraded[section] = values  # left for validation to report
    return upgraded


class EnvConfig(Section):
    env_id: str = Field(
        "SuperMarioBros-1-1-v0",
        description="gym-super-mario-bros env id (SuperMarioBros-W-S-v0, SuperMarioBros2-W-S-v0).",
    )
    random_stage: bool = Field(False, description="Sample a new stage from `stages` each reset.")
    stages: list[str] = Field(
        default_factory=lambda: list(SMB_STAGES),
        description="Stages for random_stage, as W-S (default: all 32 SMB stages).",
    )
    movement: Literal["right_only", "simple", "complex"] = Field(
        "simple", description="Action set: right_only (5), simple (7) or complex (12)."
    )
    frame_skip: int = Field(4, ge=1, description="NES frames per agent step (reward summed).")
    jump_press: bool = Field(
        True, description="Release a held A for one frame once per landing, so A jumps again."
    )
    frame_stack: int = Field(4, ge=1, description="Observations stacked along the channel axis.")
    obs_size: int = Field(84, ge=16, description="Observations are resized to obs_size^2.")
    crop_top: int = Field(0, ge=0, le=200, description="Rows cut from the top (HUD) before resize.")
    wrappers: list[str] = Field(
        default_factory=lambda: [
            "frame_skip",
            "grayscale",
            "resize",
            "reward",
            "frame_stack",
            "restarts",
        ],
        description="Registered wrappers applied in order on top of the core env.",
    )
    # Stays here rather than in [env.reward]: it also decides what the core env reports
    # as its reward (the env's own, or none for progress), with or without that wrapper.
    reward_mode: Literal["raw", "clip", "progress", "score"] = Field(
        "progress",
        description="raw: env reward; clip: its sign; progress: new-best-x shaping; score: score.",
    )
    n_envs: int = Field(8, ge=1, description="Parallel envs.")
    n_workers: int = Field(
        0, ge=0, description="Env worker processes (0: one per core, envs spread over them)."
    )
    step_groups: int = Field(
        2,
        ge=1,
        le=8,
        description="Env groups stepped in turn while the trainer acts for another "
        "(1: off; recurrent policies use 1; unused when the workers act).",
    )
    vector_mode: Literal["process", "sync"] = Field(
        "process", description="process: worker processes; sync: all envs in-process (debug)."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_restarts_without_their_wrapper(cls, data: Any) -> Any:
        """A wrapper list without "restarts" (a custom list, a run saved before restarts
        were on by default) turns the default share off instead of failing the check."""
        if not isinstance(data, dict) or "wrappers" not in data:
            return data
        wrappers = data["wrappers"]
        table = data.get("restarts")
        share_given = (
            "restart_share" in data
            or (isinstance(table, dict) and "share" in table)
            or isinstance(table, BaseModel)
        )
        if share_given or not isinstance(wrappers, list) or "restarts" in wrappers:
            return data
        return {**data, "restarts": {**(table or {}), "share": 0.0}}

    @field_validator("stages")
    @classmethod
    def _stage_format(cls, stages: list[str]) -> list[str]:
        for stage in stages:
            world, _, level = stage.partition("-")
            if not (world and level.isdigit() and (world.isdigit() or world.isalpha())):
                raise ValueError(f"stage {stage!r} is not of the form W-S (e.g. 1-1)")
        if not stages:
            raise ValueError("at least one stage is needed")
        return stages


class ModelConfig(Section):
    backbone: str = Field("auto", description="nature, impala, or auto (chosen by device).")
    hidden_size: int = Field(512, ge=8, description="Width of the layer after the backbone.")
    recurrent: str = Field("none", description="Recurrent core: none, gru, lstm, transformer.")
    recurrent_hidden: int = Field(
        0, ge=0, description="Core width: GRU/LSTM hidden, transformer d_model (0: hidden_size)."
    )
    action_head: Literal["joint", "factored"] = Field(
        "joint",
        description="joint: a logit per action; factored: direction and A (jump) logits, "
        "summed per action.",
    )
    noisy: bool = Field(False, description="NoisyLinear actor and critic heads.")
    noisy_sigma0: float = Field(
        0.5, gt=0, description="NoisyLinear initial noise scale (sigma = sigma0 / sqrt(fan_in))."
    )


class AlgoConfig(Section):
    algo: str = Field("ppo", description="Learning algorithm: ppo, a2c, impala.")
    n_steps: int = Field(256, ge=1, description="Steps per env per rollout.")
    learning_rate: float = Field(2.5e-4, gt=0, description="Peak learning rate (AdamW).")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    lr_final_fraction: float = Field(
        0.4, ge=0, le=1, description="cosine: final lr as a fraction of the peak."
    )
    warmup_fraction: float = Field(0.01, ge=0, le=1, description="Linear warmup share of training.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    ent_coef: float = Field(0.04, ge=0, description="Entropy bonus coefficient.")
    ent_coef_final: float | None = Field(
        0.01,
        ge=0,
        description="Entropy coefficient reached after ent_decay_steps (None: constant ent_coef).",
    )
    ent_decay_steps: int = Field(
        400_000, ge=1, description="Agent steps over which ent_coef falls to ent_coef_final."
    )
    vf_coef: float = Field(0.5, ge=0, description="Value loss coefficient.")
    gamma: float = Field(0.9, gt=0, le=1, description="Discount factor.")
    gae_lambda: float = Field(1.0, ge=0, le=1, description="GAE lambda.")
    clip_range: float = Field(0.15, gt=0, description="PPO policy clip range.")
    clip_range_vf: float | None = Field(None, description="PPO value clip range (None: off).")
    normalize_advantage: bool = Field(False, description="Normalise advantages per minibatch.")
    target_kl: float | None = Field(0.16, description="Stop the epochs above this KL (None: off).")
    n_epochs: int = Field(4, ge=1, description="PPO epochs per rollout.")
    batch_size: int = Field(256, ge=1, description="Minibatch size.")
    grad_accum_steps: int = Field(1, ge=1, description="Minibatches per optimizer step.")
    max_grad_norm: float = Field(0.5, gt=0, description="Gradient clipping norm.")
    overlap_collection: bool = Field(
        False,
        description="Collect the next rollout while learning (one update of policy lag).",
    )


class ReplayConfig(Section):
    replay: str = Field(
        "none", description="Replay strategy: none, uniform, prioritized, self_imitation."
    )
    per: bool = Field(False, description="Shortcut for replay = prioritized.")
    replay_capacity: int = Field(16384, ge=1, description="Transitions kept for replay.")
    replay_batch_size: int = Field(256, ge=1, description="Samples per extra replay update.")
    per_alpha: float = Field(0.6, ge=0, description="Priority exponent.")
    per_beta: float = Field(0.4, ge=0, le=1, description="Initial importance exponent (to 1).")


class RepairConfig(Section):
    """Greedy-path repair, a training aid: every ``repair_every`` agent steps the
    learner plays its policy greedily from the stage start (eval's start protocol);
    where that path dies, it searches the last steps for a one-step change that gets
    past, and imitates the repaired path after each update."""

    repair_every: int = Field(
        8192, ge=0, description="Agent steps between greedy checks from the stage start (0: off)."
    )
    repair_backoff: int = Field(
        8,
        ge=1,
        description="Every 4 clearing checks in a row double the interval, up to this "
        "many times repair_every; a failed check resets it (1: no back-off).",
    )
    repair_window: int = Field(
        24, ge=1, description="Steps before a greedy death searched for a change that saves it."
    )
    repair_actions: Literal["all", "release"] = Field(
        "all", description="Changes tried: every other action, or only those without A."
    )
    repair_lengths: list[int] = Field(
        default_factory=lambda: [1],
        description="Steps a change holds its action (e.g. 1,2,4), each if the ones before fail.",
    )
    repair_margin: int = Field(
        64, ge=1, description="Pixels past the death a change must reach to count as a repair."
    )
    repair_steps: int = Field(
        4, ge=0, description="Imitation gradient steps on the repaired paths after each update."
    )
    repair_batch: int = Field(
        64, ge=1, description="Path steps drawn per imitation step (every fix comes too)."
    )
    repair_coef: float = Field(1.0, ge=0, description="Weight of the imitation loss.")
    repair_paths: int = Field(
        8, ge=1, description="Repaired paths kept, one per stage and no-op start (newest kept)."
    )
    repair_cleared: int = Field(
        16,
        ge=0,
        description="Cleared greedy paths kept besides them, one per stage and no-op start.",
    )
    repair_best_clears: bool = Field(
        False, description="Also keep the clears of the best.pt checks (--best-by greedy)."
    )

    @field_validator("repair_lengths")
    @classmethod
    def _lengths_positive(cls, lengths: list[int]) -> list[int]:
        if not lengths or any(n < 1 for n in lengths):
            raise ValueError("give one or more step counts of 1 or more, e.g. 1,2,4")
        return lengths


class TrainConfig(Section):
    total_timesteps: int = Field(1_000_000, ge=1, description="Agent steps over all envs.")
    seed: int = Field(0, description="Seeds torch, numpy and every env.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="Compute device.")
    amp: bool | None = Field(
        None,
        description="Mixed precision: bf16/fp16 on CUDA, bf16 on CPU (None: CUDA, and CPUs "
        "with native bf16).",
    )
    compile: bool | None = Field(None, description="torch.compile the policy (None: auto).")
    torch_threads: int = Field(
        0, ge=0, description="Update threads (0: one per core; collection uses 1)."
    )
    acting: Literal["auto", "trainer", "workers"] = Field(
        "auto",
        description="Who chooses the actions in collection: the trainer, or each env worker "
        "with a policy copy (auto: workers for synchronous feed-forward training on CPU).",
    )
    actors: Literal["thread", "ray"] = Field(
        "thread", description="Where IMPALA's actors run: a thread here, or Ray actors."
    )
    n_actors: int = Field(2, ge=1, description="Ray actors, each with its own n_envs envs.")
    ray_address: str | None = Field(
        None, description="Ray cluster to join, HOST:PORT (None: start a local Ray)."
    )
    save_freq: int = Field(50_000, ge=1, description="Checkpoint every this many agent steps.")
    keep_checkpoints: int = Field(3, ge=1, description="Rotated checkpoints kept besides best.")
    best_by: Literal["greedy", "rollout"] = Field(
        "greedy",
        description="best.pt: greedy play from every eval start, or the training episodes.",
    )
    best_check_every: int = Field(
        32_768, ge=1, description="Agent steps between greedy checks for best.pt (best_by greedy)."
    )
    best_noop_max: int = Field(
        30, ge=0, description="The checks play 0..N no-op starts (mario eval's --noop-max)."
    )
    best_revert_after: int = Field(
        0,
        ge=0,
        description="Greedy checks in a row not beating best.pt before training goes back "
        "to its weights (0: never).",
    )
    run_name: str | None = Field(None, description="Run folder name (default: algo-stage-time).")
    artifacts_dir: Path = Field(Path("artifacts"), description="Where runs, videos, studies go.")
    init_model_path: Path | None = Field(None, description="Start from this checkpoint's weights.")
    allow_partial_init: bool = Field(False, description="Load only tensors whose shapes match.")
    wandb: bool = Field(False, description="Also log to Weights & Biases.")

    @model_validator(mode="after")
    def _revert_needs_greedy_checks(self) -> TrainConfig:
        if self.best_revert_after and self.best_by != "greedy":
            raise ValueError(
                "best_revert_after goes back to the best.pt of greedy checks: "
                "set best_by = greedy, or best_revert_after = 0"
            )
        return self


class UiConfig(Section):
    mode: Literal["auto", "tui", "plain", "quiet"] = Field(
        "auto", description="Training display (auto: tui on a terminal, else plain)."
    )


class HintsConfig(Section):
    """The diagnostics panel's thresholds, which the hint rules share, and how often a
    hint repeats; each built-in rule's own thresholds are its ``[hints.<rule>]`` table."""

    kl_warn: float = Field(0.05, ge=0, description="approx_kl above this is a warning.")
    kl_bad: float = Field(0.15, ge=0, description="approx_kl above this is bad.")
    clip_fraction_warn: float = Field(
        0.3, ge=0, description="clip_fraction above this is a warning."
    )
    clip_fraction_bad: float = Field(0.5, ge=0, description="clip_fraction above this is bad.")
    entropy_warn: float = Field(0.3, ge=0, description="Entropy (nats) below this is a warning.")
    entropy_bad: float = Field(0.1, ge=0, description="Entropy (nats) below this is bad.")
    explained_variance_warn: float = Field(
        0.2, description="explained_variance below this is a warning."
    )
    explained_variance_bad: float = Field(0.0, description="explained_variance below this is bad.")
    value_loss_warn: float = Field(2.0, ge=0, description="value_loss above this is a warning.")
    value_loss_bad: float = Field(10.0, ge=0, description="value_loss above this is bad.")
    cooldown: int = Field(
        50, ge=1, description="Iterations before a hint that keeps firing is shown again."
    )


class TuneConfig(Section):
    trials: int = Field(50, ge=1, description="Trials this process runs.")
    total_trials: int | None = Field(
        None, ge=1, description="Stop once the study has this many finished trials (shared)."
    )
    timesteps_per_trial: int = Field(100_000, ge=1, description="Training budget of each trial.")
    study_name: str = Field("mario", description="Optuna study name.")
    storage: str | None = Field(None, description="Optuna storage URL (default: sqlite file).")
    n_jobs: int = Field(1, ge=1, description="Parallel trials in this process.")
    sampler: Literal["tpe", "random", "cmaes"] = Field("tpe", description="Optuna sampler.")
    pruner: Literal["median", "hyperband", "none"] = Field("median", description="Optuna pruner.")
    metric: Literal["avg_max_x_pos", "ep_rew_mean"] = Field(
        "avg_max_x_pos", description="Maximised metric."
    )
    space: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Search space: config key -> distribution."
    )


SECTIONS: dict[str, type[Section]] = {
    "env": EnvConfig,
    "model": ModelConfig,
    "algo": AlgoConfig,
    "replay": ReplayConfig,
    "repair": RepairConfig,
    "train": TrainConfig,
    "ui": UiConfig,
    "hints": HintsConfig,
    "tune": TuneConfig,
}


# ------------------------------------------------------ component settings
def section_name(cls: type[Section]) -> str:
    for name, section in SECTIONS.items():
        if issubclass(cls, section):
            return name
    return cls.__name__


def components_of(section: str) -> dict[str, type[ComponentSettings]]:
    """The components of ``section`` that own settings (loads the plugins once)."""
    ensure_components()
    return _COMPONENTS.get(section, {})


def moved_keys() -> dict[tuple[str, str], tuple[str, ...]]:
    """Every old key still read: (section, old key) -> its path now, (section, key) or
    (section, table, key); the host's moves and the components' ``legacy_keys``."""
    ensure_components()
    return _MOVED


def _collect_moved(
    by_section: dict[str, dict[str, type[ComponentSettings]]],
) -> dict[tuple[str, str], tuple[str, ...]]:
    moved: dict[tuple[str, str], tuple[str, ...]] = {}
    for old, new in HOST_MOVED_KEYS.items():
        section, _, key = old.partition(".")
        moved[(section, key)] = tuple(new.split("."))
    for section, items in by_section.items():
        for name, model in items.items():
            for old, key in model.legacy_keys.items():
                where, _, flat = old.rpartition(".")
                source = (where or section, flat)
                if source[0] not in SECTIONS or key not in model.model_fields:
                    raise ConfigError(
                        f"component {name!r} maps the old key {old!r} to {key!r}; name a key "
                        f"of a section ({', '.join(SECTIONS)}) and one of its own keys"
                    )
                if source in moved:
                    raise ConfigError(
                        f"the old key {'.'.join(source)} is claimed twice ({name!r} and "
                        f"{'.'.join(moved[source])}); rename one legacy key"
                    )
                moved[source] = (section, name, key)
    return moved


def describe_path(path: tuple[str, ...]) -> str:
    """``[model.impala] blocks`` or ``[ui] mode``: a key as mario.toml shows it."""
    return f"[{'.'.join(path[:-1])}] {path[-1]}"


_LOADING = False


def ensure_components() -> None:
    """Load the plugin host, which installs every component's settings table."""
    global _LOADING
    if _LOADING:
        return
    from mario_cli.plugins import get_host

    _LOADING = True
    try:
        get_host()
    finally:
        _LOADING = False


def install_components(by_section: dict[str, dict[str, type[ComponentSettings]]]) -> None:
    """Make each component's settings a ``[<section>.<name>]`` table of the config.

    The tables are fields added to the section models at run time (the plugins that
    define them load after this module), then the models are rebuilt; a new host
    replaces the previous host's tables.
    """
    moved = _collect_moved(by_section)
    for section, items in by_section.items():
        own = SECTIONS[section].__annotations__
        for name in items:
            if name in own:
                raise ConfigError(
                    f"component {name!r} cannot own a [{section}.{name}] table: "
                    f"{section}.{name} is already a key; rename the component"
                )
    for section, cls in SECTIONS.items():
        fields = cls.__pydantic_fields__
        for name in _COMPONENTS.get(section, {}):
            if name not in cls.__annotations__:
                fields.pop(name, None)
        for name, model in by_section.get(section, {}).items():
            if model.model_fields:  # a model of section_defaults only has no table
                fields[name] = FieldInfo.from_annotated_attribute(
                    model,
                    Field(default_factory=model, description=f"Options of {section} {name!r}."),
                )
        cls.model_rebuild(force=True)
    _COMPONENTS.clear()
    _COMPONENTS.update({section: dict(items) for section, items in by_section.items()})
    _MOVED.clear()
    _MOVED.update(moved)
    MarioConfig.model_rebuild(force=True)


def tables_of(section: str) -> dict[str, type[ComponentSettings]]:
    """The components of ``section`` with a ``[<section>.<name>]`` table (own keys)."""
    items = _COMPONENTS.get(section, {}).items()
    return {name: model for name, model in items if model.model_fields}


def plain_keys(section: str) -> list[str]:
    """The section's own keys, without the component tables."""
    tables = tables_of(section)
    return [key for key in SECTIONS[section].model_fields if key not in tables]


def _active_components(merged: dict[str, Any]) -> dict[str, list[str]]:
    """Per section, the components a merged config uses (in their order)."""

    def get(section: str, key: str) -> Any:
        value = merged.get(section, {}).get(key)
        if value is None:
            return SECTIONS[section].model_fields[key].get_default(call_default_factory=True)
        return value

    replay = "prioritized" if merged.get("replay", {}).get("per") else get("replay", "replay")
    wrappers = get("env", "wrappers")
    return {
        "env": list(wrappers) if isinstance(wrappers, list) else [],
        "model": [str(get("model", "backbone")), str(get("model", "recurrent"))],
        "algo": [str(get("algo", "algo"))],
        "replay": [str(replay)],
    }


def component_defaults(merged: dict[str, Any]) -> dict[str, Any]:
    """The layer of ``section_defaults`` of the components ``merged`` uses."""
    layer: dict[str, dict[str, Any]] = {}
    for section, names in _active_components(merged).items():
        for name in names:
            model = _COMPONENTS.get(section, {}).get(table_name(name))
            if model is None:
                continue
            for key, value in model.section_defaults.items():
                layer.setdefault(section, {}).setdefault(key, value)
    return layer


def defaulted_keys() -> dict[tuple[str, str], dict[str, Any]]:
    """(section, key) -> {component: its default} for keys that components default."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for section, items in _COMPONENTS.items():
        for name, model in items.items():
            for key, value in model.section_defaults.items():
                found.setdefault((section, key), {})[name] = value
    return found


_NOTICES: set[str] = set()


def notify(message: str) -> None:
    """A one-line notice on stderr, once per process (deprecated keys and flags)."""
    if message not in _NOTICES:
        _NOTICES.add(message)
        print(f"mario: {message}", file=sys.stderr)


def _legacy_notices(layers: list[tuple[str, dict[str, Any]]]) -> None:
    for origin, layer in layers:
        if origin in ("saved run config", "flags", "environment"):
            # Old runs are read silently, old flags and variables are renamed (with their
            # notice) as they are read.
            continue
        for (section, old), path in moved_keys().items():
            values = layer.get(section)
            if isinstance(values, dict) and old in values:
                where = _origin_label(origin, [section, old])
                notify(
                    f"{where}: [{section}] {old} is now {describe_path(path)}; "
                    "the old key still works in this release"
                )


class MarioConfig(BaseSettings):
    """The whole resolved configuration, one section per concern."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        validate_assignment=True,
    )

    def __init__(self, **data: Any) -> None:
        ensure_components()  # a saved run's config names its components' tables
        super().__init__(**data)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:
        ensure_components()
        return super().model_validate(obj, **kwargs)

    @model_validator(mode="before")
    @classmethod
    def _upgrade_keys(cls, data: Any) -> Any:
        """Old runs' configs name keys that have moved since (read silently)."""
        return upgrade_keys(data) if isinstance(data, dict) else data

    env: EnvConfig = Field(default_factory=EnvConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    repair: RepairConfig = Field(default_factory=RepairConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    ui: UiConfig = Field(default_factory=UiConfig)
    hints: HintsConfig = Field(default_factory=HintsConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: Any, *_sources: Any, **_: Any
    ) -> tuple[Any, ...]:
        # load_config layers MARIO_* itself (to name the variable in errors); validating
        # must not read the process environment a second time.
        return (init_settings,)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict keyed by section (unset values are None)."""
        return self.model_dump(mode="json")


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``; nested dicts merge, the rest replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_toml(path: Path) -> dict[str, Any]:
    """Read a config file, or raise ConfigError naming the file and the fix."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; check the --config path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc}); fix the syntax") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None


def read_env_vars(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The MARIO_* variables as a nested dict (``MARIO_ALGO__GAMMA`` -> algo.gamma)."""
    environ = dict(os.environ if environ is None else environ)
    unknown = []
    for name in environ:
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER)
        if not _is_env_key(parts):
            unknown.append(name)
    if unknown:
        example = "MARIO_ALGO__LEARNING_RATE"
        raise ConfigError(
            f"unknown environment variable {unknown[0]}; use MARIO_<SECTION>__<KEY>, "
            f"e.g. {example}, or unset it"
        )
    environ = {_renamed_env_var(name): value for name, value in environ.items()}
    source = EnvSettingsSource(
        MarioConfig,
        case_sensitive=False,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        env_parse_none_str="none",
    )
    source.env_vars = {k.lower(): v for k, v in environ.items() if k.startswith(ENV_PREFIX)}
    try:
        return source()
    except SettingsError as exc:
        section = str(exc).partition('field "')[2].partition('"')[0]
        prefix = f"{ENV_PREFIX}{section}{ENV_NESTED_DELIMITER}".upper()
        names = sorted(n for n in environ if n.upper().startswith(prefix)) or [prefix + "*"]
        which = names[0] if len(names) == 1 else "one of " + ", ".join(names)
        raise ConfigError(
            f"env var {which} could not be parsed; write lists as JSON, "
            """e.g. MARIO_ENV__STAGES='["1-1", "1-2"]'"""
        ) from None


def _renamed_env_var(name: str) -> str:
    """A legacy variable under its new name (parsed by the new key's type)."""
    parts = name[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER)
    if not name.startswith(ENV_PREFIX) or len(parts) != 2:
        return name
    path = moved_keys().get((parts[0], parts[1]))
    if path is None:
        return name
    new = env_var_of(path)
    notify(
        f"env var {name}: [{parts[0]}] {parts[1]} is now {describe_path(path)} ({new}); "
        "the old name still works in this release"
    )
    return new


def env_var_of(path: tuple[str, ...] | list[str]) -> str:
    """``MARIO_<SECTION>__<KEY>`` or ``MARIO_<SECTION>__<TABLE>__<KEY>``."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(part.upper() for part in path)


def _is_env_key(parts: list[str]) -> bool:
    """``[section, key]``, a legacy key, or ``[section, component, key]``."""
    section = SECTIONS.get(parts[0])
    if section is None or len(parts) not in (2, 3):
        return False
    if len(parts) == 2:
        return parts[1] in plain_keys(parts[0]) or (parts[0], parts[1]) in moved_keys()
    model = _COMPONENTS.get(parts[0], {}).get(parts[1])
    return model is not None and parts[2] in model.model_fields


def find_config_file(explicit: Path | None) -> Path | None:
    """The file layer: --config PATH if given, else ./mario.toml if it exists."""
    if explicit is not None:
        return explicit
    local = Path.cwd() / DEFAULT_CONFIG_NAME
    return local if local.is_file() else None


def chosen_settings(
    config_path: Path | None = None,
    cli_overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What a run sets above the built-in defaults, merged as ``load_config`` merges them:
    the config file (--config, else ./mario.toml), MARIO_* variables, then the flags."""
    chosen: dict[str, Any] = {}
    for _, layer in _setting_layers(find_config_file(config_path), cli_overrides, environ):
        chosen = deep_merge(chosen, upgrade_keys(layer))
    return chosen


def _setting_layers(
    file_path: Path | None, cli_overrides: dict[str, Any] | None, environ: dict[str, str] | None
) -> list[tuple[str, dict[str, Any]]]:
    """(origin, values) above the defaults, lowest first: file, MARIO_* variables, flags."""
    layers = [(str(file_path), read_toml(file_path))] if file_path is not None else []
    return [*layers, ("environment", read_env_vars(environ)), ("flags", cli_overrides or {})]


def load_config(
    config_path: Path | None = None,
    cli_overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    base: dict[str, Any] | None = None,
) -> MarioConfig:
    """Resolve the config: defaults (or ``base``) < file < env vars < CLI flags.

    Between the built-in defaults and the other layers lie the ``section_defaults`` of
    the components the config uses (A2C's own rollout length, say).
    """
    ensure_components()
    layers: list[tuple[str, dict[str, Any]]] = []
    if base is not None:
        layers.append(("saved run config", base))
    # A saved run's config is not silently changed by a ./mario.toml lying around.
    file_path = config_path if base is not None else find_config_file(config_path)
    layers += _setting_layers(file_path, cli_overrides, environ)

    _legacy_notices(layers)
    # Old keys move to their new place layer by layer, so that precedence holds between
    # an old key in one layer and its new key in another.
    layers = [(origin, upgrade_keys(layer)) for origin, layer in layers]
    merged: dict[str, Any] = {}
    for _, layer in layers:
        merged = deep_merge(merged, layer)
    merged = deep_merge(component_defaults(merged), merged)
    try:
        return MarioConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe_error(exc, layers)) from None


def _describe_error(exc: ValidationError, layers: list[tuple[str, dict[str, Any]]]) -> str:
    """One line: the key, the value, where it came from and what is wrong."""
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    conflict = error.get("ctx", {}).get("error")
    if isinstance(conflict, SettingsConflict):  # a table's check against its section
        loc = [*loc[:1], conflict.table, conflict.key]
    depth = 3 if len(loc) >= 3 and loc[1] in _COMPONENTS.get(loc[0], {}) else 2
    key = ".".join(loc[:depth]) if loc else "?"
    origin = "defaults"
    value: Any = error.get("input")
    for name, layer in reversed(layers):
        found, layer_value = _lookup(layer, loc[:depth])
        if found:
            origin = name
            value = layer_value
            break
    where = _origin_label(origin, loc[:depth])
    if error["type"] == "extra_forbidden":
        section = SECTIONS.get(loc[0]) if loc else None
        if section is None:
            choices = ", ".join(SECTIONS)
            return f"{where}: unknown section [{loc[0]}]; sections are: {choices}"
        if depth == 3:
            model = _COMPONENTS[loc[0]][loc[1]]
            table = f"{loc[0]}.{loc[1]}"
            return f"{where}: unknown key {loc[2]!r} in [{table}]; its keys are: " + ", ".join(
                model.model_fields
            )
        choices = ", ".join(plain_keys(loc[0]))
        tables = ", ".join(f"[{loc[0]}.{name}]" for name in tables_of(loc[0]))
        also = f" (and the tables {tables})" if tables else ""
        return f"{where}: unknown key {key!r}; keys of [{loc[0]}] are: {choices}{also}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {key} = {value!r} is invalid: {message}"


def _origin_label(origin: str, loc: list[str]) -> str:
    if origin == "environment":
        return "env var " + env_var_of(loc[:3])
    if origin == "flags":
        return "flag " + flag_of(tuple(loc[:3]))
    return origin


def component_flag(component: str, key: str) -> str:
    """The flag of a component's key: ``--<component>-<key>``."""
    return f"--{component}-{key}".replace("_", "-")


# Keys whose flag is not ``--<key>``: the display mode kept the flag users know.
FLAG_NAMES: dict[tuple[str, ...], str] = {
    ("ui", "mode"): "--ui",
    ("hints", "cooldown"): "--hint-cooldown",
}


def flag_of(path: tuple[str, ...]) -> str:
    """The flag that sets ``path``: ``--<key>``, ``--<component>-<key>`` or a FLAG_NAMES one."""
    if path in FLAG_NAMES:
        return FLAG_NAMES[path]
    if len(path) == 3:
        return component_flag(path[1], path[2])
    return "--" + path[-1].replace("_", "-")


def _lookup(layer: dict[str, Any], loc: list[str]) -> tuple[bool, Any]:
    node: Any = layer
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def key_path(dotted: str) -> tuple[str, ...] | None:
    """``section.key`` or ``section.component.key`` as its canonical path (old keys mapped
    to where they live now), or None if it names no value of the config."""
    ensure_components()
    parts = tuple(dotted.split("."))
    if parts[0] not in SECTIONS or len(parts) not in (2, 3):
        return None
    parts = moved_keys().get(parts, parts) if len(parts) == 2 else parts
    if len(parts) == 2:
        return parts if parts[1] in plain_keys(parts[0]) else None
    model = tables_of(parts[0]).get(parts[1])
    return parts if model is not None and parts[2] in model.model_fields else None


def renamed_key(dotted: str) -> str | None:
    """The new name of an old ``section.key``, or None if it has not moved."""
    section, _, key = dotted.partition(".")
    path = moved_keys().get((section, key))
    return ".".join(path) if path else None


def set_by_path(cfg: MarioConfig, dotted: str, value: Any) -> None:
    """Assign ``section.key`` or ``section.component.key`` with validation (tune's space)."""
    path = key_path(dotted)
    if path is None:
        raise ConfigError(
            f"unknown config key {dotted!r}; use section.key or section.component.key, "
            "e.g. algo.gamma or model.impala.blocks"
        )
    section: Any = getattr(cfg, path[0])
    before = section.__dict__[path[1]]
    try:
        if len(path) == 3:
            # The table goes back in whole, so its checks against the section run too.
            table = before.model_copy()
            setattr(table, path[2], value)
            setattr(section, path[1], table)
        else:
            setattr(section, path[1], value)
    except ValidationError as exc:
        # pydantic keeps an assignment that the section's own checks then refused
        section.__dict__[path[1]] = before
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{'.'.join(path)} = {value!r} is invalid: {message}") from None


def to_toml(data: dict[str, Any]) -> str:
    """Serialise a section-keyed dict to TOML (None, which TOML lacks, means unset)."""
    return tomli_w.dumps(_drop_none(data))


SECTION_TITLES = {
    "env": "Environment: stage, actions, preprocessing, reward, wrappers, parallel envs",
    "model": "Model: backbone, heads, recurrent core",
    "algo": "Algorithm and optimisation",
    "replay": "Replay strategies",
    "repair": "Greedy-path repair: greedy checks from the stage start, imitation of their fixes",
    "train": "Training run: budget, device, checkpoints, output",
    "ui": "Display",
    "hints": "Stuck-agent hints: the diagnostics thresholds, and each rule's own",
    "tune": "Hyperparameter search (mario tune)",
}


def commented_defaults() -> str:
    """The built-in defaults as a TOML file with every key commented."""
    ensure_components()
    defaults = MarioConfig().model_dump(mode="json")
    by_component = defaulted_keys()
    lines = [
        "# mario configuration. Precedence: CLI flag > MARIO_<SECTION>__<KEY> env var >",
        "# this file (or --config PATH) > built-in defaults. Every value below is the default.",
        "",
    ]
    for section in SECTIONS:
        lines.append(f"# {SECTION_TITLES[section]}")
        lines.append(f"[{section}]")
        model = SECTIONS[section]
        for key in plain_keys(section):
            own = by_component.get((section, key))
            field = model.model_fields[key]
            lines += _commented_key(f"{section}.{key}", field, defaults[section][key], own)
        lines.append("")
        for name, settings in tables_of(section).items():
            title = (settings.__doc__ or "").strip().splitlines() or [f"Options of {name}"]
            lines.append(f"# {title[0]}")
            lines.append(f"[{section}.{name}]")
            for key, field in settings.model_fields.items():
                value = defaults[section][name][key]
                lines += _commented_key(f"{section}.{name}.{key}", field, value, None)
            lines.append("")
    return "\n".join(lines)


def _commented_key(
    path: str, field: FieldInfo, value: Any, component_defaults: dict[str, Any] | None
) -> list[str]:
    key = path.rpartition(".")[2]
    lines = [f"# {field.description}"]
    if component_defaults:
        # Left unset so that each component's own default applies; set it to override all.
        own = ", ".join(f"{name} {value!r}" for name, value in sorted(component_defaults.items()))
        lines.append(f"# Left unset so that components use their own ({own}); else {value!r}.")
        lines.append(f"# {tomli_w.dumps({key: value}).strip()}")
    elif value is None:
        lines.append(f"# {key} =  (not set)")
    elif isinstance(value, dict) and not value:
        lines.append(f"# [{path}] table, see the README")
    elif isinstance(value, list):
        lines.append(f"{key} = {json.dumps(value)}")
    else:
        lines.append(tomli_w.dumps({key: value}).strip())
    return lines


_MOVED.update(_collect_moved({}))  # the host's own moves, before any plugin loads

"""The public API for plugin authors: the one mario module a plugin imports.

A plugin is a package with a ``mario`` entry point whose hooks (``hookimpl``) receive a
``register`` callable. What each hook registers, and the data the host hands to it,
is defined here; anything else in ``mario_cli`` is internal and may change.

==========================  ============================  ==========================
hook                        registers                     contract
==========================  ============================  ==========================
``register_wrappers``       env wrapper factories         :class:`WrapperFactory`
``register_backbones``      feature extractors            :class:`BackboneFactory`
``register_recurrent_cores`` recurrent cores              :class:`CoreFactory`
``register_algorithms``     learning algorithms           :class:`AlgorithmFactory`
``register_replay``         replay strategies             :class:`ReplayFactory`
``register_hints``          stuck-agent diagnostic rules  :class:`HintRule`
==========================  ============================  ==========================

Names that need torch or the emulator (``RolloutBatch``, ``GradientStepper``,
``MarioCore``, ``ActorCritic``, ``PolicyOutput``, ``NoisyLinear``) load on first use, so
a plugin's ``__init__`` can import this module without slowing ``mario --help``.
``Optimiser`` is the old name of ``GradientStepper``, kept for one release.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from mario_cli import metric_names
from mario_cli.config import (
    AlgoConfig,
    ComponentSettings,
    EnvConfig,
    HintsConfig,
    MarioConfig,
    ModelConfig,
    ReplayConfig,
    SettingsConflict,
    UiConfig,
)
from mario_cli.diagnostics import History, entropy_of, retry_command
from mario_cli.errors import ConfigError, MarioError
from mario_cli.eval_protocol import DEFAULT_NOOP_MAX
from mario_cli.events import Episode, EpisodeEnd, Hint
from mario_cli.hookspecs import hookimpl

if TYPE_CHECKING:
    import gymnasium as gym
    import numpy as np
    import torch

    from mario_cli.envs.core import MarioCore
    from mario_cli.noisy import NoisyLinear
    from mario_cli.policy import ActorCritic, PolicyOutput
    from mario_cli.training.optim import GradientStepper
    from mario_cli.training.rollout import RolloutBatch

__all__ = [
    "DEFAULT_NOOP_MAX",
    "ActorCritic",
    "AlgoConfig",
    "Algorithm",
    "AlgorithmFactory",
    "Backbone",
    "BackboneFactory",
    "ComponentSettings",
    "ConfigError",
    "CoreFactory",
    "EnvConfig",
    "Episode",
    "EpisodeEnd",
    "GradientStepper",
    "Hint",
    "HintRule",
    "HintsConfig",
    "History",
    "MarioConfig",
    "MarioCore",
    "MarioError",
    "ModelConfig",
    "NoisyLinear",
    "PolicyOutput",
    "Register",
    "ReplayConfig",
    "ReplayFactory",
    "ReplaySample",
    "ReplayStrategy",
    "RolloutBatch",
    "SettingsConflict",
    "UiConfig",
    "WrapperFactory",
    "entropy_of",
    "hookimpl",
    "metric_names",
    "retry_command",
]

_LAZY = {
    "RolloutBatch": "mario_cli.training.rollout",
    "GradientStepper": "mario_cli.training.optim",
    "MarioCore": "mario_cli.envs.core",
    "ActorCritic": "mario_cli.policy",
    "PolicyOutput": "mario_cli.policy",
    "NoisyLinear": "mario_cli.noisy",
}


# Old names, still importable for one release (with a warning): old name -> new name.
_DEPRECATED = {"Optimiser": "GradientStepper"}


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        import warnings

        new = _DEPRECATED[name]
        warnings.warn(
            f"mario_cli.api.{name} is now {new}; the old name goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        name = new
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


T = TypeVar("T", contravariant=True)


class Register(Protocol[T]):
    """What every hook receives: ``register(name, item, settings=None)``.

    ``item`` is the component or a ``"module:attribute"`` string loaded on first use; a
    taken name is refused. ``settings`` (a :class:`ComponentSettings` subclass) gives
    the component its own ``[<section>.<name>]`` options; read them with
    ``cfg.settings_of(name)`` on the section the factory receives.
    """

    def __call__(
        self, name: str, item: T | str, settings: type[ComponentSettings] | None = None
    ) -> None: ...


class WrapperFactory(Protocol):
    """Wraps a Gymnasium env; ``env.wrappers`` lists the names applied, in order."""

    def __call__(self, env: gym.Env, cfg: EnvConfig) -> gym.Env: ...


class Backbone(Protocol):
    """Maps a uint8 observation batch ``(B, *obs_shape)`` to float features ``(B, out)``."""

    out_features: int

    def __call__(self, obs: torch.Tensor) -> torch.Tensor: ...


class BackboneFactory(Protocol):
    def __call__(self, obs_shape: tuple[int, ...], cfg: ModelConfig) -> Backbone: ...


class CoreFactory(Protocol):
    """A recurrent core: ``core(features, state, done) -> (features, state)``, with
    ``initial_state(batch, device)`` and ``select_state(state, index)``; optionally
    ``forward_sequence(sequence, state, dones)`` for whole rollouts at once."""

    def __call__(self, in_features: int, cfg: ModelConfig) -> torch.nn.Module: ...


class Algorithm(Protocol):
    """Learns from rollouts. ``asynchronous = True`` asks the trainer to collect the
    next rollout in the background while ``update`` runs (IMPALA); the batch then
    carries ``policy_lag``. The optimiser's state is saved by the trainer."""

    asynchronous: bool

    def update(self, batch: RolloutBatch) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class AlgorithmFactory(Protocol):
    def __call__(
        self,
        policy: ActorCritic,
        cfg: MarioConfig,
        optimiser: GradientStepper,
        replay: ReplayStrategy | None = None,
    ) -> Algorithm: ...


@dataclass
class ReplaySample:
    """A replayed minibatch, with the behaviour policy's log-probabilities so the
    algorithm can correct for the policy having moved since."""

    obs: torch.Tensor
    actions: torch.Tensor
    behaviour_log_probs: torch.Tensor
    returns: torch.Tensor
    advantages: torch.Tensor
    weights: torch.Tensor  # importance weights (all ones for uniform sampling)
    indices: np.ndarray  # slots, for update_priorities


class ReplayStrategy(Protocol):
    """Stores flat transitions of past rollouts and samples minibatches of them."""

    def add(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        log_probs: torch.Tensor,
        returns: torch.Tensor,
        advantages: torch.Tensor,
    ) -> np.ndarray: ...

    def sample(self, batch_size: int, progress: float, device: torch.device) -> ReplaySample: ...

    def update_priorities(self, indices: np.ndarray, errors: np.ndarray) -> None: ...

    def __len__(self) -> int: ...


class ReplayFactory(Protocol):
    def __call__(
        self, cfg: ReplayConfig, obs_shape: tuple[int, ...], seed: int
    ) -> ReplayStrategy: ...


class HintRule(Protocol):
    """Reads the metric history (never the trainer) and returns zero or more hints."""

    def __call__(self, history: History, cfg: MarioConfig) -> list[Hint]: ...

"""The plugin contract.

Every hook receives a ``register`` callable from the host; the host owns names,
duplicates and the error for an unknown name. The types named here are defined, for
plugin authors, in :mod:`mario_cli.api`. Built-in plugins use exactly these
hooks, loaded through the ``mario`` entry-point group like a third-party plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from mario_cli.api import (
        AlgorithmFactory,
        BackboneFactory,
        CoreFactory,
        HintRule,
        Register,
        ReplayFactory,
        WrapperFactory,
    )

PROJECT = "mario"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_wrappers(register: Register[WrapperFactory]) -> None:
    """Register env wrappers.

    Called once when the plugin manager loads. Call
    ``register(name, factory)`` where ``factory(env, cfg: EnvConfig) -> env``
    wraps a Gymnasium env. ``env.wrappers`` in the config lists, in order, the
    names applied on top of the core Mario env.
    """


@hookspec
def register_backbones(register: Register[BackboneFactory]) -> None:
    """Register feature extractors.

    Call ``register(name, factory)`` where
    ``factory(obs_shape: tuple[int, ...], cfg: ModelConfig) -> nn.Module``
    returns a module with an ``out_features: int`` attribute that maps a uint8
    observation batch ``(B, *obs_shape)`` to float features ``(B, out_features)``.
    """


@hookspec
def register_recurrent_cores(register: Register[CoreFactory]) -> None:
    """Register recurrent cores (none, gru, lstm, transformer).

    Call ``register(name, factory)`` where ``factory(in_features: int, cfg:
    ModelConfig) -> nn.Module``.
    """


@hookspec
def register_algorithms(register: Register[AlgorithmFactory]) -> None:
    """Register learning algorithms (ppo, a2c, impala).

    Call ``register(name, factory)`` where
    ``factory(policy, cfg: MarioConfig, optimiser, replay=None)`` returns an object
    with ``update(batch: RolloutBatch) -> dict[str, float]``, ``state_dict()`` and
    ``load_state_dict(state)``. ``replay`` is the configured replay strategy or None.
    """


@hookspec
def register_replay(register: Register[ReplayFactory]) -> None:
    """Register replay strategies (uniform, prioritized, self_imitation).

    Call ``register(name, factory)`` where
    ``factory(cfg: ReplayConfig, obs_shape: tuple[int, ...], seed: int)`` returns a
    strategy with ``add``, ``sample(batch_size, progress, device)``,
    ``update_priorities(indices, errors)`` and ``__len__``.
    """


@hookspec
def register_hints(register: Register[HintRule]) -> None:
    """Register stuck-agent diagnostic rules.

    Call ``register(name, rule)`` where ``rule(history, cfg) -> list[Hint]``
    looks at the metric history and returns zero or more hints. A rule's own
    thresholds (``settings=``) are its ``[hints.<name>]`` table, read with
    ``cfg.hints.settings_of(name)``.
    """


@hookspec
def register_commands(app: Any) -> None:
    """Add extra Typer commands to the ``mario`` app (``app.command()(fn)``)."""

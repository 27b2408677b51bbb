"""Built-in model plugin: Nature-CNN and IMPALA-CNN backbones; GRU, LSTM and transformer cores.

Factories import torch only when called, so listing plugins or showing the config
starts fast.
"""

from __future__ import annotations

from typing import Any

from mario_cli.api import BackboneFactory, CoreFactory, Register, hookimpl


def make_nature(obs_shape: tuple[int, ...], cfg: Any) -> Any:
    from mario_models.backbones import make_nature as factory

    return factory(obs_shape, cfg)


def make_impala(obs_shape: tuple[int, ...], cfg: Any) -> Any:
    from mario_models.backbones import make_impala as factory

    return factory(obs_shape, cfg)


def make_gru(in_features: int, cfg: Any) -> Any:
    from mario_models.cores import make_gru as factory

    return factory(in_features, cfg)


def make_lstm(in_features: int, cfg: Any) -> Any:
    from mario_models.cores import make_lstm as factory

    return factory(in_features, cfg)


def make_transformer(in_features: int, cfg: Any) -> Any:
    from mario_models.cores import make_transformer as factory

    return factory(in_features, cfg)


@hookimpl
def register_backbones(register: Register[BackboneFactory]) -> None:
    register("nature", make_nature)
    register("impala", make_impala)


@hookimpl
def register_recurrent_cores(register: Register[CoreFactory]) -> None:
    register("gru", make_gru)
    register("lstm", make_lstm)
    register("transformer", make_transformer)

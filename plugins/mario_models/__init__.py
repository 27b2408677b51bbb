"""Built-in model plugin: Nature-CNN and IMPALA-CNN backbones.

Factories import torch only when called, so listing plugins or showing the config
starts fast.
"""

from __future__ import annotations

from typing import Any

from mario_cli.hookspecs import hookimpl


def make_nature(obs_shape: tuple[int, ...], cfg: Any) -> Any:
    from mario_models.backbones import make_nature as factory

    return factory(obs_shape, cfg)


def make_impala(obs_shape: tuple[int, ...], cfg: Any) -> Any:
    from mario_models.backbones import make_impala as factory

    return factory(obs_shape, cfg)


@hookimpl
def register_backbones(register: Any) -> None:
    register("nature", make_nature)
    register("impala", make_impala)

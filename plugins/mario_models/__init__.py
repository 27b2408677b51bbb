"""Built-in model plugin: Nature-CNN and IMPALA-CNN backbones; GRU, LSTM and transformer cores.

Factories import torch only when called, so listing plugins or showing the config
starts fast.
"""

from __future__ import annotations

from mario_cli.api import BackboneFactory, CoreFactory, Register, hookimpl
from mario_models.settings import ImpalaSettings, TransformerSettings


@hookimpl
def register_backbones(register: Register[BackboneFactory]) -> None:
    register("nature", "mario_models.backbones:make_nature")
    register("impala", "mario_models.backbones:make_impala", settings=ImpalaSettings)


@hookimpl
def register_recurrent_cores(register: Register[CoreFactory]) -> None:
    register("gru", "mario_models.cores:make_gru")
    register("lstm", "mario_models.cores:make_lstm")
    register("transformer", "mario_models.cores:make_transformer", settings=TransformerSettings)

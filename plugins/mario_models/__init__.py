"""Built-in model plugin: Nature-CNN and IMPALA-CNN backbones."""

from __future__ import annotations

from typing import Any

from mario_cli.hookspecs import hookimpl
from mario_models.backbones import make_impala, make_nature


@hookimpl
def register_backbones(register: Any) -> None:
    register("nature", make_nature)
    register("impala", make_impala)

"""Built-in algorithms, registered through the public ``register_algorithms`` hook.

Factories import torch only when a run builds them.
"""

from __future__ import annotations

from typing import Any

from mario_cli.api import AlgorithmFactory, Register, hookimpl


def make_ppo(policy: Any, cfg: Any, optimiser: Any, replay: Any = None) -> Any:
    from mario_algos.ppo import PPO

    return PPO(policy, cfg, optimiser, replay)


def make_a2c(policy: Any, cfg: Any, optimiser: Any, replay: Any = None) -> Any:
    from mario_algos.a2c import A2C

    return A2C(policy, cfg, optimiser, replay)


def make_impala(policy: Any, cfg: Any, optimiser: Any, replay: Any = None) -> Any:
    from mario_algos.impala import Impala

    return Impala(policy, cfg, optimiser, replay)


@hookimpl
def register_algorithms(register: Register[AlgorithmFactory]) -> None:
    register("ppo", make_ppo)
    register("a2c", make_a2c)
    register("impala", make_impala)

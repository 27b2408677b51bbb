"""Built-in algorithms, registered through the public ``register_algorithms`` hook.

Factories import torch only when a run builds them.
"""

from __future__ import annotations

from mario_algos.settings import A2CSettings, ImpalaSettings
from mario_cli.api import AlgorithmFactory, Register, hookimpl


@hookimpl
def register_algorithms(register: Register[AlgorithmFactory]) -> None:
    register("ppo", "mario_algos.ppo:PPO")
    register("a2c", "mario_algos.a2c:A2C", settings=A2CSettings)
    register("impala", "mario_algos.impala:Impala", settings=ImpalaSettings)

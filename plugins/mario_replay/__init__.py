"""Built-in replay strategies, registered through the public ``register_replay`` hook.

Factories import torch only when a run builds them.
"""

from __future__ import annotations

from mario_cli.api import Register, ReplayFactory, hookimpl


@hookimpl
def register_replay(register: Register[ReplayFactory]) -> None:
    register("uniform", "mario_replay.strategies:UniformReplay")
    register("prioritized", "mario_replay.strategies:PrioritizedReplay")
    register("self_imitation", "mario_replay.strategies:SelfImitationReplay")

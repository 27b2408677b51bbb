"""The Mario env pipeline: core env, registered wrappers, vector env."""

from mario_cli.envs.factory import make_env, stage_specs
from mario_cli.envs.vector import VectorEnv

__all__ = ["VectorEnv", "make_env", "stage_specs"]

"""Build the policy and the algorithm from the config and the plugin registries."""

from __future__ import annotations

from typing import Any

import torch

from mario_cli.config import MarioConfig
from mario_cli.plugins import get_host


def choose_auto_backbone(device_type: str) -> str:
    """Pick the backbone for ``model.backbone = "auto"`` from the torch device type.

    IMPALA-CNN learns better on Mario but costs far more compute: on the 2-core CPU
    it was measured at ~7.5 ms/sample per training step against ~1.3 ms for
    Nature-CNN (~6x slower), so CPU and MPS get Nature-CNN and CUDA gets IMPALA.
    """
    return "impala" if device_type == "cuda" else "nature"


def choose_backbone(cfg: MarioConfig, device: torch.device) -> str:
    if cfg.model.backbone != "auto":
        return cfg.model.backbone
    return choose_auto_backbone(device.type)


def build_policy(
    cfg: MarioConfig, obs_shape: tuple[int, ...], n_actions: int, device: torch.device
) -> tuple[torch.nn.Module, str]:
    """The actor-critic for ``cfg.model`` and the backbone name actually used."""
    from mario_cli.policy import ActorCritic

    host = get_host()
    name = choose_backbone(cfg, device)
    backbone = host["backbones"].get(name)(obs_shape, cfg.model)
    core = None
    if cfg.model.recurrent != "none":
        core = host["recurrent_cores"].get(cfg.model.recurrent)(backbone.out_features, cfg.model)
    factors = None
    if cfg.model.action_head == "factored":
        from mario_cli.envs.stages import jump_factors

        factors = jump_factors(cfg.env.movement)
    policy = ActorCritic(
        backbone,
        n_actions,
        core,
        noisy=cfg.model.noisy,
        sigma0=cfg.model.noisy_sigma0,
        jump_factors=factors,
    )
    policy = policy.to(device)
    if device.type == "cpu":
        # oneDNN's convolutions run faster on NHWC weights: the learner's CPU-ms per
        # sample fell 21-31% on the default Nature-CNN (README, Performance)
        policy = policy.to(memory_format=torch.channels_last)
    return policy, name


def replay_name(cfg: MarioConfig) -> str | None:
    """The replay strategy in use: --per means prioritized; "none" means no replay."""
    if cfg.replay.per:
        return "prioritized"
    return None if cfg.replay.replay == "none" else cfg.replay.replay


def build_algorithm(
    cfg: MarioConfig, policy: torch.nn.Module, optimiser: Any, obs_shape: tuple[int, ...]
) -> Any:
    host = get_host()
    factory = host["algorithms"].get(cfg.algo.algo)
    name = replay_name(cfg)
    replay = None
    if name is not None:
        replay = host["replay"].get(name)(cfg.replay, obs_shape, cfg.train.seed)
    return factory(policy, cfg, optimiser, replay)

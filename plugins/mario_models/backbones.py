"""Pixel feature extractors: Nature-DQN CNN and IMPALA-CNN."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

RESIDUAL_OUT_GAIN = 0.1


def orthogonal_init(module: nn.Module, gain: float = math.sqrt(2)) -> None:
    """Orthogonal weights and zero biases for every conv and linear layer in ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def unit_pixels(obs: Tensor, first_conv: nn.Conv2d) -> Tensor:
    """Frames scaled to [0, 1], in ``first_conv``'s memory layout and autocast's dtype.

    uint8 frames are converted once, straight to what the first convolution reads:
    transposed to channels-last while still one byte per value (on a channels-last
    model, the CPU default), then cast to the autocast dtype if one is on. From NCHW
    float32 frames oneDNN converts the input in the forward pass and again in the
    backward pass, and autocast casts it again: together a fifth of a minibatch.
    """
    if obs.dim() == 4 and first_conv.weight.is_contiguous(memory_format=torch.channels_last):
        obs = obs.contiguous(memory_format=torch.channels_last)
    kind = obs.device.type
    if obs.dtype == torch.uint8 and torch.is_autocast_enabled(kind):
        return obs.to(torch.get_autocast_dtype(kind)).div_(255.0)  # 0..255 are exact in bf16
    return obs / 255.0  # true division: uint8 in, float32 out, in one pass


def flat_then_relu() -> tuple[nn.Module, nn.Module]:
    """The torso's last ReLU after its flatten, not before: the same values and gradients,
    bit for bit, but on a channels-last model flattening copies the features to NCHW, and
    a ReLU before it then has its backward read two layouts at once (~15x slower per
    value; the last convolution and the 512-wide layer 7-23% faster this way, forward
    and backward on a minibatch of 256)."""
    return nn.Flatten(), nn.ReLU()


def _flat_size(net: nn.Module, obs_shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(net(torch.zeros(1, *obs_shape)).shape[1])


class NatureCNN(nn.Module):
    """The Nature-DQN convolutional torso (Mnih et al. 2015)."""

    def __init__(self, obs_shape: tuple[int, ...], hidden_size: int = 512) -> None:
        super().__init__()
        in_channels = obs_shape[0]
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1),
            *flat_then_relu(),
        )
        self.fc = nn.Sequential(
            nn.Linear(_flat_size(self.convs, obs_shape), hidden_size), nn.ReLU()
        )
        self.out_features = hidden_size
        orthogonal_init(self)

    def forward(self, obs: Tensor) -> Tensor:
        return self.fc(self.convs(unit_pixels(obs, self.convs[0])))


class ResidualBlock(nn.Module):
    """relu-conv-relu-conv with an identity skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv0(torch.relu(x))
        out = self.conv1(torch.relu(out))
        return x + out


class ImpalaStage(nn.Module):
    """conv3x3 -> maxpool 3x3/2 -> ``blocks`` residual blocks."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.blocks = nn.Sequential(*(ResidualBlock(out_channels) for _ in range(blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.pool(self.conv(x)))


class ImpalaCNN(nn.Module):
    """The IMPALA residual torso (Espeholt et al. 2018)."""

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        hidden_size: int = 512,
        channels: Sequence[int] = (16, 32, 32),
        blocks: int = 2,
    ) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        in_channels = obs_shape[0]
        for out_channels in channels:
            stages.append(ImpalaStage(in_channels, out_channels, blocks))
            in_channels = out_channels
        self.convs = nn.Sequential(*stages, *flat_then_relu())
        self.fc = nn.Sequential(
            nn.Linear(_flat_size(self.convs, obs_shape), hidden_size), nn.ReLU()
        )
        self.out_features = hidden_size
        orthogonal_init(self)
        # With gain sqrt(2) on both branch convs each residual block roughly doubles the
        # activation variance, so the default 3x2 blocks blew features up to std ~10-60.
        # A small gain on the branch's last conv (Fixup/SkipInit style) keeps them ~1.
        for block in self.modules():
            if isinstance(block, ResidualBlock):
                nn.init.orthogonal_(block.conv1.weight, gain=RESIDUAL_OUT_GAIN)

    def forward(self, obs: Tensor) -> Tensor:
        return self.fc(self.convs(unit_pixels(obs, self.convs[0].conv)))


def make_nature(obs_shape: tuple[int, ...], cfg: Any) -> nn.Module:
    """Backbone factory for ``"nature"``."""
    return NatureCNN(tuple(obs_shape), hidden_size=cfg.hidden_size)


def make_impala(obs_shape: tuple[int, ...], cfg: Any) -> nn.Module:
    """Backbone factory for ``"impala"`` (options: ``[model.impala]``)."""
    own = cfg.settings_of("impala")
    channels = list(own.channels)
    return ImpalaCNN(tuple(obs_shape), cfg.hidden_size, channels=channels, blocks=own.blocks)

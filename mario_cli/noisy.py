"""NoisyLinear: a linear layer with learned, factorised Gaussian parameter noise.

After Fortunato et al. 2017, "Noisy Networks for Exploration": each weight is
``mu + sigma * eps`` where ``eps = f(eps_out) f(eps_in)^T`` with ``f(x) = sign(x) sqrt|x|``,
so one resample costs ``in + out`` normal draws instead of ``in * out``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _scaled_noise(size: int, device: torch.device) -> Tensor:
    x = torch.randn(size, device=device)
    return x.sign() * x.abs().sqrt()


class NoisyLinear(nn.Module):
    """``y = (W_mu + W_sigma * W_eps) x + (b_mu + b_sigma * b_eps)``.

    Noise is used only in training mode while ``noise_enabled`` is true; otherwise the
    layer is the plain linear map of the ``mu`` parameters. ``reset_noise()`` draws new
    noise, which then stays fixed until the next call.
    """

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.5) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.sigma0 = sigma0
        self.noise_enabled = True
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_sigma = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_sigma = nn.Parameter(torch.empty(out_features))
        # Noise is resampled on demand, so it is not worth saving in checkpoints.
        self.register_buffer(
            "weight_epsilon", torch.zeros(out_features, in_features), persistent=False
        )
        self.register_buffer("bias_epsilon", torch.zeros(out_features), persistent=False)
        self.reset_parameters()
        self.reset_noise()

    def reset_parameters(self) -> None:
        """The paper's factorised-noise initialisation."""
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight_mu, -bound, bound)
        nn.init.uniform_(self.bias_mu, -bound, bound)
        nn.init.constant_(self.weight_sigma, self.sigma0 * bound)
        nn.init.constant_(self.bias_sigma, self.sigma0 * bound)

    @torch.no_grad()
    def reset_noise(self) -> None:
        """Draw fresh factorised noise for the weights and biases."""
        device = self.weight_mu.device
        eps_in = _scaled_noise(self.in_features, device)
        eps_out = _scaled_noise(self.out_features, device)
        self.weight_epsilon.copy_(torch.outer(eps_out, eps_in))
        self.bias_epsilon.copy_(eps_out)

    @property
    def noisy(self) -> bool:
        """Whether ``forward`` currently adds noise."""
        return self.training and self.noise_enabled

    def forward(self, x: Tensor) -> Tensor:
        if not self.noisy:
            return F.linear(x, self.weight_mu, self.bias_mu)
        weight = self.weight_mu + self.weight_sigma * self.weight_epsilon
        bias = self.bias_mu + self.bias_sigma * self.bias_epsilon
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"sigma0={self.sigma0}"
        )

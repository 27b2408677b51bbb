"""Actor-critic policy over a pluggable backbone and optional recurrent core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.distributions import Categorical


@dataclass
class PolicyOutput:
    """One forward pass: action logits, state values ``(B,)``, core state and features."""

    logits: Tensor
    value: Tensor
    state: Any
    features: Tensor


class ActorCritic(nn.Module):
    """Shared torso with a categorical actor head and a scalar critic head.

    ``core``, when given, is called as ``core(features, state, done) -> (features, state)``;
    its ``out_features`` attribute (if any) sizes the heads.
    """

    def __init__(self, backbone: nn.Module, n_actions: int, core: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.core = core
        self.n_actions = n_actions
        features = int(getattr(core, "out_features", backbone.out_features))
        self.actor = nn.Linear(features, n_actions)
        self.critic = nn.Linear(features, 1)
        # Small actor gain keeps the initial policy near uniform.
        nn.init.orthogonal_(self.actor.weight, gain=0.01)
        nn.init.zeros_(self.actor.bias)
        nn.init.orthogonal_(self.critic.weight, gain=1.0)
        nn.init.zeros_(self.critic.bias)

    def forward(self, obs: Tensor, state: Any = None, done: Tensor | None = None) -> PolicyOutput:
        features = self.backbone(obs)
        if self.core is not None:
            features, state = self.core(features, state, done)
        else:
            state = None
        return PolicyOutput(
            logits=self.actor(features),
            value=self.critic(features).squeeze(-1),
            state=state,
            features=features,
        )

    def act(
        self,
        obs: Tensor,
        state: Any = None,
        done: Tensor | None = None,
        deterministic: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor, Any]:
        """Sample (or argmax) actions; returns ``(actions, log_probs, values, state)``.

        Gradients follow the caller's grad mode; wrap rollouts in ``torch.no_grad()``.
        """
        out = self(obs, state, done)
        dist = Categorical(logits=out.logits)
        actions = out.logits.argmax(dim=-1) if deterministic else dist.sample()
        return actions, dist.log_prob(actions), out.value, out.state

    def evaluate_actions(
        self, obs: Tensor, actions: Tensor, state: Any = None, done: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(log_probs, entropy, values)`` of ``actions`` under the current policy."""
        out = self(obs, state, done)
        dist = Categorical(logits=out.logits)
        return dist.log_prob(actions.long()), dist.entropy(), out.value

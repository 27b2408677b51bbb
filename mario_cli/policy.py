"""Actor-critic policy over a pluggable backbone and optional recurrent core."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from mario_cli.noisy import NoisyLinear


@dataclass
class PolicyOutput:
    """One forward pass: action logits, state values ``(B,)``, core state and features."""

    logits: Tensor
    value: Tensor
    state: Any
    features: Tensor


def _linear(in_features: int, out_features: int, noisy: bool, sigma0: float) -> nn.Module:
    if noisy:
        return NoisyLinear(in_features, out_features, sigma0=sigma0)
    return nn.Linear(in_features, out_features)


def _init_head(layer: nn.Module, gain: float) -> None:
    """Orthogonal weights (the mean weights of a noisy layer) and zero biases."""
    noisy = isinstance(layer, NoisyLinear)
    nn.init.orthogonal_(layer.weight_mu if noisy else layer.weight, gain=gain)
    nn.init.zeros_(layer.bias_mu if noisy else layer.bias)


class ActorCritic(nn.Module):
    """Shared torso with a categorical actor head and a scalar critic head.

    ``core``, when given, is called as ``core(features, state, done) -> (features, state)``;
    its ``out_features`` attribute (if any) sizes the heads. ``done[b] = 1`` marks an
    observation that starts a new episode. With ``noisy=True`` both heads are
    :class:`NoisyLinear` layers whose noise changes only on :meth:`reset_noise`.

    ``jump_factors`` (each action's direction index and whether it holds A, from
    ``mario_cli.envs.stages.jump_factors``) makes the actor factored: it outputs a logit
    per direction and two for A (released, held), and each action's logit is the sum of
    its two. Under jump press the A actions of an action set are one move in the hop
    rhythm; a joint head spreads what a loss takes from one of them over the others,
    while the factored head moves the A choice itself, for every direction at once.
    """

    def __init__(
        self,
        backbone: nn.Module,
        n_actions: int,
        core: nn.Module | None = None,
        noisy: bool = False,
        sigma0: float = 0.5,
        jump_factors: tuple[list[int], list[int]] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.core = core
        self.n_actions = n_actions
        self.noisy = noisy
        self.factored = jump_factors is not None
        features = int(getattr(core, "out_features", backbone.out_features))
        actor_outputs = n_actions
        if jump_factors is not None:
            direction_of, holds_a = jump_factors
            if len(direction_of) != n_actions or len(holds_a) != n_actions:
                raise ValueError("jump_factors needs a direction and an A flag per action")
            n_directions = max(direction_of) + 1
            actor_outputs = n_directions + 2
            # Not saved with the weights: they follow from the action set.
            self.register_buffer("direction_of", torch.tensor(direction_of), persistent=False)
            self.register_buffer(
                "a_choice_of", torch.tensor(holds_a) + n_directions, persistent=False
            )
        # Both heads are built before either is initialised, which keeps the random stream
        # (and so seeded runs) identical to earlier versions.
        self.actor = _linear(features, actor_outputs, noisy, sigma0)
        self.critic = _linear(features, 1, noisy, sigma0)
        # Small actor gain keeps the initial policy near uniform.
        _init_head(self.actor, gain=0.01)
        _init_head(self.critic, gain=1.0)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> Any:
        """The core's zero state for ``batch_size`` envs; None without a core."""
        if self.core is None:
            return None
        return self.core.initial_state(batch_size, device)

    def select_state(self, state: Any, index: Any) -> Any:
        """The recurrent state of the envs in ``index`` (None without a core)."""
        if self.core is None or state is None:
            return None
        return self.core.select_state(state, index)

    @property
    def recurrent(self) -> bool:
        return self.core is not None

    def reset_noise(self) -> None:
        """Resample the noise of every NoisyLinear layer (a no-op without noisy heads)."""
        for module in self.modules():
            if isinstance(module, NoisyLinear):
                module.reset_noise()

    def _heads(self, features: Tensor) -> tuple[Tensor, Tensor]:
        # The heads compute in float32 even under autocast: bf16 logits are off by ~1e-2,
        # the size of a PPO ratio's whole change in one update, and two layers this
        # small cost nothing in float32.
        device = features.device.type
        float32 = (
            torch.autocast(device, enabled=False)
            if torch.is_autocast_enabled(device)
            else contextlib.nullcontext()
        )
        with float32:
            features = features.float()
            logits = self.actor(features)
            value = self.critic(features).squeeze(-1)
        if self.factored:
            logits = logits[..., self.direction_of] + logits[..., self.a_choice_of]
        return logits, value

    def forward(self, obs: Tensor, state: Any = None, done: Tensor | None = None) -> PolicyOutput:
        features = self.backbone(obs)
        if self.core is not None:
            features, state = self.core(features, state, done)
        else:
            state = None
        logits, value = self._heads(features)
        return PolicyOutput(logits=logits, value=value, state=state, features=features)

    def act(
        self,
        obs: Tensor,
        state: Any = None,
        done: Tensor | None = None,
        deterministic: bool | Tensor = False,
    ) -> tuple[Tensor, Tensor, Tensor, Any]:
        """Sample (or argmax) actions; returns ``(actions, log_probs, values, new_state)``.

        ``deterministic`` may be a bool per row: argmax there, sampled elsewhere.
        Gradients follow the caller's grad mode; wrap rollouts in ``torch.no_grad()``.
        """
        out = self(obs, state, done)
        dist = Categorical(logits=out.logits)
        if isinstance(deterministic, Tensor):
            actions = torch.where(deterministic, out.logits.argmax(dim=-1), dist.sample())
        else:
            actions = out.logits.argmax(dim=-1) if deterministic else dist.sample()
        return actions, dist.log_prob(actions), out.value, out.state

    def evaluate_actions(
        self, obs: Tensor, actions: Tensor, state: Any = None, done: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(log_probs, entropy, values)`` of ``actions`` under the current policy."""
        out = self(obs, state, done)
        dist = Categorical(logits=out.logits)
        return dist.log_prob(actions.long()), dist.entropy(), out.value

    def evaluate_sequence(
        self,
        obs: Tensor,
        actions: Tensor,
        initial_state: Any = None,
        dones: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(log_probs, entropy, values)``, each ``(T, B)``, of time-major sequences.

        ``obs`` is ``(T, B, *obs_shape)``; ``dones[t, b] = 1`` where ``obs[t, b]`` starts an
        episode (the rollout's ``starts``), and ``initial_state`` is the core state before
        ``t = 0``. The backbone sees all ``T * B`` observations in one batch; the core runs
        through time, so the result equals stepping :meth:`forward` over ``t``.
        """
        steps, batch = actions.shape[:2]
        features = self.backbone(obs.reshape(steps * batch, *obs.shape[2:]))
        if self.core is not None:
            sequence = features.view(steps, batch, -1)
            forward_sequence = getattr(self.core, "forward_sequence", None)
            if forward_sequence is not None:
                sequence, _ = forward_sequence(sequence, initial_state, dones)
            else:
                sequence = self._step_core(sequence, initial_state, dones)
            features = sequence.reshape(steps * batch, -1)
        logits, values = self._heads(features)
        dist = Categorical(logits=logits)
        log_probs = dist.log_prob(actions.reshape(-1).long())
        return (
            log_probs.view(steps, batch),
            dist.entropy().view(steps, batch),
            values.view(steps, batch),
        )

    def _step_core(self, features: Tensor, state: Any, dones: Tensor | None) -> Tensor:
        """Fallback for cores without ``forward_sequence``: one call per time step."""
        assert self.core is not None
        outs = []
        for t in range(features.shape[0]):
            out, state = self.core(features[t], state, None if dones is None else dones[t])
            outs.append(out)
        return torch.stack(outs)

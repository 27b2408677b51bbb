"""Recurrent cores between the backbone and the heads: GRU, LSTM and a windowed transformer.

Every core is called one step at a time as ``core(features (B, F), state, done (B,))`` and
returns ``(features (B, out_features), new_state)``; ``done[b] = 1`` means the observation
at this step starts a new episode, so env ``b`` begins again from the zero state.
``forward_sequence(features (T, B, F), state, dones (T, B))`` gives the same result as
that step-by-step loop, for learning on whole rollouts.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from mario_cli.api import ConfigError

Device = torch.device | str | None


def _reset_mask(done: Tensor | None, like: Tensor) -> Tensor | None:
    """``(B,)`` multiplier that is 0 for envs starting an episode, else 1; None if none."""
    if done is None:
        return None
    return (~done.to(device=like.device).bool()).to(like.dtype)


def _segment_starts(dones: Tensor) -> list[int]:
    """Time indices where some env starts an episode (plus 0): the rnn runs between them."""
    later = dones[1:].bool().any(dim=1).nonzero().flatten() + 1
    return [0, *later.tolist()]


class _RNNCore(nn.Module):
    """Shared logic of the GRU and LSTM cores; subclasses set ``self.rnn``."""

    rnn: nn.GRU | nn.LSTM

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.hidden = hidden
        self.out_features = hidden

    def _init_weights(self) -> None:
        for name, param in self.rnn.named_parameters():
            if name.startswith("weight"):
                nn.init.orthogonal_(param)
            else:
                nn.init.zeros_(param)

    def _zeros(self, batch_size: int, device: Device) -> Tensor:
        return torch.zeros(1, batch_size, self.hidden, device=device)

    def _mask_state(self, state: Any, keep: Tensor | None) -> Any:
        raise NotImplementedError

    def forward(self, features: Tensor, state: Any, done: Tensor | None) -> tuple[Tensor, Any]:
        if state is None:
            state = self.initial_state(features.shape[0], features.device)
        state = self._mask_state(state, _reset_mask(done, features))
        out, state = self.rnn(features.unsqueeze(0), state)
        return out.squeeze(0), state

    def forward_sequence(
        self, features: Tensor, initial_state: Any, dones: Tensor | None
    ) -> tuple[Tensor, Any]:
        """Run ``(T, B, F)`` features; state resets before each step where ``dones[t] = 1``."""
        state = initial_state
        if state is None:
            state = self.initial_state(features.shape[1], features.device)
        if dones is None:
            out, state = self.rnn(features, state)
            return out, state
        # Between two resets the cuDNN/fused rnn can take the whole chunk at once.
        starts = _segment_starts(dones)
        outs = []
        for begin, end in zip(starts, [*starts[1:], features.shape[0]], strict=True):
            state = self._mask_state(state, _reset_mask(dones[begin], features))
            out, state = self.rnn(features[begin:end], state)
            outs.append(out)
        return torch.cat(outs), state


def _index(index: Any, device: torch.device) -> Tensor:
    return torch.as_tensor(index, dtype=torch.long, device=device)


class GRUCore(_RNNCore):
    """Single-layer GRU; state is ``h`` of shape ``(1, B, hidden)``."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__(in_features, hidden)
        self.rnn = nn.GRU(in_features, hidden)
        self._init_weights()

    def select_state(self, state: Tensor, index: Any) -> Tensor:
        """The state of the envs in ``index`` (state is (1, B, H))."""
        return state[:, _index(index, state.device)]

    def initial_state(self, batch_size: int, device: Device = None) -> Tensor:
        return self._zeros(batch_size, device)

    def _mask_state(self, state: Tensor, keep: Tensor | None) -> Tensor:
        return state if keep is None else state * keep.view(1, -1, 1)


class LSTMCore(_RNNCore):
    @staticmethod
    def _select(state: tuple[Tensor, Tensor], index: Any) -> tuple[Tensor, Tensor]:
        h, c = state
        i = _index(index, h.device)
        return h[:, i], c[:, i]

    """Single-layer LSTM; state is ``(h, c)``, each of shape ``(1, B, hidden)``."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__(in_features, hidden)
        self.rnn = nn.LSTM(in_features, hidden)
        self._init_weights()

    def select_state(self, state: tuple[Tensor, Tensor], index: Any) -> tuple[Tensor, Tensor]:
        """The state of the envs in ``index``."""
        return self._select(state, index)

    def initial_state(self, batch_size: int, device: Device = None) -> tuple[Tensor, Tensor]:
        return self._zeros(batch_size, device), self._zeros(batch_size, device)

    def _mask_state(
        self, state: tuple[Tensor, Tensor], keep: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        if keep is None:
            return state
        h, c = state
        keep = keep.view(1, -1, 1)
        return h * keep, c * keep


def sinusoidal_encoding(length: int, dim: int) -> Tensor:
    """The ``(length, dim)`` sine/cosine position table of Vaswani et al. 2017."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class TransformerCore(nn.Module):
    @staticmethod
    def _select(state: tuple[Tensor, Tensor], index: Any) -> tuple[Tensor, Tensor]:
        window, count = state
        i = _index(index, window.device)
        return window[i], count[i]

    """Causal transformer encoder over a rolling window of the last ``window`` features.

    State is ``(window (B, W, F), count (B,))``: the newest feature sits at position
    ``W - 1`` and the last ``count`` positions belong to the current episode (the rest
    are zeros). Attention is causal and never reaches positions outside the episode, so
    steps before an episode start cannot influence anything after it. The output is the
    encoding at the newest position.
    """

    def __init__(
        self,
        in_features: int,
        d_model: int,
        window: int = 16,
        layers: int = 2,
        heads: int = 4,
        ff_mult: int = 2,
    ) -> None:
        super().__init__()
        if d_model % heads:
            raise ConfigError(
                f"transformer width {d_model} is not divisible by its {heads} heads; "
                "change model.recurrent_hidden or model.transformer.heads (--transformer-heads)"
            )
        self.in_features = in_features
        self.window = window
        self.heads = heads
        self.out_features = d_model
        self.proj = nn.Linear(in_features, d_model)
        self.register_buffer("pos", sinusoidal_encoding(window, d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(
            d_model,
            heads,
            dim_feedforward=ff_mult * d_model,
            dropout=0.0,  # dropout would make rollout and update disagree
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )

    def select_state(self, state: tuple[Tensor, Tensor], index: Any) -> tuple[Tensor, Tensor]:
        """The state of the envs in ``index``."""
        return self._select(state, index)

    def initial_state(self, batch_size: int, device: Device = None) -> tuple[Tensor, Tensor]:
        window = torch.zeros(batch_size, self.window, self.in_features, device=device)
        count = torch.zeros(batch_size, dtype=torch.long, device=device)
        return window, count

    def _valid(self, count: Tensor) -> Tensor:
        """``(..., W)`` bool: which window positions belong to the current episode."""
        positions = torch.arange(self.window, device=count.device)
        return positions >= (self.window - count)[..., None]

    def _attention_mask(self, count: Tensor) -> Tensor:
        """``(N * heads, W, W)`` bool mask, True where attention is forbidden."""
        w = self.window
        causal = torch.ones(w, w, dtype=torch.bool, device=count.device).tril()
        allowed = causal & self._valid(count)[:, None, :]
        # Padding queries may see themselves, so no softmax row is empty (NaN); no valid
        # query ever reads them.
        allowed = allowed | torch.eye(w, dtype=torch.bool, device=count.device)
        return (~allowed).repeat_interleave(self.heads, dim=0)

    def _encode(self, window: Tensor, count: Tensor) -> Tensor:
        x = self.proj(window) + self.pos.to(window.dtype)
        return self.encoder(x, mask=self._attention_mask(count))[:, -1]

    def forward(
        self, features: Tensor, state: tuple[Tensor, Tensor] | None, done: Tensor | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if state is None:
            state = self.initial_state(features.shape[0], features.device)
        window, count = state
        window = window.to(features.dtype)
        if done is not None:
            reset = done.to(device=count.device).bool()
            window = window * (~reset).to(window.dtype)[:, None, None]
            count = count.masked_fill(reset, 0)
        window = torch.cat([window[:, 1:], features.unsqueeze(1)], dim=1)
        count = (count + 1).clamp(max=self.window)
        return self._encode(window, count), (window, count)

    def forward_sequence(
        self, features: Tensor, initial_state: tuple[Tensor, Tensor] | None, dones: Tensor | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Encode all ``T * B`` windows in one batch; same result as stepping through time."""
        steps, batch, _ = features.shape
        if initial_state is None:
            initial_state = self.initial_state(batch, features.device)
        window, count = initial_state
        counts = []
        for t in range(steps):
            if dones is not None:
                count = count.masked_fill(dones[t].to(device=count.device).bool(), 0)
            count = (count + 1).clamp(max=self.window)
            counts.append(count)
        count_seq = torch.stack(counts)  # (T, B)
        history = torch.cat([window.to(features.dtype).transpose(0, 1), features])
        # Window t ends at history[W + t] = features[t]; unfold puts the window axis last.
        windows = history.unfold(0, self.window, 1)[1:].permute(0, 1, 3, 2)
        windows = windows * self._valid(count_seq)[..., None].to(windows.dtype)
        flat = windows.reshape(steps * batch, self.window, -1)
        out = self._encode(flat, count_seq.reshape(-1)).view(steps, batch, -1)
        return out, (windows[-1], count_seq[-1])


def _width(in_features: int, cfg: Any) -> int:
    return cfg.recurrent_hidden or in_features


def make_gru(in_features: int, cfg: Any) -> nn.Module:
    """Core factory for ``"gru"``."""
    return GRUCore(in_features, _width(in_features, cfg))


def make_lstm(in_features: int, cfg: Any) -> nn.Module:
    """Core factory for ``"lstm"``."""
    return LSTMCore(in_features, _width(in_features, cfg))


def make_transformer(in_features: int, cfg: Any) -> nn.Module:
    """Core factory for ``"transformer"`` (options: ``[model.transformer]``)."""
    own = cfg.settings_of("transformer")
    return TransformerCore(
        in_features, _width(in_features, cfg), window=own.window, layers=own.layers, heads=own.heads
    )

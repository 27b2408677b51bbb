"""Recurrent cores: GRU, LSTM and the windowed transformer."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from mario_cli.config import ModelConfig
from mario_cli.errors import ConfigError
from mario_cli.plugins import Registry
from mario_models import register_recurrent_cores
from mario_models.cores import GRUCore, LSTMCore, TransformerCore, sinusoidal_encoding

IN_FEATURES = 12
WIDTH = 16
WINDOW = 4
CORES = ["gru", "lstm", "transformer"]


def _register_into(registry: Registry) -> Any:
    """The ``register`` a hook receives, filling ``registry`` as plugin "test"."""

    def register(name: str, item: Any, settings: Any = None) -> None:
        registry.register(name, item, "test", settings)

    return register


def _cfg(**overrides: Any) -> ModelConfig:
    fields = {
        "recurrent_hidden": WIDTH,
        "transformer_window": WINDOW,
        "transformer_layers": 2,
        "transformer_heads": 2,
    }
    fields.update(overrides)
    return ModelConfig(**fields)


def _factories() -> dict[str, Any]:
    registry = Registry("recurrent_cores")
    register_recurrent_cores(register=_register_into(registry))
    return {name: registry.get(name) for name in registry.names()}


def _core(name: str, seed: int = 0, **overrides: Any) -> nn.Module:
    torch.manual_seed(seed)
    return _factories()[name](IN_FEATURES, _cfg(**overrides))


def _features(*shape: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, IN_FEATURES, generator=gen)


def _flatten(state: Any) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def _env_state(state: Any, b: int) -> list[torch.Tensor]:
    """Env ``b``'s slice of a state: dim 1 for rnn states, dim 0 for the transformer's."""
    parts = _flatten(state)
    if parts[0].dim() == 3 and parts[0].shape[0] == 1:
        return [p[:, b] for p in parts]
    return [p[b] for p in parts]


def _assert_states_close(a: Any, b: Any) -> None:
    for x, y in zip(_flatten(a), _flatten(b), strict=True):
        torch.testing.assert_close(x, y)


def _step_all(
    core: nn.Module, feats: torch.Tensor, state: Any, dones: torch.Tensor
) -> tuple[torch.Tensor, Any]:
    outs = []
    for t in range(feats.shape[0]):
        out, state = core(feats[t], state, dones[t])
        outs.append(out)
    return torch.stack(outs), state


def test_plugin_registers_cores() -> None:
    factories = _factories()
    assert set(factories) == set(CORES)
    assert isinstance(factories["gru"](IN_FEATURES, _cfg()), GRUCore)
    assert isinstance(factories["lstm"](IN_FEATURES, _cfg()), LSTMCore)
    assert isinstance(factories["transformer"](IN_FEATURES, _cfg()), TransformerCore)


@pytest.mark.parametrize("name", CORES)
def test_width_defaults_to_input_features(name: str) -> None:
    core = _core(name, recurrent_hidden=0)
    assert core.out_features == IN_FEATURES
    out, _ = core(_features(3), None, None)
    assert out.shape == (3, IN_FEATURES)


def test_plugin_import_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, mario_models; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize("name", CORES)
def test_core_maps_features_and_carries_state(name: str) -> None:
    core = _core(name)
    assert core.out_features == WIDTH
    feats = _features(3, 5)
    state = core.initial_state(5, "cpu")
    assert all((p == 0).all() for p in _flatten(state))
    out1, state1 = core(feats[0], state, None)
    assert out1.shape == (5, WIDTH)
    assert torch.isfinite(out1).all()
    assert out1.abs().sum() > 0
    # None means a fresh zero state.
    out_none, _ = core(feats[0], None, None)
    torch.testing.assert_close(out_none, out1)
    # The same input with the carried state gives a different output: memory is used.
    out2, state2 = core(feats[0], state1, torch.zeros(5))
    assert not torch.allclose(out2, out1)
    assert all(torch.isfinite(p.float()).all() for p in _flatten(state2))
    pairs = zip(_flatten(state1), _flatten(state2), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs)


def test_state_structures() -> None:
    gru, lstm, tr = _core("gru"), _core("lstm"), _core("transformer")
    assert gru.initial_state(3).shape == (1, 3, WIDTH)
    h, c = lstm.initial_state(3)
    assert h.shape == c.shape == (1, 3, WIDTH)
    window, count = tr.initial_state(3)
    assert window.shape == (3, WINDOW, IN_FEATURES)
    assert count.shape == (3,) and count.dtype == torch.long


@pytest.mark.parametrize("name", CORES)
@pytest.mark.parametrize("done_dtype", [torch.float32, torch.bool])
def test_done_resets_only_flagged_envs(name: str, done_dtype: torch.dtype) -> None:
    core = _core(name)
    batch = 4
    history = _features(3, batch, seed=2)
    _, state = _step_all(core, history, None, torch.zeros(3, batch))
    feats = _features(batch, seed=3)
    done = torch.tensor([0, 1, 0, 1], dtype=done_dtype)
    out, new_state = core(feats, state, done)
    _, carried_state = core(feats, state, None)
    carried, _ = core(feats, state, torch.zeros(batch))
    fresh, fresh_state = core(feats, core.initial_state(batch), None)
    for b in (1, 3):  # restarted: exactly as from a zero state
        torch.testing.assert_close(out[b], fresh[b])
        for x, y in zip(_env_state(new_state, b), _env_state(fresh_state, b), strict=True):
            torch.testing.assert_close(x, y)
        assert not torch.allclose(out[b], carried[b])
    for b in (0, 2):  # untouched: exactly as without a reset
        torch.testing.assert_close(out[b], carried[b])
        for x, y in zip(_env_state(new_state, b), _env_state(carried_state, b), strict=True):
            torch.testing.assert_close(x, y)


@pytest.mark.parametrize("name", CORES)
def test_forward_sequence_equals_stepping(name: str) -> None:
    core = _core(name)
    steps, batch = 9, 3
    feats = _features(steps, batch, seed=4)
    dones = torch.zeros(steps, batch)
    dones[0, 1] = 1
    dones[3, 0] = 1
    dones[4, 2] = 1
    dones[5, 0] = 1  # two resets close together
    _, initial = _step_all(core, _features(6, batch, seed=5), None, torch.zeros(6, batch))
    expected, expected_state = _step_all(core, feats, initial, dones)
    out, state = core.forward_sequence(feats, initial, dones)
    assert out.shape == (steps, batch, WIDTH)
    torch.testing.assert_close(out, expected)
    _assert_states_close(state, expected_state)
    # No dones and no initial state: same as stepping from zeros.
    no_reset, _ = _step_all(core, feats, None, torch.zeros(steps, batch))
    torch.testing.assert_close(core.forward_sequence(feats, None, None)[0], no_reset)


@pytest.mark.parametrize("name", CORES)
def test_forward_sequence_backpropagates(name: str) -> None:
    core = _core(name)
    feats = _features(5, 2, seed=6).requires_grad_()
    dones = torch.zeros(5, 2)
    dones[2, 1] = 1
    out, _ = core.forward_sequence(feats, core.initial_state(2), dones)
    out.sum().backward()
    assert torch.isfinite(feats.grad).all()
    # Env 1 restarted at t=2, so its earlier features cannot affect its later outputs.
    feats.grad = None
    out, _ = core.forward_sequence(feats, core.initial_state(2), dones)
    out[2:, 1].sum().backward()
    assert (feats.grad[:2, 1] == 0).all()
    assert feats.grad[2:, 1].abs().sum() > 0


@pytest.mark.parametrize("sequence", [False, True])
def test_transformer_ignores_steps_before_reset(sequence: bool) -> None:
    core = _core("transformer")
    steps, batch = 8, 2
    feats = _features(steps, batch, seed=7)
    dones = torch.zeros(steps, batch)
    dones[5, 0] = 1  # env 0 restarts at t=5 with 3 steps of history still in its window

    def run(x: torch.Tensor) -> torch.Tensor:
        if sequence:
            return core.forward_sequence(x, None, dones)[0]
        return _step_all(core, x, None, dones)[0]

    base = run(feats)
    perturbed = feats.clone()
    perturbed[:5, 0] += 10.0 * torch.randn(5, IN_FEATURES)
    changed = run(perturbed)
    torch.testing.assert_close(changed[5:, 0], base[5:, 0])
    assert not torch.allclose(changed[:5, 0], base[:5, 0])
    torch.testing.assert_close(changed[:, 1], base[:, 1])


def test_transformer_window_is_causal_and_limited() -> None:
    core = _core("transformer")
    steps = WINDOW + 3
    feats = _features(steps, 1, seed=8)
    dones = torch.zeros(steps, 1)
    base, state = _step_all(core, feats, None, dones)
    # Steps older than the window no longer matter.
    old = feats.clone()
    old[0] += 5.0
    torch.testing.assert_close(_step_all(core, old, None, dones)[0][WINDOW:], base[WINDOW:])
    # Later steps never reach back into earlier outputs.
    late = feats.clone()
    late[-1] += 5.0
    torch.testing.assert_close(_step_all(core, late, None, dones)[0][:-1], base[:-1])
    window, count = state
    assert count.item() == WINDOW
    torch.testing.assert_close(window[0], feats[-WINDOW:, 0])


def test_transformer_window_count_and_zero_padding() -> None:
    core = _core("transformer")
    feats = _features(2, 2, seed=9)
    _, state = _step_all(core, feats, None, torch.zeros(2, 2))
    window, count = state
    assert count.tolist() == [2, 2]
    assert (window[:, : WINDOW - 2] == 0).all()
    torch.testing.assert_close(window[:, -2:], feats.transpose(0, 1))
    _, (window, count) = core(feats[0], state, torch.tensor([1.0, 0.0]))
    assert count.tolist() == [1, 3]
    assert (window[0, :-1] == 0).all()


def test_transformer_width_must_divide_heads() -> None:
    with pytest.raises(ConfigError, match="transformer.heads"):
        _core("transformer", recurrent_hidden=15, transformer_heads=4)


def test_sinusoidal_encoding() -> None:
    table = sinusoidal_encoding(6, 8)
    assert table.shape == (6, 8)
    torch.testing.assert_close(table[0, 0::2], torch.zeros(4))
    torch.testing.assert_close(table[0, 1::2], torch.ones(4))
    torch.testing.assert_close(table[3, 0], torch.sin(torch.tensor(3.0)))
    torch.testing.assert_close(table[2, 3], torch.cos(torch.tensor(2.0 * 10000 ** (-2 / 8))))
    assert sinusoidal_encoding(5, 7).shape == (5, 7)

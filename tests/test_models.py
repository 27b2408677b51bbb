"""Backbones and the actor-critic policy."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

from mario_cli.config import ModelConfig
from mario_cli.plugins import Registry
from mario_cli.policy import ActorCritic, PolicyOutput
from mario_cli.training.builders import choose_auto_backbone
from mario_models import register_backbones
from mario_models.backbones import ImpalaCNN, NatureCNN

OBS_SHAPE = (4, 84, 84)


def _register_into(registry: Registry) -> Any:
    """The ``register`` a hook receives, filling ``registry`` as plugin "test"."""

    def register(name: str, item: Any, settings: Any = None) -> None:
        registry.register(name, item, "test", settings)

    return register


def _cfg(backbone: str, **overrides: Any) -> ModelConfig:
    fields = {
        "backbone": backbone,
        "hidden_size": 64,
        "impala": {"channels": [16, 32, 32], "blocks": 2},
    }
    fields.update(overrides)
    return ModelConfig(**fields)


def _factories() -> dict[str, Any]:
    registry = Registry("backbones")
    register_backbones(register=_register_into(registry))
    return {name: registry.get(name) for name in registry.names()}


def _obs(batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, *OBS_SHAPE), dtype=torch.uint8, generator=gen)


def test_plugin_registers_both_backbones() -> None:
    factories = _factories()
    assert set(factories) == {"nature", "impala"}
    assert isinstance(factories["nature"](OBS_SHAPE, _cfg("nature")), NatureCNN)
    assert isinstance(factories["impala"](OBS_SHAPE, _cfg("impala")), ImpalaCNN)


@pytest.mark.parametrize("name", ["nature", "impala"])
def test_backbone_maps_uint8_batch_to_features(name: str) -> None:
    torch.manual_seed(0)
    net = _factories()[name](OBS_SHAPE, _cfg(name, hidden_size=48))
    assert net.out_features == 48
    feats = net(_obs())
    assert feats.shape == (2, 48)
    assert feats.dtype == torch.float32
    assert torch.isfinite(feats).all()
    assert (feats >= 0).all()  # final ReLU
    assert feats.abs().sum() > 0


@pytest.mark.parametrize("name", ["nature", "impala"])
def test_backbone_scales_by_255(name: str) -> None:
    torch.manual_seed(0)
    net = _factories()[name](OBS_SHAPE, _cfg(name))
    obs = _obs()
    torch.testing.assert_close(net(obs), net.fc(net.convs(obs.float() / 255.0)))


def test_nature_layer_shapes() -> None:
    net = NatureCNN(OBS_SHAPE, hidden_size=512)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (8, 8), (4, 4)),
        (64, (4, 4), (2, 2)),
        (64, (3, 3), (1, 1)),
    ]
    assert net.fc[0].in_features == 64 * 7 * 7


def test_impala_honours_channels_and_blocks() -> None:
    cfg = _cfg("impala", hidden_size=32, impala={"channels": [8, 16], "blocks": 1})
    net = _factories()["impala"](OBS_SHAPE, cfg)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    # Per stage: one entry conv and two convs per residual block.
    assert len(convs) == 2 * (1 + 2 * 1)
    assert [c.out_channels for c in convs] == [8, 8, 8, 16, 16, 16]
    # 84 -> 42 -> 21 after two stride-2 pools.
    assert net.fc[0].in_features == 16 * 21 * 21

    def conv_params(c_in: int, c_out: int) -> int:
        return c_in * c_out * 9 + c_out

    expected = (
        conv_params(4, 8)
        + 2 * conv_params(8, 8)
        + conv_params(8, 16)
        + 2 * conv_params(16, 16)
        + (16 * 21 * 21 + 1) * 32
    )
    assert sum(p.numel() for p in net.parameters()) == expected

    default = ImpalaCNN(OBS_SHAPE, hidden_size=32)
    n_default = sum(isinstance(m, nn.Conv2d) for m in default.modules())
    assert n_default == 3 * (1 + 2 * 2)
    assert default.fc[0].in_features == 32 * 11 * 11


def test_orthogonal_init_and_zero_bias() -> None:
    net = NatureCNN(OBS_SHAPE, hidden_size=64)
    w = net.fc[0].weight  # (64, 3136): rows orthonormal, scaled by sqrt(2)
    torch.testing.assert_close(w @ w.T, 2.0 * torch.eye(64), atol=1e-4, rtol=1e-4)
    conv = net.convs[0].weight.flatten(1)  # (32, 256)
    torch.testing.assert_close(conv @ conv.T, 2.0 * torch.eye(32), atol=1e-4, rtol=1e-4)
    assert all((m.bias == 0).all() for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear))


def test_impala_feature_scale_stays_moderate() -> None:
    # Guards the small residual-branch gain: plain sqrt(2) everywhere gave std 7-50.
    for seed in range(3):
        torch.manual_seed(seed)
        feats = ImpalaCNN(OBS_SHAPE, hidden_size=256)(_obs(4, seed))
        assert 0.05 < feats.std().item() < 3.0


def test_choose_auto_backbone() -> None:
    assert choose_auto_backbone("cpu") == "nature"
    assert choose_auto_backbone("mps") == "nature"
    assert choose_auto_backbone("cuda") == "impala"


def _policy(name: str, n_actions: int = 7) -> ActorCritic:
    torch.manual_seed(0)
    return ActorCritic(_factories()[name](OBS_SHAPE, _cfg(name, hidden_size=32)), n_actions)


def test_forward_output_shapes_and_head_init() -> None:
    policy = _policy("nature")
    out = policy(_obs(3))
    assert isinstance(out, PolicyOutput)
    assert out.logits.shape == (3, 7)
    assert out.value.shape == (3,)
    assert out.features.shape == (3, 32)
    assert out.state is None
    assert policy(_obs(3), state="ignored").state is None
    # Actor gain 0.01 gives an almost uniform initial policy.
    assert out.logits.abs().max() < 0.1
    actor_w = policy.actor.weight
    torch.testing.assert_close(actor_w @ actor_w.T, 1e-4 * torch.eye(7), atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("name", ["nature", "impala"])
def test_act_samples_valid_actions(name: str) -> None:
    policy = _policy(name)
    obs = _obs(4)
    with torch.no_grad():
        actions, log_probs, values, state = policy.act(obs)
        out = policy(obs)
    assert actions.shape == (4,) and actions.dtype == torch.int64
    assert ((actions >= 0) & (actions < 7)).all()
    assert (log_probs <= 0).all()
    assert values.shape == (4,)
    assert state is None
    expected = torch.log_softmax(out.logits, -1).gather(1, actions[:, None]).squeeze(1)
    torch.testing.assert_close(log_probs, expected)
    torch.testing.assert_close(values, out.value)


def test_deterministic_act_is_argmax() -> None:
    policy = _policy("nature", n_actions=5)
    with torch.no_grad():
        policy.actor.bias.copy_(torch.tensor([0.0, 0.0, 3.0, 0.0, 1.0]))
        obs = _obs(6)
        actions, log_probs, _, _ = policy.act(obs, deterministic=True)
        logits = policy(obs).logits
    torch.testing.assert_close(actions, logits.argmax(-1))
    assert (actions == 2).all()
    torch.testing.assert_close(log_probs, torch.log_softmax(logits, -1).max(-1).values)


@pytest.mark.parametrize("name", ["nature", "impala"])
def test_evaluate_actions(name: str) -> None:
    n_actions = 7
    policy = _policy(name, n_actions)
    obs = _obs(4)
    actions = torch.tensor([0, 3, 6, 1])
    log_probs, entropy, values = policy.evaluate_actions(obs, actions)
    assert log_probs.shape == entropy.shape == values.shape == (4,)
    assert (entropy > 0).all() and (entropy <= math.log(n_actions) + 1e-6).all()
    # Near-uniform at init, so entropy is close to the maximum.
    assert (entropy > math.log(n_actions) - 0.01).all()
    logits = policy(obs).logits
    torch.testing.assert_close(log_probs, torch.log_softmax(logits, -1)[torch.arange(4), actions])
    assert log_probs.requires_grad and values.requires_grad


def test_core_slot_is_called_with_features_state_done() -> None:
    class AddCore(nn.Module):
        out_features = 32

        def forward(self, features, state, done):
            self.seen = (features.shape, state, done)
            return features + 1.0, (0 if state is None else state) + 1

    core = AddCore()
    torch.manual_seed(0)
    policy = ActorCritic(NatureCNN(OBS_SHAPE, 32), 4, core=core)
    done = torch.zeros(2)
    out = policy(_obs(), state=None, done=done)
    assert core.seen[0] == (2, 32) and core.seen[1] is None and core.seen[2] is done
    assert out.state == 1
    assert policy(_obs(), state=out.state).state == 2
    torch.testing.assert_close(out.features, policy.backbone(_obs()) + 1.0)


@pytest.mark.parametrize("name", ["nature", "impala"])
def test_adam_step_changes_parameters(name: str) -> None:
    policy = _policy(name, n_actions=5)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-4, eps=1e-5)
    before = {k: v.detach().clone() for k, v in policy.named_parameters()}
    obs = _obs(4)
    actions = torch.tensor([0, 1, 2, 3])
    log_probs, entropy, values = policy.evaluate_actions(obs, actions)
    value_target = values.detach() + 5.0
    advantages = torch.tensor([1.0, -1.0, 0.5, 2.0])
    loss = -(log_probs * advantages).mean()
    loss = loss + (values - value_target).pow(2).mean() - 0.01 * entropy.mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = {k for k, v in policy.named_parameters() if not torch.equal(v, before[k])}
    assert changed == set(before)
    with torch.no_grad():
        new_log_probs, _, new_values = policy.evaluate_actions(obs, actions)
    # The step moves values towards the target and favours the positive-advantage action.
    assert (new_values - values).mean() > 0
    assert (new_log_probs - log_probs)[3] > 0


# Recurrent cores inside the actor-critic.

CORE_NAMES = ["gru", "lstm", "transformer"]


def _core_cfg(**overrides: Any) -> Any:
    from mario_cli.config import ModelConfig

    fields = {"recurrent_hidden": 16, "transformer_window": 3, "transformer_heads": 2}
    fields.update(overrides)
    return ModelConfig(**fields)


def _recurrent_policy(core_name: str, n_actions: int = 5) -> ActorCritic:
    from mario_models import register_recurrent_cores

    registry = Registry("recurrent_cores")
    register_recurrent_cores(register=_register_into(registry))
    cores = {name: registry.get(name) for name in registry.names()}
    torch.manual_seed(0)
    backbone = NatureCNN(OBS_SHAPE, 32)
    return ActorCritic(backbone, n_actions, core=cores[core_name](32, _core_cfg()))


def _sequence(steps: int, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    obs = torch.stack([_obs(batch, seed=t) for t in range(steps)])
    actions = torch.randint(0, 5, (steps, batch), generator=torch.Generator().manual_seed(9))
    dones = torch.zeros(steps, batch)
    dones[2, 0] = 1
    dones[3, 1] = 1
    return obs, actions, dones


def test_initial_state_is_none_without_core() -> None:
    assert _policy("nature").initial_state(3, "cpu") is None


@pytest.mark.parametrize("core_name", CORE_NAMES)
def test_act_with_core_returns_new_state(core_name: str) -> None:
    policy = _recurrent_policy(core_name)
    state = policy.initial_state(3, "cpu")
    with torch.no_grad():
        actions, log_probs, values, new_state = policy.act(_obs(3), state, torch.ones(3))
        out = policy(_obs(3), state, torch.ones(3))
    assert actions.shape == log_probs.shape == values.shape == (3,)
    assert out.features.shape == (3, 16)
    if core_name == "gru":
        assert isinstance(new_state, torch.Tensor) and new_state.shape == (1, 3, 16)
    elif core_name == "lstm":
        h, c = new_state
        assert h.shape == c.shape == (1, 3, 16)
    else:
        window, count = new_state
        assert window.shape == (3, 3, 32) and count.tolist() == [1, 1, 1]
    # The state carries memory: the next step differs from a fresh start.
    with torch.no_grad():
        carried = policy(_obs(3, seed=1), new_state, torch.zeros(3)).logits
        fresh = policy(_obs(3, seed=1), None, None).logits
    assert not torch.allclose(carried, fresh)


@pytest.mark.parametrize("core_name", CORE_NAMES)
def test_evaluate_sequence_equals_stepping(core_name: str) -> None:
    policy = _recurrent_policy(core_name)
    steps, batch = 5, 2
    obs, actions, dones = _sequence(steps, batch)
    with torch.no_grad():
        _, _, _, initial = policy.act(_obs(batch, seed=20), None, None)
    log_probs, entropy, values = policy.evaluate_sequence(obs, actions, initial, dones)
    assert log_probs.shape == entropy.shape == values.shape == (steps, batch)
    assert log_probs.requires_grad and values.requires_grad
    state = initial
    for t in range(steps):
        out = policy(obs[t], state, dones[t])
        state = out.state
        expected = torch.log_softmax(out.logits, -1).gather(1, actions[t, :, None]).squeeze(1)
        torch.testing.assert_close(log_probs[t], expected)
        torch.testing.assert_close(values[t], out.value)
    # The initial state matters: a fresh start gives other values.
    fresh = policy(obs[0], None, None).value
    assert not torch.allclose(fresh, values[0])
    (log_probs.sum() + values.sum()).backward()
    assert all(p.grad is not None for p in policy.core.parameters())


def test_evaluate_sequence_without_core_equals_evaluate_actions() -> None:
    policy = _policy("nature", n_actions=5)
    obs, actions, dones = _sequence(4, 2)
    log_probs, entropy, values = policy.evaluate_sequence(obs, actions, None, dones)
    flat = policy.evaluate_actions(obs.flatten(0, 1), actions.flatten())
    for got, want in zip((log_probs, entropy, values), flat, strict=True):
        torch.testing.assert_close(got, want.view(4, 2))


def test_evaluate_sequence_steps_cores_without_forward_sequence() -> None:
    class CountingCore(nn.Module):
        out_features = 32

        def forward(self, features, state, done):
            state = torch.zeros(features.shape[0]) if state is None else state
            state = state * (1 - done) + 1
            return features * state[:, None], state

    torch.manual_seed(0)
    policy = ActorCritic(NatureCNN(OBS_SHAPE, 32), 5, core=CountingCore())
    obs, actions, dones = _sequence(4, 2)
    log_probs, _, values = policy.evaluate_sequence(obs, actions, None, dones)
    state = None
    for t in range(4):
        out = policy(obs[t], state, dones[t])
        state = out.state
        torch.testing.assert_close(values[t], out.value)
    assert state.tolist() == [2.0, 1.0]


@pytest.mark.parametrize("core_name", CORE_NAMES)
def test_build_policy_with_core(core_name: str) -> None:
    from mario_cli.config import load_config
    from mario_cli.training.builders import build_policy

    overrides = {"backbone": "nature", "hidden_size": 32, "recurrent": core_name}
    cfg = load_config(cli_overrides={"model": overrides}, environ={})
    policy, _ = build_policy(cfg, OBS_SHAPE, 7, torch.device("cpu"))
    assert policy.core is not None and policy.core.out_features == 32
    state = policy.initial_state(2, "cpu")
    with torch.no_grad():
        actions, _, _, state = policy.act(_obs(2), state, torch.ones(2))
    assert actions.shape == (2,)


def test_heads_compute_in_float32_under_bf16_autocast() -> None:
    """--amp runs the torso in bf16 and the heads in float32: the logits are the
    float32 heads of the bf16 features, not bf16-rounded."""
    policy = _policy("nature")
    obs = _obs(4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = policy(obs)
    assert out.features.dtype == torch.bfloat16  # the torso did run in bf16
    assert out.logits.dtype == torch.float32 and out.value.dtype == torch.float32
    with torch.no_grad():
        features = out.features.float()
        torch.testing.assert_close(out.logits, policy.actor(features), rtol=0, atol=0)
        torch.testing.assert_close(out.value, policy.critic(features).squeeze(-1), rtol=0, atol=0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = policy.actor(out.features).float()  # what a bf16 head gives
    assert not torch.equal(out.logits, rounded)


@pytest.mark.parametrize("backbone", ["nature", "impala"])
def test_cpu_policy_has_nhwc_conv_weights_and_same_outputs(backbone: str) -> None:
    """On the CPU the policy's conv weights are channels-last (faster oneDNN kernels);
    its outputs and a checkpoint round trip equal those of the plain layout."""
    from mario_cli.config import load_config
    from mario_cli.training.builders import build_policy

    cfg = load_config(cli_overrides={"model": {"backbone": backbone}}, environ={})
    torch.manual_seed(0)
    policy, _ = build_policy(cfg, OBS_SHAPE, 7, torch.device("cpu"))
    convs = [m for m in policy.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    plain = copy.deepcopy(policy).to(memory_format=torch.contiguous_format)
    assert all(m.weight.is_contiguous() for m in plain.modules() if isinstance(m, torch.nn.Conv2d))
    obs = _obs(5)
    with torch.no_grad():
        fast, slow = policy(obs), plain(obs)
    torch.testing.assert_close(fast.logits, slow.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.value, slow.value, atol=1e-4, rtol=1e-4)
    reloaded, _ = build_policy(cfg, OBS_SHAPE, 7, torch.device("cpu"))
    reloaded.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(obs).logits, fast.logits, atol=1e-4, rtol=1e-4)


def test_unit_pixels_reads_in_the_first_convs_layout_and_autocast_dtype() -> None:
    """uint8 frames reach the first convolution already scaled to [0, 1], channels-last
    on a channels-last model and in bf16 under bf16 autocast, with the values of
    ``obs / 255`` (exact in float32; 0..255 are exact in bf16, then one rounding)."""
    from mario_models.backbones import unit_pixels

    obs = torch.arange(256, dtype=torch.uint8).repeat(128).reshape(2, 4, 64, 64)
    expected = obs.float() / 255.0
    nhwc = nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)
    plain = nn.Conv2d(4, 8, 3)

    fast = unit_pixels(obs, nhwc)
    assert fast.dtype == torch.float32
    assert fast.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(fast, expected)
    assert unit_pixels(obs, plain).is_contiguous()  # a plain model keeps NCHW
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = unit_pixels(obs, nhwc)
    assert low.dtype == torch.bfloat16
    assert low.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(low, expected.to(torch.bfloat16))
    frames = torch.full((1, 4, 8, 8), 255.0)  # float input (shape probes) is scaled,
    assert torch.equal(unit_pixels(frames, nhwc), torch.ones(1, 4, 8, 8))
    assert torch.equal(frames, torch.full((1, 4, 8, 8), 255.0))  # never in place

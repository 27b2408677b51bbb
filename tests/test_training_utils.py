"""LR schedules and device, AMP, compile, thread and seed helpers."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mario_cli.errors import ConfigError
from mario_cli.training import device as dev
from mario_cli.training.checkpoint import load_checkpoint, save_checkpoint
from mario_cli.training.device import (
    CompileGuard,
    amp_settings,
    configure_threads,
    resolve_device,
    sanity_check,
    seed_everything,
    should_compile,
)
from mario_cli.training.schedules import linear, lr_factor, make_scheduler


def test_warmup_then_constant() -> None:
    assert lr_factor(0, 100, 10, "constant", 0.4) == pytest.approx(0.1)
    assert lr_factor(4, 100, 10, "constant", 0.4) == pytest.approx(0.5)
    assert lr_factor(9, 100, 10, "constant", 0.4) == 1.0
    assert lr_factor(55, 100, 10, "constant", 0.4) == 1.0
    assert lr_factor(500, 100, 10, "constant", 0.4) == 1.0


def test_warmup_then_cosine() -> None:
    assert lr_factor(0, 110, 10, "cosine", 0.4) == pytest.approx(0.1)
    assert lr_factor(9, 110, 10, "cosine", 0.4) == 1.0
    assert lr_factor(10, 110, 10, "cosine", 0.4) == 1.0
    assert lr_factor(60, 110, 10, "cosine", 0.4) == pytest.approx(0.7)  # halfway
    assert lr_factor(35, 110, 10, "cosine", 0.4) == pytest.approx(
        0.4 + 0.6 * 0.5 * (1 + math.cos(math.pi / 4))
    )
    assert lr_factor(110, 110, 10, "cosine", 0.4) == pytest.approx(0.4)
    assert lr_factor(10_000, 110, 10, "cosine", 0.4) == pytest.approx(0.4)


def test_no_warmup_and_bad_schedule() -> None:
    assert lr_factor(0, 100, 0, "cosine", 0.0) == 1.0
    assert lr_factor(100, 100, 0, "cosine", 0.0) == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="unknown lr schedule 'step'"):
        lr_factor(0, 100, 0, "step", 0.0)


def test_linear() -> None:
    assert linear(1.0, 0.0, 0.25) == 0.75
    assert linear(0.4, 1.0, -1.0) == 0.4
    assert linear(0.4, 1.0, 2.0) == 1.0


def test_scheduler_follows_factor_and_checkpoints(tmp_path: Path) -> None:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1e-3)
    sched = make_scheduler(
        opt, total_updates=20, warmup_updates=4, schedule="cosine", final_fraction=0.5
    )
    lrs = []
    for _ in range(22):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2.5e-4)
    assert lrs[3] == pytest.approx(1e-3)
    assert lrs[12] == pytest.approx(1e-3 * 0.75)
    assert lrs[20] == pytest.approx(5e-4) and lrs[21] == pytest.approx(5e-4)

    path = save_checkpoint(tmp_path / "s.pt", {"sched": sched.state_dict()})
    opt2 = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched2 = make_scheduler(opt2, 20, 4, "cosine", 0.5)
    sched2.load_state_dict(load_checkpoint(path)["sched"])
    assert sched2.last_epoch == 22 and sched2.get_last_lr() == sched.get_last_lr()
    with pytest.raises(ConfigError):
        make_scheduler(opt2, 20, 4, "linear", 0.5)


def test_resolve_device_here() -> None:
    assert resolve_device("cpu") == (torch.device("cpu"), None)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cuda requested but no CUDA"):
            resolve_device("cuda")
        assert resolve_device("auto") == (torch.device("cpu"), None)
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_resolve_mps_unavailable(monkeypatch) -> None:
    monkeypatch.setattr(dev.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    device, note = resolve_device("mps")
    assert device == torch.device("cpu")
    assert note == "MPS is not available on this machine; using the CPU"


def test_resolve_mps_insane(monkeypatch) -> None:
    monkeypatch.setattr(dev.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    monkeypatch.setattr(dev, "sanity_check", lambda d: "results differ from the CPU")
    for requested in ("mps", "auto"):
        device, note = resolve_device(requested)
        assert device == torch.device("cpu")
        assert note == "MPS failed a sanity check (results differ from the CPU); using the CPU"
    monkeypatch.setattr(dev, "sanity_check", lambda d: None)
    assert resolve_device("mps") == (torch.device("mps"), None)


def test_sanity_check() -> None:
    assert sanity_check(torch.device("cpu")) is None
    assert sanity_check(torch.device("meta")) is not None  # meta tensors cannot be read back


def test_amp_and_compile_choices(monkeypatch) -> None:
    cpu = torch.device("cpu")
    # unset: bf16 where the CPU computes it natively (twice as fast), else float32
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert amp_settings(cpu, None) == (True, torch.bfloat16, False)
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    assert amp_settings(cpu, None) == (False, None, False)
    assert amp_settings(cpu, True) == (True, torch.bfloat16, False)
    assert amp_settings(cpu, False) == (False, None, False)
    assert amp_settings(torch.device("mps"), True) == (False, None, False)
    assert amp_settings(torch.device("cuda"), False) == (False, None, False)
    assert not should_compile(cpu, None)
    assert should_compile(cpu, True)
    assert should_compile(torch.device("cuda"), None)
    assert not should_compile(torch.device("cuda"), False)


def test_amp_on_cuda_dtypes(monkeypatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setattr(dev.torch.cuda, "is_bf16_supported", lambda: True)
    assert amp_settings(cuda, None) == (True, torch.bfloat16, False)
    monkeypatch.setattr(dev.torch.cuda, "is_bf16_supported", lambda: False)
    assert amp_settings(cuda, True) == (True, torch.float16, True)


def test_compile_guard_falls_back() -> None:
    eager = nn.Linear(3, 2)
    calls = {"compiled": 0}

    def compiled(x):
        calls["compiled"] += 1
        raise RuntimeError("inductor blew up\nstack...")

    guard = CompileGuard(compiled, eager)
    x = torch.randn(4, 3)
    assert torch.equal(guard(x), eager(x))
    assert guard.failed
    assert guard.note == "torch.compile failed (RuntimeError: inductor blew up); running eager"
    assert torch.equal(guard(x), eager(x))
    assert calls["compiled"] == 1


def test_compile_guard_passes_through_and_keeps_user_errors() -> None:
    guard = CompileGuard(lambda x: x * 2, lambda x: x * 3)
    assert guard(2) == 4 and guard.note is None

    def bad(x):
        raise ValueError("bad input")

    guard = CompileGuard(bad, bad)
    with pytest.raises(ValueError, match="bad input"):
        guard(1)
    assert not guard.failed and guard.note is None


def test_configure_threads(monkeypatch) -> None:
    original = torch.get_num_threads()
    try:
        monkeypatch.setattr(dev, "_cpu_count", lambda: 2)
        assert configure_threads(requested=0) == 2
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(dev, "_cpu_count", lambda: 8)
        assert configure_threads(requested=0) == 8
        assert configure_threads(requested=3) == 3
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(original)


def test_seed_everything() -> None:
    def draw():
        return random.random(), float(np.random.rand()), torch.rand(2)

    seed_everything(123)
    a = draw()
    seed_everything(123)
    b = draw()
    assert a[:2] == b[:2] and torch.equal(a[2], b[2])
    seed_everything(-1)  # negative seeds are valid for torch, folded for numpy


def test_the_entropy_coefficient_decays_linearly_over_its_steps_then_holds() -> None:
    from types import SimpleNamespace

    from mario_algos.base import Algorithm
    from mario_cli.config import MarioConfig

    cfg = MarioConfig.model_validate(
        {
            "algo": {"ent_coef": 0.04, "ent_coef_final": 0.01, "ent_decay_steps": 100_000},
            "train": {"total_timesteps": 1_000_000},
        }
    )
    algo = Algorithm(None, cfg, None)

    def at(step: int) -> float:
        return algo.entropy_coef(SimpleNamespace(progress=step / 1_000_000))

    assert at(0) == pytest.approx(0.04)
    assert at(50_000) == pytest.approx(0.025)
    assert at(100_000) == pytest.approx(0.01) and at(600_000) == pytest.approx(0.01)
    constant_cfg = {"algo": {"ent_coef": 0.02, "ent_coef_final": None}}
    constant = Algorithm(None, MarioConfig.model_validate(constant_cfg), None)
    assert constant.entropy_coef(SimpleNamespace(progress=0.9)) == 0.02


def test_cpu_steps_use_fused_adamw_with_the_same_math_and_keep_it_on_resume() -> None:
    from mario_cli.config import AlgoConfig
    from mario_cli.training.optim import GradientStepper

    cfg = AlgoConfig(
        learning_rate=1e-2, warmup_fraction=0.0, lr_schedule="constant", max_grad_norm=1e9
    )
    torch.manual_seed(0)
    reference, fused = nn.Linear(16, 4), nn.Linear(16, 4)
    fused.load_state_dict(reference.state_dict())
    plain = torch.optim.AdamW(reference.parameters(), lr=1e-2, eps=1e-5, weight_decay=0.0)
    stepper = GradientStepper(fused.parameters(), cfg, 10, torch.device("cpu"))
    assert stepper.optimizer.param_groups[0]["fused"] is True
    x = torch.randn(8, 16)
    for _ in range(5):
        plain.zero_grad()
        reference(x).pow(2).sum().backward()
        plain.step()
        stepper.backward(fused(x).pow(2).sum())
    torch.testing.assert_close(fused.weight, reference.weight, rtol=0, atol=1e-6)
    # a checkpoint from a run whose optimizer was not fused resumes on the fused kernel
    resumed = GradientStepper(fused.parameters(), cfg, 10, torch.device("cpu"))
    resumed.load_state_dict(stepper.state_dict() | {"optimizer": plain.state_dict()})
    assert resumed.optimizer.param_groups[0]["fused"] is True
    assert resumed.optimizer.state_dict()["state"][0]["step"] == 5


def test_phase_timer_counts_wall_seconds_and_the_update_phases_cpu() -> None:
    """Waiting costs wall time but no CPU; computing costs both (bench train's split).
    CPU is read only around the once-per-iteration phases."""
    import threading
    import time

    from mario_cli.training.trainer import PhaseTimer

    timer = PhaseTimer()
    timer.owner = threading.get_ident()
    with timer("logging"):
        time.sleep(0.2)
    with timer("update"):
        end = time.process_time() + 0.1
        while time.process_time() < end:
            pass
    with timer("env_wait"):
        time.sleep(0.05)
    assert timer.seconds["logging"] >= 0.2
    assert timer.cpu_seconds["logging"] < 0.5 * timer.seconds["logging"]
    assert timer.cpu_seconds["update"] >= 0.1
    assert timer.seconds["env_wait"] >= 0.05 and "env_wait" not in timer.cpu_seconds
    assert timer.seconds["inference"] == 0.0

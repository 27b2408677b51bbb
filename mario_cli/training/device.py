"""Device choice, mixed precision, torch.compile, threads, memory reuse and seeding."""

from __future__ import annotations

import ctypes
import os
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mario_cli.errors import ConfigError, first_line

DEVICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def sanity_check(device: torch.device) -> str | None:
    """Run a tiny conv + matmul on ``device`` and the CPU; None if they agree, else why not.

    Some MPS builds run but return wrong numbers, which would silently ruin training.
    """
    try:
        gen = torch.Generator().manual_seed(0)
        images = torch.randn(2, 4, 12, 12, generator=gen)
        kernel = torch.randn(8, 4, 3, 3, generator=gen)
        weight = torch.randn(8 * 10 * 10, 16, generator=gen)

        def compute(dev: torch.device) -> torch.Tensor:
            features = F.conv2d(images.to(dev), kernel.to(dev))
            return (features.flatten(1) @ weight.to(dev)).cpu()

        expected = compute(torch.device("cpu"))
        got = compute(device)
    except Exception as exc:
        return f"{type(exc).__name__}: {first_line(exc)}"
    if got.shape != expected.shape or not torch.isfinite(got).all():
        return "it returned malformed results"
    error = float((got - expected).abs().max() / expected.abs().max())
    if error > 1e-3:
        return f"results differ from the CPU by {error:.1e} relative"
    return None


def resolve_device(requested: str) -> tuple[torch.device, str | None]:
    """The device for ``requested`` (auto, cpu, cuda, mps) and a one-line note or None.

    auto prefers CUDA, then MPS if it passes :func:`sanity_check`, then the CPU. A
    missing CUDA is an error; a missing or broken MPS falls back to the CPU with a note.
    """
    if requested not in DEVICES:
        raise ConfigError(f"unknown device {requested!r}; use one of: {', '.join(DEVICES)}")
    if requested == "cpu":
        return torch.device("cpu"), None
    if requested in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda"), None
    if requested == "cuda":
        raise ConfigError(
            "--device cuda requested but no CUDA device is available; use --device auto or cpu"
        )
    if not _mps_available():
        note = "MPS is not available on this machine; using the CPU" if requested == "mps" else None
        return torch.device("cpu"), note
    problem = sanity_check(torch.device("mps"))
    if problem is None:
        return torch.device("mps"), None
    return torch.device("cpu"), f"MPS failed a sanity check ({problem}); using the CPU"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AMX or AVX512-BF16).

    Without it, bf16 autocast on a CPU is emulated and slower than float32.
    """
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def amp_settings(
    device: torch.device, requested: bool | None
) -> tuple[bool, torch.dtype | None, bool]:
    """(enabled, autocast dtype, use GradScaler) for mixed precision.

    CUDA (None means on): bf16 where supported, else fp16 with a GradScaler.
    CPU: bf16 autocast (None means on where the CPU computes bf16 natively, where it
    halves the learner's cost; emulated bf16 is slower than float32). The actor and
    critic heads stay float32 either way. MPS: always off; a caller that got
    ``requested=True`` there should tell the user it was ignored.
    """
    if requested is False:
        return False, None, False
    if device.type == "cpu":
        on = requested if requested is not None else cpu_has_native_bf16()
        return (True, torch.bfloat16, False) if on else (False, None, False)
    if device.type != "cuda":
        return False, None, False
    if torch.cuda.is_bf16_supported():
        return True, torch.bfloat16, False
    return True, torch.float16, True


def should_compile(device: torch.device, requested: bool | None) -> bool:
    """Whether to torch.compile the policy; an explicit request wins.

    Auto compiles on CUDA only: on a small CPU (e.g. 2 cores) the compile time of a
    short run outweighs the speed-up, and MPS support is still patchy.
    """
    if requested is not None:
        return requested
    return device.type == "cuda"


def _compile_note(exc: BaseException) -> str:
    return f"torch.compile failed ({type(exc).__name__}: {first_line(exc)}); running eager"


class CompileGuard:
    """Calls the compiled callable, switching for good to the eager one if it fails.

    Compiled and eager modules share parameters, so switching loses nothing. If the
    eager call fails as well, the error is the caller's, not the compiler's: it is
    raised and the guard stays on the compiled path.
    """

    def __init__(self, compiled: Callable[..., Any], eager: Callable[..., Any]) -> None:
        self.compiled = compiled
        self.eager = eager
        self.failed = False
        self.note: str | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as exc:
            result = self.eager(*args, **kwargs)
            self.failed = True
            self.note = _compile_note(exc)
            return result


def _cpu_count() -> int:
    counter = getattr(os, "process_cpu_count", None) or os.cpu_count
    return counter() or 1


def configure_threads(requested: int) -> int:
    """Set torch's intra-op threads for the learner's update and return how many.

    ``requested > 0`` is used as is; 0 gives one per core. Collection waits on the
    env workers, which use every core, so the trainer drops to one thread there.
    """
    threads = requested if requested > 0 else _cpu_count()
    torch.set_num_threads(threads)
    return threads


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def keep_freed_memory() -> bool:
    """Keep freed memory in this process for reuse instead of returning it to the OS.

    glibc serves large blocks with mmap and unmaps them when freed, so every minibatch's
    tensors (the observations as floats, activations, gradients) land on fresh pages:
    ~4,000 page faults and ~12 ms of kernel time per PPO minibatch of 64 on the 2-core
    host. Kept in the heap, the same pages serve the next minibatch. The process keeps
    its peak memory instead of shrinking between updates. True where it took (glibc).
    """
    libc_version = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
    if not libc_version or not libc_version.startswith("glibc"):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def seed_everything(seed: int) -> None:
    """Seed python's random, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # numpy only takes 0 .. 2**32 - 1
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)

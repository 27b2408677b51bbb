"""Checkpoints as plain data: atomic writes, weights-only loads, rotation and RNG state.

A checkpoint is a dict of tensors and plain Python values written with ``torch.save``
and read back with ``weights_only=True``, so loading one never runs code.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import secrets
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mario_cli.errors import CheckpointError, first_line
from mario_cli.runs import RunPaths

FORMAT = "mario-checkpoint"
FORMAT_VERSION = 1

ROTATING_PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")
BEST_NAME = "best.pt"
FINAL_NAME = "final.pt"
ROLLOUT_BEST = "rollout"  # best.pt chosen by the stage-start training episodes
GREEDY_BEST = "greedy"  # best.pt chosen by greedy play from every eval start
COMPILE_PREFIX = "_orig_mod"

_PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_PLAIN_TORCH = (torch.Tensor, torch.dtype, torch.device, torch.Size)
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"


def _find_unsafe(value: Any, where: str) -> str | None:
    """The key path of the first value a weights-only load would refuse, or None."""
    # Exact types: subclasses (numpy scalars, enums) pickle as their own class.
    if type(value) in _PLAIN_SCALARS:
        return None
    if isinstance(value, _PLAIN_TORCH):
        return None
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            bad = _find_unsafe(key, f"{where}[{key!r}] (key)")
            bad = bad or _find_unsafe(item, f"{where}[{key!r}]")
            if bad:
                return bad
        return None
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            bad = _find_unsafe(item, f"{where}[{index}]")
            if bad:
                return bad
        return None
    return f"{where} is a {type(value).__module__}.{type(value).__qualname__}"


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, so best effort.
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` plus the format marker to ``path`` atomically; return ``path``.

    The data goes to a temporary file in the same directory, is fsynced, then renamed
    over ``path``, so a crash leaves either the old file or the new one, never half.
    """
    path = Path(path)
    data = {**payload, "format": FORMAT, "format_version": FORMAT_VERSION}
    bad = _find_unsafe(data, "payload")
    if bad:
        raise TypeError(
            f"cannot checkpoint {bad}; store only tensors and plain Python data "
            "(convert numpy values with .tolist() / float() or torch.as_tensor)"
        )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open with 0o666 (not mkstemp's 0o600) so the final file honours the umask.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(data, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except (OSError, RuntimeError) as exc:
        raise _write_error(path, exc) from None
    _fsync_dir(path.parent)
    return path


def _write_error(path: Path, exc: OSError | RuntimeError) -> CheckpointError:
    """A failed save as one line; the files already in the folder are untouched."""
    # torch.save reports a failed write (disk full, file too large) as a RuntimeError
    # raised while handling the OSError.
    cause = exc if isinstance(exc, OSError) else exc.__context__
    if isinstance(cause, OSError) and cause.strerror:
        reason = cause.strerror
    else:
        reason = first_line(exc, 120, sentence=True)
    return CheckpointError(
        f"cannot write checkpoint {path} ({reason}); free disk space or make "
        f"{path.parent} writable, then resume: the checkpoints already saved are intact"
    )


def _read_error(path: Path, exc: Exception) -> CheckpointError:
    """Turn whatever torch.load raised into one actionable line."""
    detail = first_line(exc, 120, sentence=True)
    if isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in str(exc).lower():
        if "Unsupported operand" in str(exc):
            return CheckpointError(
                f"refusing to load {path}: it is a plain pickle, not a torch checkpoint, and "
                "reading it needs unsafe unpickling, which can run code objects; "
                "use a checkpoint written by mario"
            )
        found = re.search(r"Unsupported global: GLOBAL [\w.]+", str(exc))
        reason = f" ({found.group(0)})" if found else ""
        return CheckpointError(
            f"refusing to load {path}: it contains pickled Python objects (code objects) "
            f"that only an unsafe load could rebuild{reason}; a mario checkpoint is plain "
            "data, so use one written by mario"
        )
    if isinstance(exc, PermissionError):
        return CheckpointError(
            f"cannot read checkpoint {path} (permission denied); fix its permissions"
        )
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError:
        head = b""
    if head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTO):
        return CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({detail}); it was probably cut off "
            "by an interrupted write or copy: delete it and use another checkpoint "
            "(`mario runs` lists them)"
        )
    return CheckpointError(
        f"{path} is not a mario checkpoint (not a readable torch file: {detail}); "
        "pass a checkpoint written by mario (`mario runs` lists them)"
    )


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, or raise CheckpointError."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint path {path} is a directory; pass a .pt file inside it, "
            "e.g. checkpoints/best.pt (`mario runs` lists them)"
        )
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist; run `mario runs` to list runs and checkpoints"
        )
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes), probably from an interrupted save; "
            "delete it and use another checkpoint (`mario runs` lists them)"
        )
    try:
        with warnings.catch_warnings():
            # torch warns about foreign pickle protocols before refusing them anyway.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            data = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {path} does not exist; run `mario runs` to list runs and checkpoints"
        ) from None
    except Exception as exc:
        raise _read_error(path, exc) from None

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        if (
            isinstance(data, dict)
            and data
            and all(isinstance(v, torch.Tensor) for v in data.values())
        ):
            what = f"a bare state_dict of {len(data)} tensor{'s' if len(data) > 1 else ''}"
        elif isinstance(data, dict):
            what = "a dict without the mario format marker"
        else:
            what = f"a {type(data).__name__}, not a checkpoint dict"
        raise CheckpointError(
            f"{path} is not a mario checkpoint (it holds {what}); "
            "pass a checkpoint written by mario (`mario runs` lists them)"
        )
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(
            f"checkpoint {path} has an invalid format_version {version!r}; it is damaged: "
            "use another checkpoint (`mario runs` lists them)"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} uses format version {version} but this mario reads up to "
            f"{FORMAT_VERSION}; upgrade mario to load it"
        )
    return data


class CheckpointManager:
    """Rotating ``ckpt_<step>.pt`` files plus ``best.pt`` and ``final.pt`` in a run."""

    def __init__(self, run_dir: Path, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = RunPaths(Path(run_dir)).checkpoints
        self.keep = keep
        self._best_score: float | None = None
        self._best_by = ROLLOUT_BEST
        self._best_read = False  # best.pt is read only when a score is needed

    @property
    def best_score(self) -> float | None:
        """The score saved in ``best.pt``; None if there is none or it is unreadable."""
        if not self._best_read:
            self._best_read = True
            if self.best_path.is_file():
                try:
                    saved = load_checkpoint(self.best_path)
                except CheckpointError:
                    saved = {}  # a damaged best.pt is simply replaced by the next best
                score = saved.get("best_score")
                if isinstance(score, int | float) and not isinstance(score, bool):
                    self._best_score = float(score)
                    self._best_by = str(saved.get("best_by", ROLLOUT_BEST))
        return self._best_score

    @property
    def best_by(self) -> str:
        """How the saved ``best.pt`` was scored: ``"rollout"`` or ``"greedy"``."""
        _ = self.best_score
        return self._best_by

    def best_score_by(self, kind: str) -> float | None:
        """The saved best score if it was scored the way ``kind`` scores, else None."""
        score = self.best_score
        return score if self._best_by == kind else None

    @property
    def best_path(self) -> Path:
        return self.directory / BEST_NAME

    @property
    def final_path(self) -> Path:
        return self.directory / FINAL_NAME

    def save(self, payload: dict[str, Any], step: int) -> Path:
        """Write ``ckpt_<step>.pt`` and delete rotating checkpoints beyond the newest ``keep``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        path = save_checkpoint(self.directory / f"ckpt_{step:012d}.pt", payload)
        for _, old in self.list()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def save_best(self, payload: dict[str, Any], score: float, by: str = ROLLOUT_BEST) -> bool:
        """Write ``best.pt`` if ``score`` beats the best so far; return whether it did.

        Scores of another kind (``by``) do not compare: the first of a new kind replaces
        them (a run resumed after its ``best_by`` changed).
        """
        score = float(score)
        if score != score:  # NaN never counts as an improvement
            return False
        best = self.best_score_by(by)
        if best is not None and score <= best:
            return False
        save_checkpoint(self.best_path, {**payload, "best_score": score, "best_by": by})
        self._best_score, self._best_by, self._best_read = score, by, True
        return True

    def save_final(self, payload: dict[str, Any]) -> Path:
        """Write ``final.pt``."""
        return save_checkpoint(self.final_path, payload)

    def latest(self) -> Path | None:
        """The checkpoint with the highest step: the newest rotating one or ``final.pt``."""
        rotating = self.list()
        if not self.final_path.is_file():
            return rotating[-1][1] if rotating else None
        if not rotating:
            return self.final_path
        final_step = load_checkpoint(self.final_path).get("global_step", -1)
        newest_step, newest = rotating[-1]
        return self.final_path if int(final_step) >= newest_step else newest

    def list(self) -> list[tuple[int, Path]]:
        """Rotating checkpoints as ``(step, path)``, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = ROTATING_PATTERN.match(entry.name)
            if match and entry.is_file():
                found.append((int(match.group(1)), entry))
        return sorted(found)


def _normalise_name(name: str) -> str:
    """Drop torch.compile's ``_orig_mod`` segments so compiled and eager names match."""
    return ".".join(part for part in name.split(".") if part != COMPILE_PREFIX)


def _shape(value: Any) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else None


def load_weights(
    model: nn.Module,
    state_dict: dict[str, Any],
    allow_partial: bool,
    *,
    source: str | Path = "checkpoint",
) -> list[str]:
    """Load ``state_dict`` into ``model``; return the sorted names that were skipped.

    An exact fit loads strictly and returns []. Otherwise, with ``allow_partial`` only
    the tensors whose name and shape match are loaded; without it, CheckpointError.
    """
    model_names = {_normalise_name(name): name for name in model.state_dict()}
    model_shapes = {
        _normalise_name(name): _shape(value) for name, value in model.state_dict().items()
    }
    incoming = {_normalise_name(name): value for name, value in state_dict.items()}

    matched: dict[str, Any] = {}
    wrong_shape: list[str] = []
    unmatched: list[str] = []
    skipped: list[str] = []
    for name, value in incoming.items():
        if name not in model_names:
            skipped.append(name)
            unmatched.append(f"checkpoint tensor {name!r} is not in the model")
        elif _shape(value) != model_shapes[name]:
            skipped.append(name)
            wrong_shape.append(
                f"checkpoint tensor {name!r} has shape {_shape(value)} "
                f"but the model has {model_shapes[name]}"
            )
        else:
            matched[model_names[name]] = value
    for name in model_names:
        if name not in incoming:
            skipped.append(name)
            unmatched.append(f"the model's {name!r} is not in the checkpoint")
    problems = wrong_shape + unmatched

    if not problems:
        model.load_state_dict(matched, strict=True)
        return []
    if not allow_partial:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(
            f"{source} does not fit the model: {'; '.join(problems[:3])}{more}; "
            "use the model settings it was trained with, or pass --allow-partial-init "
            "to load only the tensors that match"
        )
    if not matched and incoming and model_names:
        raise CheckpointError(
            f"{source} shares no tensor with the model (no name and shape match); "
            "it was trained for a different model: check --init-model-path"
        )
    model.load_state_dict(matched, strict=False)
    return sorted(set(skipped))


def capture_rng_state() -> dict[str, Any]:
    """The python, numpy, torch and CUDA RNG states as plain, weights-only-safe data."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {
            "name": str(name),
            # uint32 keys fit in int64 without loss; numpy arrays would need unpickling.
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA only where CUDA is present)."""
    try:
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
        npst = state["numpy"]
        keys = torch.as_tensor(npst["keys"]).cpu().numpy().astype(np.uint32)
        np.random.set_state(
            (npst["name"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
        )
        torch.set_rng_state(torch.as_tensor(state["torch"]).cpu().to(torch.uint8))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"the checkpoint's RNG state is malformed ({first_line(exc, 120, sentence=True)}); "
            "resume from another checkpoint or start a new run"
        ) from None
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.as_tensor(s).cpu() for s in cuda])

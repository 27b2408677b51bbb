"""Checkpoint files: atomic writes, clear load errors, rotation, partial loads, RNG state."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mario_cli.errors import CheckpointError
from mario_cli.training import checkpoint as ckpt
from mario_cli.training.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    load_weights,
    restore_rng_state,
    save_checkpoint,
)


class Policy(nn.Module):
    def __init__(self, n_actions: int = 7) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 16))
        self.norm = nn.LayerNorm(16)
        self.actor = nn.Linear(16, n_actions)
        self.critic = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(self.body(x))
        return self.actor(h), self.critic(h)


class NotData:
    """Anything weights_only must refuse to rebuild."""


def _trained(seed: int = 0, n_actions: int = 7) -> tuple[Policy, torch.optim.AdamW]:
    torch.manual_seed(seed)
    model = Policy(n_actions)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(2):
        logits, value = model(torch.randn(3, 2, 6, 6))
        loss = logits.logsumexp(-1).mean() + value.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def _assert_same(a, b) -> None:
    """Recursive equality with torch.equal (bit-exact) on every tensor."""
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    model, opt = _trained()
    payload = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 2, "x": 1.5}
    path = save_checkpoint(tmp_path / "sub" / "a.pt", payload)
    assert path == tmp_path / "sub" / "a.pt"
    loaded = load_checkpoint(path)
    assert loaded["format"] == FORMAT and loaded["format_version"] == FORMAT_VERSION
    assert loaded["step"] == 2 and loaded["x"] == 1.5
    _assert_same(payload["model"], loaded["model"])
    _assert_same(payload["optimizer"], loaded["optimizer"])
    assert loaded["optimizer"]["state"][0]["step"] == torch.tensor(2.0)

    # The restored optimizer continues exactly like the original.
    model2, _ = _trained(seed=5)
    model2.load_state_dict(loaded["model"])
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3, weight_decay=0.01)
    opt2.load_state_dict(loaded["optimizer"])
    x = torch.randn(3, 2, 6, 6)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x)[0].sum().backward()
        o.step()
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
    assert os.listdir(tmp_path / "sub") == ["a.pt"]  # no temp file left behind


def test_save_refuses_non_plain_data(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"payload\['cfg'\]\['lr'\] is a numpy.float64"):
        save_checkpoint(tmp_path / "a.pt", {"cfg": {"lr": np.float64(0.1)}})
    with pytest.raises(TypeError, match="NotData"):
        save_checkpoint(tmp_path / "a.pt", {"obj": [NotData()]})
    assert not list(tmp_path.iterdir())


def test_crash_mid_write_keeps_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "ckpt.pt", {"w": torch.arange(4)})
    before = path.read_bytes()

    def dying_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    # One line naming the file and the cause, never a bare OSError's traceback.
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*ckpt\.pt \(disk full\)"):
        save_checkpoint(path, {"w": torch.arange(8)})
    with pytest.raises(CheckpointError, match="disk full"):
        save_checkpoint(tmp_path / "new.pt", {"w": torch.arange(8)})
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]
    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(4))


@pytest.fixture
def real_bytes(tmp_path: Path) -> bytes:
    model, opt = _trained()
    path = save_checkpoint(tmp_path / "real.pt", {"model": model.state_dict()})
    return path.read_bytes()


def _load_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    message = _load_error(tmp_path / "nope.pt")
    assert "does not exist" in message and "mario runs" in message


def test_directory(tmp_path: Path) -> None:
    assert "is a directory" in _load_error(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    assert "is empty" in _load_error(path)


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.95])
def test_truncated_file(tmp_path: Path, real_bytes: bytes, keep: float) -> None:
    path = tmp_path / "cut.pt"
    path.write_bytes(real_bytes[: int(len(real_bytes) * keep)])
    message = _load_error(path)
    assert "truncated or corrupt" in message and "another checkpoint" in message


def test_foreign_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(Policy().state_dict(), path)
    message = _load_error(path)
    assert "not a mario checkpoint" in message and "bare state_dict of 10 tensors" in message


@pytest.mark.parametrize("obj", [{"format": "other"}, torch.zeros(3), [1, 2]])
def test_foreign_torch_files(tmp_path: Path, obj) -> None:
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    assert "not a mario checkpoint" in _load_error(path)


def test_text_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("hello, this is not a checkpoint\n")
    assert "not a mario checkpoint" in _load_error(path)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "format_version": 1, "obj": NotData()}, path)
    message = _load_error(path)
    assert "refusing" in message and "code objects" in message and "NotData" in message

    plain = tmp_path / "evil.pkl"
    with plain.open("wb") as handle:
        pickle.dump({"obj": NotData()}, handle, protocol=2)
    message = _load_error(plain)
    assert "refusing" in message and "code objects" in message

    with plain.open("wb") as handle:
        pickle.dump({"obj": NotData()}, handle)  # protocol 5 framing: not a torch file at all
    message = _load_error(plain)
    assert "refusing" in message and "plain pickle" in message and "code objects" in message


def test_newer_format_version(tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION + 1}, path)
    message = _load_error(path)
    assert f"format version {FORMAT_VERSION + 1}" in message and "upgrade mario" in message


def test_rotation_keeps_newest(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=2)
    assert manager.latest() is None and manager.list() == []
    for step in (100, 200, 300, 400):
        path = manager.save({"global_step": step}, step=step)
        assert path.name == f"ckpt_{step:012d}.pt"
    assert manager.save_best({"global_step": 400}, score=1.0)
    assert manager.latest() == manager.list()[-1][1]
    manager.save_final({"global_step": 450})
    assert [step for step, _ in manager.list()] == [300, 400]
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names == ["best.pt", "ckpt_000000000300.pt", "ckpt_000000000400.pt", "final.pt"]
    # final.pt is newer than every rotating checkpoint: resume continues from it.
    assert manager.latest() == manager.final_path
    # Steps compare as numbers, not text; a run resumed past final.pt saves newer ones.
    manager.save({"global_step": 1000}, step=1000)
    assert [step for step, _ in manager.list()] == [400, 1000]
    latest = manager.latest()
    assert latest is not None and load_checkpoint(latest)["global_step"] == 1000


def test_latest_falls_back_to_final(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=1)
    manager.save_final({"step": 7})
    assert manager.latest() == tmp_path / "checkpoints" / "final.pt"


def test_best_only_on_improvement_and_recovered(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=1)
    assert manager.save_best({"tag": "a"}, 10.0)
    assert not manager.save_best({"tag": "b"}, 5.0)
    assert not manager.save_best({"tag": "c"}, 10.0)
    assert not manager.save_best({"tag": "nan"}, float("nan"))
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["tag"] == "a" and best["best_score"] == 10.0

    again = CheckpointManager(tmp_path, keep=1)
    assert again.best_score == 10.0
    assert not again.save_best({"tag": "d"}, 9.5)
    assert again.save_best({"tag": "e"}, 12.5)
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["tag"] == "e" and best["best_score"] == 12.5


def test_damaged_best_is_replaced_by_the_next_best(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    manager = CheckpointManager(tmp_path, keep=1)  # listing a run must not fail on it
    assert manager.best_score is None
    assert manager.save_best({"tag": "new"}, 3.0)
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["best_score"] == 3.0


def test_load_weights_exact(tmp_path: Path) -> None:
    source, _ = _trained(seed=1)
    target = Policy()
    assert load_weights(target, source.state_dict(), allow_partial=False) == []
    _assert_same(source.state_dict(), target.state_dict())


def test_load_weights_partial_head(tmp_path: Path) -> None:
    source, _ = _trained(seed=1, n_actions=7)
    path = save_checkpoint(tmp_path / "seven.pt", {"model": source.state_dict()})
    state = load_checkpoint(path)["model"]

    torch.manual_seed(9)
    target = Policy(n_actions=5)
    head_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("actor")}
    with pytest.raises(CheckpointError) as info:
        load_weights(target, state, allow_partial=False, source=path)
    message = str(info.value)
    assert "checkpoint tensor 'actor.weight' has shape (7, 16) but the model has (5, 16)" in message
    assert "--allow-partial-init" in message and str(path) in message
    assert torch.equal(target.state_dict()["actor.weight"], head_before["actor.weight"])

    skipped = load_weights(target, state, allow_partial=True)
    assert skipped == ["actor.bias", "actor.weight"]
    for name, value in target.state_dict().items():
        if name.startswith("actor."):
            assert torch.equal(value, head_before[name])
        else:
            assert torch.equal(value, state[name]), name


def test_load_weights_missing_and_extra_names() -> None:
    source, _ = _trained(seed=2)
    state = dict(source.state_dict())
    del state["critic.bias"]
    state["extra.weight"] = torch.zeros(2)
    target = Policy()
    with pytest.raises(CheckpointError, match="'extra.weight' is not in the model"):
        load_weights(target, state, allow_partial=False)
    assert load_weights(target, state, allow_partial=True) == ["critic.bias", "extra.weight"]
    assert torch.equal(target.critic.weight, source.critic.weight)


def test_load_weights_unrelated_is_an_error() -> None:
    with pytest.raises(CheckpointError, match="shares no tensor"):
        load_weights(Policy(), {"other.weight": torch.zeros(3)}, allow_partial=True)


def test_load_weights_compile_prefix() -> None:
    source, _ = _trained(seed=3)
    prefixed = {f"_orig_mod.{k}": v for k, v in source.state_dict().items()}
    plain = Policy()
    assert load_weights(plain, prefixed, allow_partial=False) == []
    _assert_same(source.state_dict(), plain.state_dict())

    class Wrapper(nn.Module):  # stands in for torch.compile's OptimizedModule
        def __init__(self) -> None:
            super().__init__()
            self._orig_mod = Policy()

    wrapped = Wrapper()
    assert load_weights(wrapped, source.state_dict(), allow_partial=False) == []
    _assert_same(source.state_dict(), wrapped._orig_mod.state_dict())


def _draws() -> tuple[list[float], list[float], torch.Tensor]:
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.standard_normal(5).tolist(),
        torch.randn(5),
    )


def test_rng_round_trip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    random.gauss(0, 1)  # leaves a cached gaussian in both generators
    np.random.standard_normal()
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    first = _draws()

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(load_checkpoint(path)["rng"])
    second = _draws()
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2])


def test_rng_malformed_state() -> None:
    with pytest.raises(CheckpointError, match="RNG state is malformed"):
        restore_rng_state({"python": {}})

"""The training TUI and ``mario monitor``, driven with Pilot and synthetic events.

No torch and no emulator: a scripted trainer emits events the way the real one
does (hints from a HintEngine), then waits until it is told to stop.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from mario_cli.config import HintsConfig, MarioConfig
from mario_cli.diagnostics import HintEngine
from mario_cli.events import (
    CheckpointSaved,
    EpisodeEnd,
    Event,
    IterationStats,
    Notice,
    RunFinished,
    RunStarted,
)
from mario_cli.sinks.console import format_value
from mario_cli.tui.app import MarioApp, RunUpdated, SourceDone, monitor_app, training_app
from mario_cli.tui.screens import ConfirmQuit, HelpScreen
from mario_cli.tui.widgets import (
    DiagnosticsTable,
    EpisodesTable,
    HintsPanel,
    MetricPlot,
    MetricsTable,
    RunHeader,
)
from tests.conftest import run_mario

SIZE = (140, 44)
RUN = "ppo-1-1-demo"
CKPT = f"artifacts/runs/{RUN}/checkpoints/step_000010240.pt"


class Control:
    """Stands in for TrainingControl and records what the keys asked for."""

    def __init__(self) -> None:
        self.stop_reason = ""
        self.saves = 0
        self._stop = threading.Event()
        self._save = threading.Event()
        self._paused = False

    def request_stop(self, reason: str = "stopped by request") -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_save(self) -> None:
        self.saves += 1
        self._save.set()

    def take_save_request(self) -> bool:
        requested = self._save.is_set()
        self._save.clear()
        return requested

    def toggle_pause(self) -> bool:
        self._paused = not self._paused
        return self._paused

    @property
    def paused(self) -> bool:
        return self._paused


def started(total: int = 100_000) -> RunStarted:
    return RunStarted(
        run_name=RUN,
        run_dir=f"artifacts/runs/{RUN}",
        algo="ppo",
        backbone="nature",
        device="cpu (2 threads)",
        env_id="SuperMarioBros-1-1-v0",
        n_envs=8,
        total_timesteps=total,
        start_step=0,
        n_parameters=1_686_023,
    )


def iteration(i: int, **overrides: float) -> IterationStats:
    metrics = {
        "rollout/ep_rew_mean": 10.0 + 2.5 * i,
        "rollout/ep_len_mean": 300.0 + i,
        "rollout/avg_max_x_pos": 300.0 + 10 * i,
        "rollout/clear_rate": 0.0,
        "time/fps": 512.0,
        "time/iterations": float(i),
        "time/total_timesteps": float(i * 2048),
        "time/time_elapsed": 4.0 * i,
        "train/approx_kl": 0.01 + 0.001 * i,
        "train/clip_fraction": 0.1,
        "train/entropy_loss": -1.6 + 0.05 * i,
        "train/explained_variance": 0.3,
        "train/policy_gradient_loss": -0.012,
        "train/value_loss": 0.42,
        "train/learning_rate": 2.5e-4,
    }
    metrics.update(overrides)
    return IterationStats(i * 2048, i, 100_000, metrics)


def episode(i: int, x: int = 594) -> EpisodeEnd:
    return EpisodeEnd(i * 2048 - 200, i % 8, 30.0 + i, 400 + i, x, False, "1-1")


STALLED = {"train/approx_kl": 0.0, "train/clip_fraction": 0.0, "train/policy_gradient_loss": 0.0}


def healthy_script(n: int = 3) -> list[Event]:
    events: list[Event] = [started()]
    for i in range(1, n + 1):
        events += [episode(i, 300 + 40 * i), iteration(i)]
    return events


def stalled_script() -> list[Event]:
    """Healthy, then updates that stop changing the policy for stall_iterations."""
    events: list[Event] = [started(), Notice("AMP needs CUDA; training in float32 on cpu")]
    for i in range(1, 3):
        events += [episode(i, 314), iteration(i)]
    events.append(CheckpointSaved(4096, CKPT, "periodic"))
    for i in range(3, 3 + MarioConfig().hints.updates_stalled.iterations):
        events += [episode(i, 594), iteration(i, **STALLED)]
    return events


class ScriptedTrainer:
    """Emits phases of events, feeding a HintEngine as the trainer does, then waits for a stop."""

    def __init__(
        self,
        sink: Callable[[Event], None],
        control: Control,
        cfg: MarioConfig,
        phases: list[list[Event]],
        finish: bool = False,
        fail: BaseException | None = None,
    ) -> None:
        self.sink = sink
        self.control = control
        self.engine = HintEngine(cfg)
        self.phases = phases
        self.finish = finish
        self.fail = fail
        self.gates = [threading.Event() for _ in phases]
        self.gates[0].set()
        self.emitted = [threading.Event() for _ in phases]
        self.saving = threading.Event()
        self.saving.set()
        self.step = 0

    def emit(self, event: Event) -> None:
        self.sink(event)
        for hint in self.engine.observe(event):
            self.sink(hint)

    def train(self) -> RunFinished:
        for gate, done, phase in zip(self.gates, self.emitted, self.phases, strict=True):
            gate.wait(10)
            for event in phase:
                self.step = getattr(event, "step", self.step)
                self.emit(event)
            done.set()
        if self.fail is not None:
            raise self.fail
        if self.finish:
            finished = RunFinished(self.step, "finished", "reached total_timesteps", CKPT, None)
            self.emit(finished)
            return finished
        while not self.control.stop_requested:
            if self.control.take_save_request():
                self.emit(CheckpointSaved(self.step, CKPT, "manual"))
            time.sleep(0.01)
        self.saving.wait(10)
        self.emit(CheckpointSaved(self.step, CKPT, "interrupt"))
        finished = RunFinished(
            self.step, "interrupted", self.control.stop_reason, CKPT, f"mario resume {RUN}"
        )
        self.emit(finished)
        return finished


class Harness:
    """Builds the app through the CLI's factory; keeps the trainer it creates."""

    def __init__(self, *phases: list[Event], **trainer_kwargs: Any) -> None:
        self.cfg = MarioConfig()
        self.control = Control()
        self.trainer: ScriptedTrainer | None = None

        def make_trainer(sink: Callable[[Event], None]) -> ScriptedTrainer:
            self.trainer = ScriptedTrainer(
                sink, self.control, self.cfg, list(phases), **trainer_kwargs
            )
            return self.trainer

        self.app = training_app(self.cfg, self.control, make_trainer)

    async def phase_shown(self, pilot: Any, index: int = 0) -> None:
        await until(
            pilot, lambda: self.trainer is not None and self.trainer.emitted[index].is_set()
        )
        await settle(pilot)

    def release(self, index: int) -> None:
        assert self.trainer is not None
        self.trainer.gates[index].set()


async def until(pilot: Any, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the app"
        await pilot.pause(0.02)


async def settle(pilot: Any) -> None:
    """Let the queued RunUpdated messages be drawn."""
    for _ in range(3):
        await pilot.pause()


def run(scenario: Callable[[], Any]) -> None:
    asyncio.run(scenario())


def header_text(app: MarioApp) -> str:
    return str(app.query_one(RunHeader).content)


# ------------------------------------------------------------------- tables
def test_metrics_table_and_panels_follow_each_iteration() -> None:
    first = healthy_script(2)
    second = [episode(3, 777), iteration(3, **{"train/approx_kl": 0.09})]
    harness = Harness(first, second)
    app = harness.app

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await harness.phase_shown(pilot, 0)
            table = app.query_one(MetricsTable)
            assert table.value_of("rollout/ep_rew_mean") == format_value(15.0)
            assert table.value_of("train/approx_kl") == format_value(0.012)
            assert "steps 4,096 / 100,000" in header_text(app)
            assert f"{RUN}  ppo + nature" in header_text(app)

            harness.release(1)
            await harness.phase_shown(pilot, 1)
            last = second[-1].metrics
            for key in ("rollout/ep_rew_mean", "rollout/avg_max_x_pos", "time/fps"):
                assert table.value_of(key) == format_value(last[key])
            assert table.value_of("train/approx_kl") == "0.09"
            header = header_text(app)
            assert "steps 6,144 / 100,000 (6.1%)" in header
            assert "512 steps/s" in header
            assert "ETA 0:03:03" in header  # (100,000 - 6,144) / 512 s
            assert "stage 1-1" in header
            assert app.query_one(DiagnosticsTable).states["approx_kl"] == "warn"
            assert app.query_one(DiagnosticsTable).states["entropy"] == "ok"
            plots = {plot.metric: plot.points for plot in app.query(MetricPlot)}
            assert plots == {
                "rollout/ep_rew_mean": 3,
                "rollout/avg_max_x_pos": 3,
                "train/approx_kl": 3,
                "entropy": 3,
            }
            assert app.state.snapshot().series["entropy"][1][-1] == pytest.approx(1.45)
            episodes = app.query_one(EpisodesTable)
            assert episodes.row_count == 3
            assert episodes.get_row_at(0)[4] == "777"  # newest first, max x column
            await pilot.press("ctrl+c")
            await until(pilot, lambda: app.outcome.done.is_set())

    run(scenario)


def test_a_burst_of_events_loses_no_point_and_shows_the_last_values() -> None:
    burst = [started()] + [iteration(i) for i in range(1, 301)]
    harness = Harness(burst)
    app = harness.app

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await harness.phase_shown(pilot)
            assert app.query_one(MetricsTable).value_of("time/iterations") == "300"
            assert {plot.points for plot in app.query(MetricPlot)} == {300}
            await pilot.press("ctrl+c")

    run(scenario)


def test_run_updated_messages_coalesce() -> None:
    assert RunUpdated().can_replace(RunUpdated())
    assert not RunUpdated().can_replace(SourceDone())
    assert not SourceDone().can_replace(SourceDone())


# -------------------------------------------------------------------- hints
def test_stalled_updates_raise_the_hint_in_the_hints_panel() -> None:
    harness = Harness(stalled_script())
    app = harness.app

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await harness.phase_shown(pilot)
            panel = app.query_one(HintsPanel)
            rules = [hint.rule for hint in panel.hints]
            assert rules.count("updates-stalled") == 1
            text = panel.text.plain
            assert "updates-stalled" in text
            assert "the policy has stopped changing" in text
            assert f"try: mario resume --init-model-path {CKPT} --learning-rate 0.0005" in text
            diagnostics = app.query_one(DiagnosticsTable).states
            assert diagnostics["approx_kl"] == "ok" and diagnostics["clip_fraction"] == "ok"
            await pilot.press("ctrl+c")

    run(scenario)


# --------------------------------------------------------------------- keys
def test_s_saves_and_q_asks_then_saves_and_quits() -> None:
    harness = Harness(healthy_script())
    app, control = harness.app, harness.control

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await harness.phase_shown(pilot)
            await pilot.press("s")
            assert control.saves == 1
            await until(pilot, lambda: "saved manual checkpoint" in str(_status(app)))

            await pilot.press("p")
            assert control.paused
            assert "paused" in header_text(app)
            await pilot.press("p")
            assert not control.paused

            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)

            await pilot.press("q")
            assert isinstance(app.screen, ConfirmQuit)
            await pilot.press("n")
            assert not isinstance(app.screen, ConfirmQuit)
            assert not control.stop_requested

            await pilot.press("q")
            assert isinstance(app.screen, ConfirmQuit)
            await pilot.press("y")
            assert control.stop_requested
            assert control.stop_reason == "quit from the TUI"
            await until(pilot, lambda: app.outcome.done.is_set())
        assert app.outcome.finished.status == "interrupted"
        assert app.outcome.finished.checkpoint == CKPT

    run(scenario)


def _status(app: MarioApp) -> object:
    return app.query_one("#status").content


def test_ctrl_c_stops_without_asking_and_the_app_exits_when_the_trainer_returns() -> None:
    harness = Harness(healthy_script())
    app, control = harness.app, harness.control

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await harness.phase_shown(pilot)
            await pilot.press("ctrl+c")
            assert control.stop_reason == "Ctrl-C in the TUI"
            await until(pilot, lambda: not app.is_running)
        assert app.outcome.finished.reason == "Ctrl-C in the TUI"

    run(scenario)


def test_a_stop_from_a_signal_shows_on_the_screen() -> None:
    harness = Harness(healthy_script())
    app, control = harness.app, harness.control

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await harness.phase_shown(pilot)
            harness.trainer.saving.clear()  # the trainer takes a while to save
            # SIGTERM's handler (_stop_on_signals) calls request_stop outside the app.
            thread = threading.Thread(target=control.request_stop, args=("SIGTERM received",))
            thread.start()
            await until(pilot, lambda: "stopping: SIGTERM received" in header_text(app))
            harness.trainer.saving.set()
            await until(pilot, lambda: not app.is_running)
        assert app.outcome.finished.reason == "SIGTERM received"

    run(scenario)


# --------------------------------------------------------------- failures
def test_a_ui_exception_stops_the_run_so_it_saves_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = Harness(healthy_script(1), [iteration(2)])
    app, control = harness.app, harness.control

    def broken_show(self: MetricsTable, metrics: dict[str, float]) -> None:
        if metrics.get("time/iterations") == 2:
            raise ValueError("bad cell")

    monkeypatch.setattr(MetricsTable, "show", broken_show)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await harness.phase_shown(pilot)
            harness.release(1)
            await until(pilot, lambda: app.return_code == 1)

    with pytest.raises(ValueError, match="bad cell"):
        run(scenario)
    assert control.stop_reason == "the TUI failed (ValueError: bad cell)"
    assert app.outcome.done.wait(10)
    assert app.outcome.finished.status == "interrupted"


def test_a_trainer_exception_ends_the_app_and_reaches_the_cli() -> None:
    harness = Harness(healthy_script(1), fail=RuntimeError("env worker died"))
    app = harness.app

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: not app.is_running)

    run(scenario)
    assert isinstance(app.outcome.error, RuntimeError)


def test_train_in_tui_prints_the_summary_and_hints_on_the_console() -> None:
    from mario_cli.tui.run import train_in_tui

    cfg, control = MarioConfig(), Control()
    out = io.StringIO()
    console = Console(file=out, width=200)

    def make_trainer(sink: Callable[[Event], None]) -> ScriptedTrainer:
        return ScriptedTrainer(sink, control, cfg, [stalled_script()], finish=True)

    finished = train_in_tui(cfg, control, make_trainer, console, headless=True)
    assert finished.status == "finished"
    text = out.getvalue()
    assert "finished at step 14,336: reached total_timesteps" in text
    assert f"checkpoint: {CKPT}" in text
    assert "hint (updates-stalled)" in text
    assert f"try: mario resume --init-model-path {CKPT}" in text


# ---------------------------------------------------- choosing the display
class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class NamedSink:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def __call__(self, event: Event) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return self.name


def _fake_trainer(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    import mario_cli.training.trainer as trainer_module
    from mario_cli.cli import train as train_module
    from mario_cli.sinks.console import ConsoleSink

    seen: dict[str, Any] = {}

    class FakeTrainer:
        def __init__(self, cfg: MarioConfig, sinks: list[Any], control: Any, **_: Any) -> None:
            seen["sinks"] = sinks

        def train(self) -> RunFinished:
            return RunFinished(0, "finished", "done", None, None)

    monkeypatch.setattr(trainer_module, "Trainer", FakeTrainer)
    console_sink = ConsoleSink(Console(file=io.StringIO()))
    jsonl = NamedSink("jsonl")
    monkeypatch.setattr(train_module, "build_sinks", lambda cfg: [jsonl, console_sink])
    seen.update(console_sink=console_sink, jsonl=jsonl)
    return seen


def test_auto_without_a_terminal_keeps_the_plain_display(monkeypatch: pytest.MonkeyPatch) -> None:
    from mario_cli.cli.train import run_training

    seen = _fake_trainer(monkeypatch)
    run_training(MarioConfig())
    assert seen["sinks"] == [seen["jsonl"], seen["console_sink"]]
    assert seen["jsonl"].closed


def test_tui_without_a_terminal_says_so_and_shows_the_plain_display(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mario_cli.cli.train import run_training

    seen = _fake_trainer(monkeypatch)
    run_training(MarioConfig(ui={"mode": "tui"}))
    assert seen["sinks"] == [seen["jsonl"], seen["console_sink"]]
    assert "--ui tui needs a terminal" in capsys.readouterr().out


def test_auto_on_a_terminal_shows_the_tui(monkeypatch: pytest.MonkeyPatch) -> None:
    import mario_cli.tui.run
    from mario_cli.cli.train import run_training

    seen = _fake_trainer(monkeypatch)
    ui_sink = NamedSink("ui")
    monkeypatch.setattr(sys, "stdin", FakeTTY())
    monkeypatch.setattr(sys, "stdout", FakeTTY())

    def fake_train_in_tui(cfg: MarioConfig, control: Any, make_trainer: Any, console: Any):
        return make_trainer(ui_sink).train()

    monkeypatch.setattr(mario_cli.tui.run, "train_in_tui", fake_train_in_tui)
    run_training(MarioConfig())
    assert seen["sinks"] == [seen["jsonl"], ui_sink]  # the screen replaces the console display
    assert seen["jsonl"].closed


def test_plain_ui_never_imports_textual() -> None:
    code = (
        "import sys\n"
        "import mario_cli.cli\n"
        "from mario_cli.cli.train import build_sinks\n"
        "from mario_cli.config import load_config\n"
        "cfg = load_config(None, {'ui': {'mode': 'plain'}})\n"
        "sinks = build_sinks(cfg)\n"
        "[sink.close() for sink in sinks]\n"
        "bad = [m for m in ('textual', 'textual_plotext', 'mario_cli.tui') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------ monitor
def write_records(path: Path, events: list[Event], newline: bool = True) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for event in events:
            record = event.to_record()
            record.pop("config", None)
            handle.write(json.dumps(record) + ("\n" if newline else ""))


def test_monitor_shows_the_last_iteration_of_metrics_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    events = stalled_script()
    write_records(path, events)
    last = [e for e in events if isinstance(e, IterationStats)][-1]
    running = [True]
    app = monitor_app(path, HintsConfig(), is_running=lambda: running[0], poll_interval=0.02)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.source.waiting)
            await settle(pilot)
            table = app.query_one(MetricsTable)
            for key, value in last.metrics.items():
                assert table.value_of(key) == format_value(value), key
            assert f"steps {last.step:,} / 100,000" in header_text(app)
            assert "following metrics.jsonl" in header_text(app)
            assert "updates-stalled" not in app.query_one(HintsPanel).text.plain  # none logged

            # A line still being written waits for its newline.
            nxt = iteration(last.iteration + 1, **{"rollout/ep_rew_mean": 99.5})
            write_records(path, [nxt], newline=False)
            await pilot.pause(0.1)
            await settle(pilot)
            assert table.value_of("rollout/ep_rew_mean") == format_value(
                last.metrics["rollout/ep_rew_mean"]
            )
            with path.open("a") as handle:
                handle.write("\n")
            await until(pilot, lambda: table.value_of("rollout/ep_rew_mean") == "99.5")

            # Read only: p and s do nothing; a finished run stays on screen.
            await pilot.press("s", "p")
            done = RunFinished(nxt.step, "finished", "reached total_timesteps", CKPT, None)
            write_records(path, [done])
            running[0] = False
            await until(pilot, lambda: app.outcome.done.is_set())
            await settle(pilot)
            assert app.is_running
            assert "finished (reached total_timesteps)" in header_text(app)
            await pilot.press("q")
            await until(pilot, lambda: not app.is_running)
        assert app.outcome.finished == done

    run(scenario)


def test_monitor_replays_a_rewritten_file_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_records(path, healthy_script(5))
    app = monitor_app(path, HintsConfig(), is_running=lambda: True, poll_interval=0.02)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.state.snapshot().iterations == 5)
            # A resume truncates the file back to its checkpoint and appends again.
            path.write_text("")
            write_records(path, healthy_script(2))
            await until(pilot, lambda: app.state.snapshot().iterations == 2)
            await settle(pilot)
            assert app.query_one(MetricsTable).value_of("time/iterations") == "2"
            await pilot.press("q")

    run(scenario)


def test_monitor_command_needs_a_terminal() -> None:
    Path("artifacts/runs/demo/checkpoints").mkdir(parents=True)
    result = run_mario("monitor", "demo", timeout=120)
    assert result.returncode == 1
    assert "mario monitor needs a terminal" in result.stderr
    assert "mario plot demo" in result.stderr


# ---------------------------------------------------------------- snapshots
def _wait_for(harness: Harness) -> Callable[[Any], Any]:
    async def run_before(pilot: Any) -> None:
        await harness.phase_shown(pilot)

    return run_before


def test_snapshot_training_screen_with_a_stall_hint(snap_compare: Any) -> None:
    harness = Harness(stalled_script())
    assert snap_compare(harness.app, terminal_size=SIZE, run_before=_wait_for(harness))


def test_snapshot_quit_confirmation(snap_compare: Any) -> None:
    harness = Harness(healthy_script())
    assert snap_compare(harness.app, press=["q"], terminal_size=SIZE, run_before=_wait_for(harness))


def test_snapshot_monitor_of_a_finished_run(snap_compare: Any, tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    done = RunFinished(14336, "finished", "reached total_timesteps", CKPT, None)
    write_records(path, [*stalled_script(), done])
    app = monitor_app(path, HintsConfig(), poll_interval=0.02)

    async def run_before(pilot: Any) -> None:
        await until(pilot, lambda: app.outcome.done.is_set())
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)

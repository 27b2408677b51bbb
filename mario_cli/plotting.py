"""PNG plots of runs' metrics, overlaid for comparison (used by ``mario plot``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mario_cli.errors import MarioError
from mario_cli.metrics import iteration_series, read_records
from mario_cli.runs import RunPaths


def smooth(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, debiased at the start like TensorBoard's."""
    out, running = [], 0.0
    for i, value in enumerate(values, start=1):
        running = weight * running + (1 - weight) * value
        out.append(running / (1 - weight**i) if weight < 1 else value)
    return out


def plot_runs(
    runs: list[RunPaths],
    metrics: list[str],
    x_axis: str,
    output: Path,
    smoothing: float = 0.6,
) -> Path:
    """One panel per metric, one line per run; writes ``output`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(metrics), 1, figsize=(9, 3.6 * len(metrics)), squeeze=False)
    plotted = 0
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        for run in runs:
            if not run.metrics.is_file():
                raise MarioError(f"run {run.name} has no metrics.jsonl; was it started?")
            steps, times, values = iteration_series(read_records(run.metrics), metric)
            if not values:
                continue
            xs = steps if x_axis == "steps" else [t / 60 for t in times]
            ax.plot(xs, smooth(values, smoothing), label=run.name, linewidth=1.8)
            plotted += 1
        ax.set_title(metric)
        ax.set_xlabel("agent steps" if x_axis == "steps" else "wall-clock minutes")
        ax.set_ylabel(metric.split("/")[-1])
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if plotted == 0:
        plt.close(fig)
        names = ", ".join(metrics)
        raise MarioError(f"none of the runs has logged {names} yet; train a few iterations first")
    return save_figure(fig, output, dpi=110)


def save_figure(fig: Any, output: Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG (temp file + rename) and close it; an OSError is one line."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(output.name + ".tmp.png")
        fig.savefig(tmp, dpi=dpi)
        tmp.replace(output)
    except OSError as exc:
        raise MarioError(f"cannot write {output}: {exc.strerror}") from None
    finally:
        plt.close(fig)
    return output

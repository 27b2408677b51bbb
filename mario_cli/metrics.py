"""Reading a run's metrics.jsonl back (plot, runs, monitor)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mario_cli import metric_names as names


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every JSON object line of a metrics file; a line cut short by a kill or otherwise
    damaged is skipped, so one bad line never hides a run."""
    records = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def iteration_series(
    records: list[dict[str, Any]], metric: str
) -> tuple[list[float], list[float], list[float]]:
    """(steps, elapsed seconds, values) of ``metric`` over the IterationStats records.

    Elapsed time accumulates over resumed sessions, so a resumed run's time axis
    does not restart at zero.
    """
    steps, times, values = [], [], []
    offset, last_elapsed = 0.0, 0.0
    for record in records:
        if record.get("type") == "RunStarted":
            offset += last_elapsed
            last_elapsed = 0.0
        if record.get("type") != "IterationStats":
            continue
        metrics = record["metrics"]
        last_elapsed = float(metrics.get(names.TIME_TIME_ELAPSED, last_elapsed))
        if metric in metrics:
            steps.append(float(record["step"]))
            times.append(offset + last_elapsed)
            values.append(float(metrics[metric]))
    return steps, times, values

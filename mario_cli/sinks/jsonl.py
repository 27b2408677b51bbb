"""metrics.jsonl: every event as one JSON line (what `mario monitor` and `plot` read)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mario_cli.events import Event, RunStarted
from mario_cli.runs import RunPaths


class JsonlSink:
    """Appends events to a run's metrics.jsonl, flushed per line so a kill loses nothing."""

    def __init__(self) -> None:
        self._file: Any = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.close()
            path = RunPaths(Path(event.run_dir)).metrics
            self._file = path.open("a", encoding="utf-8")
        if self._file is None:
            return
        record = event.to_record()
        record.pop("config", None)  # config.toml holds it
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

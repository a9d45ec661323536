"""Progress as plain lines, for consoles that are not terminals (nohup, Slurm, CI logs, pipes).

rich's live bar draws nothing there until the end; this stands in for it with the same calls the local
executor makes: a line per finished run with the grid's count, and a step line per run at most every
`interval` seconds ($ZOBENCH_PROGRESS_SECONDS, default 30).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

DEFAULT_INTERVAL_S = 30.0


def progress_interval() -> float:
    """Seconds between step lines of one run: $ZOBENCH_PROGRESS_SECONDS, else 30."""
    try:
        return max(0.0, float(os.environ.get("ZOBENCH_PROGRESS_SECONDS", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def wants_lines(console: Console) -> bool:
    """True where a live bar would show nothing until the end: not a terminal, not a notebook."""
    return not (console.is_terminal or console.is_jupyter)


@dataclass
class _Task:
    name: str
    total: float | None
    started: float = field(default_factory=time.monotonic)
    last_line: float = field(default_factory=time.monotonic)
    completed: float = 0
    stopped: bool = False


class LineProgress:
    """The subset of rich.progress.Progress the local executor uses, written as lines."""

    def __init__(self, console: Console, interval: float | None = None) -> None:
        self.console = console
        self.interval = progress_interval() if interval is None else interval
        self.tasks: dict[int, _Task] = {}
        self.finished_line: str | None = None  # a run's end, printed with the grid's count when it advances

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._flush()

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def _flush(self) -> None:
        if self.finished_line is not None:
            self._print(self.finished_line)
            self.finished_line = None

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        self._flush()
        task_id = len(self.tasks)
        self.tasks[task_id] = _Task(description.strip(), total)
        return task_id

    def update(self, task_id: int, completed: float | None = None, info: str = "", **fields: Any) -> None:
        task = self.tasks[task_id]
        now = time.monotonic()
        if task.stopped:  # the run's outcome
            self._flush()
            self.finished_line = f"{task.name}: {info} ({now - task.started:.1f}s)"
            return
        if completed is None:
            return
        task.completed = completed
        if now - task.last_line >= self.interval:
            task.last_line = now
            of = f"/{task.total:g}" if task.total else ""
            self._print(f"{task.name}: step {completed:g}{of} {info} ({now - task.started:.0f}s)")

    def stop_task(self, task_id: int) -> None:
        self.tasks[task_id].stopped = True

    def advance(self, task_id: int, advance: float = 1) -> None:
        task = self.tasks[task_id]
        task.completed += advance
        of = f"/{task.total:g}" if task.total else ""
        line, self.finished_line = self.finished_line, None
        self._print(f"[{task.completed:g}{of}] {line}" if line else f"[{task.completed:g}{of}] runs finished")

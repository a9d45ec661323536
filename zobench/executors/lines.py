"""Progress as plain lines, for consoles that are not terminals (nohup, Slurm, CI logs, pipes).

rich's live bar draws nothing there until the end; this stands in for it: a line per finished run with the
grid's count, and a step line per run at most every `interval` seconds ($ZOBENCH_PROGRESS_SECONDS, default
30). `LineProgress` takes the calls the local executor makes. Runs of the fan-out executors (subprocess,
slurm, ray) train in other processes, so their step goes through the run's folder: the worker's `StepFile`
writes `.progress.json` (a dot file: not among the checksummed results) and the parent's `LineBoard` reads it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from zobench.store import atomic_write

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


STEP_FILE = ".progress.json"


class StepFile:
    """A worker's progress callback: the run's latest step in its folder, rewritten at the first step, the last,
    and otherwise at most every `interval` seconds (a shared filesystem is not hammered)."""

    def __init__(self, folder: Path, interval: float | None = None) -> None:
        self.path = Path(folder) / STEP_FILE
        self.interval = progress_interval() if interval is None else interval
        self.started = time.time()
        self.written: float | None = None

    def __call__(self, step: int, total: int, loss: float) -> None:
        now = time.time()
        if self.written is not None and step < total and now - self.written < self.interval:
            return
        self.written = now
        record = {"step": step, "total": total, "loss": loss, "started": self.started, "at": now}
        try:
            atomic_write(self.path, json.dumps(record).encode())
        except OSError:  # progress is a courtesy: a full or read-only disk must not fail the run
            pass


def read_step(folder: Path) -> dict[str, Any] | None:
    """The step a worker last wrote for the run in `folder`, or None (not started, or unreadable)."""
    try:
        record = json.loads((Path(folder) / STEP_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


class LineBoard:
    """The fan-out executors' board as lines: `tick` prints a step line per running run at most every
    `interval` seconds (from its step file); `finished` prints the run's last step and a line with the count."""

    def __init__(self, console: Console, total: int, run_dir: Any, interval: float | None = None) -> None:
        self.console, self.total, self.run_dir = console, total, run_dir
        self.interval = progress_interval() if interval is None else interval
        self.opened = time.time()
        self.done = 0
        self.shown: dict[str, tuple[int, float]] = {}  # run id -> (step last printed, time.time() then)
        self.scanned = 0.0  # when the step files were last read

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def started(self) -> None:
        pass

    def tick(self, specs: Iterable[Any]) -> None:
        """A step line for each run whose step file moved on, `interval` seconds after its start or last line."""
        now = time.time()
        if now - self.scanned < min(self.interval, 5.0):  # a thousand-run array on a shared filesystem: not each poll
            return
        self.scanned = now
        for spec in specs:
            record = read_step(self.run_dir(spec.run_id))
            if record is None or record.get("at", 0) < self.opened - 1:  # not started, or an earlier attempt's
                continue
            step, when = self.shown.get(spec.run_id, (-1, record.get("started", 0)))
            if record["step"] <= step or now - when < self.interval:
                continue
            self.shown[spec.run_id] = (record["step"], now)
            elapsed = record.get("at", 0) - record.get("started", 0)
            self._print(f"{spec.run_id}: step {record['step']}/{record.get('total', '?')} "
                        f"loss {record.get('loss', float('nan')):.4g} ({elapsed:.0f}s)")

    def finished(self, spec: Any, summary: dict[str, Any], where: str, headline: str) -> None:
        """The run's last step (when its interval is up) and its outcome, numbered in finishing order."""
        self.tick([spec])
        self.done += 1
        status = "held by another process" if summary.get("held_elsewhere") else summary.get("status", "?")
        place = f" [{where}]" if where else ""
        self._print(f"[{self.done}/{self.total}] {spec.run_id}{place}: {status} {headline}")

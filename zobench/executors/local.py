"""`local`: in this process, one run after another, with a progress display."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from zobench.executors.lines import LineProgress, wants_lines
from zobench.grid import RunSpec
from zobench.registry import executors
from zobench.store import RunRecord, Store
from zobench.worker import run_claimed, torch_threads

__all__ = ["Executor", "ExecutorOptions", "LocalExecutor", "pending", "run_claimed"]


def pending(specs: list[RunSpec], store: Store) -> list[RunSpec]:
    """Runs with no 'done' summary for this exact spec; everything else is cached."""
    return [s for s in specs if not store.is_done(s.run_id, s.spec_hash)]


class ExecutorOptions(BaseModel):
    """Options every executor takes; each executor's `Options` extends this (typos are errors)."""

    model_config = ConfigDict(extra="forbid")
    threads: PositiveInt | None = Field(None, description="torch/OpenMP threads per run; None: the executor's default")


class Executor:
    """Runs specs and returns their summaries (`RunRecord.flat()`: plain dicts, the form that crosses processes).
    Subclasses fan out elsewhere."""

    Options: ClassVar[type[ExecutorOptions]] = ExecutorOptions

    def __init__(self, options: dict[str, Any] | None = None, console: Console | None = None) -> None:
        self.options = self.Options.model_validate(options or {})
        self.console = console or Console(stderr=True)

    def run(self, specs: list[RunSpec], store: Store) -> list[dict[str, Any]]:
        raise NotImplementedError


@executors.register("local")
class LocalExecutor(Executor):
    """In-process, sequential: the default (threads: torch's default unless `threads` is given)."""

    def run(self, specs: list[RunSpec], store: Store) -> list[dict[str, Any]]:
        summaries = []
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn())
        display = (LineProgress(self.console) if wants_lines(self.console)  # nohup, Slurm: lines as they come
                   else Progress(*columns, console=self.console, transient=False))
        with torch_threads(self.options.threads), display as bar:
            grid = bar.add_task("grid", total=len(specs), info="")
            held_elsewhere: list[RunSpec] = []
            for wait, batch in ((False, specs), (True, held_elsewhere)):  # runs another process holds: last
                for spec in list(batch):
                    current = bar.add_task(f"  {spec.run_id[:60]}", total=spec.settings.steps, info="")

                    def progress(step: int, total: int, loss: float, current: Any = current) -> None:
                        bar.update(current, completed=step, info=f"loss {loss:.4g}")

                    record = run_claimed(spec, store, progress, wait=wait)
                    bar.stop_task(current)
                    if record is None:
                        held_elsewhere.append(spec)
                        bar.update(current, info="another process is running it; back to it at the end")
                        continue
                    bar.update(current, info=f"{record.status} {_headline(record)}")
                    bar.advance(grid)
                    summaries.append(record.flat())
        return summaries


def _headline(record: RunRecord) -> str:
    if record.metrics.test_metric is None:
        return (record.outcome.error or "")[:60]
    return f"test {record.metrics.metric}={record.metrics.test_metric:.4g}"

"""`local`: in this process, one run after another, with a progress display."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from zobench import runner
from zobench.grid import RunSpec
from zobench.registry import executors
from zobench.store import Store


def pending(specs: list[RunSpec], store: Store) -> list[RunSpec]:
    """Runs with no 'done' summary for this exact spec; everything else is cached."""
    return [s for s in specs if not store.is_done(s.run_id, s.spec_hash)]


class Executor:
    """Runs specs and returns their summaries. Subclasses fan out elsewhere."""

    def __init__(self, options: dict[str, Any] | None = None, console: Console | None = None) -> None:
        self.options = options or {}
        self.console = console or Console(stderr=True)

    def run(self, specs: list[RunSpec], store: Store) -> list[dict[str, Any]]:
        raise NotImplementedError


@executors.register("local")
class LocalExecutor(Executor):
    """In-process, sequential: the default."""

    def run(self, specs: list[RunSpec], store: Store) -> list[dict[str, Any]]:
        summaries = []
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=False) as bar:
            grid = bar.add_task("grid", total=len(specs), info="")
            for spec in specs:
                current = bar.add_task(f"  {spec.run_id[:60]}", total=spec.settings.steps, info="")

                def progress(step: int, total: int, loss: float, current: Any = current) -> None:
                    bar.update(current, completed=step, info=f"loss {loss:.4g}")

                summary = runner.run(spec, store, progress)
                bar.update(current, info=f"{summary['status']} {_headline(summary)}")
                bar.stop_task(current)
                bar.advance(grid)
                summaries.append(summary)
        return summaries


def _headline(summary: dict[str, Any]) -> str:
    if summary.get("test_metric") is None:
        return summary.get("error", "")[:60]
    return f"test {summary['metric']}={summary['test_metric']:.4g}"

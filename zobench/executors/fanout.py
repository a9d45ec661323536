"""What the executors that fan runs out share: two passes over the runs (runs another process holds
go last, waiting for it), a progress display for runs finishing in any order, and the record of a run
whose worker died before the runner could write one."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from zobench.errors import UserError
from zobench.executors.lines import LineBoard, wants_lines
from zobench.executors.local import Executor
from zobench.grid import RunSpec
from zobench.measure import environment
from zobench.store import Outcome, RunRecord, Store


def workers(spec: RunSpec) -> int:
    """Processes the run needs: `parallel.data` (one torch.distributed worker each), else 1."""
    return spec.settings.parallel.data if spec.settings.parallel is not None else 1


def gpus_needed(spec: RunSpec, per_worker: int = 1) -> int:
    """GPUs the run needs where it has GPUs: `gpus` (else `per_worker`) for each of its workers."""
    return (spec.settings.gpus or per_worker) * workers(spec)


class FanoutExecutor(Executor):
    """Runs specs elsewhere (`fan`); a run another process holds comes back `held_elsewhere` and goes
    out again at the end with `wait`, so it is run at most once and every run ends with a summary."""

    def fan(self, specs: list[RunSpec], store: Store, wait: bool) -> list[dict[str, Any]]:
        raise NotImplementedError

    def run(self, specs: list[RunSpec], store: Store) -> list[dict[str, Any]]:
        if not specs:
            return []
        out = {s["run_id"]: s for s in self.fan(specs, store, wait=False)}
        held = [spec for spec in specs if out.get(spec.run_id, {}).get("held_elsewhere")]
        if held:
            self.console.print(f"{len(held)} run(s) held by another process: waiting for them", highlight=False)
            out.update({s["run_id"]: s for s in self.fan(held, store, wait=True)})
        return [out[s.run_id] for s in specs if s.run_id in out and not out[s.run_id].get("held_elsewhere")]


class Board:
    """One bar for the grid; a line per finished run (where it ran, status, headline)."""

    def __init__(self, bar: Progress, total: int) -> None:
        self.bar = bar
        self.grid = bar.add_task("grid", total=total, info="")
        self.running = 0

    def started(self) -> None:
        self.running += 1
        self.bar.update(self.grid, info=f"{self.running} running")

    def tick(self, specs: Iterable[RunSpec]) -> None:
        """Step lines are for consoles without the live bar (LineBoard)."""

    def finished(self, spec: RunSpec, summary: dict[str, Any], where: str, headline: str) -> None:
        self.running = max(0, self.running - 1)
        status = "held by another process" if summary.get("held_elsewhere") else summary.get("status", "?")
        place = f" [{where}]" if where else ""
        self.bar.console.print(f"  {spec.run_id[:70]}{place}: {status} {headline}", markup=False, highlight=False)
        self.bar.update(self.grid, advance=1, info=f"{self.running} running")


class Grid:
    """What a fan-out executor reports as its runs go: the live bar on a terminal, lines elsewhere (nohup,
    Slurm, pipes); `device: auto`'s fallback to the CPU said once for the grid, when the first such run ends."""

    def __init__(self, console: Console, display: Board | LineBoard) -> None:
        self.console, self.display = console, display
        self.fallback_said = False

    def started(self) -> None:
        self.display.started()

    def tick(self, specs: Iterable[RunSpec]) -> None:
        """Call every second or so with the runs not finished yet."""
        self.display.tick(specs)

    def finished(self, spec: RunSpec, summary: dict[str, Any], where: str = "") -> None:
        fallback = summary.get("device_fallback")
        if fallback and not self.fallback_said:
            self.fallback_said = True
            host = (summary.get("env") or {}).get("host", "")
            self.console.print(f"WARNING: {fallback}{f' on {host}' if host else ''} (said once for the grid; "
                               f"each run's summary records it as device_fallback)", markup=False, highlight=False,
                               soft_wrap=True)
        self.display.finished(spec, summary, where, headline(summary))


@contextmanager
def board(console: Console, total: int, title: str, store: Store) -> Iterator[Grid]:
    console.print(title, highlight=False)
    if wants_lines(console):
        yield Grid(console, LineBoard(console, total, store.run_dir))
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        yield Grid(console, Board(bar, total))


def headline(summary: dict[str, Any]) -> str:
    if summary.get("test_metric") is None:
        return str(summary.get("error", ""))[:80]
    return f"test {summary['metric']}={summary['test_metric']:.4g} ({summary.get('wall_s', 0):.1f}s)"


def lost_run(spec: RunSpec, store: Store, error: str) -> dict[str, Any]:
    """The summary for a run whose worker ended without writing one (killed, crashed, job cancelled).

    A summary already there for this exact spec wins (the worker got that far); a run another process
    has claimed since is left to it.
    """
    with store.claim(spec.run_id) as mine:
        if not mine:
            return {"held_elsewhere": True, "run_id": spec.run_id}
        record = store.record(spec.run_id)
        if record is not None and record.spec_hash == spec.spec_hash:
            return record.flat()
        return _write_lost(spec, store, error)


def _write_lost(spec: RunSpec, store: Store, error: str) -> dict[str, Any]:
    import torch

    record = RunRecord(run_id=spec.run_id, spec_hash=spec.spec_hash, suite=spec.suite, seed=spec.seed,
                       spec=spec.model_dump(mode="json"), env=environment(torch.device("cpu")),
                       outcome=Outcome(status="failed", error=error, recorded_by="executor", recorded_at=time.time()))
    store.write_spec(spec.run_id, spec.model_dump(mode="json"))
    store.write_record(spec.run_id, record)
    return record.flat()


def check_user_error(result: dict[str, Any]) -> dict[str, Any]:
    """A worker's `{"user_error": ...}` becomes the UserError it was; a summary passes through."""
    if "user_error" in result:
        raise UserError(f"run {result.get('run_id', '?')}: {result['user_error']}")
    return result

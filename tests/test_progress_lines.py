"""Under a console that is not a terminal (nohup, Slurm), progress comes as lines while runs go on."""

from __future__ import annotations

import io
from pathlib import Path

import yaml
from rich.console import Console
from typer.testing import CliRunner

from zobench.cli import app
from zobench.executors.lines import LineProgress, wants_lines


def plain_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, force_jupyter=False, width=200), buffer


def test_lines_only_where_a_live_bar_would_show_nothing():
    assert wants_lines(plain_console()[0])
    assert not wants_lines(Console(file=io.StringIO(), force_terminal=True))


def test_step_lines_wait_for_the_interval_and_each_run_ends_with_the_count():
    console, buffer = plain_console()
    with LineProgress(console, interval=3600) as bar:
        grid = bar.add_task("grid", total=2, info="")
        for name in ("run-a", "run-b"):
            current = bar.add_task(f"  {name}", total=100, info="")
            for step in range(1, 101):
                bar.update(current, completed=step, info=f"loss {1 / step:.3g}")
            bar.stop_task(current)
            bar.update(current, info="done test accuracy=0.9")
            bar.advance(grid)
    lines = buffer.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["[1/2] run-a: done test accuracy=0.9",
                                                       "[2/2] run-b: done test accuracy=0.9"]
    console, buffer = plain_console()
    with LineProgress(console, interval=0) as bar:  # every step once the interval is 0
        current = bar.add_task("run-a", total=3)
        for step in (1, 2, 3):
            bar.update(current, completed=step, info="loss 1")
    assert [line.split(" (")[0] for line in buffer.getvalue().splitlines()] == [
        "run-a: step 1/3 loss 1", "run-a: step 2/3 loss 1", "run-a: step 3/3 loss 1"]


def test_zobench_run_in_a_pipe_prints_steps_and_finished_runs(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ZOBENCH_PROGRESS_SECONDS", "0")
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "lines", "defaults": {"steps": 4, "eval_every": 4, "device": "cpu", "select": "last"},
        "grid": {"tasks": [{"name": "test-function", "function": "c"}],
                 "methods": [{"name": "fo-sgd", "lr": 0.01}, {"name": "zo-sgd", "lr": 0.01, "eps": 0.001}]},
    }))
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(tmp_path / "r"), "--no-report"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    finished = [line for line in lines if line.startswith("[")]
    assert len(finished) == 2 and finished[0].startswith("[1/2] ") and finished[1].startswith("[2/2] ")
    assert all(": done test " in line for line in finished)
    assert sum(": step 4/4 loss " in line for line in lines) == 2

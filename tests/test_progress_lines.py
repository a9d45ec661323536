"""Under a console that is not a terminal (nohup, Slurm), progress comes as lines while runs go on, from every
executor: the local one in-process, the fan-out ones (subprocess pool, submitit, ray) through each run's step file."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from zobench.cli import app
from zobench.executors.lines import STEP_FILE, LineBoard, LineProgress, StepFile, read_step, wants_lines


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


def test_step_file_is_written_first_last_and_at_the_interval(tmp_path: Path):
    write = StepFile(tmp_path, interval=3600)
    write(1, 50, 2.0)
    assert read_step(tmp_path)["step"] == 1
    for step in range(2, 50):
        write(step, 50, 1.0)
    assert read_step(tmp_path)["step"] == 1  # within the interval: not rewritten
    write(50, 50, 0.5)
    record = read_step(tmp_path)
    assert (record["step"], record["total"], record["loss"]) == (50, 50, 0.5)
    assert read_step(tmp_path / "nowhere") is None
    (tmp_path / STEP_FILE).write_text("{cut by a kil")
    assert read_step(tmp_path) is None


def test_line_board_prints_new_steps_and_numbers_finished_runs(tmp_path: Path):
    console, buffer = plain_console()
    runs = [SimpleNamespace(run_id=name) for name in ("run-a", "run-b", "run-c")]
    board = LineBoard(console, 3, lambda run_id: tmp_path / run_id, interval=0)
    stale = {"step": 7, "total": 9, "loss": 1.0, "started": time.time() - 900, "at": time.time() - 800}
    (tmp_path / "run-c").mkdir()
    (tmp_path / "run-c" / STEP_FILE).write_text(json.dumps(stale))  # an earlier attempt's: not this grid's
    StepFile(tmp_path / "run-a", interval=0)(3, 9, 0.25)
    board.tick(runs)
    board.tick(runs)  # no new step: no new line
    StepFile(tmp_path / "run-b", interval=0)(9, 9, 0.125)
    board.finished(runs[1], {"status": "done"}, "cpu slot 1", "test accuracy=1")
    board.finished(runs[2], {"status": "failed"}, "", "boom")
    assert [line.split(" (")[0] for line in buffer.getvalue().splitlines()] == [
        "run-a: step 3/9 loss 0.25", "run-b: step 9/9 loss 0.125",
        "[1/3] run-b [cpu slot 1]: done test accuracy=1", "[2/3] run-c: failed boom"]
    console, buffer = plain_console()
    slow = LineBoard(console, 1, lambda run_id: tmp_path / run_id, interval=3600)
    slow.tick(runs)  # younger than the interval: no step line yet
    assert buffer.getvalue() == ""


FANOUT = {
    "subprocess": {"workers": 2, "threads": 1, "gpus": []},  # CPU slots everywhere: `auto` falls back to the CPU
    "slurm": {"cluster": "local", "gpus_per_node": 0, "array_parallelism": 2, "threads": 1, "timeout_min": 5,
              "poll_s": 0.2, "setup": ["export CUDA_VISIBLE_DEVICES="]},
    "ray": {"local_cpus": 2, "num_cpus": 1, "threads": 1, "num_gpus": 0, "local_gpus": 0,
            "runtime_env": {"env_vars": {"CUDA_VISIBLE_DEVICES": ""}}},
}


@pytest.mark.parametrize("engine", list(FANOUT))
def test_fanout_executors_in_a_pipe_print_steps_finished_runs_and_the_fallback_once(engine, tmp_path: Path,
                                                                                    monkeypatch):
    """For real: workers in other processes write their step; the parent prints it, then the run's end."""
    if engine == "ray":
        pytest.importorskip("ray")
    elif engine == "slurm":
        pytest.importorskip("submitit")
    monkeypatch.setenv("ZOBENCH_PROGRESS_SECONDS", "0")
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "fan-lines", "defaults": {"steps": 4, "eval_every": 4, "device": "auto", "select": "last"},
        "grid": {"tasks": [{"name": "test-function", "function": "c"}],
                 "methods": [{"name": "fo-sgd", "lr": 0.01}, {"name": "zo-sgd", "lr": 0.01, "eps": 0.001}]},
        "executor": {"name": engine, engine: FANOUT[engine]},
    }))
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(tmp_path / "r"), "--no-report"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    finished = [line for line in lines if line.startswith("[")]
    assert [line[:6] for line in finished] == ["[1/2] ", "[2/2] "], result.output
    assert all(": done test " in line for line in finished)
    assert sum(": step 4/4 loss " in line for line in lines) == 2, result.output
    assert result.output.count("device: auto found no GPU") == 1, result.output


def test_on_a_terminal_the_fanout_board_keeps_its_bar_and_says_the_fallback_once(tmp_path: Path):
    from zobench.executors.fanout import Board, board
    from zobench.store import Store

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=200)
    fell_back = {"status": "done", "device_fallback": "device: auto found no GPU", "env": {"host": "h"}}
    with board(console, 2, "pool", Store(tmp_path, "s")) as grid:
        assert isinstance(grid.display, Board)
        for name in ("run-a", "run-b"):
            grid.started()
            grid.tick([SimpleNamespace(run_id=name)])
            grid.finished(SimpleNamespace(run_id=name), fell_back, "cpu slot 0")
    text = buffer.getvalue()
    assert text.count("WARNING: device: auto found no GPU on h") == 1
    assert "run-a [cpu slot 0]: done" in text and "run-b [cpu slot 0]: done" in text

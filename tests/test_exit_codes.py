"""`zobench run` exit codes: 0 every run done, 1 some runs did not finish, 2 bad input."""

from __future__ import annotations

import errno
from pathlib import Path

import torch
import yaml
from typer.testing import CliRunner

from zobench import grid, store
from zobench.cli import app


def suite(tmp_path: Path, lrs: list[float]) -> Path:
    """A quadratic ((x+y)^2+(x-y)^2/10) with fo-sgd at the given learning rates: 1e9 diverges in a few steps."""
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "codes",
        "defaults": {"steps": 20, "eval_every": 10, "device": "cpu", "select": "last"},
        "grid": {"tasks": [{"name": "test-function", "function": "c"}],
                 "methods": [{"name": "fo-sgd", "lr": lr, "label": f"lr={lr:g}"} for lr in lrs],
                 "seeds": [0]},
    }))
    return path


def run(path: Path, tmp_path: Path):
    return CliRunner().invoke(app, ["run", str(path), "--results", str(tmp_path / "results"), "--no-report"])


def test_all_done_exits_0(tmp_path):
    result = run(suite(tmp_path, [0.01]), tmp_path)
    assert result.exit_code == 0, result.output


def test_a_diverged_run_exits_1_and_is_named(tmp_path):
    result = run(suite(tmp_path, [0.01, 1e9]), tmp_path)
    assert result.exit_code == 1, result.output
    assert "1 runs did not finish" in result.output and "(diverged)" in result.output
    # a second call finds the good run cached and the bad one still bad: still 1
    assert run(suite(tmp_path, [0.01, 1e9]), tmp_path).exit_code == 1


def test_no_summary_written_at_all_exits_1(tmp_path, monkeypatch):
    """A full disk: every run trains, but no summary.json can be written; the run must not look like a success."""
    real = store.atomic_write

    def full_disk(path: Path, data: bytes) -> None:
        if path.name == "summary.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(store, "atomic_write", full_disk)
    result = run(suite(tmp_path, [0.01, 0.02]), tmp_path)
    assert result.exit_code == 1, result.output
    assert "not written (the disk is full)" in result.output and "2 of 2 runs left no summary" in result.output
    monkeypatch.setattr(store, "atomic_write", real)  # space freed: the same command finishes them
    assert run(suite(tmp_path, [0.01, 0.02]), tmp_path).exit_code == 0


def test_device_auto_fallback_is_said_once_per_suite(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(grid, "_cuda_available", lambda: False)
    path = suite(tmp_path, [0.01, 0.02, 0.03])
    path.write_text(path.read_text().replace("device: cpu", "device: auto"))
    result = run(path, tmp_path)
    assert result.exit_code == 0, result.output
    assert " ".join(result.output.split()).count("device: auto found no GPU") == 1, result.output


def test_bad_input_exits_2_before_anything_runs(tmp_path):
    path = suite(tmp_path, [0.01])
    path.write_text(path.read_text().replace("fo-sgd", "fo-sgdd"))
    result = run(path, tmp_path)
    assert result.exit_code == 2 and "fo-sgdd" in result.output
    assert not (tmp_path / "results").exists()


def test_help_documents_the_codes():
    result = CliRunner().invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "0 every run done" in text and "1 some runs failed" in text and "2 bad input" in text

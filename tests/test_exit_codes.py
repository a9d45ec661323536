"""`zobench run` exit codes: 0 every run done, 1 some runs did not finish, 2 bad input."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

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

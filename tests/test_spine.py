"""End to end: a suite runs, lands in the store, resumes, reports; the same seed gives the same numbers."""

from __future__ import annotations

import json

import pandas as pd
from conftest import TINY_LLAMA
from typer.testing import CliRunner

from zobench.cli import app

SUITE = {
    "name": "spine",
    "defaults": {"steps": 12, "batch_size": 4, "eval_every": 6},
    "grid": {
        "models": [{"name": "tiny", "label": "tiny-llama", "config": TINY_LLAMA}],
        "tasks": [{"name": "softmax-regression", "d": 8, "n": 16},
                  {"name": "synthetic-sentiment", "train_size": 32, "dev_size": 16, "test_size": 16}],
        "methods": [{"name": "zo-sgd", "lr": 0.01}, {"name": "fo-adam", "lr": 0.01}],
        "seeds": [0, 1],
    },
}


def _run(path, tmp_path, *extra):
    return CliRunner().invoke(app, ["run", str(path), "--results", str(tmp_path / "results"),
                                    "--reports", str(tmp_path / "reports"), *extra])


def test_suite_runs_resumes_and_reports(write_suite, tmp_path):
    path = write_suite(SUITE)
    result = _run(path, tmp_path)
    assert result.exit_code == 0, result.output
    runs = sorted(p for p in (tmp_path / "results" / "spine").iterdir() if p.is_dir())  # suite.json beside them
    assert len(runs) == 8
    for run in runs:
        assert {"spec.yaml", "curve.parquet", "summary.json"} <= {p.name for p in run.iterdir()}
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "done", summary.get("error")
        curve = pd.read_parquet(run / "curve.parquet")
        assert curve["step"].max() == 12 and "dev_" + summary["metric"] in curve
    zo = json.loads(next(r for r in runs if "zo-sgd" in r.name and "sentiment" in r.name).joinpath(
        "summary.json").read_text())
    assert zo["forward_passes"] == 24 and zo["backward_passes"] == 0 and zo["state_bytes"] == 0
    page = (tmp_path / "reports" / "spine" / "index.html").read_text()
    assert "zo-sgd" in page and "data:image/png;base64," in page

    again = _run(path, tmp_path)
    assert again.exit_code == 0 and "8 already done, 0 to run" in again.output


def test_same_seed_same_numbers_other_seed_different(write_suite, tmp_path):
    path = write_suite(SUITE)
    _run(path, tmp_path)
    first = {p.parent.name: pd.read_parquet(p) for p in (tmp_path / "results").rglob("curve.parquet")}
    _run(path, tmp_path, "--rerun")
    for name, curve in first.items():
        again = pd.read_parquet(tmp_path / "results" / "spine" / name / "curve.parquet")
        cols = [c for c in curve if not c.endswith("_s")]  # seconds (wall_s, step_s, forward_s, ...) vary
        pd.testing.assert_frame_equal(curve[cols], again[cols])
    by_cell: dict[str, dict[str, tuple]] = {}
    for name, curve in first.items():
        cell, seed = name.rsplit("_", 2)[0].rsplit("-s", 1)
        by_cell.setdefault(cell, {})[seed] = tuple(curve["train_loss"].dropna())
    for cell, seeds in by_cell.items():
        assert seeds["0"] != seeds["1"], cell

"""A small real suite, run once per test session and shared by the report and browser tests."""

from __future__ import annotations

from pathlib import Path

import yaml
from conftest import TINY_LLAMA

SUITE = {
    "name": "report-test",
    "description": "three methods, two tasks, two seeds, a few steps",
    "regenerates": "mezo-table1",
    "defaults": {"steps": 10, "batch_size": 4, "eval_every": 5, "device": "cpu"},
    "grid": {
        "models": [{"name": "tiny", "label": "tiny-llama", "config": TINY_LLAMA}],
        "tasks": [{"name": "softmax-regression", "d": 8, "n": 16},
                  {"name": "synthetic-sentiment", "train_size": 24, "dev_size": 12, "test_size": 12}],
        "methods": [{"name": "zo-sgd", "lr": 0.01}, {"name": "fo-sgd", "lr": 0.1}, {"name": "fo-adam", "lr": 0.01}],
        "seeds": [0, 1],
    },
}


def built_report(base: Path) -> tuple[Path, Path]:
    """(results/<suite>, reports/<suite>/index.html), running the suite the first time only."""
    from typer.testing import CliRunner

    from zobench.cli import app

    results, reports = base / "results", base / "reports"
    page = reports / SUITE["name"] / "index.html"
    if not page.exists():
        base.mkdir(parents=True, exist_ok=True)
        suite = base / "suite.yaml"
        suite.write_text(yaml.safe_dump(SUITE, sort_keys=False))
        result = CliRunner().invoke(app, ["run", str(suite), "--results", str(results), "--reports", str(reports)])
        assert result.exit_code == 0, result.output
    return results / SUITE["name"], page

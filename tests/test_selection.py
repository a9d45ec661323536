"""Selection on dev as the papers: per cell the best mean-over-seeds dev configuration, its test reported."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from zobench.cli import app
from zobench.report.frame import runs_frame
from zobench.report.selection import select, tuning_table

EPS = np.finfo(float).eps


def _run(lr: float, seed: int, dev: float, test: float, status: str = "done", method: str = "mezo",
         last: float | None = None, passes: int = 20) -> dict:
    return {"model": "m", "task": "sst2", "method": method, "scheme": "full", "run_id": f"{method}-{lr}-{seed}",
            "sweep": {"method.lr": lr}, "seed": seed, "status": status, "metric": "accuracy",
            "higher_is_better": True, "best_dev_metric": dev if status == "done" else math.nan,
            "test_metric": test if status == "done" else math.nan, "forward_passes": passes, "backward_passes": 0,
            "wall_s": 1800.0, "device": "cpu", "last_dev": dev if last is None else last}


def _frame(runs: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(runs)


def test_best_mean_dev_is_chosen_and_test_is_never_read():
    # lr 1e-6 has the best dev on average (0.80 vs 0.75) though lr 1e-7 has the better test (0.95)
    runs = [_run(1e-6, 0, 0.85, 0.60), _run(1e-6, 1, 0.75, 0.62), _run(1e-7, 0, 0.70, 0.95), _run(1e-7, 1, 0.80, 0.95)]
    sel = select(_frame(runs))
    row = sel.table.iloc[0]
    assert row["chosen"] == "lr=1e-06"
    assert row["configurations"] == 2 and row["runs"] == 4 and row["seeds"] == 2
    assert row["dev (chosen)"] == pytest.approx(80.0, rel=8 * EPS)
    assert row["test (chosen)"] == pytest.approx(61.0, rel=8 * EPS)
    assert sorted(sel.chosen["run_id"]) == ["mezo-1e-06-0", "mezo-1e-06-1"]
    assert row["fwd+bwd passes"] == 80 and row["CPU-hours"] == pytest.approx(2.0, rel=8 * EPS)
    # the same runs with every test metric swapped choose the same configuration
    swapped = _frame(runs).assign(test_metric=lambda f: f["test_metric"][::-1].to_numpy())
    assert select(swapped).table.iloc[0]["chosen"] == "lr=1e-06"


def test_lower_is_better_metrics_choose_the_smallest_dev():
    runs = [_run(1e-6, 0, 0.3, 0.3), _run(1e-7, 0, 0.2, 0.9)]
    frame = _frame(runs).assign(higher_is_better=False, metric="loss_gap")
    assert select(frame).table.iloc[0]["chosen"] == "lr=1e-07"


def test_unfinished_configurations_are_not_eligible_and_said():
    runs = [_run(1e-6, 0, 0.99, 0.9), _run(1e-6, 1, 0.0, 0.0, status="diverged"),
            _run(1e-7, 0, 0.60, 0.5), _run(1e-7, 1, 0.62, 0.5)]
    sel = select(_frame(runs))
    row = sel.table.iloc[0]
    assert row["chosen"] == "lr=1e-07"
    assert "not eligible: lr=1e-06 (1 diverged)" in row["note"]
    assert row["runs"] == 4 and row["runs done"] == 3
    configs = sel.configs.set_index("values")
    assert not configs.loc["lr=1e-06", "eligible"] and configs.loc["lr=1e-07", "chosen"]


def test_no_eligible_configuration_chooses_nothing_and_says_so():
    runs = [_run(1e-6, 0, 0, 0, status="failed"), _run(1e-7, 0, 0, 0, status="oom")]
    sel = select(_frame(runs))
    assert sel.table.iloc[0]["chosen"] == "(none)" and sel.chosen.empty
    assert "nothing chosen" in sel.table.iloc[0]["note"]


def test_ties_go_to_the_first_swept_value_and_are_named():
    runs = [_run(1e-5, 0, 0.7, 0.1), _run(1e-7, 0, 0.7, 0.9), _run(1e-6, 0, 0.7, 0.5)]
    row = select(_frame(runs)).table.iloc[0]
    assert row["chosen"] == "lr=1e-07"
    assert "tie on dev between lr=1e-07; lr=1e-06; lr=1e-05" in row["note"]


def test_last_mode_reads_the_last_dev_evaluation_from_the_curves():
    runs = [_run(1e-6, 0, 0.9, 0.6, last=0.5), _run(1e-7, 0, 0.8, 0.7, last=0.8)]
    frame = _frame(runs)
    curves = pd.DataFrame([{"run_id": r["run_id"], "step": step, "dev_accuracy": value}
                           for r in runs for step, value in ((5, r["best_dev_metric"]), (10, r["last_dev"]))]
                          + [{"run_id": runs[0]["run_id"], "step": 11, "dev_accuracy": math.nan}])
    assert select(frame, "best-dev", curves).table.iloc[0]["chosen"] == "lr=1e-06"
    assert select(frame, "last", curves).table.iloc[0]["chosen"] == "lr=1e-07"


def test_unswept_training_free_cell_is_kept_without_dev():
    runs = [_run(0, 0, math.nan, 0.55, method="zero-shot"), _run(0, 1, math.nan, 0.57, method="zero-shot")]
    frame = _frame(runs).assign(sweep=[{}, {}])
    sel = select(frame)
    row = sel.table.iloc[0]
    assert row["chosen"] == "—" and row["configurations"] == 1 and row["note"] == ""
    assert len(sel.chosen) == 2
    assert "GPU-hours" not in tuning_table(sel)


def test_report_selects_on_dev_and_draws_sensitivity(write_suite, tmp_path):
    """A real swept suite end to end: the chosen configuration's runs alone reach the tables."""
    text = """\
name: sweep-report
defaults: {steps: 6, batch_size: 4, eval_every: 3, device: cpu}
grid:
  tasks: [{name: softmax-regression, d: 8, n: 16}]
  methods:
    - {name: zo-sgd, label: mezo, lr: {sweep: [0.1, 0.01, 0.001]}, eps: 0.01}
  seeds: [0, 1]
"""
    path = write_suite(text)
    results, reports = tmp_path / "results", tmp_path / "reports"
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(results), "--reports", str(reports),
                                      "--no-report"])
    assert result.exit_code == 0, result.output
    frame = runs_frame(results / "sweep-report")
    assert len(frame) == 6 and sorted({p["method.lr"] for p in frame["sweep"]}) == [0.001, 0.01, 0.1]
    sel = select(frame)
    dev = frame.assign(lr=[p["method.lr"] for p in frame["sweep"]]).groupby("lr")["best_dev_metric"].mean()
    assert sel.table.iloc[0]["chosen"] == f"lr={dev.idxmin():g}"  # loss_gap: lower is better
    result = CliRunner().invoke(app, ["report", str(results / "sweep-report"), "--reports", str(reports)])
    assert result.exit_code == 0, result.output
    page = (reports / "sweep-report" / "index.html").read_text()
    assert "Chosen configuration per cell" in page and "Sensitivity — mezo" in page
    assert (reports / "sweep-report" / "tables" / "selection.csv").is_file()
    runs_csv = pd.read_csv(reports / "sweep-report" / "runs.csv")
    assert runs_csv["chosen"].sum() == 2
    bad = CliRunner().invoke(app, ["report", str(results / "sweep-report"), "--reports", str(reports),
                                   "--select", "best-test"])
    assert bad.exit_code == 2 and "--select best-test" in bad.output

"""The notebook way in: run a suite and read results back as pandas frames, without the command line.

    import zobench
    runs = zobench.run("quickstart")                  # a suite file or a bundled suite's name
    runs = zobench.load("results/quickstart")         # later: the same runs, read from disk
    steps = zobench.curves("results/quickstart")      # one row per logged step (loss, dev metrics, passes)

Bad input raises zobench.errors.UserError (the message names the file, the field and the fix).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from zobench.errors import UserError


def _results_folder(results: Path | str) -> Path:
    path = Path(results)
    if not path.is_dir():
        raise UserError(f"{path}: no such results folder; run a suite first (zobench.run) or give results/<suite>")
    return path


def load(results: Path | str) -> pd.DataFrame:
    """Every run under a results folder (results/<suite> or results/), one row each: status, test metric,
    passes, seconds, peak memory by source; the same frame the report's tables are built from."""
    from zobench.report.frame import runs_frame

    return runs_frame(_results_folder(results))


def curves(results: Path | str) -> pd.DataFrame:
    """Every logged step of every run under a results folder, labelled by run_id, model, task, method, seed."""
    from zobench.store import load_curves

    return load_curves(_results_folder(results))


def run(suite: Path | str, results: Path | str = "results", *, executor: str | None = None, rerun: bool = False,
        data_dir: str | None = None, report: bool = False, reports: Path | str = "reports") -> pd.DataFrame:
    """Run a suite as `zobench run` does (runs already done are skipped; `rerun` runs them again) and return
    its runs, one row each; a run that failed, diverged or ran out of memory is a row with that status.
    `report` also builds the HTML report under `reports`."""
    from zobench.cli import plan
    from zobench.executors import run_specs
    from zobench.store import Store

    spec_suite, specs = plan(Path(suite), data_dir, executor)
    store = Store(Path(results), spec_suite.name)
    run_specs(spec_suite, specs, store, executor or spec_suite.executor.name, rerun=rerun)
    frame = load(store.dir) if store.dir.is_dir() else pd.DataFrame()
    if report:
        from zobench.report import build_report

        build_report(store.dir, Path(reports))  # reads the suite.json run_specs wrote
    if frame.empty:
        return frame
    return frame[frame["run_id"].isin({s.run_id for s in specs})].reset_index(drop=True)

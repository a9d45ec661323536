"""One pandas row per run, and aggregates over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from zobench.store import load_summaries


def runs_frame(results: Path | str) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for s in load_summaries(results):
        spec = s.get("spec", {})
        mem = s.get("memory", {})
        rows.append({
            "suite": s.get("suite"), "run_id": s.get("run_id"), "status": s.get("status"),
            **{axis: spec.get(axis, {}).get("label") for axis in ("model", "task", "method", "scheme")},
            "seed": s.get("seed"), "metric": s.get("metric"), "test_metric": s.get("test_metric"),
            "initial_dev_metric": s.get("initial_dev_metric"), "best_step": s.get("best_step"),
            "steps": s.get("steps"), "forward_passes": s.get("forward_passes"),
            "backward_passes": s.get("backward_passes"), "wall_s": s.get("wall_s"),
            "median_step_s": s.get("median_step_s"), "state_bytes": s.get("state_bytes"),
            **{f"peak_{k}_bytes": v.get("bytes") for k, v in mem.items()},
        })
    return pd.DataFrame(rows)


def mean_std(values: pd.Series, scale: float = 1.0, digits: int = 3) -> str:
    v = values.dropna() * scale
    if v.empty:
        return "—"
    if len(v) == 1:
        return f"{v.iloc[0]:.{digits}g}"
    return f"{v.mean():.{digits}g} ± {v.std(ddof=1):.2g}"


def method_task_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Methods × tasks: test metric (at the best dev evaluation), mean ± std over seeds; failures named."""
    if frame.empty:
        return pd.DataFrame()
    cells: dict[tuple[str, str], str] = {}
    for (method, task, metric), group in frame.groupby(["method", "task", "metric"], dropna=False, sort=False):
        done = group[group["status"] == "done"]
        text = mean_std(done["test_metric"]) if not done.empty else "—"
        bad = group[group["status"] != "done"]["status"].value_counts()
        if not bad.empty:
            text += " (" + ", ".join(f"{n} {st}" for st, n in bad.items()) + ")"
        cells[(method, f"{task} ({metric})")] = text
    table = pd.Series(cells).unstack()
    table.index.name = "method"
    return table

"""Hyper-parameter selection as the papers do it: per cell, the configuration with the best dev metric.

A cell (model × task × method label × scheme) holds one configuration per sweep point; each configuration runs
once per seed. MeZO (Appendix D, "we use the dev set to select the best hyper-parameters"; large_models/run.py
evaluates dev during training and `load_best_model_at_end` keeps the best-dev checkpoint) and ZO-Bench
(LR × ε grid, best on validation) both choose on dev and report test. Here:

- a configuration's score is the mean over its seeds of each run's dev metric: the run's best dev evaluation
  (`best-dev`, the checkpoint the run reports test at) or its last dev evaluation (`last`);
- only configurations whose every run finished and was evaluated on dev are eligible; the others are named;
- the eligible configuration with the best score is chosen; ties (equal to the last bits of a float64 mean)
  go to the configuration first in the order of its swept values, and are named;
- test is never read while choosing: the score is computed from dev columns only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from zobench.grid import sweep_names
from zobench.report.frame import AXES, describe, scale_for

MODES = ("best-dev", "last")


def config_key(point: Any) -> str:
    """A sweep point as a stable string (the configuration's identity within its cell)."""
    return json.dumps(point if isinstance(point, dict) else {}, sort_keys=True, default=str)


def point_text(point: dict[str, Any]) -> str:
    """'lr=1e-05, eps=0.001'; '—' for a cell that sweeps nothing."""
    return ", ".join(sweep_names(point)) or "—"


def _sort_key(point: dict[str, Any]) -> tuple:
    """Order of configurations within a cell: by swept values, numbers before text."""
    return tuple((0, float(v), "") if isinstance(v, int | float) and not isinstance(v, bool) else (1, 0.0, str(v))
                 for _, v in sorted(point.items()))


def last_dev(curves: pd.DataFrame, frame: pd.DataFrame) -> pd.Series:
    """Each run's dev metric at its last dev evaluation (NaN where it has none), indexed by run id."""
    out = pd.Series(np.nan, index=frame["run_id"].to_numpy(), dtype=float)
    if curves.empty:
        return out
    for run_id, metric in zip(frame["run_id"], frame["metric"], strict=True):
        column = f"dev_{metric}"
        if column not in curves:
            continue
        rows = curves[(curves["run_id"] == run_id) & curves[column].notna()]
        if len(rows):
            out[run_id] = float(rows.sort_values("step")[column].iloc[-1])
    return out


@dataclass
class Selection:
    """The runs of each cell's chosen configuration, and what the choice saw."""

    chosen: pd.DataFrame  # the rows of `frame` that belong to a chosen configuration (or to an unswept cell)
    table: pd.DataFrame  # one row per cell: chosen values, configurations tried, dev and test, tuning cost
    configs: pd.DataFrame  # one row per configuration: its dev score, test, eligibility
    mode: str = "best-dev"
    notes: list[str] = field(default_factory=list)


def select(frame: pd.DataFrame, mode: str = "best-dev", curves: pd.DataFrame | None = None) -> Selection:
    """Choose per cell the configuration with the best mean dev metric; see the module docstring."""
    if mode not in MODES:
        raise ValueError(f"selection mode must be one of {MODES}, got {mode!r}")
    if frame.empty:
        return Selection(frame, pd.DataFrame(), pd.DataFrame(), mode)
    frame = frame.copy()
    if "sweep" not in frame:
        frame["sweep"] = [{} for _ in range(len(frame))]
    frame["sweep"] = [p if isinstance(p, dict) else {} for p in frame["sweep"]]
    frame["config"] = [config_key(p) for p in frame["sweep"]]
    dev = frame["best_dev_metric"] if mode == "best-dev" else \
        last_dev(curves if curves is not None else pd.DataFrame(), frame).reindex(frame["run_id"]).to_numpy()
    frame["selection_dev"] = pd.to_numeric(pd.Series(dev, index=frame.index), errors="coerce")

    config_rows, cell_rows, keep = [], [], []
    for cell, group in frame.groupby(list(AXES), sort=False, dropna=False):
        metric = group["metric"].dropna().iloc[0] if group["metric"].notna().any() else None
        higher = bool(group["higher_is_better"].dropna().iloc[0]) if group["higher_is_better"].notna().any() \
            else True
        scale = scale_for(metric)
        configs = []
        for key, runs in group.groupby("config", sort=False):
            point = runs["sweep"].iloc[0]
            done = runs[runs["status"] == "done"]
            devs = done["selection_dev"].dropna()
            problems = [f"{n} {status}" for status, n in runs.loc[runs["status"] != "done", "status"]
                        .value_counts().items()]
            if len(done) and len(devs) < len(done):
                problems.append(f"{len(done) - len(devs)} without a dev evaluation")  # e.g. zero-shot, ICL
            score = float(devs.mean()) if len(devs) == len(runs) and len(runs) else math.nan
            test = describe(done["test_metric"] * scale)
            configs.append({**dict(zip(AXES, cell, strict=True)), "config": key, "values": point_text(point),
                            "point": point, "seeds": len(runs), "dev": score * scale, "test_mean": test["mean"],
                            "test_std": test["std"], "test_n": test["n"], "eligible": not problems,
                            "problems": ", ".join(problems)})
        configs.sort(key=lambda c: _sort_key(c["point"]))
        eligible = [c for c in configs if c["eligible"] and math.isfinite(c["dev"])]
        note: list[str] = []
        chosen = None
        if len(configs) == 1 and not eligible:  # an unswept cell: nothing to choose, report what ran
            chosen = configs[0]
            if configs[0]["problems"] and "without a dev evaluation" not in configs[0]["problems"]:
                note.append(f"did not finish: {configs[0]['problems']}")
        elif eligible:
            best = (max if higher else min)(c["dev"] for c in eligible)
            tied = [c for c in eligible if math.isclose(c["dev"], best, rel_tol=4 * np.finfo(float).eps,
                                                        abs_tol=4 * np.finfo(float).eps * abs(scale))]
            chosen = tied[0]
            if len(tied) > 1:
                note.append(f"tie on dev between {'; '.join(c['values'] for c in tied)}: the first is kept")
        else:
            note.append("no configuration finished every seed with a dev evaluation: nothing chosen")
        skipped = [c for c in configs if not c["eligible"]]
        if skipped and len(configs) > 1:
            note.append("not eligible: " + "; ".join(f"{c['values']} ({c['problems']})" for c in skipped))
        for c in configs:
            c["chosen"] = c is chosen
            if c is chosen and not eligible:  # the one configuration of a cell, shown without a choice on dev
                c["problems"] = "; ".join(filter(None, [c["problems"], "the only configuration: nothing chosen"]))
        config_rows.extend(configs)
        if chosen is not None:
            keep.extend(group.index[group["config"] == chosen["config"]])
        cell_rows.append(_cell_row(cell, group, configs, chosen, metric, scale, note))
    chosen_frame = frame.loc[sorted(keep)].drop(columns=["config", "selection_dev"])
    configs_df = pd.DataFrame(config_rows).drop(columns=["point"])
    return Selection(chosen_frame, pd.DataFrame(cell_rows), configs_df, mode,
                     [f"{'/'.join(map(str, r['cell']))}: {r['note']}" for r in cell_rows if r["note"]])


def _cell_row(cell: tuple, group: pd.DataFrame, configs: list[dict[str, Any]], chosen: dict[str, Any] | None,
              metric: str | None, scale: float, note: list[str]) -> dict[str, Any]:
    """Chosen values, configurations tried, dev and test of the choice, what the whole group cost."""
    passes = pd.to_numeric(group["forward_passes"], errors="coerce").fillna(0) + \
        pd.to_numeric(group["backward_passes"], errors="coerce").fillna(0)
    on_gpu = group["device"].astype(str).str.lower().ne("cpu") & group["device"].notna()
    hours = pd.to_numeric(group["wall_s"], errors="coerce").fillna(0) / 3600
    unit = "%" if scale == 100 else ""
    return {
        **dict(zip(AXES, cell, strict=True)), "cell": cell, "metric": f"{metric} ({unit})" if unit else metric,
        "chosen": chosen["values"] if chosen else "(none)",
        "configurations": len(configs),
        "dev (chosen)": chosen["dev"] if chosen else math.nan,
        "test (chosen)": chosen["test_mean"] if chosen else math.nan,
        "test std": chosen["test_std"] if chosen else math.nan,
        "seeds": chosen["test_n"] if chosen else 0,
        "runs": len(group), "runs done": int((group["status"] == "done").sum()),
        "fwd+bwd passes": int(passes.sum()),
        "CPU-hours": float(hours[~on_gpu].sum()), "GPU-hours": float(hours[on_gpu].sum()),
        "note": "; ".join(note),
    }


def tuning_table(selection: Selection) -> pd.DataFrame:
    """The per-cell table for the report (cell columns that never vary are left out)."""
    table = selection.table
    if table.empty:
        return table
    out = table.drop(columns=["cell"]).copy()
    for axis in ("model", "scheme"):
        if out[axis].nunique() == 1:
            out = out.drop(columns=axis)
    if not (out["GPU-hours"] > 0).any():
        out = out.drop(columns="GPU-hours")
    if not (out["CPU-hours"] > 0).any():
        out = out.drop(columns="CPU-hours")
    index = [c for c in ("model", "task", "method", "scheme") if c in out]
    return out.set_index(index).round(4)

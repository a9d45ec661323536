"""Federated ZO: FZooS against FedZO, the global loss against queries and against communication rounds.

Used when a suite holds runs of the federated methods (fedzo, fzoos). One runner step is one round and the
forward-pass count is the number of queries (client objective evaluations), so the curves read both off the
run's curve.parquet. Each method is shown at its best configuration per problem (lowest median final global
loss over seeds, the rule of the trajectory and black-box sections); the table gives mean ± std over seeds.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zobench.report.figures import pyplot, to_png
from zobench.report.render import export
from zobench.report.trajectories import lowest_median
from zobench.store import RunRecord, atomic_write

FEDERATED = ("fedzo", "fzoos")


def runs(records: list[tuple[Path, RunRecord]]) -> pd.DataFrame:
    rows = []
    for folder, r in records:
        method = r.spec.method
        if r.outcome.status != "done" or method.name not in FEDERATED:
            continue
        label = method.label or method.name
        rows.append({"dir": str(folder), "task": r.spec.task.label or r.spec.task.name, "family": method.name,
                     "config": label, "seed": r.seed, "final": float(r.metrics.test_metric),
                     "queries": r.cost.forward_passes, "rounds": r.cost.steps})
    return pd.DataFrame(rows)


def table(best: pd.DataFrame) -> pd.DataFrame:
    """Method × problem: final global loss, mean ± std over seeds (configuration; queries; rounds)."""
    cells = {}
    for (family, task), g in best.groupby(["family", "task"]):
        std = g["final"].std(ddof=1) if len(g) > 1 else 0.0
        cells[(family, task)] = (f"{g['final'].mean():.4g} ± {std:.2g} ({g['config'].iloc[0]}; "
                                 f"{int(g['queries'].mean())} queries; {int(g['rounds'].max())} rounds; "
                                 f"{len(g)} seeds)")
    out = pd.Series(cells).unstack().fillna("no run finished")
    out.index.name = "method"
    return out


def mean_curve(dirs: list[str]) -> pd.DataFrame:
    """Per round: mean queries so far, mean and std of the global loss over seeds."""
    parts = []
    for d in dirs:
        curve = pd.read_parquet(Path(d) / "curve.parquet").dropna(subset=["dev_global_loss"])
        parts.append(curve[["step", "forward_passes", "dev_global_loss"]])
    merged = pd.concat(parts)
    return merged.groupby("step").agg(queries=("forward_passes", "mean"), loss=("dev_global_loss", "mean"),
                                      std=("dev_global_loss", "std")).fillna({"std": 0.0}).reset_index()


def figure(best: pd.DataFrame) -> bytes:
    """Top row: global loss against queries; bottom row: against rounds. One column per problem."""
    plt = pyplot()
    tasks = list(dict.fromkeys(best["task"]))
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.2 * len(tasks), 7.2), squeeze=False)
    for col, task in enumerate(tasks):
        for _, g in best[best["task"] == task].groupby("family"):
            curve = mean_curve(list(g["dir"]))
            label = g["config"].iloc[0]
            for row, x in enumerate(("queries", "step")):
                ax = axes[row, col]
                ax.plot(curve[x], curve["loss"], "-", lw=1.4, label=label)
                ax.fill_between(curve[x], curve["loss"] - curve["std"], curve["loss"] + curve["std"], alpha=0.2)
        axes[0, col].set_title(task)
        axes[0, col].set_xlabel("queries (client function evaluations)")
        axes[1, col].set_xlabel("communication rounds")
        for ax in axes[:, col]:
            ax.set_ylabel("global loss F(θ)")
            ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return to_png(fig)


def section(records: list[tuple[Path, RunRecord]],
            tables_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(table entries, figure entries) for the suite page; empty when the suite has no federated runs."""
    frame = runs(records)
    if frame.empty:
        return [], []
    best = lowest_median(frame, ["task", "family"], "config", "final")
    title = "Federated ZO: FZooS against FedZO, final global loss (best configuration per problem)"
    result = table(best)
    files = export(result, tables_dir, "federated", caption=title)
    entries = [{"title": title, "html": result.to_html(border=0, classes="data"), "files": files,
                "note": "Mean ± std over seeds of F(θ) = the clients' mean objective after the last round; per "
                        "cell the configuration with the lowest median. Queries: client function evaluations "
                        "(a run's forward passes), the server's keep-better check included."}]
    png = figure(best)
    atomic_write(tables_dir.parent / "federated.png", png)
    figures = [{"title": "Federated ZO: global loss against queries and against rounds",
                "png": base64.b64encode(png).decode(),
                "caption": "Mean over seeds; band: ± one standard deviation. Queries on the x axis: the mean "
                           "over seeds of the queries made by the end of each round."}]
    return entries, figures


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Final loss per (task, config): mean, std, seeds (for reading numbers off a results folder)."""
    return frame.groupby(["task", "config"])["final"].agg(mean="mean", std=lambda s: float(np.std(s, ddof=1)),
                                                          seeds="count").reset_index()

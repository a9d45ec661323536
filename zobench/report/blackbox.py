"""Black-box methods against ZO-SGD and first-order SGD at equal function evaluations, and ZO-RankSGD's robustness.

Used when a suite holds runs of the black-box methods (zo-ranksgd, cbo, nevergrad and its ng-* variants). Every
method is compared at its best configuration per task: a suite gives one method several configurations
labelled "<method> <setting>" (e.g. "zo-sgd lr=0.01"), and the one with the best median final test metric
over seeds is drawn (the same rule for every method, as the trajectory section does for learning rates).
The x axis is function evaluations, the runner's forward-pass count: one per loss evaluation for every method
(a first-order step counts its forward; its backward is not an evaluation). ZO-RankSGD runs that name an
oracle error are laid out against the error instead: a method that sees only a judge's rankings, as the judge
errs more often.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zobench.report.figures import pyplot, to_png
from zobench.report.render import export
from zobench.report.trajectories import lowest_median
from zobench.store import RunRecord, SpecRecord, atomic_write

BLACKBOX = ("zo-ranksgd", "cbo", "nevergrad", "ng-")


def _task_label(spec: SpecRecord) -> str:
    task = spec.task
    return task.label or (task.params.get("function") if task.name == "test-function" else task.name)


def runs(records: list[tuple[Path, RunRecord]]) -> pd.DataFrame:
    """One row per finished run: task, method family (the label's first word), configuration, oracle, metric."""
    rows = []
    for folder, r in records:
        if r.outcome.status != "done":
            continue
        method = r.spec.method
        label = method.label or method.name
        rows.append({"dir": folder, "task": _task_label(r.spec), "family": label.split()[0], "config": label,
                     "name": method.name, "oracle": method.params.get("oracle"), "error": method.params.get("error"),
                     "seed": r.seed, "metric": r.metrics.metric, "final": r.metrics.test_metric,
                     "higher": bool(r.metrics.higher_is_better), "evaluations": r.cost.forward_passes})
    return pd.DataFrame(rows)


def best_configs(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs of each (task, family)'s configuration with the best median final metric over seeds."""
    frame = frame.assign(score=np.where(frame["higher"], -1.0, 1.0) * frame["final"].astype(float))
    return lowest_median(frame, ["task", "family"], "config", "score")


def unfinished(records: list[tuple[Path, RunRecord]]) -> str:
    """'label on task: status ×n' for the runs that did not finish (diverged, failed), for the table's note."""
    counts: dict[str, int] = {}
    for _, r in records:
        if r.outcome.status != "done":
            key = f"{r.spec.method.label or r.spec.method.name} on {_task_label(r.spec)}: {r.outcome.status}"
            counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{k} ×{n}" for k, n in counts.items())


def comparison_table(best: pd.DataFrame) -> pd.DataFrame:
    """Family × task: median final metric [min, max over seeds] (the configuration chosen; evaluations)."""
    cells = {}
    for (family, task), g in best.groupby(["family", "task"]):
        final = g["final"].astype(float)
        spread = f" [{final.min():.3g}, {final.max():.3g}]" if len(g) > 1 else ""
        config = g["config"].iloc[0]
        setting = config[len(family):].strip() or "defaults"
        cells[(family, task)] = f"{final.median():.3g}{spread} ({setting}; {int(g['evaluations'].max())} evals)"
    table = pd.Series(cells).unstack().fillna("no run finished")
    table.index.name = "method"
    return table


def _median_curve(dirs: list[str], metric: str) -> pd.DataFrame:
    """Median over seeds of the dev metric at each logged evaluation count (seeds share the schedule)."""
    parts = []
    for d in dirs:
        curve = pd.read_parquet(Path(d) / "curve.parquet")
        col = f"dev_{metric}"
        if col in curve:
            parts.append(curve.dropna(subset=[col])[["forward_passes", col]].rename(columns={col: "y"}))
    if not parts:
        return pd.DataFrame(columns=["forward_passes", "y"])
    return pd.concat(parts).groupby("forward_passes")["y"].median().reset_index()


def curves_figure(best: pd.DataFrame) -> bytes | None:
    """One panel per task: each family's best configuration, dev metric (median over seeds) vs evaluations."""
    tasks = list(dict.fromkeys(best["task"]))
    if not tasks:
        return None
    plt = pyplot()
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    families = sorted(best["family"].unique())
    colors = dict(zip(families, plt.get_cmap("tab10" if len(families) <= 10 else "tab20").colors, strict=False))
    for ax, task in zip(axes.flat, tasks, strict=False):
        part = best[best["task"] == task]
        metric = part["metric"].iloc[0]
        positive = True
        for family, g in part.groupby("family"):
            curve = _median_curve(list(g["dir"]), metric)
            if curve.empty:
                continue
            positive &= bool((curve["y"] > 0).all())
            ax.plot(curve["forward_passes"], curve["y"], "-", color=colors[family], label=family, lw=1.4)
        if positive and not part["higher"].iloc[0]:
            ax.set_yscale("log")
        ax.set_title(task)
        ax.set_xlabel("function evaluations (forward passes)")
        ax.set_ylabel(metric)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=False):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 8), frameon=False)
    fig.tight_layout(rect=(0, 0.16 / rows, 1, 1))  # room for the legend below the x labels
    return to_png(fig)


def robustness(frame: pd.DataFrame) -> pd.DataFrame:
    """ZO-RankSGD runs by task, oracle and the judge's error: final metric, median [min, max] over seeds."""
    rank = frame[(frame["name"] == "zo-ranksgd") & frame["oracle"].notna()]
    if rank.empty or rank["error"].fillna(0).nunique() < 2:
        return pd.DataFrame()
    return (rank.assign(error=rank["error"].fillna(0.0).astype(float), final=rank["final"].astype(float))
            .groupby(["task", "oracle", "config", "error"])["final"]
            .agg(median="median", low="min", high="max", seeds="count").reset_index())


def robustness_figure(table: pd.DataFrame) -> bytes | None:
    plt = pyplot()
    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        part = table[table["task"] == task]
        for oracle, g in part.groupby("oracle"):
            g = g.sort_values("error")
            ax.plot(g["error"], g["median"], "o-", label=oracle)
            ax.fill_between(g["error"], g["low"], g["high"], alpha=0.2)
        ax.set_title(task)
        ax.set_xlabel("judge's error per comparison p")
        ax.set_ylabel("final test metric")
        ax.legend(frameon=False)
    fig.tight_layout()
    return to_png(fig)


def section(records: list[tuple[Path, RunRecord]],
            tables_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(table entries, figure entries) for the suite page; empty when the suite has no black-box runs."""
    frame = runs(records)
    if frame.empty or not frame["name"].str.startswith(BLACKBOX).any():
        return [], []
    tables: list[dict[str, Any]] = []
    figures: list[dict[str, Any]] = []
    plain = frame[frame["error"].fillna(0).astype(float) == 0]  # the noisy-judge runs are the robustness study
    best = best_configs(plain)
    title = "Black-box methods at equal function evaluations: final test metric (best configuration per cell)"
    table = comparison_table(best)
    files = export(table, tables_dir, "blackbox", caption=title)
    tables.append({"title": title, "html": table.to_html(border=0, classes="data"), "files": files,
                   "note": "Median over seeds [lowest, highest]; per cell the configuration with the best median "
                           "final metric among the finished runs of those the suite gives the method. Evaluations: "
                           "forward passes (a first-order step counts one; its backward is not counted). "
                           f"Runs that did not finish: {unfinished(records) or 'none'}."})
    png = curves_figure(best)
    if png:
        atomic_write(tables_dir.parent / "blackbox.png", png)
        figures.append({"title": "Black-box methods: dev metric against function evaluations",
                        "png": base64.b64encode(png).decode(),
                        "caption": "Median over seeds of each method's best configuration per task; log scale "
                                   "where the metric is a positive loss or distance."})
    rob = robustness(frame)
    if not rob.empty:
        title = "ZO-RankSGD with a judge who errs: final test metric against the error per comparison"
        files = export(rob, tables_dir, "ranksgd-robustness", caption=title)
        tables.append({"title": title, "html": rob.to_html(border=0, classes="data", index=False), "files": files,
                       "note": "noisy-ranking: every pair compared, each wrong with probability p, ranked by wins; "
                               "pairwise: disjoint pairs, each wrong with probability p."})
        png = robustness_figure(rob)
        if png:
            figures.append({"title": "ZO-RankSGD robustness to the judge's error",
                            "png": base64.b64encode(png).decode(),
                            "caption": "Median over seeds; band: lowest to highest seed."})
    return tables, figures
